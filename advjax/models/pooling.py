"""Pooling helpers shared by the convolutional models.

All 2×2 max pooling of the zoo goes through :func:`max_pool_2x2`. It is written as a reshape
followed by a max over the two window axes instead of ``nn.max_pool``: the value is identical for
non-overlapping windows, but the gradient lowers to elementwise compare-and-select instead of
XLA's ``select_and_scatter``, which is 5–10× slower on XLA:CPU and dominates a small CNN's
backward pass (``benchmarks/maxpool.py`` measures it). Attacks and the Woods regulariser
differentiate through pooling on every step, so this matters for the whole library.

Gradient convention: where several inputs of a window tie for the maximum, the gradient is shared
equally among them (``jnp.max``'s rule); ``select_and_scatter`` gives it all to one of them. Both
are valid subgradients and coincide almost everywhere.
"""

from __future__ import annotations

import jax

Array = jax.Array


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling with stride 2 and no padding (PyTorch ``MaxPool2d(2)``).

    Arguments:
      x: ``(B, H, W, C)`` NHWC feature maps.

    Returns:
      ``(B, H // 2, W // 2, C)``; a trailing odd row / column is dropped, as in PyTorch.
    """
    if x.ndim != 4:
        raise ValueError(f"`x` must have rank 4 (B, H, W, C); got shape {x.shape}.")
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
