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
