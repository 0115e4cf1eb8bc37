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
arguments of :func:`advjax.models.robustbench.build`, the file's SHA-256, and the PyTorch version;
and the parameter counts of the FULL-size architectures, counted from the PyTorch definitions on
the ``meta`` device (no allocation).

The ImageNet ResNet twin (torchvision layout; torchvision is not a dependency) is written out below
after torchvision's ``resnet.py`` (BSD-3-Clause): Bottleneck v1.5 (stride on the 3×3), 7×7/2 stem,
3×3/2 max pool, ``downsample.{0,1}`` shortcut, adaptive average pooling, ``fc``.
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
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

N_INPUTS = 4


def _import(defs: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, defs / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- torchvision-layout ResNet twin
class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TVResNet(nn.Module):
    def __init__(self, layers, num_classes=1000, width_per_group=64, widths=(64, 128, 256, 512)):
        super().__init__()
        self.inplanes = widths[0]
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, n, stride) in enumerate(zip(widths, layers, (1, 2, 2, 2), strict=True)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, n, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * 4, num_classes)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * 4))
        layers = [TVBottleneck(self.inplanes, planes, stride, downsample, self.base_width)]
        self.inplanes = planes * 4
        layers += [TVBottleneck(self.inplanes, planes, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------- timm-layout ConvNeXt and ViT twins
# timm is not installable here (it needs torchvision); these follow timm's convnext.py
# (ConvNeXtBlock with conv_mlp=False, LayerNorm2d, NormMlpClassifierHead) and
# vision_transformer.py (PatchEmbed, Attention with a fused qkv, Block, token pooling) with the
# same module names, so the checkpoints have timm's keys.
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm.layers.LayerNorm2d)."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, ls_init_value=1e-6):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim))

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
        return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut


class ConvNeXtStage(nn.Module):
    def __init__(self, cin, cout, depth, downsample):
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(cin, eps=1e-6),
                                         nn.Conv2d(cin, cout, kernel_size=2, stride=2))
                           if downsample else nn.Identity())
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class NormHead(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.norm(self.global_pool(x))))


class TimmConvNeXt(nn.Module):
    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                                  LayerNorm2d(dims[0], eps=1e-6))
        ins = (dims[0], *dims[:3])
        self.stages = nn.Sequential(*[ConvNeXtStage(ins[i], dims[i], depths[i], i > 0)
                                      for i in range(4)])
        self.head = NormHead(dims[3], num_classes)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
    def __init__(self, img_size=224, patch=16, dim=768, depth=12, heads=12, num_classes=1000):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (img_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


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
         rb_utils.normalize_model(TVResNet((3, 4, 6, 3), num_classes=10, widths=tiny),
                                  imnet_mean, imnet_std), "normalize_model", 64),
        ("wrn50_2_imagenet", "WideResNet-50-2-imagenet", {"widths": tiny, "num_classes": 10},
         rb_utils.normalize_model(
                 TVResNet((3, 4, 6, 3), num_classes=10, width_per_group=128, widths=tiny),
                 imnet_mean, imnet_std), "inner_of_normalize_model", 64),
        ("convnext_small", "ConvNeXt-T", {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32),
                                          "num_classes": 10},
         rb_utils.normalize_model(TimmConvNeXt((1, 1, 2, 1), (8, 16, 24, 32), num_classes=10),
                                  imnet_mean, imnet_std), "normalize_model", 64),
        ("vit_small", "ViT-S-16", {"patch_size": 8, "image_size": 32, "dim": 32, "depth": 2,
                                   "heads": 4, "num_classes": 10},
         rb_utils.normalize_model(TimmViT(32, 8, 32, 2, 4, num_classes=10), (0.5,) * 3,
                                  (0.5,) * 3), "normalize_model", 32),
        # a second member (other weights, same inputs) for the ensemble test
        ("vit_small_b", "ViT-S-16", {"patch_size": 8, "image_size": 32, "dim": 32, "depth": 2,
                                     "heads": 4, "num_classes": 10},
         rb_utils.normalize_model(TimmViT(32, 8, 32, 2, 4, num_classes=10), (0.5,) * 3,
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
        "ResNet-50-imagenet": lambda: TVResNet((3, 4, 6, 3)),
        "WideResNet-50-2-imagenet": lambda: TVResNet((3, 4, 6, 3), width_per_group=128),
        "ConvNeXt-T": lambda: TimmConvNeXt((3, 3, 9, 3), (96, 192, 384, 768)),
        "ConvNeXt-S": lambda: TimmConvNeXt((3, 3, 27, 3), (96, 192, 384, 768)),
        "ConvNeXt-B": lambda: TimmConvNeXt((3, 3, 27, 3), (128, 256, 512, 1024)),
        "ConvNeXt-L": lambda: TimmConvNeXt((3, 3, 27, 3), (192, 384, 768, 1536)),
        "ViT-S-16": lambda: TimmViT(dim=384, depth=12, heads=6),
        "ViT-B-16": lambda: TimmViT(dim=768, depth=12, heads=12),
        "ViT-L-16": lambda: TimmViT(dim=1024, depth=24, heads=16),
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
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    manifest = {"torch": torch.__version__, "n_inputs": N_INPUTS, "fixtures": {},
                "full_size_params": full_size_counts(args.defs)}
    for i, (name, arch, kwargs, model, how, size) in enumerate(fixtures(args.defs)):
        randomise(model, seed=100 + i)
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
                                      "params": int(sum(p.numel() for p in model.parameters()))}
        print(f"{name:22s} {arch:26s} {how:24s} {ckpt.stat().st_size / 1e3:8.1f} kB "
              f"logit scale {np.abs(logits).max():.3g}")
    for name, n in manifest["full_size_params"].items():
        print(f"{name:26s} {n:>12,d} parameters")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
