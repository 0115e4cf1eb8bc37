"""Architectures of the RobustBench leaderboards in Flax linen, with PyTorch-exact semantics.

One module per family (:mod:`.wide_resnet`, :mod:`.dm_wide_resnet`, :mod:`.resnet`,
:mod:`.convnext`, :mod:`.vit`; Swin is not implemented); every
module maps NHWC images ``(B, H, W, C)`` in [0, 1] to logits ``(B, K)`` with any input
normalisation inside the model, and names its submodules after the PyTorch ``state_dict`` so
:func:`load_checkpoint` imports RobustBench checkpoints without torch (:mod:`.checkpoint`).
NNX versions come from :func:`advjax.models.nnx_from_linen`.

- :func:`build` (architecture name → module), :func:`load_checkpoint` (files → module, variables,
  SHA-256s), :func:`read_state_dict`, :func:`variables_from_state_dict`, :func:`count_params`.
"""

from advjax.models.robustbench.checkpoint import (
    count_params,
    file_sha256,
    read_state_dict,
    variables_from_state_dict,
)
from advjax.models.robustbench.convnext import CONVNEXT_SIZES, ConvNeXt
from advjax.models.robustbench.dm_wide_resnet import DMPreActResNet, DMWideResNet
from advjax.models.robustbench.ensemble import Ensemble
from advjax.models.robustbench.factory import (
    ARCHITECTURE_PATTERNS,
    EXAMPLE_ARCHITECTURES,
    build,
    load_checkpoint,
)
from advjax.models.robustbench.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetResNet,
    PreActResNet,
    ResNet,
)
from advjax.models.robustbench.vit import VIT_SIZES, ViT
from advjax.models.robustbench.wide_resnet import WideResNet

__all__ = [
    "ARCHITECTURE_PATTERNS",
    "CONVNEXT_SIZES",
    "EXAMPLE_ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VIT_SIZES",
    "ConvNeXt",
    "DMPreActResNet",
    "DMWideResNet",
    "Ensemble",
    "ImageNetResNet",
    "PreActResNet",
    "ResNet",
    "ViT",
    "WideResNet",
    "build",
    "count_params",
    "file_sha256",
    "load_checkpoint",
    "read_state_dict",
    "variables_from_state_dict",
]
