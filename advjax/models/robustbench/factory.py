"""``build(arch)`` and ``load_checkpoint(paths, arch=)``: architecture names to Flax modules.

Architecture names (case-insensitive; ``WRN`` is accepted for ``WideResNet``):

- ``WideResNet-{depth}-{k}`` (classic RobustBench/TRADES WRN: 28-10, 34-10, 34-20, 70-16, ...);
- ``DMWideResNet-{depth}-{k}[-relu|-silu]`` (DeepMind; default ReLU);
- ``DMPreActResNet-{18|34}[-relu|-silu]``;
- ``PreActResNet-18``; ``ResNet-{18|34|50|101|152}`` (CIFAR variants);
- ``ResNet-{18|34|50|101|152}-imagenet``, ``WideResNet-50-2-imagenet`` (torchvision layout);
- ``ConvNeXt-{T|S|B|L}`` and ``ViT-{Ti|S|B|L}[-{patch}]`` / ``DeiT-{Ti|S|B}`` (timm layout; ViT
  normalises with 0.5/0.5, DeiT with the ImageNet statistics, as timm's ``default_cfg``).
  Swin is not implemented.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

from advjax.models.robustbench.checkpoint import (
    DEFAULT_STUBS,
    read_state_dict,
    variables_from_state_dict,
)
from advjax.models.robustbench.convnext import CONVNEXT_SIZES, ConvNeXt
from advjax.models.robustbench.dm_wide_resnet import DMPreActResNet, DMWideResNet
from advjax.models.robustbench.ensemble import Ensemble
from advjax.models.robustbench.resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetResNet,
    PreActResNet,
    ResNet,
)
from advjax.models.robustbench.vit import VIT_SIZES, ViT
from advjax.models.robustbench.wide_resnet import WideResNet


def _wrn(m: re.Match, **kw: Any) -> nn.Module:
    return WideResNet(depth=int(m["depth"]), widen_factor=int(m["k"]), **kw)


def _act_of(m: re.Match) -> str:
    """``relu`` (default) or ``silu`` (also spelt ``swish``, DeepMind's name)."""
    return {"swish": "silu"}.get(m["act"] or "relu", m["act"] or "relu")


def _dm_wrn(m: re.Match, **kw: Any) -> nn.Module:
    return DMWideResNet(depth=int(m["depth"]), width=int(m["k"]), activation=_act_of(m), **kw)


def _dm_preact(m: re.Match, **kw: Any) -> nn.Module:
    return DMPreActResNet(depth=int(m["depth"]), activation=_act_of(m), **kw)


def _preact(m: re.Match, **kw: Any) -> nn.Module:
    del m
    return PreActResNet(num_blocks=(2, 2, 2, 2), **kw)


def _resnet(m: re.Match, **kw: Any) -> nn.Module:
    return ResNet(depth=int(m["depth"]), **kw)


def _imagenet_resnet(m: re.Match, **kw: Any) -> nn.Module:
    kw.setdefault("num_classes", 1000)
    return ImageNetResNet(depth=int(m["depth"]), **kw)


def _imagenet_wrn(m: re.Match, **kw: Any) -> nn.Module:
    kw.setdefault("num_classes", 1000)
    return ImageNetResNet(depth=int(m["depth"]), width_per_group=64 * int(m["k"]), **kw)


def _convnext(m: re.Match, **kw: Any) -> nn.Module:
    depths, dims = CONVNEXT_SIZES[m["size"].upper()]
    kw.setdefault("num_classes", 1000)
    kw.setdefault("depths", depths)
    kw.setdefault("dims", dims)
    return ConvNeXt(**kw)


def _vit(m: re.Match, **kw: Any) -> nn.Module:
    size = {"ti": "Ti", "s": "S", "b": "B", "l": "L"}[m["size"]]
    dim, depth, heads = VIT_SIZES[size]
    kw.setdefault("num_classes", 1000)
    if m["family"] == "deit":  # DeiT's default_cfg normalises with the ImageNet statistics
        kw.setdefault("mean", IMAGENET_MEAN)
        kw.setdefault("std", IMAGENET_STD)
    for key, value in (("patch_size", int(m["patch"] or 16)), ("dim", dim), ("depth", depth),
                       ("heads", heads)):
        kw.setdefault(key, value)
    return ViT(**kw)


# (pattern, constructor(match, **kwargs)); the first full match wins.
ARCHITECTURE_PATTERNS: list[tuple[str, Callable[..., nn.Module]]] = [
    (r"(?:wideresnet|wrn)-(?P<depth>\d+)-(?P<k>\d+)-imagenet", _imagenet_wrn),
    (r"resnet-(?P<depth>\d+)-imagenet", _imagenet_resnet),
    (r"(?:wideresnet|wrn)-(?P<depth>\d+)-(?P<k>\d+)", _wrn),
    (r"dm(?:wideresnet|wrn)-(?P<depth>\d+)-(?P<k>\d+)(?:-(?P<act>relu|silu|swish))?", _dm_wrn),
    (r"dmpreactresnet-(?P<depth>\d+)(?:-(?P<act>relu|silu|swish))?", _dm_preact),
    (r"preactresnet-18", _preact),
    (r"resnet-(?P<depth>\d+)", _resnet),
    (r"convnext-(?P<size>[tsbl])", _convnext),
    (r"(?P<family>vit|deit)-(?P<size>ti|s|b|l)(?:-(?P<patch>\d+))?", _vit),
]

EXAMPLE_ARCHITECTURES = (
    "WideResNet-28-10", "WideResNet-34-10", "WideResNet-34-20", "WideResNet-70-16",
    "DMWideResNet-28-10", "DMWideResNet-70-16-silu", "DMWideResNet-106-16-silu",
    "DMPreActResNet-18", "DMPreActResNet-18-silu", "PreActResNet-18", "ResNet-18", "ResNet-50",
    "ResNet-50-imagenet", "WideResNet-50-2-imagenet", "ConvNeXt-T", "ConvNeXt-B", "ConvNeXt-L",
    "ViT-B-16", "ViT-S-16", "DeiT-S", "DeiT-B",
)


def build(arch: str, *, num_classes: int | None = None, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, **kwargs: Any) -> nn.Module:
    """The Flax module of architecture ``arch`` (see the module docstring for the names).

    Args:
      arch: architecture name, e.g. ``"WideResNet-28-10"``, ``"DMWideResNet-70-16-silu"``,
        ``"PreActResNet-18"``, ``"ResNet-50-imagenet"``.
      num_classes: logits ``K`` (default: the architecture's, 10 for CIFAR, 1000 for ImageNet).
      mean, std: input normalisation inside the model; ``None`` keeps the architecture's default
        (none for the classic WRN and ResNets, CIFAR-10 statistics for DeepMind's models, ImageNet
        statistics for the ImageNet ResNets). Pass ``(0, 0, 0)`` and ``(1, 1, 1)`` for none.
      **kwargs: further attributes of the module (e.g. ``axis_name``, ``padding``, ``bias_last``).

    Returns:
      An unbound linen module mapping NHWC ``(B, H, W, C)`` in [0, 1] to logits ``(B, K)``.

    Raises:
      ValueError: an unknown name (the message lists examples of known ones).
    """
    if not isinstance(arch, str):
        raise TypeError(f"`arch` must be a string; got {type(arch).__name__}.")
    if (mean is None) != (std is None):
        raise ValueError("`mean` and `std` must be given together (or both left None).")
    kw = dict(kwargs)
    if num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"`num_classes` must be >= 1; got {num_classes}.")
        kw["num_classes"] = int(num_classes)
    if mean is not None:
        kw["mean"], kw["std"] = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    name = arch.strip().lower().replace("_", "-")
    for pattern, make in ARCHITECTURE_PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return make(m, **kw)
    raise ValueError(f"unknown architecture {arch!r}; known forms include "
                     f"{', '.join(EXAMPLE_ARCHITECTURES)}.")


