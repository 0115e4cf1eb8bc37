"""Pooling helpers shared by the convolutional models.

All 2×2 max pooling of the zoo goes through :func:`max_pool_2x2`, so a faster gradient (the
gradient of ``max_pool`` lowers to select-and-scatter, which is slow on XLA:CPU) can be plugged
in at one place.
"""

from __future__ import annotations

import flax.linen as nn
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
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
