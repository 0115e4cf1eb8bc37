"""Vision Transformer / DeiT (Dosovitskiy et al. 2021, Touvron et al. 2021) in timm's layout.

``patch_embed.proj`` (``p×p/p`` convolution, bias) → tokens ``(B, N, D)`` with ``cls_token``
prepended and ``pos_embed`` added → ``blocks.{i}``: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``
(``attn.qkv`` one fused ``D → 3D`` linear split as ``(3, heads, D / heads)``, softmax of
``q kᵀ / √(D / heads)``, ``attn.proj``; ``mlp.fc1`` → exact GELU → ``mlp.fc2``) → ``norm`` → the
class token → ``head``. LayerNorm eps 1e-6, two-pass variance. The input normalisation (timm's
``default_cfg`` mean/std: 0.5 for the original ViTs, ImageNet statistics for DeiT) is inside the
model. Sizes (D, depth, heads): Ti (192, 12, 3), S (384, 12, 6), B (768, 12, 12), L (1024, 24, 16).

The Lipschitz graph walk refuses these models by design: attention multiplies two
input-dependent values (``q kᵀ``, ``softmax · v``), which has no global Lipschitz constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models._validate import check_images
from advjax.models.robustbench._layers import act, conv, dense, normalise
from advjax.models.robustbench.convnext import layer_norm

Array = jax.Array

VIT_SIZES = {"Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16)}
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


class _Attention(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, n, d = x.shape
        hd = d // self.heads
        qkv = dense(3 * d, "qkv")(x).reshape(b, n, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, hd)
        attn = jax.nn.softmax(jnp.einsum("bhnd,bhmd->bhnm", q, k) * hd ** -0.5, axis=-1)
        out = jnp.einsum("bhnm,bhmd->bhnd", attn, v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return dense(d, "proj")(out)


class _Block(nn.Module):
    dim: int
    heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x + _Attention(self.dim, self.heads, name="attn")(layer_norm("norm1")(x))
        h = dense(int(self.dim * self.mlp_ratio), "mlp.fc1")(layer_norm("norm2")(x))
        return x + dense(self.dim, "mlp.fc2")(act("gelu")(h))


class ViT(nn.Module):
    """timm's ``VisionTransformer`` (class token, learned position embedding, pre-norm blocks).

    Attributes:
      patch_size: ``p`` (16); image_size: ``H = W`` (224), a multiple of ``p``.
      dim: embedding width ``D``; depth: number of blocks; heads: attention heads.
      mlp_ratio: hidden width of the MLP over ``D`` (4).
      num_classes: logits ``K`` (1000).
      mean, std: input normalisation inside the model (0.5 / 0.5 by default, as timm's ViTs).
    """

    patch_size: int = 16
    image_size: int = 224
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    mean: Sequence[float] | None = VIT_MEAN
    std: Sequence[float] | None = VIT_STD

    input_size: ClassVar[int] = 224

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        """Logits ``(B, K)`` of NHWC images ``x`` ``(B, image_size, image_size, 3)`` in [0, 1]."""
        del train
        check_images(x)
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"`x` must be {self.image_size}×{self.image_size} (the position "
                             f"embedding's grid); got {tuple(x.shape)}.")
        if self.image_size % self.patch_size or self.dim % self.heads:
            raise ValueError("`image_size` must be a multiple of `patch_size`, `dim` of `heads`.")
        h = normalise(x, self.mean, self.std)
        h = conv(self.dim, self.patch_size, "patch_embed.proj", strides=self.patch_size,
                 use_bias=True)(h)
        b = h.shape[0]
        h = h.reshape(b, -1, self.dim)  # row-major over (H, W): PyTorch's flatten(2).transpose
        n = h.shape[1]
        init = nn.initializers.normal(0.02)
        cls = self.param("cls_token", init, (1, 1, self.dim))
        pos = self.param("pos_embed", init, (1, n + 1, self.dim))
        h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(h.dtype), h], axis=1)
        h = h + pos
        for i in range(self.depth):
            h = _Block(self.dim, self.heads, self.mlp_ratio, name=f"blocks.{i}")(h)
        h = layer_norm("norm")(h)
        return dense(self.num_classes, "head")(h[:, 0])
