"""Build the RobustBench architecture fixtures: small PyTorch models, their checkpoints and logits.

Run with a Python that has PyTorch (CPU is enough), pointing ``--defs`` at RobustBench's own
architecture definitions, so the truth is RobustBench's code, not a re-implementation::

    mkdir -p /tmp/rbdefs && for f in wide_resnet dm_wide_resnet resnet utils_architectures; do
      git -C <robustbench checkout> show 78fcc9e48a07a861268f295a777b975f25155964:\\
    robustbench/model_zoo/architectures/$f.py > /tmp/rbdefs/rb_$f.py; done
    python benchmarks/robustbench_fixtures.py --defs /tmp/rbdefs \\
        --out tests/models/fixtures/robustbench

(RobustBench, https://github.com/RobustBench/robustbench, MIT licence, Copyright (c) 2020 Francesco
Croce, Maksym Andriushchenko, Vikash Sehwag; ``dm_wide_resnet.py`` is DeepMind's, Apache 2.0. Their
code is imported from ``--defs`` at run time and is not part of this repository.)

For each fixture the script builds the architecture at a SMALL width/depth with seeded random
weights, randomises every BatchNorm's affine parameters and running statistics (so eval-mode
BatchNorm is tested, not the identity of a fresh layer), saves the checkpoint with ``torch.save`` in
the layout named by the fixture (plain state dict, ``DataParallel`` ``module.`` prefix, nesting
under ``state_dict`` / ``model_state_dict``, RobustBench's ``normalize_model`` wrapper, the legacy
non-zip format) and writes ``<name>.npz`` with fixed seeded NHWC inputs ``x`` in [0, 1] and the
PyTorch eval-mode logits. ``manifest.json`` records, per fixture, the architecture name and keyword
arguments of :func:`advjax.models.robustbench.build`, the file's SHA-256 and the versions of
PyTorch (torchvision, timm) that wrote it; and the parameter counts of the FULL-size
architectures, counted from the PyTorch definitions on the ``meta`` device (no allocation).
``--only a,b`` rebuilds just those fixtures and updates their entries of an existing manifest.

The torchvision-layout fixtures (ImageNet ResNet-50, Wide-ResNet-50-2) are built from torchvision's
own ``ResNet`` / ``Bottleneck`` (``torchvision.models.resnet``, BSD-3-Clause) and the timm-layout
ones (ConvNeXt, ViT; DeiT is the same ``VisionTransformer`` class) from timm's own ``ConvNeXt`` and
``VisionTransformer`` (``timm.models``, Apache 2.0), so this script also needs ``torchvision`` and
``timm`` (tested: torch 2.14.1, torchvision 0.29.1, timm 1.0.31; their versions go into the
manifest). Only the ResNets need a change to the real class: torchvision hard-codes the stage widths
64/128/256/512, which :func:`small_tv_resnet` replaces by small ones (see there). The full-size
counts of these families are those of ``torchvision.models.resnet50`` / ``wide_resnet50_2`` and of
timm's ``convnext_tiny`` ... ``vit_large_patch16_224``, ``deit_small_patch16_224`` /
``deit_base_patch16_224`` (``pretrained=False``, nothing downloaded).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import timm
import timm.models.convnext as timm_convnext_mod
import timm.models.vision_transformer as timm_vit_mod
import torch
import torchvision
import torchvision.models.resnet as tv_resnet
from torch import nn

N_INPUTS = 4


def _import(defs: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, defs / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------ torchvision / timm layouts: their own classes
def small_tv_resnet(layers, widths, num_classes, width_per_group=64):
    """torchvision's ``ResNet(Bottleneck, layers, num_classes, width_per_group=...)`` with the stage
    ``planes`` 64/128/256/512 (hard-coded in its ``__init__``) replaced by ``widths``: the model is
    built by torchvision's ``__init__`` on the meta device, then the stem, the four stages (by its
    own ``_make_layer`` and ``Bottleneck``) and ``fc`` are rebuilt at the small widths; its
    ``forward`` is used unchanged. (``ResNet(Bottleneck, [1, 1, 1, 1], ...)`` at torchvision's own
    widths would do without the rebuild, but its 1×1 shortcuts alone hold 2.8 M parameters,
    ~11 MB a fixture; the full-size models are checked by parameter count instead.)"""
    with torch.device("meta"):
        m = tv_resnet.ResNet(tv_resnet.Bottleneck, list(layers), num_classes=num_classes,
                             width_per_group=width_per_group)
    m.inplanes, m.dilation = widths[0], 1
    m.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    m.bn1 = m._norm_layer(widths[0])
    for i, (planes, n, stride) in enumerate(zip(widths, layers, (1, 2, 2, 2), strict=True)):
        setattr(m, f"layer{i + 1}", m._make_layer(tv_resnet.Bottleneck, planes, n, stride=stride))
    m.fc = nn.Linear(widths[3] * tv_resnet.Bottleneck.expansion, num_classes)
    assert not any(t.is_meta for t in (*m.parameters(), *m.buffers()))
    return m


def timm_convnext(depths, dims, num_classes):
    """timm's ``ConvNeXt`` class (``convnext_tiny`` ... ``convnext_large`` are this class)."""
    return timm_convnext_mod.ConvNeXt(depths=tuple(depths), dims=tuple(dims),
                                      num_classes=num_classes)


