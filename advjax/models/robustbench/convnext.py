"""ConvNeXt (Liu et al. 2022) in timm's layout, as RobustBench's ImageNet ConvNeXt models hold it.

``stem.0`` 4×4/4 convolution (bias) → ``stem.1`` LayerNorm over channels → four stages; stage
``i > 0`` starts with ``downsample.0`` (LayerNorm) → ``downsample.1`` (2×2/2 convolution, bias);
then ``blocks.{j}``: ``x + gamma · fc2(GELU(fc1(LayerNorm(dwconv7×7(x)))))`` (``conv_dw``
depthwise 7×7 with padding 3 and bias, channels-last ``norm``, ``mlp.fc1`` / ``mlp.fc2``, layer
scale ``gamma``) → global average pooling → ``head.norm`` (LayerNorm) → ``head.fc``. Every
LayerNorm has eps 1e-6 and the two-pass variance (PyTorch's); GELU is the exact erf form. The
ImageNet input normalisation is inside the model. Sizes: T (3-3-9-3, 96..768), S (3-3-27-3,
96..768), B (3-3-27-3, 128..1024), L (3-3-27-3, 192..1536).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models._validate import check_images
from advjax.models.robustbench._layers import act, conv, dense, normalise
from advjax.models.robustbench.resnet import IMAGENET_MEAN, IMAGENET_STD

Array = jax.Array

CONVNEXT_SIZES = {
    "T": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "S": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "B": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "L": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def layer_norm(name: str, eps: float = 1e-6) -> nn.LayerNorm:
    """``nn.LayerNorm(C, eps)`` over the last axis with PyTorch's two-pass variance."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class _ConvNeXtBlock(nn.Module):
    dim: int
    layer_scale_init: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = conv(self.dim, 7, "conv_dw", padding=3, use_bias=True, groups=self.dim)(x)
        h = layer_norm("norm")(h)
        h = dense(4 * self.dim, "mlp.fc1")(h)
        h = dense(self.dim, "mlp.fc2")(act("gelu")(h))
        gamma = self.param("gamma", nn.initializers.constant(self.layer_scale_init), (self.dim,))
        return x + h * gamma


class ConvNeXt(nn.Module):
    """timm's ``ConvNeXt`` (``convnext_tiny`` ... ``convnext_large``) with input normalisation.

    Attributes:
      depths: blocks per stage; dims: channels per stage.
      num_classes: logits ``K`` (1000).
      layer_scale_init: initial layer-scale ``gamma`` (1e-6; only matters before import).
      mean, std: input normalisation inside the model (ImageNet statistics by default).
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    num_classes: int = 1000
    layer_scale_init: float = 1e-6
    mean: Sequence[float] | None = IMAGENET_MEAN
    std: Sequence[float] | None = IMAGENET_STD

    input_size: ClassVar[int] = 224

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, H, W, 3)`` in [0, 1] (``H, W`` multiples
        of 32; 224 for ImageNet). ``train`` is accepted for a uniform interface (no BatchNorm,
        no dropout here)."""
        del train
        if len(self.depths) != 4 or len(self.dims) != 4:
            raise ValueError(f"`depths` and `dims` must have four entries; got {self.depths}, "
                             f"{self.dims}.")
        check_images(x)
        if x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"`x` height and width must be multiples of 32; got {x.shape}.")
        h = normalise(x, self.mean, self.std)
        h = conv(int(self.dims[0]), 4, "stem.0", strides=4, use_bias=True)(h)
        h = layer_norm("stem.1")(h)
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims, strict=True)):
            if i > 0:
                h = layer_norm(f"stages.{i}.downsample.0")(h)
                h = conv(int(dim), 2, f"stages.{i}.downsample.1", strides=2, use_bias=True)(h)
            for j in range(int(depth)):
                h = _ConvNeXtBlock(int(dim), self.layer_scale_init,
                                   name=f"stages.{i}.blocks.{j}")(h)
        h = jnp.mean(h, axis=(1, 2))
        h = layer_norm("head.norm")(h)
        return dense(self.num_classes, "head.fc")(h)
