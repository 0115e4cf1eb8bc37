"""Pre-activation ResNet for CIFAR-10 of Woods, Chen & Teuscher (2019), papers.md §2.3 and §2.12.

ResNet-``depth`` (44 by default): input normalisation ``(x - mean) / std`` inside the model (all
input gradients are taken with respect to the [0, 1] image), a 3×3 stem convolution, three
superblocks of ``(depth - 2) // 6`` pre-activation blocks (widths 16/32/64, first-block strides
1/2/2), a final BatchNorm → activation → 8×8 average pooling → 1×1 convolution with bias as the
classifier.

Pre-activation block: ``pre = act(BN(x))``; ``main = conv3×3(stride s) → BN → act → conv3×3`` (the
last convolution initialised to zero, arXiv 1812.01187); ``shortcut = x`` when the shape is
unchanged, else a **3×3** strided convolution applied to ``pre``; output ``main + shortcut``.
Convolutions have no bias and PyTorch's symmetric padding of 1 (also when strided, unlike Flax's
"SAME"). BatchNorm uses PyTorch's defaults (Flax momentum 0.9, eps 1e-5). With depth 44 the model
has exactly 681,626 trainable parameters.

Parameter names: ``stem``; ``stage{1,2,3}_block{j}`` with ``pre_bn``, ``conv1``, ``bn``, ``conv2``
and (first block of stages 2 and 3) ``shortcut``; ``final_bn``; ``classifier``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models._validate import check_images
from advjax.models.activations import activation as _activation

Array = jax.Array

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)

_RESNET_ACTIVATIONS = ("relu", "hhrelu")


def _act(name: str, delta: float):
    if name not in _RESNET_ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {_RESNET_ACTIVATIONS}; got {name!r}.")
    return _activation("hhrelu", delta=delta) if name == "hhrelu" else _activation("relu")


def _conv3x3(features: int, strides: int, name: str, zero_init: bool = False) -> nn.Conv:
    return nn.Conv(
            features, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)), use_bias=False,
            kernel_init=nn.initializers.zeros if zero_init else nn.initializers.he_uniform(),
            name=name)


class PreActBlock(nn.Module):
    """One pre-activation residual block (papers.md §2.3).

    Attributes:
      features: output channels.
      strides: stride of the first convolution (and of the shortcut convolution).
      activation: ``"relu"`` or ``"hhrelu"``.
      hhrelu_delta: ``delta`` of the half-Huber ReLU.
      axis_name: vmap / pmap axis over which BatchNorm takes batch statistics (``None``: the batch
        axis of the input only).
    """

    features: int
    strides: int = 1
    activation: str = "relu"
    hhrelu_delta: float = 0.5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """``(B, H, W, C_in)`` → ``(B, H / s, W / s, features)``."""
        act = _act(self.activation, self.hhrelu_delta)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, axis_name=self.axis_name)
        pre = act(norm(name="pre_bn")(x))
        h = _conv3x3(self.features, self.strides, "conv1")(pre)
        h = act(norm(name="bn")(h))
        h = _conv3x3(self.features, 1, "conv2", zero_init=True)(h)
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = _conv3x3(self.features, self.strides, "shortcut")(pre)
        else:
            shortcut = x
        return h + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet of Woods et al. (2019) for 32×32 RGB images (papers.md §2.3).

    Attributes:
      depth: ``6 n + 2``; ``n = (depth - 2) // 6`` blocks per superblock (44 → 7).
      num_classes: number of classes ``K``.
      widths: channels of the three superblocks (16, 32, 64); the stem has ``widths[0]``.
      strides: strides of the first block of each superblock (1, 2, 2).
      activation: ``"relu"`` (standard) or ``"hhrelu"`` (the "robust additions").
      hhrelu_delta: ``delta`` of the half-Huber ReLU (0.5 in the released checkpoints).
      axis_name: optional BatchNorm axis name, so batch statistics are taken over a vmapped /
        pmapped axis (``jax.vmap(..., axis_name=...)``).
      mean, std: per-channel input normalisation, applied inside the model.
    """

    depth: int = 44
    num_classes: int = 10
    widths: Sequence[int] = (16, 32, 64)
    strides: Sequence[int] = (1, 2, 2)
    activation: str = "relu"
    hhrelu_delta: float = 0.5
    axis_name: str | None = None
    mean: Sequence[float] = CIFAR10_MEAN
    std: Sequence[float] = CIFAR10_STD

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, 32, 32, 3)`` in [0, 1].

        Args:
          x: ``(B, H, W, 3)`` float images in [0, 1], un-normalised; ``H`` and ``W`` must reduce to
            8×8 after the strides (32×32 for the defaults).
          train: BatchNorm uses batch statistics and updates ``batch_stats`` (pass
            ``mutable=["batch_stats"]``) when True, the running averages when False.

        Returns:
          Logits ``(B, num_classes)`` (un-normalised scores; softmax in the loss).
        """
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"`depth` must be 6 n + 2 with n >= 1; got {self.depth}.")
        if len(self.widths) != len(self.strides):
            raise ValueError(f"`widths` {tuple(self.widths)} and `strides` {tuple(self.strides)} "
                             "must have the same length.")
        check_images(x, channels=len(self.mean))
        act = _act(self.activation, self.hhrelu_delta)
        mean = jnp.asarray(self.mean, x.dtype)
        std = jnp.asarray(self.std, x.dtype)
        h = (x - mean) / std
        h = _conv3x3(int(self.widths[0]), 1, "stem")(h)
        n = (self.depth - 2) // 6
        for s, (width, stride) in enumerate(zip(self.widths, self.strides, strict=True)):
            for b in range(n):
                h = PreActBlock(int(width), int(stride) if b == 0 else 1, self.activation,
                                self.hhrelu_delta, self.axis_name,
                                name=f"stage{s + 1}_block{b}")(h, train)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.axis_name, name="final_bn")(h)
        h = act(h)
        if h.shape[1:3] != (8, 8):
            raise ValueError(f"`x` must reduce to 8×8 maps before the 8×8 average pooling (32×32 "
                             f"inputs for strides (1, 2, 2)); got input shape {tuple(x.shape)}.")
        h = nn.avg_pool(h, (8, 8), strides=(8, 8), padding="VALID")
        h = nn.Conv(self.num_classes, (1, 1), use_bias=True,
                    kernel_init=nn.initializers.he_uniform(), name="classifier")(h)
        return h.reshape((h.shape[0], self.num_classes))