def load_checkpoint(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                    arch: str, num_classes: int | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    stubs: Sequence[tuple[str, str]] = DEFAULT_STUBS,
                    **kwargs: Any) -> tuple[nn.Module, dict[str, Any], tuple[str, ...]]:
    """Build ``arch`` and load its weights from one checkpoint file or an ensemble of files.

    Args:
      path_or_paths: one ``torch.save`` file, or several (an ensemble: one member per file, its
        logits averaged by :class:`Ensemble`).
      arch: architecture name (see :func:`build`); every file holds this architecture.
      num_classes: as in :func:`build`.
      mean, std: input normalisation; ``None`` takes it from the checkpoint's ``normalize_model``
        wrapper when there is one, else the architecture's default.
      stubs: harmless pickled globals read as inert placeholders (see
        :func:`advjax.models.robustbench.read_state_dict`); any other global is refused.
      **kwargs: further module attributes (see :func:`build`).

    Returns:
      ``(module, variables, sha256s)``: the module, its ``{"params", "batch_stats"}`` variables
      (float32 numpy) and the hex SHA-256 of each file read, in order.

    Raises:
      ValueError: naming the file, for a file that is not a checkpoint (e.g. an HTML page saved
        by a failed download), or for keys / shapes that do not fit ``arch``.
    """
    single = isinstance(path_or_paths, (str, os.PathLike))
    paths = [path_or_paths] if single else list(path_or_paths)
    if not paths:
        raise ValueError("`path_or_paths` must name at least one checkpoint file.")
    members, variables, shas = [], [], []
    for path in paths:
        state, info = read_state_dict(path, stubs=stubs)
        m_mean, m_std = (mean, std) if mean is not None else (info["mean"], info["std"])
        module = build(arch, num_classes=num_classes, mean=m_mean, std=m_std, **kwargs)
        try:
            variables.append(variables_from_state_dict(module, state))
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)!r}: {err}") from None
        members.append(module)
        shas.append(info["sha256"])
    if single:
        return members[0], variables[0], tuple(shas)
    ensemble = Ensemble(tuple(members))
    merged: dict[str, Any] = {}
    for i, v in enumerate(variables):
        for collection, tree in v.items():
            merged.setdefault(collection, {})[f"members_{i}"] = tree
    return ensemble, merged, tuple(shas)
