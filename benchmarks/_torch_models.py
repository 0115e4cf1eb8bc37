"""PyTorch twins of advjax zoo models, for the peer benchmarks only (torch is a ``bench`` extra).

:func:`torch_preact_resnet` builds the Woods, Chen & Teuscher (2019) pre-activation ResNet
(:class:`advjax.models.PreActResNet`) as a ``torch.nn.Module`` from the Flax variables that
:func:`advjax.models.load_woods2019` gives (one checkpoint reader, no ``torch.load`` of the legacy
pickles): input normalisation inside the model, pre-activation blocks, BatchNorm with the running
statistics (eval mode, eps 1e-5), PyTorch padding 1 on every 3×3 convolution, 3×3 strided shortcut
on ``pre``, final BN → activation → 8×8 average pooling → 1×1 convolution with bias. The activation
is ReLU or the half-Huber ReLU (``x**2 / (2 delta)`` on ``(0, delta]``, ``x - delta / 2`` above),
as the module says. Inputs are NCHW images in [0, 1], un-normalised; outputs are logits ``(B, K)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812


def half_huber_relu(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Half-Huber ReLU, the same formula as :func:`advjax.models.activations.half_huber_relu`."""
    pos = torch.clamp(x, min=0.0)
    bowl = torch.clamp(pos, max=delta)
    return bowl * bowl / (2.0 * delta) + (pos - bowl)


class TorchPreActResNet(torch.nn.Module):
    """The PyTorch twin of a :class:`advjax.models.PreActResNet` with fixed (eval-mode) weights.

    Args:
      module: the Flax module (depth, widths, strides, activation, ``hhrelu_delta``, mean, std).
      variables: its ``{"params": ..., "batch_stats": ...}`` (HWIO kernels).
    """

    def __init__(self, module: Any, variables: dict[str, Any]):
        super().__init__()
        p, stats = variables["params"], variables["batch_stats"]
        if module.activation not in ("relu", "hhrelu"):
            raise ValueError(f"`module.activation` must be 'relu' or 'hhrelu'; got "
                             f"{module.activation!r}.")
        self.activation = module.activation
        self.delta = float(module.hhrelu_delta)

        def buf(name: str, a: Any) -> str:
            self.register_buffer(name, torch.tensor(np.array(a, np.float32)))
            return name

        def conv(name: str, k: Any) -> str:  # HWIO -> OIHW
            return buf(name, np.asarray(k).transpose(3, 2, 0, 1))

        def bn(name: str, sp: dict, ss: dict) -> tuple[str, ...]:
            return (buf(f"{name}_mean", ss["mean"]), buf(f"{name}_var", ss["var"]),
                    buf(f"{name}_scale", sp["scale"]), buf(f"{name}_bias", sp["bias"]))

        buf("mean", np.reshape(module.mean, (1, -1, 1, 1)))
        buf("std", np.reshape(module.std, (1, -1, 1, 1)))
        conv("stem", p["stem"]["kernel"])
        n = (module.depth - 2) // 6
        self.blocks: list[dict[str, Any]] = []
        for s, stride in enumerate(module.strides):
            for b in range(n):
                name = f"stage{s + 1}_block{b}"
                bp, bs = p[name], stats[name]
                self.blocks.append(dict(
                        stride=int(stride) if b == 0 else 1,
                        pre=bn(f"{name}_pre", bp["pre_bn"], bs["pre_bn"]),
                        bn=bn(f"{name}_bn", bp["bn"], bs["bn"]),
                        conv1=conv(f"{name}_conv1", bp["conv1"]["kernel"]),
                        conv2=conv(f"{name}_conv2", bp["conv2"]["kernel"]),
                        shortcut=(conv(f"{name}_shortcut", bp["shortcut"]["kernel"])
                                  if "shortcut" in bp else None)))
        self.final = bn("final", p["final_bn"], stats["final_bn"])
        conv("cls_w", p["classifier"]["kernel"])
        buf("cls_b", p["classifier"]["bias"])
        self.eval()

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return half_huber_relu(h, self.delta) if self.activation == "hhrelu" else F.relu(h)

    def _bn(self, h: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        mean, var, scale, bias = (getattr(self, k) for k in names)
        return F.batch_norm(h, mean, var, scale, bias, training=False, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of NCHW images ``x`` ``(B, 3, 32, 32)`` in [0, 1]."""
        h = F.conv2d((x - self.mean) / self.std, self.stem, padding=1)
        for blk in self.blocks:
            pre = self._act(self._bn(h, blk["pre"]))
            m = F.conv2d(pre, getattr(self, blk["conv1"]), stride=blk["stride"], padding=1)
            m = F.conv2d(self._act(self._bn(m, blk["bn"])), getattr(self, blk["conv2"]),
                         padding=1)
            sc = h if blk["shortcut"] is None else F.conv2d(
                    pre, getattr(self, blk["shortcut"]), stride=blk["stride"], padding=1)
            h = m + sc
        h = F.avg_pool2d(self._act(self._bn(h, self.final)), 8)
        return F.conv2d(h, self.cls_w, self.cls_b).flatten(1)


def torch_preact_resnet(module: Any, variables: dict[str, Any],
                        device: str = "cpu") -> TorchPreActResNet:
    """:class:`TorchPreActResNet` of ``(module, variables)`` on ``device``, in eval mode."""
    return TorchPreActResNet(module, variables).to(device).eval()


def load_torch_woods2019(path: str | os.PathLike, device: str = "cpu") -> TorchPreActResNet:
    """A Woods et al. (2019) checkpoint (``woods2019-resnet44/resnet44-*.pt``) as a torch module.

    Read with advjax's torch-free loader, then mirrored, so both frameworks use the same weights.
    """
    from advjax.models import load_woods2019
    module, variables = load_woods2019(Path(path))
    return torch_preact_resnet(module, variables, device)


# RobustBench's WideResNet (robustbench/model_zoo/architectures/wide_resnet.py, itself from TRADES),
# the same layers and state_dict names, for the RobustBench peer benchmark and test fixtures.


class _TorchWRNBlock(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.equal = c_in == c_out
        self.convShortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride,
                                                               bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal:
            out = F.relu(self.bn1(x))
        else:
            x = F.relu(self.bn1(x))
            out = x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return (x if self.equal else self.convShortcut(x)) + out


class _TorchWRNGroup(torch.nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = torch.nn.Sequential(*[_TorchWRNBlock(c_in if i == 0 else c_out, c_out,
                                                          stride if i == 0 else 1)
                                           for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class TorchWideResNet(torch.nn.Module):
    """RobustBench's ``WideResNet(depth, num_classes, widen_factor)`` (no normalisation, ReLU,
    8×8 average pooling; NCHW inputs in [0, 1]) with its initialisation (He-normal convolutions,
    unit BN scales, zero biases)."""

    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10):
        super().__init__()
        nn = torch.nn
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _TorchWRNGroup(n, ch[0], ch[1], 1)
        self.block2 = _TorchWRNGroup(n, ch[1], ch[2], 2)
        self.block3 = _TorchWRNGroup(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self.channels = ch[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, (2.0 / fan) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.channels))


def randomise_batch_norm(net: torch.nn.Module, seed: int) -> None:
    """Gives every BatchNorm random running statistics and affine parameters (a freshly initialised
    net has mean 0 / variance 1, which would leave the import of those tensors untested)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1.0 + 0.1 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
