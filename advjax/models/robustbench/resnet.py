"""ResNets of the RobustBench leaderboards: CIFAR ResNet-18/50, PreActResNet-18, ImageNet ResNet-50.

- :class:`ResNet` — RobustBench ``resnet.py`` (kuangliu's CIFAR variant): ``conv1`` 3×3 (64) →
  ``bn1`` → ReLU → ``layer1..4`` (64/128/256/512 × expansion, strides 1/2/2/2) → 4×4 average
  pooling → ``linear``. ``BasicBlock`` (expansion 1): ``relu(bn2(conv2(relu(bn1(conv1(x))))) +
  s(x))``; ``Bottleneck`` (expansion 4): 1×1 → 3×3 (stride) → 1×1 with ``bn1..3``; the shortcut
  ``s`` is the identity or ``shortcut.0`` (1×1 strided conv) → ``shortcut.1`` (BatchNorm).
  ResNet-18: BasicBlock 2-2-2-2; ResNet-50: Bottleneck 3-4-6-3.
- :class:`PreActResNet` — RobustBench ``PreActResNet`` with ``PreActBlock``: ``o = relu(bn1(x))``;
  ``h = conv2(relu(bn2(conv1(o))))``; output ``h + x`` or ``h + shortcut.0(x)`` (1×1 strided conv
  of the *raw* input; ``out_shortcut=True`` applies it to ``o``); optional ``bn`` + ReLU before
  pooling (``bn_before_fc``). PreActResNet-18: 2-2-2-2.
- :class:`ImageNetResNet` — torchvision's ``ResNet`` with ``Bottleneck`` (v1.5: stride on the 3×3),
  the layout of RobustBench's ImageNet ResNet-50 and Wide-ResNet-50-2 (``width_per_group=128``):
  ``conv1`` 7×7/2 pad 3 → ``bn1`` → ReLU → 3×3/2 max pool pad 1 → ``layer1..4`` (shortcut
  ``downsample.0`` / ``downsample.1``) → global average pooling → ``fc``; the input normalisation
  of RobustBench's ``normalize_model`` wrapper (ImageNet mean/std by default) is inside the model.

All convolutions: no bias, PyTorch's symmetric padding. Parameter names mirror the PyTorch
``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models._validate import check_images
from advjax.models.robustbench._layers import (
    avg_pool_all,
    batch_norm,
    conv,
    dense,
    normalise,
)

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STAGE_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                 50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                 152: ("bottleneck", (3, 8, 36, 3))}


def _stages(depth: int) -> tuple[str, tuple[int, ...]]:
    if depth not in _STAGE_BLOCKS:
        raise ValueError(f"`depth` must be one of {sorted(_STAGE_BLOCKS)}; got {depth}.")
    return _STAGE_BLOCKS[depth]


def _check_widths(widths: Sequence[int]) -> None:
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"`widths` must be four positive channel counts; got {tuple(widths)}.")


class _Basic(nn.Module):
    planes: int
    strides: int
    axis_name: str | None
    shortcut_name: str = "shortcut"

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        bn = lambda n: batch_norm(n, train, self.axis_name)  # noqa: E731
        h = nn.relu(bn("bn1")(conv(self.planes, 3, "conv1", strides=self.strides, padding=1)(x)))
        h = bn("bn2")(conv(self.planes, 3, "conv2", padding=1)(h))
        return nn.relu(h + _projection(x, self.planes, self.strides, self.shortcut_name, bn))


class _Bottleneck(nn.Module):
    planes: int
    strides: int
    axis_name: str | None
    shortcut_name: str = "shortcut"
    width: int | None = None  # torchvision: planes · width_per_group / 64

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        bn = lambda n: batch_norm(n, train, self.axis_name)  # noqa: E731
        width = self.width or self.planes
        h = nn.relu(bn("bn1")(conv(width, 1, "conv1")(x)))
        h = nn.relu(bn("bn2")(conv(width, 3, "conv2", strides=self.strides, padding=1)(h)))
        h = bn("bn3")(conv(4 * self.planes, 1, "conv3")(h))
        return nn.relu(h + _projection(x, 4 * self.planes, self.strides, self.shortcut_name, bn))


def _projection(x: Array, features: int, strides: int, name: str, bn) -> Array:
    if strides == 1 and x.shape[-1] == features:
        return x
    return bn(f"{name}.1")(conv(features, 1, f"{name}.0", strides=strides)(x))


class ResNet(nn.Module):
    """RobustBench's CIFAR ``ResNet`` (ResNet-18/34/50/101/152) for 32×32 inputs.

    Attributes:
      depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
      num_classes: logits ``K``.
      widths: ``planes`` of the four stages (64, 128, 256, 512); the stem has ``widths[0]``.
      mean, std: optional input normalisation inside the model (RobustBench: none).
      axis_name: optional BatchNorm axis name.
    """

    depth: int = 18
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    axis_name: str | None = None

    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, 3)`` in [0, 1]."""
        kind, blocks = _stages(self.depth)
        check_images(x)
        block = _Basic if kind == "basic" else _Bottleneck
        h = normalise(x, self.mean, self.std)
        _check_widths(self.widths)
        h = conv(int(self.widths[0]), 3, "conv1", padding=1)(h)
        h = nn.relu(batch_norm("bn1", train, self.axis_name)(h))
        for s, (planes, stride) in enumerate(zip(self.widths, (1, 2, 2, 2), strict=True)):
            for b in range(blocks[s]):
                h = block(planes, stride if b == 0 else 1, self.axis_name,
                          name=f"layer{s + 1}.{b}")(h, train)
        return dense(self.num_classes, "linear")(avg_pool_all(h, 4))


