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


@jax.custom_jvp
def _pool(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@_pool.defjvp
def _pool_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    out = _pool(x)
    b, h, w, c = x.shape
    xs = x.reshape(b, h // 2, 2, w // 2, 2, c)
    ts = t.reshape(b, h // 2, 2, w // 2, 2, c)
    # The first maximal entry in row-major window order (like select_and_scatter), found with
    # elementwise compares rather than an argmax reduction.
    t_out = jnp.zeros_like(out, dtype=t.dtype)
    taken = jnp.zeros(out.shape, bool)
    for i in range(2):
        for j in range(2):
            pick = (xs[:, :, i, :, j, :] == out) & ~taken
            t_out = jnp.where(pick, ts[:, :, i, :, j, :], t_out)
            taken = taken | pick
    return out, t_out


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling with stride 2 and no padding (PyTorch ``MaxPool2d(2)``).

    Args:
      x: ``(B, H, W, C)`` NHWC feature maps.

    Returns:
      ``(B, H // 2, W // 2, C)``; a trailing odd row / column is dropped, as in PyTorch.
    """
    if x.ndim != 4:
        raise ValueError(f"`x` must have rank 4 (B, H, W, C); got shape {x.shape}.")
    _, h, w, _ = x.shape
    return _pool(x[:, : h - h % 2, : w - w % 2, :])