def timm_vit(img_size, patch, dim, depth, heads, num_classes):
    """timm's ``VisionTransformer`` class (the ``vit_*`` and ``deit_*`` models are this class)."""
    return timm_vit_mod.VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim,
                                          depth=depth, num_heads=heads, num_classes=num_classes)


# ------------------------------------------- RobustBench models at small widths (their blocks)
def small_dm_preact(rb_dm, widths, activation_fn, num_classes=10):
    """``DMPreActResNet(depth=18)`` with stage widths ``widths``: RobustBench's ``__init__`` with
    64/128/256/512 replaced; its ``_PreActBlock`` and ``forward`` are used unchanged."""
    m = rb_dm.DMPreActResNet.__new__(rb_dm.DMPreActResNet)
    nn.Module.__init__(m)
    m.register_buffer("mean", torch.tensor(rb_dm.CIFAR10_MEAN).view(3, 1, 1), persistent=False)
    m.register_buffer("std", torch.tensor(rb_dm.CIFAR10_STD).view(3, 1, 1), persistent=False)
    m.mean_cuda = m.std_cuda = None
    m.padding = 0
    m.conv_2d = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
    ins = (widths[0], *widths[:3])
    for i, (cin, cout, stride) in enumerate(zip(ins, widths, (1, 2, 2, 2), strict=True)):
        setattr(m, f"layer_{i}", m._make_layer(cin, cout, 2, stride, activation_fn))
    m.batchnorm = nn.BatchNorm2d(widths[3])
    m.relu = activation_fn()
    m.logits = nn.Linear(widths[3], num_classes)
    return m


