"""The classic WideResNet of RobustBench (``model_zoo/architectures/wide_resnet.py``, after TRADES).

WRN-``depth``-``widen_factor``: ``conv1`` 3×3 (16 channels) → three groups ``block{1,2,3}`` of
``n = (depth - 4) / 6`` pre-activation basic blocks (widths ``16k, 32k, 64k``, first strides 1/2/2)
→ ``bn1`` → ReLU → 8×8 average pooling → ``fc``. A block (PyTorch ``BasicBlock``):
``o = relu(bn1(x))``; ``h = conv2(relu(bn2(conv1(o))))`` (3×3, padding 1, the first with the
block's stride); output ``h + x`` when in/out widths agree, else ``h + convShortcut(o)`` (1×1,
strided, applied to the *activated* input). No input normalisation unless ``mean``/``std`` are
given (RobustBench's WideResNets take the raw [0, 1] image). Leaderboard sizes: WRN-28-10,
WRN-34-10, WRN-34-20, WRN-70-16.

Parameter names mirror the PyTorch ``state_dict`` (``block1.layer.0`` / ``bn1`` / ``scale`` ↔
``block1.layer.0.bn1.weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax

from advjax.models._validate import check_images
from advjax.models.robustbench._layers import (
    act,
    avg_pool_all,
    batch_norm,
    conv,
    dense,
    normalise,
    wrn_blocks_per_group,
)

Array = jax.Array


class WideResNet(nn.Module):
    """RobustBench's ``WideResNet(depth, num_classes, widen_factor, bias_last)`` for 32×32 inputs.

    Attributes:
      depth: ``6 n + 4`` (28, 34, 70, ...).
      widen_factor: ``k``; group widths ``16k, 32k, 64k``.
      num_classes: logits ``K``.
      bias_last: whether ``fc`` has a bias (PyTorch ``bias_last``).
      activation: ``"relu"`` (RobustBench) or ``"silu"``.
      mean, std: optional per-channel input normalisation inside the model.
      axis_name: optional BatchNorm axis name (batch statistics over a vmapped axis).
    """

    depth: int = 28
    widen_factor: int = 10
    num_classes: int = 10
    bias_last: bool = True
    activation: str = "relu"
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    axis_name: str | None = None

    # unused in the forward pass of the PyTorch model; dropped on import
    ignored_keys: ClassVar[tuple[str, ...]] = ("sub_block1.",)
    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, 3)`` in [0, 1]."""
        n = wrn_blocks_per_group(self.depth)
        check_images(x)
        a = act(self.activation)
        k = int(self.widen_factor)
        widths = (16, 16 * k, 32 * k, 64 * k)
        h = conv(widths[0], 3, "conv1", padding=1)(normalise(x, self.mean, self.std))
        for g, stride in enumerate((1, 2, 2)):
            for b in range(n):
                h = _BasicBlock(widths[g + 1], stride if b == 0 else 1, self.activation,
                                self.axis_name, name=f"block{g + 1}.layer.{b}")(h, train)
        h = a(batch_norm("bn1", train, self.axis_name)(h))
        h = avg_pool_all(h, 8)
        return dense(self.num_classes, "fc", use_bias=self.bias_last)(h)


class _BasicBlock(nn.Module):
    features: int
    strides: int
    activation: str
    axis_name: str | None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        a = act(self.activation)
        equal = x.shape[-1] == self.features
        o = a(batch_norm("bn1", train, self.axis_name)(x))
        h = conv(self.features, 3, "conv1", strides=self.strides, padding=1)(o)
        h = a(batch_norm("bn2", train, self.axis_name)(h))
        h = conv(self.features, 3, "conv2", padding=1)(h)
        if equal:
            if self.strides != 1:
                raise ValueError("a block with equal in/out widths must have stride 1 (as in "
                                 "PyTorch, whose identity shortcut would not match).")
            return x + h
        return conv(self.features, 1, "convShortcut", strides=self.strides)(o) + h