class _PreAct(nn.Module):
    planes: int
    strides: int
    out_shortcut: bool
    axis_name: str | None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        o = nn.relu(batch_norm("bn1", train, self.axis_name)(x))
        if self.strides != 1 or x.shape[-1] != self.planes:
            shortcut = conv(self.planes, 1, "shortcut.0", strides=self.strides)(
                    o if self.out_shortcut else x)
        else:
            shortcut = x
        h = conv(self.planes, 3, "conv1", strides=self.strides, padding=1)(o)
        h = conv(self.planes, 3, "conv2", padding=1)(
                nn.relu(batch_norm("bn2", train, self.axis_name)(h)))
        return h + shortcut


class PreActResNet(nn.Module):
    """RobustBench's CIFAR ``PreActResNet`` with ``PreActBlock`` (PreActResNet-18: 2-2-2-2).

    Attributes:
      num_blocks: blocks per stage (four stages, 64/128/256/512, strides 1/2/2/2).
      num_classes: logits ``K``.
      widths: ``planes`` of the four stages (64, 128, 256, 512); the stem has ``widths[0]``.
      bn_before_fc: a final ``bn`` + ReLU before pooling (PyTorch ``bn_before_fc``).
      out_shortcut: the projection shortcut reads the activated input (PyTorch ``out_shortcut``).
      mean, std, axis_name: as in :class:`ResNet`.
    """

    num_blocks: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    bn_before_fc: bool = False
    out_shortcut: bool = False
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    axis_name: str | None = None

    input_size: ClassVar[int] = 32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, 3)`` in [0, 1]."""
        if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
            raise ValueError(f"`num_blocks` must be four positive counts; got {self.num_blocks}.")
        check_images(x)
        _check_widths(self.widths)
        h = conv(int(self.widths[0]), 3, "conv1", padding=1)(normalise(x, self.mean, self.std))
        for s, (planes, stride) in enumerate(zip(self.widths, (1, 2, 2, 2), strict=True)):
            for b in range(int(self.num_blocks[s])):
                h = _PreAct(planes, stride if b == 0 else 1, self.out_shortcut, self.axis_name,
                            name=f"layer{s + 1}.{b}")(h, train)
        if self.bn_before_fc:
            h = nn.relu(batch_norm("bn", train, self.axis_name)(h))
        return dense(self.num_classes, "linear")(avg_pool_all(h, 4))


class ImageNetResNet(nn.Module):
    """torchvision's ``ResNet`` (``resnet50``, ``wide_resnet50_2``) with input normalisation.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      width_per_group: 64 (ResNet) or 128 (Wide-ResNet-50-2); Bottleneck only.
      num_classes: logits ``K`` (1000).
      widths: ``planes`` of the four stages (64, 128, 256, 512); the stem has ``widths[0]``.
      mean, std: input normalisation inside the model (ImageNet statistics by default; ``None``
        for none).
      axis_name: optional BatchNorm axis name.
    """

    depth: int = 50
    width_per_group: int = 64
    num_classes: int = 1000
    widths: Sequence[int] = (64, 128, 256, 512)
    mean: Sequence[float] | None = IMAGENET_MEAN
    std: Sequence[float] | None = IMAGENET_STD
    axis_name: str | None = None

    input_size: ClassVar[int] = 224

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, H, W, 3)`` in [0, 1] (224×224)."""
        kind, blocks = _stages(self.depth)
        if kind == "basic" and self.width_per_group != 64:
            raise ValueError("`width_per_group` must be 64 for BasicBlock ResNets (18, 34).")
        check_images(x)
        h = normalise(x, self.mean, self.std)
        _check_widths(self.widths)
        h = conv(int(self.widths[0]), 7, "conv1", strides=2, padding=3)(h)
        h = nn.relu(batch_norm("bn1", train, self.axis_name)(h))
        h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (planes, stride) in enumerate(zip(self.widths, (1, 2, 2, 2), strict=True)):
            for b in range(blocks[s]):
                kw = dict(shortcut_name="downsample", name=f"layer{s + 1}.{b}")
                st = stride if b == 0 else 1
                if kind == "basic":
                    h = _Basic(planes, st, self.axis_name, **kw)(h, train)
                else:
                    width = planes * self.width_per_group // 64
                    h = _Bottleneck(planes, st, self.axis_name, width=width, **kw)(h, train)
        h = jnp.mean(h, axis=(1, 2))
        return dense(self.num_classes, "fc")(h)
