"""DeepMind's WideResNet and pre-activation ResNet of RobustBench (``dm_wide_resnet.py``).

Both put ``(x - mean) / std`` inside the model (CIFAR-10 statistics by default, after an optional
zero ``padding`` of the [0, 1] image) and mimic TensorFlow's ``SAME`` padding with explicit pads:
a 3×3 convolution of stride 1 pads ``(1, 1)`` on each side, one of stride 2 pads only bottom/right
``(0, 1)`` (``F.pad(v, (0, 1, 0, 1))``), unlike PyTorch's symmetric ``padding=1``.

- :class:`DMWideResNet` (``_Block``): ``o = act(batchnorm_0(x))``; ``h = conv_1(act(batchnorm_1(
  conv_0(pad(o)))))``; output ``h + x`` for equal widths, else ``h + shortcut(o)`` (1×1, strided,
  on the activated input). ``init_conv`` → ``layer.{0,1,2}.block.{j}`` → ``batchnorm`` → act →
  8×8 average pooling → ``logits``. Leaderboard sizes: 28-10, 70-16, 106-16 with ReLU or SiLU.
- :class:`DMPreActResNet` (``_PreActBlock``): ``o = act(batchnorm_0(x))``; ``h = conv_2d_2(act(
  batchnorm_1(conv_2d_1(pad(o)))))``; output ``h + x``, or ``h + shortcut(pad(x))`` (a **3×3**
  strided convolution of the *raw* input) when the stride or width changes. ``conv_2d`` →
  ``layer_{0..3}`` (64/128/256/512, strides 1/2/2/2; depth 18: 2-2-2-2 blocks, 34: 3-4-6-3) →
  ``batchnorm`` → act → 4×4 average pooling → ``logits``.

``activation`` is ``"relu"`` or ``"silu"`` (DeepMind's Swish ``x · sigmoid(x)``). Parameter names
mirror the PyTorch ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

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

DM_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
DM_CIFAR10_STD = (0.2471, 0.2435, 0.2616)
DM_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
DM_CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _same_pads(stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The explicit pads of ``_Block`` / ``_PreActBlock`` for a 3×3 convolution of ``stride``."""
    if stride == 1:
        return ((1, 1), (1, 1))
    if stride == 2:
        return ((0, 1), (0, 1))
    raise ValueError(f"unsupported stride {stride} (DeepMind's blocks take 1 or 2).")


def _pad_input(x: Array, padding: int) -> Array:
    if padding < 0:
        raise ValueError(f"`padding` must be >= 0; got {padding}.")
    if padding == 0:
        return x
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


class DMWideResNet(nn.Module):
    """DeepMind's WideResNet (Gowal et al. 2020/2021, Rebuffi et al. 2021, Wang et al. 2023).

    Attributes:
      depth: ``6 n + 4``; width: ``k`` (group widths ``16k, 32k, 64k``).
      num_classes: logits ``K``.
      activation: ``"relu"`` or ``"silu"``.
      mean, std: input normalisation inside the model (after ``padding``).
      padding: zero padding of the input image on each side (PyTorch ``padding``).
      axis_name: optional BatchNorm axis name.
    """

    depth: int = 28
    width: int = 10
    num_classes: int = 10
    activation: str = "relu"
    mean: Sequence[float] | None = DM_CIFAR10_MEAN
    std: Sequence[float] | None = DM_CIFAR10_STD
    padding: int = 0
    axis_name: str | None = None

    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, C)`` in [0, 1]."""
        n = wrn_blocks_per_group(self.depth)
        check_images(x)
        a = act(self.activation)
        k = int(self.width)
        widths = (16, 16 * k, 32 * k, 64 * k)
        h = normalise(_pad_input(x, self.padding), self.mean, self.std)
        h = conv(widths[0], 3, "init_conv", padding=1)(h)
        for g, stride in enumerate((1, 2, 2)):
            for b in range(n):
                h = _Block(widths[g + 1], stride if b == 0 else 1, self.activation,
                           self.axis_name, name=f"layer.{g}.block.{b}")(h, train)
        h = a(batch_norm("batchnorm", train, self.axis_name)(h))
        return dense(self.num_classes, "logits")(avg_pool_all(h, 8))


class _Block(nn.Module):
    features: int
    strides: int
    activation: str
    axis_name: str | None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        a = act(self.activation)
        has_shortcut = x.shape[-1] != self.features
        o = a(batch_norm("batchnorm_0", train, self.axis_name)(x))
        h = conv(self.features, 3, "conv_0", strides=self.strides,
                 padding=_same_pads(self.strides))(o)
        h = a(batch_norm("batchnorm_1", train, self.axis_name)(h))
        h = conv(self.features, 3, "conv_1", padding=1)(h)
        if has_shortcut:
            return conv(self.features, 1, "shortcut", strides=self.strides)(o) + h
        if self.strides != 1:
            raise ValueError("a block without shortcut must have stride 1.")
        return x + h


class DMPreActResNet(nn.Module):
    """DeepMind's pre-activation ResNet-18/34 (Gowal et al. 2021, Rebuffi et al. 2021).

    Attributes:
      depth: 18 or 34.
      num_classes: logits ``K``.
      widths: channels of the four stages (64, 128, 256, 512); the stem has ``widths[0]``.
      activation: ``"relu"`` or ``"silu"``.
      mean, std, padding, axis_name: as in :class:`DMWideResNet`.
    """

    depth: int = 18
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    activation: str = "relu"
    mean: Sequence[float] | None = DM_CIFAR10_MEAN
    std: Sequence[float] | None = DM_CIFAR10_STD
    padding: int = 0
    axis_name: str | None = None

    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, C)`` in [0, 1]."""
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
        if self.depth not in blocks:
            raise ValueError(f"`depth` must be 18 or 34; got {self.depth}.")
        check_images(x)
        a = act(self.activation)
        h = normalise(_pad_input(x, self.padding), self.mean, self.std)
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"`widths` must be four positive counts; got {tuple(self.widths)}.")
        h = conv(int(self.widths[0]), 3, "conv_2d", padding=1)(h)
        for g, (width, stride) in enumerate(zip(self.widths, (1, 2, 2, 2), strict=True)):
            for b in range(blocks[self.depth][g]):
                h = _PreActBlock(width, stride if b == 0 else 1, self.activation, self.axis_name,
                                 name=f"layer_{g}.{b}")(h, train)
        h = a(batch_norm("batchnorm", train, self.axis_name)(h))
        return dense(self.num_classes, "logits")(avg_pool_all(h, 4))


class _PreActBlock(nn.Module):
    features: int
    strides: int
    activation: str
    axis_name: str | None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        a = act(self.activation)
        pads = _same_pads(self.strides)
        o = a(batch_norm("batchnorm_0", train, self.axis_name)(x))
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 3, "shortcut", strides=self.strides, padding=pads)(x)
        else:
            shortcut = x
        h = conv(self.features, 3, "conv_2d_1", strides=self.strides, padding=pads)(o)
        h = conv(self.features, 3, "conv_2d_2", padding=1)(
                a(batch_norm("batchnorm_1", train, self.axis_name)(h)))
        return h + shortcut
