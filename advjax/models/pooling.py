"""Pooling helpers shared by the convolutional models.

All 2×2 max pooling of the zoo goes through :func:`max_pool_2x2`. Its value is a reshape followed
by a max over the two window axes (identical to ``nn.max_pool`` for non-overlapping windows); its
derivative is a ``jax.custom_jvp`` (linear in the tangent, so reverse mode, forward mode and
double backprop all work) that routes each window's cotangent to the FIRST maximal input in
row-major window order — the convention of XLA's ``select_and_scatter`` and of PyTorch's
``MaxPool2d`` — computed with elementwise compare-and-select instead of ``select_and_scatter``,
which is 5–10× slower on XLA:CPU and dominates a small CNN's backward pass
(``benchmarks/maxpool.py``). Attacks and the Woods regulariser differentiate through pooling on
every step, so this matters for the whole library; matching the peers' tie-breaking also keeps
attack trajectories comparable with PyTorch implementations (ties are common: a ReLU feature map
over a constant image region repeats the same value across a window). The Lipschitz graph walk
sees the forward computation (reshape and ``reduce_max``, bounded by 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _windows(x: Array) -> Array:
    """``(B, H, W, C)`` → ``(B, H/2, W/2, C, 4)``, window entries in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


def _unwindows(x: Array) -> Array:
    """Inverse of :func:`_windows`."""
    b, h2, w2, c, _ = x.shape
    x = x.reshape(b, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h2, 2 * w2, c)


@jax.custom_jvp
def _pool(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@_pool.defjvp
def _pool_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    first = jnp.argmax(_windows(x), axis=-1)  # first maximal entry, like select_and_scatter
    onehot = jnp.arange(4) == first[..., None]
    t_out = jnp.sum(jnp.where(onehot, _windows(t), jnp.zeros((), t.dtype)), axis=-1)
    return _pool(x), t_out


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling with stride 2 and no padding (PyTorch ``MaxPool2d(2)``).

    Arguments:
      x: ``(B, H, W, C)`` NHWC feature maps.

    Returns:
      ``(B, H // 2, W // 2, C)``; a trailing odd row / column is dropped, as in PyTorch.
    """
    if x.ndim != 4:
        raise ValueError(f"`x` must have rank 4 (B, H, W, C); got shape {x.shape}.")
    _, h, w, _ = x.shape
    return _pool(x[:, : h - h % 2, : w - w % 2, :])