def small_resnet(rb_resnet, cls, block, num_blocks, widths, num_classes=10, **kw):
    """RobustBench's ``ResNet`` / ``PreActResNet`` with stage widths ``widths`` (their
    ``_make_layer``, blocks and ``forward``; only the hard-coded 64/128/256/512 are replaced)."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    m.in_planes = widths[0]
    for k, v in kw.items():
        setattr(m, k, v)
    m.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
    if cls is rb_resnet.ResNet:
        m.bn1 = nn.BatchNorm2d(widths[0])
    for i, (planes, stride) in enumerate(zip(widths, (1, 2, 2, 2), strict=True)):
        setattr(m, f"layer{i + 1}", m._make_layer(block, planes, num_blocks[i], stride))
    if kw.get("bn_before_fc"):
        m.bn = nn.BatchNorm2d(widths[3] * block.expansion)
    m.linear = nn.Linear(widths[3] * block.expansion, num_classes)
    return m


def randomise(model: nn.Module, seed: int) -> None:
    """Seeded random weights; every BatchNorm gets random affine parameters and running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.empty_like(mod.weight).uniform_(0.5, 1.5, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(
                        torch.empty_like(mod.running_var).uniform_(0.5, 1.5, generator=g))
                mod.num_batches_tracked.fill_(7)
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(torch.empty_like(mod.weight).uniform_(0.5, 1.5, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
        for name, p in model.named_parameters():  # layer scale and tokens: O(1), not 1e-6
            if name.endswith(("gamma", "cls_token", "pos_embed")):
                p.copy_(torch.empty_like(p).uniform_(0.2, 1.0, generator=g)
                        if name.endswith("gamma") else 0.5 * torch.randn(p.shape, generator=g))


def inputs(size: int, seed: int) -> np.ndarray:
    """``(N_INPUTS, size, size, 3)`` float32 in [0, 1] (NHWC; PyTorch gets the NCHW transpose)."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (N_INPUTS, size, size, 3)).astype(
            np.float32)


def logits_of(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def fixtures(defs: Path):
    """``(name, arch, build kwargs, model, how it is saved, input size)`` of every fixture."""
    rb_wrn = _import(defs, "rb_wide_resnet")
    rb_dm = _import(defs, "rb_dm_wide_resnet")
    rb_res = _import(defs, "rb_resnet")
    rb_utils = _import(defs, "rb_utils_architectures")
    imnet_mean, imnet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    preact_mean, preact_std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    small, tiny = (4, 8, 16, 32), (1, 2, 4, 8)
    return [
        ("wrn_10_1", "WideResNet-10-1", {}, rb_wrn.WideResNet(depth=10, widen_factor=1),
         "plain", 32),
        ("dmwrn_10_1_silu", "DMWideResNet-10-1-silu", {},
         rb_dm.DMWideResNet(depth=10, width=1, activation_fn=rb_dm.Swish),
         "module_model_state_dict", 32),
        ("dmpreact18_silu", "DMPreActResNet-18-silu", {"widths": small},
         small_dm_preact(rb_dm, small, rb_dm.Swish), "plain", 32),
        ("preact18", "PreActResNet-18", {"widths": small},
         rb_utils.normalize_model(small_resnet(rb_res, rb_res.PreActResNet, rb_res.PreActBlock,
                                               (2, 2, 2, 2), small, bn_before_fc=False,
                                               out_shortcut=False), preact_mean, preact_std),
         "normalize_model", 32),
        ("resnet18", "ResNet-18", {"widths": small},
         small_resnet(rb_res, rb_res.ResNet, rb_res.BasicBlock, (2, 2, 2, 2), small),
         "positional_normalizer", 32),
        ("resnet50", "ResNet-50", {"widths": tiny},
         small_resnet(rb_res, rb_res.ResNet, rb_res.Bottleneck, (3, 4, 6, 3), tiny),
         "legacy_state_dict", 32),
        ("resnet50_imagenet", "ResNet-50-imagenet", {"widths": tiny, "num_classes": 10},
         rb_utils.normalize_model(small_tv_resnet((3, 4, 6, 3), tiny, num_classes=10),
                                  imnet_mean, imnet_std), "normalize_model", 64),
        ("wrn50_2_imagenet", "WideResNet-50-2-imagenet", {"widths": tiny, "num_classes": 10},
         rb_utils.normalize_model(
                 small_tv_resnet((3, 4, 6, 3), tiny, num_classes=10, width_per_group=128),
                 imnet_mean, imnet_std), "inner_of_normalize_model", 64),
        ("convnext_small", "ConvNeXt-T", {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32),
                                          "num_classes": 10},
         rb_utils.normalize_model(timm_convnext((1, 1, 2, 1), (8, 16, 24, 32), num_classes=10),
                                  imnet_mean, imnet_std), "normalize_model", 64),
        ("vit_small", "ViT-S-16", {"patch_size": 8, "image_size": 32, "dim": 32, "depth": 2,
                                   "heads": 4, "num_classes": 10},
         rb_utils.normalize_model(timm_vit(32, 8, 32, 2, 4, num_classes=10), (0.5,) * 3,
                                  (0.5,) * 3), "normalize_model", 32),
        # a second member (other weights, same inputs) for the ensemble test
        ("vit_small_b", "ViT-S-16", {"patch_size": 8, "image_size": 32, "dim": 32, "depth": 2,
                                     "heads": 4, "num_classes": 10},
         rb_utils.normalize_model(timm_vit(32, 8, 32, 2, 4, num_classes=10), (0.5,) * 3,
                                  (0.5,) * 3), "normalize_model", 32),
    ]


def save(model: nn.Module, how: str, path: Path) -> None:
    sd = model.state_dict()
    if how == "plain":
        torch.save(sd, path)
    elif how == "module_model_state_dict":  # DataParallel + a training checkpoint
        torch.save({"model_state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
                    "epoch": 3}, path)
    elif how == "legacy_state_dict":
        torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)
    elif how == "normalize_model":  # normalize.mean / normalize.std / model.<key>
        torch.save(sd, path)
    elif how == "inner_of_normalize_model":  # weights only; the ImageNet default normalisation
        torch.save(model.model.state_dict(), path)
    elif how == "positional_normalizer":  # the older nn.Sequential(normalizer, model) of the zoo
        mean = torch.tensor((0.5, 0.25, 0.75)).view(1, 3, 1, 1)
        std = torch.tensor((0.2, 0.3, 0.4)).view(1, 3, 1, 1)
        out = OrderedDict([("model.0.mean", mean), ("model.0.std", std)])
        out.update((f"model.1.{k}", v) for k, v in sd.items())
        torch.save(out, path)
    else:
        raise ValueError(how)


TIMM_NAMES = {"ConvNeXt-T": "convnext_tiny", "ConvNeXt-S": "convnext_small",
              "ConvNeXt-B": "convnext_base", "ConvNeXt-L": "convnext_large",
              "ViT-S-16": "vit_small_patch16_224", "ViT-B-16": "vit_base_patch16_224",
              "ViT-L-16": "vit_large_patch16_224", "DeiT-S": "deit_small_patch16_224",
              "DeiT-B": "deit_base_patch16_224"}


def full_size_counts(defs: Path) -> dict[str, int]:
    """Trainable parameter counts of the full-size architectures, built on the ``meta`` device."""
    rb_wrn = _import(defs, "rb_wide_resnet")
    rb_dm = _import(defs, "rb_dm_wide_resnet")
    rb_res = _import(defs, "rb_resnet")
    makers = {
        "WideResNet-28-10": lambda: rb_wrn.WideResNet(depth=28, widen_factor=10),
        "WideResNet-34-10": lambda: rb_wrn.WideResNet(depth=34, widen_factor=10),
        "WideResNet-34-20": lambda: rb_wrn.WideResNet(depth=34, widen_factor=20),
        "WideResNet-70-16": lambda: rb_wrn.WideResNet(depth=70, widen_factor=16),
        "DMWideResNet-28-10": lambda: rb_dm.DMWideResNet(depth=28, width=10),
        "DMWideResNet-70-16-silu": lambda: rb_dm.DMWideResNet(depth=70, width=16,
                                                              activation_fn=rb_dm.Swish),
        "DMWideResNet-106-16": lambda: rb_dm.DMWideResNet(depth=106, width=16),
        "DMPreActResNet-18": lambda: rb_dm.DMPreActResNet(depth=18),
        "PreActResNet-18": rb_res.PreActResNet18,
        "ResNet-18": rb_res.ResNet18,
        "ResNet-50": rb_res.ResNet50,
        "ResNet-50-imagenet": torchvision.models.resnet50,
        "WideResNet-50-2-imagenet": torchvision.models.wide_resnet50_2,
        # timm's registered models, pretrained=False (nothing downloaded)
        **{arch: (lambda n=n: timm.create_model(n, pretrained=False))
           for arch, n in TIMM_NAMES.items()},
    }
    counts = {}
    for name, make in makers.items():
        with torch.device("meta"):
            model = make()
        counts[name] = int(sum(p.numel() for p in model.parameters()))
    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defs", type=Path, required=True,
                    help="folder with RobustBench's rb_<module>.py definitions")
    ap.add_argument("--out", type=Path, default=Path("tests/models/fixtures/robustbench"))
    ap.add_argument("--only", default="",
                    help="comma-separated fixture names: rebuild only these and update their "
                         "entries of the existing manifest.json (the others are left as they are)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    only = {n for n in args.only.split(",") if n}
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "timm": timm.__version__}
    manifest = {"n_inputs": N_INPUTS, "fixtures": {}}
    if only:
        manifest = json.loads((args.out / "manifest.json").read_text())
        old_torch = manifest.pop("torch", None)  # older manifests: one version for all
        for entry in manifest["fixtures"].values():
            entry.setdefault("versions", {"torch": old_torch})
    manifest["full_size_params"] = full_size_counts(args.defs)
    built = fixtures(args.defs)
    if only - {f[0] for f in built}:
        raise SystemExit(f"unknown fixtures: {sorted(only - {f[0] for f in built})}")
    for i, (name, arch, kwargs, model, how, size) in enumerate(built):
        if only and name not in only:
            continue
        randomise(model, seed=100 + i)  # the seed is the fixture's index, with --only as well
        model.eval()
        x = inputs(size, seed=200 + size)  # the same inputs for every fixture of one size
        logits = logits_of(model, x)
        ckpt = args.out / f"{name}.pt"
        save(model, how, ckpt)
        if how == "positional_normalizer":  # logits of the wrapped model, as saved
            mean = np.array((0.5, 0.25, 0.75), np.float32)
            std = np.array((0.2, 0.3, 0.4), np.float32)
            logits = logits_of(model, (x - mean) / std)
        np.savez(args.out / f"{name}.npz", x=x, logits=logits.astype(np.float32))
        sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        manifest["fixtures"][name] = {"arch": arch, "kwargs": kwargs, "layout": how,
                                      "input_size": size, "sha256": sha,
                                      "params": int(sum(p.numel() for p in model.parameters())),
                                      "versions": versions}
        print(f"{name:22s} {arch:26s} {how:24s} {ckpt.stat().st_size / 1e3:8.1f} kB "
              f"logit scale {np.abs(logits).max():.3g}")
    for name, n in manifest["full_size_params"].items():
        print(f"{name:26s} {n:>12,d} parameters")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
