"""Pooling helpers shared by the convolutional models.

All 2×2 max pooling of the zoo goes through :func:`max_pool_2x2`, which is the tiling-window rule
of :func:`advjax.lowering.window_max` (the rule ``lower_convs`` gives a user's ``nn.max_pool``).
Its value is a reshape followed by a max over the two window axes (identical to ``nn.max_pool``
for non-overlapping windows); its derivative is a ``jax.custom_jvp`` (linear in the tangent, so
reverse mode, forward mode and double backprop all work) that routes each window's cotangent to
the FIRST maximal input in row-major window order — the convention of XLA's
``select_and_scatter`` and of PyTorch's ``MaxPool2d`` — computed with elementwise
compare-and-select instead of ``select_and_scatter``, which is 5–10× slower on XLA:CPU and
dominates a small CNN's backward pass (``benchmarks/maxpool.py``). Attacks and the Woods
regulariser differentiate through pooling on every step, so this matters for the whole library;
matching the peers' tie-breaking also keeps attack trajectories comparable with PyTorch
implementations (ties are common: a ReLU feature map over a constant image region repeats the
same value across a window). The Lipschitz graph walk sees the forward computation (reshape and
``reduce_max``, bounded by 1).
"""

from __future__ import annotations

import jax

from advjax import lowering

Array = jax.Array


def max_pool_2x2(x: Array) -> Array:
    """2×2 max pooling with stride 2 and no padding (PyTorch ``MaxPool2d(2)``).

    Args:
      x: ``(B, H, W, C)`` NHWC feature maps.

    Returns:
      ``(B, H // 2, W // 2, C)``; a trailing odd row / column is dropped, as in PyTorch.
    """
    if x.ndim != 4:
        raise ValueError(f"`x` must have rank 4 (B, H, W, C); got shape {x.shape}.")
    return lowering.window_max(x, window_dimensions=(1, 2, 2, 1), window_strides=(1, 2, 2, 1),
                               padding=((0, 0),) * 4, base_dilation=(1,) * 4,
                               window_dilation=(1,) * 4)
