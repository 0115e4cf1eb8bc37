"""The Lipschitz graph walk (advjax.lipschitz.layer_bounds) on each RobustBench architecture.

Convolutional families (ReLU or SiLU, BatchNorm in eval mode, residual additions, input
normalisation, max/average pooling) are bounded: the walk returns a finite network bound that is at
least the largest input-Jacobian spectral norm found at sample points (a lower bound of the true
constant), on the imported fixture weights (random weights and random BatchNorm statistics).

Refused by design, with :class:`UnsupportedPrimitiveError` naming the reason: ViT/DeiT (attention
multiplies two input-dependent values, ``q kᵀ`` and ``softmax · v``: bilinear, no global Lipschitz
constant) and ConvNeXt (LayerNorm divides by an input-dependent standard deviation; the walk has no
sound rule for it, so it refuses rather than report a number).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import UnsupportedPrimitiveError, layer_bounds, local_lower_bound
from advjax.models import linen_logits_fn
from advjax.models import robustbench as rb

FIXTURES = Path(__file__).parent / "fixtures" / "robustbench"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

# (fixture, architecture): bounded by design. The 50-layer ones take ~30 s on a shared CPU.
BOUNDED = [
    "wrn_10_1",  # WideResNet
    "dmwrn_10_1_silu",  # DMWideResNet, SiLU
    "dmpreact18_silu",  # DMPreActResNet-18
    "preact18",  # PreActResNet-18
    "resnet18",  # ResNet-18 (CIFAR)
    pytest.param("resnet50", marks=pytest.mark.slow),  # ResNet-50 (CIFAR)
    pytest.param("resnet50_imagenet", marks=pytest.mark.slow),  # ImageNet ResNet-50 + max pool
    pytest.param("wrn50_2_imagenet", marks=pytest.mark.slow),  # Wide-ResNet-50-2
]


def _logits_fn(name):
    f = MANIFEST["fixtures"][name]
    module, variables, _ = rb.load_checkpoint(FIXTURES / f"{name}.pt", arch=f["arch"],
                                              **f["kwargs"])
    return f, linen_logits_fn(module, variables)


@pytest.mark.parametrize("name", BOUNDED)
def test_cnn_families_are_bounded(name):
    f, fn = _logits_fn(name)
    size = f["input_size"]
    report = layer_bounds(fn, jnp.zeros((size, size, 3)))
    assert np.isfinite(report.total) and report.total > 0
    kinds = {r.kind for r in report.rows}
    assert {"conv", "dense", "activation"} <= kinds
    x = jnp.asarray(np.load(FIXTURES / f"{name}.npz")["x"][:2])
    lower = float(local_lower_bound(fn, x, refine_steps=0))
    # soundness: the bound is at least a Jacobian norm actually attained (float32 slack 1e-5)
    assert 0 < lower <= report.total * (1 + 1e-5)


@pytest.mark.parametrize("name,reason", [
    ("vit_small", "two input-dependent operands"),  # ViT / DeiT: attention
    ("convnext_small", "sum of squares of an input-dependent value"),  # ConvNeXt: LayerNorm
])
def test_attention_and_layernorm_families_are_refused(name, reason):
    f, fn = _logits_fn(name)
    size = f["input_size"]
    with pytest.raises(UnsupportedPrimitiveError, match=reason):
        layer_bounds(fn, jnp.zeros((size, size, 3)))
