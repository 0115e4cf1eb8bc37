"""Flax model zoo, checkpoint import and adapters to per-example ``logits_fn``.

Models (linen; batched NHWC inputs in [0, 1] → logits ``(B, K)``):

- Szegedy et al. (2014) MNIST nets: :class:`FC10`, :class:`MLP`, :class:`AutoencoderClassifier`,
  :func:`szegedy_model` (Table-1 names), :data:`SZEGEDY_WEIGHT_DECAY`.
- :class:`MnistCNN` and advertorch's :class:`LeNet5` (:func:`load_lenet5` imports its weights).
- :class:`PreActResNet` (Woods et al. 2019 pre-activation ResNet-44) and :func:`load_woods2019`
  (their released PyTorch checkpoints, read without torch and without executing pickled code).
- Activations: :func:`half_huber_relu`, :func:`activation`; pooling: :func:`max_pool_2x2`.

RobustBench architectures (``advjax.models.robustbench``, PyTorch-exact, torch-free checkpoint
import): :class:`WideResNet`, :class:`DMWideResNet`, :class:`DMPreActResNet`,
:class:`RobustBenchResNet`, :class:`RobustBenchPreActResNet`, :class:`ImageNetResNet`,
:class:`ConvNeXt`, :class:`ViT` (also DeiT), the factory
:func:`build_robustbench` and :func:`load_robustbench_checkpoint`; :func:`load_torch` reads either
``torch.save`` format. RobustBench's leaderboard entries by name: :func:`load_robustbench`
(architecture, normalisation and published numbers from the registry of
``advjax.models.robustbench_registry``, around the user's checkpoint files).

Masked defences with known truth (``advjax.models.masked``): input quantisation, thermometer
encoding, argmax-inside, k-WTA (:class:`KWTALeNet5`) and the zero-gradient twin, each with its
BPDA twin (:func:`advjax.attacks.bpda`) for testing evaluations that must see through masked
gradients.

Adapters: :func:`linen_logits_fn` (``logits_fn(x)`` of one example), :func:`batched`,
:func:`predict`.

Flax NNX: :func:`nnx_logits_fn` (any ``nnx.Module`` → per-example ``logits_fn``, eval mode by
default), :func:`nnx_apply_fn` (a linen-style pure apply, used by NNX training), the NNX twins
:class:`NNXMnistCNN`, :class:`NNXLeNet5`, :class:`NNXPreActResNet` and the weight converters
:func:`nnx_from_linen`, :func:`linen_from_nnx`, :func:`set_nnx_variables`, :func:`nnx_variables`.
"""

from advjax.models import masked
from advjax.models.activations import ACTIVATIONS, activation, half_huber_relu
from advjax.models.adapters import batched, linen_logits_fn, linen_logits_fn_batch_stats, predict
from advjax.models.advertorch import (
    LENET5_VARIANTS,
    lenet5_variables_from_torch,
    load_lenet5,
    load_lenet5_state,
)
from advjax.models.cnn import LeNet5, MnistCNN
from advjax.models.masked import KWTALeNet5, MaskedDefence
from advjax.models.nnx_adapters import nnx_apply_fn, nnx_logits_fn, nnx_variables, with_mode
from advjax.models.nnx_convert import linen_from_nnx, nnx_from_linen, set_nnx_variables
from advjax.models.nnx_zoo import NNXLeNet5, NNXMnistCNN, NNXPreActBlock, NNXPreActResNet
from advjax.models.pooling import max_pool_2x2
from advjax.models.resnet import CIFAR10_MEAN, CIFAR10_STD, PreActBlock, PreActResNet
from advjax.models.robustbench import (
    ConvNeXt,
    DMPreActResNet,
    DMWideResNet,
    ImageNetResNet,
    ViT,
    WideResNet,
)
from advjax.models.robustbench import PreActResNet as RobustBenchPreActResNet
from advjax.models.robustbench import ResNet as RobustBenchResNet
from advjax.models.robustbench import build as build_robustbench
from advjax.models.robustbench import load_checkpoint as load_robustbench_checkpoint
from advjax.models.robustbench_registry import load_robustbench
from advjax.models.szegedy import (
    FC10,
    MLP,
    SZEGEDY_MODELS,
    SZEGEDY_WEIGHT_DECAY,
    AutoencoderClassifier,
    szegedy_model,
)
from advjax.models.torch_legacy import (
    RestrictedUnpickler,
    StubGlobal,
    load_legacy_torch,
    load_torch,
)
from advjax.models.woods2019 import (
    WOODS2019_CHECKPOINTS,
    Woods2019Checkpoint,
    load_woods2019,
    load_woods2019_checkpoint,
    load_woods2019_metadata,
    woods2019_variables_from_state,
)

__all__ = [
    "ACTIVATIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FC10",
    "KWTALeNet5",
    "LENET5_VARIANTS",
    "MLP",
    "SZEGEDY_MODELS",
    "SZEGEDY_WEIGHT_DECAY",
    "WOODS2019_CHECKPOINTS",
    "AutoencoderClassifier",
    "ConvNeXt",
    "DMPreActResNet",
    "DMWideResNet",
    "ImageNetResNet",
    "LeNet5",
    "MaskedDefence",
    "MnistCNN",
    "NNXLeNet5",
    "NNXMnistCNN",
    "NNXPreActBlock",
    "NNXPreActResNet",
    "PreActBlock",
    "PreActResNet",
    "RestrictedUnpickler",
    "RobustBenchPreActResNet",
    "RobustBenchResNet",
    "StubGlobal",
    "ViT",
    "WideResNet",
    "Woods2019Checkpoint",
    "activation",
    "batched",
    "build_robustbench",
    "half_huber_relu",
    "lenet5_variables_from_torch",
    "linen_logits_fn",
    "linen_from_nnx",
    "linen_logits_fn_batch_stats",
    "masked",
    "load_legacy_torch",
    "load_lenet5",
    "load_lenet5_state",
    "load_robustbench",
    "load_robustbench_checkpoint",
    "load_torch",
    "load_woods2019",
    "load_woods2019_checkpoint",
    "load_woods2019_metadata",
    "max_pool_2x2",
    "nnx_apply_fn",
    "nnx_from_linen",
    "nnx_logits_fn",
    "nnx_variables",
    "predict",
    "set_nnx_variables",
    "szegedy_model",
    "with_mode",
    "woods2019_variables_from_state",
]
