"""Flax NNX on the RobustBench architectures: flax's linen→NNX bridge plus advjax's converters.

``nnx.bridge.ToNNX`` wraps the linen module; :func:`advjax.models.set_nnx_variables` writes the
imported ``{"params", "batch_stats"}`` into it (checking every path and shape) and
:func:`advjax.models.nnx_logits_fn` gives the per-example ``logits_fn`` (eval mode). The result must
reproduce PyTorch's logits stored with the fixtures (same tolerance as the linen import test).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advjax.models import nnx_logits_fn, nnx_variables, set_nnx_variables
from advjax.models import robustbench as rb

FIXTURES = Path(__file__).parent / "fixtures" / "robustbench"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
RTOL_SCALE = 1e-5  # as tests/models/test_robustbench_import.py: float32 accumulation order


@pytest.mark.parametrize("name", ["dmwrn_10_1_silu", "vit_small"])
def test_nnx_bridge_reproduces_pytorch_logits(name):
    f = MANIFEST["fixtures"][name]
    module, variables, _ = rb.load_checkpoint(FIXTURES / f"{name}.pt", arch=f["arch"],
                                              **f["kwargs"])
    data = np.load(FIXTURES / f"{name}.npz")
    size = f["input_size"]
    model = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, jnp.zeros((1, size, size, 3)))
    set_nnx_variables(model, variables)
    assert set(nnx_variables(model)) == set(variables)
    got = np.asarray(jax.vmap(nnx_logits_fn(model))(jnp.asarray(data["x"])))
    want = data["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL_SCALE * np.abs(want).max())
