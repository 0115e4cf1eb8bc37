"""Writes the tiny RobustBench-format checkpoint used by the tests (needs PyTorch; run once).

A RobustBench ``WideResNet(depth=10, widen_factor=1)`` (the classic WRN at the smallest depth
and width; ``benchmarks/_torch_models.py``'s twin of RobustBench's code) with seeded random
weights and batch-norm statistics, saved with ``torch.save`` as RobustBench's checkpoints are
(``{"state_dict": ...}`` with DataParallel's ``module.`` prefix), together with the logits
PyTorch computes for 8 uniform-noise images (``numpy.random.default_rng(0)``, NHWC in [0, 1]):
``logits`` on the images as they are, ``logits_normalised`` on ``(x - MEAN) / STD`` with the
CIFAR-10 statistics RobustBench's ``Rice2020OverfittingNet`` uses (the independent truth the
Flax import is checked against). ``wrn-10-1-mu-sigma.pt`` holds the same weights saved as such a
model saves itself: with its ``mu`` and ``sigma`` buffers (shape ``(1, 3, 1, 1)``)::

    /work/venv-bench/bin/python tools/make_robustbench_fixture.py tests/models/fixtures
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _torch_models import TorchWideResNet, randomise_batch_norm  # noqa: E402

DEPTH, WIDTH, SEED = 10, 1, 0
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def noise_images(seed: int = SEED) -> np.ndarray:
    """The 8 test images ``(8, 32, 32, 3)`` float32 in [0, 1]."""
    return np.random.default_rng(seed).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    net = TorchWideResNet(DEPTH, 10, WIDTH)
    randomise_batch_norm(net, SEED)
    net.eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, folder / "wrn-10-1.pt")
    # As a RobustBench model with mu / sigma buffers saves itself (Rice2020OverfittingNet).
    buffers = {"mu": torch.tensor(MEAN).view(1, 3, 1, 1),
               "sigma": torch.tensor(STD).view(1, 3, 1, 1)}
    torch.save({**buffers, **net.state_dict()}, folder / "wrn-10-1-mu-sigma.pt")
    x = noise_images()
    xn = ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        logits_n = net(torch.from_numpy(xn).permute(0, 3, 1, 2)).numpy()
    np.savez(folder / "wrn-10-1_logits.npz", logits=logits, logits_normalised=logits_n)
    print(f"wrote {folder / 'wrn-10-1.pt'} ({(folder / 'wrn-10-1.pt').stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tests/models/fixtures"))
