"""The benchmarks' PyTorch twin of the Woods et al. (2019) ResNet-44 gives the Flax model's logits.

Runs only where torch (the ``bench`` extra) is importable and the real data folder is present.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_data

torch = pytest.importorskip("torch", reason="torch (the `bench` extra) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _torch_models import torch_preact_resnet  # noqa: E402


@pytest.mark.slow  # ~15-25 s on 2 loaded cores: checkpoint read + eager ResNet-44 forward
@pytest.mark.parametrize("name", ["resnet44-standard", "resnet44-robust"])
def test_torch_resnet44_logits_equal_flax(name):
    from advjax import data
    from advjax.models import load_woods2019

    ckpt = require_data("woods2019-resnet44", f"{name}.pt")
    require_data("cifar10-test-head")
    xs = np.asarray(data.load("cifar10_head", "all", limit=4).images, np.float32)
    module, variables = load_woods2019(ckpt)
    assert module.activation == ("hhrelu" if name == "resnet44-robust" else "relu")
    flax_logits = np.asarray(module.apply(variables, xs, train=False))
    with torch.no_grad():
        torch_logits = torch_preact_resnet(module, variables)(
                torch.tensor(xs.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(flax_logits).max() > 1.0      # real logits, not a degenerate all-zero net
    # float32 accumulation through 44 layers, |logits| <= 30: measured <= 1.2e-5 over all 846
    # images and the four checkpoints; 1e-4 leaves room for other BLAS orders.
    np.testing.assert_allclose(torch_logits, flax_logits, rtol=0, atol=1e-4)
