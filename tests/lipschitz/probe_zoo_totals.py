"""Probe: the network bounds of the zoo models of test_models.py and, with the argument
``woods``, of the Woods ResNet-44 checkpoints under ``$ADVJAX_DATA_DIR``.

Run: ``python -m tests.lipschitz.probe_zoo_totals woods`` (prints one JSON object).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from advjax.lipschitz import layer_bounds
from advjax.models import MLP, MnistCNN, PreActResNet, linen_logits_fn, load_lenet5, load_woods2019


def _randomise(variables, seed):
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map(
            lambda a: jnp.asarray(rng.uniform(0.3, 1.5, a.shape), a.dtype),
            variables["batch_stats"])
    params = jax.tree_util.tree_map(
            lambda a: a + 0.05 * jnp.asarray(rng.normal(size=a.shape), a.dtype),
            variables["params"])
    return {"params": params, "batch_stats": stats}


def main(argv) -> dict:
    data = Path(os.environ.get("ADVJAX_DATA_DIR", "/work/shared/data"))
    out = {}
    m = MLP(hidden=(20, 20), num_classes=10, activation="sigmoid")
    v = m.init(jax.random.key(1), jnp.zeros((1, 6, 6, 1)))
    out["mlp_sigmoid"] = layer_bounds(linen_logits_fn(m, v), jnp.zeros((6, 6, 1))).total
    m = MnistCNN(features=(3, 4), dense=8)
    v = m.init(jax.random.key(2), jnp.zeros((1, 12, 12, 1)))
    out["mnist_cnn"] = layer_bounds(linen_logits_fn(m, v), jnp.zeros((12, 12, 1))).total
    for act in ("hhrelu", "relu"):
        m = PreActResNet(depth=8, widths=(4, 4, 8), activation=act)
        v = _randomise(m.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False), 4)
        fn = linen_logits_fn(m, v, train=False)
        out[f"preact8_{act}"] = layer_bounds(fn, jnp.zeros((32, 32, 3))).total
    m, v = load_lenet5(data / "advertorch-lenet5" / "lenet5_mnist.npz")
    out["lenet5"] = layer_bounds(linen_logits_fn(m, v), jnp.zeros((28, 28, 1))).total
    if "woods" in argv:
        for path in sorted((data / "woods2019-resnet44").glob("*.pt")):
            m, v = load_woods2019(path)
            fn = linen_logits_fn(m, v, train=False)
            out[path.name] = layer_bounds(fn, jnp.zeros((32, 32, 3))).total
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
