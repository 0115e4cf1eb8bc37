"""PyTorch-exact building blocks shared by the RobustBench architectures (NHWC, eval and train).

- :func:`conv`: ``nn.Conv2d`` with explicit (possibly asymmetric) zero padding, PyTorch's
  ``padding=p`` being ``((p, p), (p, p))`` (never Flax's ``"SAME"``, which pads strided
  convolutions differently);
- :func:`batch_norm`: ``nn.BatchNorm2d`` defaults (eps 1e-5, PyTorch momentum 0.1 = Flax 0.9);
- :func:`normalise`: ``(x - mean) / std`` inside the model, so inputs and input gradients live in
  the [0, 1] image (identity when ``mean`` and ``std`` are ``None``);
- :func:`act`: ``"relu"``, ``"silu"`` (``x · sigmoid(x)``, DeepMind's Swish) and ``"gelu"``
  (``nn.GELU()``: the exact erf form, not the tanh approximation).

Submodule names are the PyTorch ``state_dict`` prefixes (``"block1.layer.0"``), so the checkpoint
converter (:mod:`advjax.models.robustbench.checkpoint`) maps every Flax leaf to its PyTorch key
without per-architecture tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS = ("relu", "silu", "gelu")


def act(name: str) -> Callable[[Array], Array]:
    """The activation ``name`` (one of :data:`ACTIVATIONS`) as PyTorch computes it."""
    if name == "relu":
        return nn.relu
    if name == "silu":
        return nn.silu
    if name == "gelu":
        return lambda x: nn.gelu(x, approximate=False)
    raise ValueError(f"`activation` must be one of {ACTIVATIONS}; got {name!r}.")


def conv(features: int, kernel: int, name: str, *, strides: int = 1,
         padding: int | tuple[tuple[int, int], tuple[int, int]] = 0, use_bias: bool = False,
         groups: int = 1) -> nn.Conv:
    """``nn.Conv2d(c_in, features, kernel, stride, padding, bias, groups)`` in NHWC."""
    pads = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=pads,
                   use_bias=use_bias, feature_group_count=groups,
                   kernel_init=nn.initializers.he_normal(), name=name)


def batch_norm(name: str, train: bool, axis_name: str | None = None) -> nn.BatchNorm:
    """``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1 in PyTorch's convention) over the last axis."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name, name=name)


def normalise(x: Array, mean: Sequence[float] | None, std: Sequence[float] | None) -> Array:
    """``(x - mean) / std`` per channel (last axis); identity when both are ``None``."""
    if mean is None and std is None:
        return x
    if mean is None or std is None:
        raise ValueError("`mean` and `std` must be given together (or both left None).")
    if len(mean) != x.shape[-1] or len(std) != x.shape[-1]:
        raise ValueError(f"`mean` and `std` must have one entry per channel ({x.shape[-1]}); got "
                         f"{len(mean)} and {len(std)}.")
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def avg_pool_all(h: Array, window: int) -> Array:
    """``F.avg_pool2d(h, window).view(B, -1)`` where the maps are exactly ``window × window``."""
    if h.shape[1:3] != (window, window):
        raise ValueError(f"the feature maps must be {window}×{window} before the {window}×{window} "
                         f"average pooling; got {tuple(h.shape[1:3])} (wrong input size).")
    h = nn.avg_pool(h, (window, window), strides=(window, window), padding="VALID")
    return h.reshape((h.shape[0], -1))


def dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
    """``nn.Linear(c_in, features, bias)``."""
    return nn.Dense(features, use_bias=use_bias, name=name)


def wrn_blocks_per_group(depth: int) -> int:
    """Blocks per stage of a wide ResNet of ``depth`` layers, ``depth = 6 n + 4`` with n >= 1."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6 n + 4 with n >= 1; got {depth}.")
    return (depth - 4) // 6
