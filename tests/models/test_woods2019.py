"""The released Woods et al. (2019) ResNet-44 checkpoints: safe import, parity with a numpy forward
of the PyTorch state dict, published metadata, example images and test accuracy."""

from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest

from advjax.models import (
    PreActResNet,
    linen_logits_fn,
    load_legacy_torch,
    load_woods2019,
    load_woods2019_checkpoint,
    load_woods2019_metadata,
    predict,
)
from tests.conftest import require_data
from tests.models._reference import woods_resnet_torch_forward

pytestmark = pytest.mark.data

FILES = ["resnet44-standard.pt", "resnet44-adv-train.pt", "resnet44-all.pt", "resnet44-robust.pt"]
ROBUST = {"resnet44-all.pt", "resnet44-robust.pt"}
EXAMPLE_LABELS = [8, 6, 3, 1]  # images/test_image_{0..3}.png: CIFAR-10 test indices 2, 5, 8, 9


def _example_images():
    folder = require_data("woods2019-resnet44", "images")
    return np.stack([matplotlib.image.imread(folder / f"test_image_{i}.png")[..., :3]
                     for i in range(4)]).astype(np.float32)


@pytest.mark.parametrize("name", FILES)
def test_checkpoint_structure_and_metadata(name):
    path = require_data("woods2019-resnet44", name)
    ckpt = load_woods2019_checkpoint(path)
    assert isinstance(ckpt.module, PreActResNet) and ckpt.module.depth == 44
    assert sum(np.size(a) for a in _leaves(ckpt.variables["params"])) == 681_626
    raw = load_legacy_torch(path, stubs=[("__main__", "cifar10_preprocess")])["model_params"]
    deltas = [float(v) for k, v in raw.items() if k.endswith(".d")]
    if name in ROBUST:
        # papers.md §2.2: 43 HHReLU buffers, all d = 0.5.
        assert len(deltas) == 43 and set(deltas) == {0.5}
        assert ckpt.module.activation == "hhrelu" and ckpt.module.hhrelu_delta == 0.5
    else:
        assert deltas == [] and ckpt.module.activation == "relu"
    np.testing.assert_allclose(ckpt.module.mean, [0.4914, 0.4822, 0.4465], rtol=1e-6)
    np.testing.assert_allclose(ckpt.module.std, [0.247, 0.243, 0.261], rtol=1e-6)
    meta = ckpt.metadata
    json.dumps(meta)  # plain data
    assert meta["robust_additions"] == (name in ROBUST)
    assert meta["arch"][1] == "__main__.cifar10_preprocess"
    assert load_woods2019_metadata(path) == meta


@pytest.mark.parametrize(("name", "integration", "psi"), [
    ("resnet44-all.pt", 208.512, 14240), ("resnet44-robust.pt", 251.697, 33778)])
def test_robust_integration_reproduces_published_psi(name, integration, psi):
    meta = load_woods2019_metadata(require_data("woods2019-resnet44", name))
    assert meta["robust_integration"] == pytest.approx(integration, abs=1e-3)
    # ψ = k_ψ0 · exp(k_ψ · I) with k_ψ0 = 220, k_ψ = 0.02 (papers.md §2.2): the published final ψ.
    assert 220 * math.exp(0.02 * meta["robust_integration"]) == pytest.approx(psi, rel=1e-3)


@pytest.mark.parametrize("name", ["resnet44-standard.pt", "resnet44-robust.pt"])
def test_logits_match_numpy_forward_of_the_torch_state(name):
    path = require_data("woods2019-resnet44", name)
    module, variables = load_woods2019(str(path))
    xs = _example_images()[:2]
    raw = load_legacy_torch(path, stubs=[("__main__", "cifar10_preprocess")])["model_params"]
    ref = woods_resnet_torch_forward(raw, xs, blocks_per_stage=7)
    got = np.asarray(module.apply(variables, xs, train=False))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_example_images_are_the_cifar10_test_images():
    head = np.load(require_data("cifar10-test-head", "cifar10_test_first846.npz"))
    np.testing.assert_allclose(_example_images(), head["images"][[2, 5, 8, 9]] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(head["labels"][[2, 5, 8, 9]], EXAMPLE_LABELS)


@pytest.mark.parametrize("name", ["resnet44-standard.pt", "resnet44-adv-train.pt"])
def test_example_images_classified_correctly(name):
    module, variables = load_woods2019(require_data("woods2019-resnet44", name))
    preds = predict(linen_logits_fn(module, variables, train=False), _example_images())
    np.testing.assert_array_equal(preds, EXAMPLE_LABELS)


@pytest.mark.parametrize(("name", "min_acc"), [
    ("resnet44-standard.pt", 0.90),   # published 0.9384 on 1000 random test images
    ("resnet44-adv-train.pt", 0.80),  # published 0.8643
])
def test_accuracy_on_cifar10_test_head(name, min_acc):
    head = np.load(require_data("cifar10-test-head", "cifar10_test_first846.npz"))
    xs = head["images"][:200].astype(np.float32) / 255.0
    ys = head["labels"][:200].astype(np.int32)
    module, variables = load_woods2019(require_data("woods2019-resnet44", name))
    preds = predict(linen_logits_fn(module, variables, train=False), xs, batch_size=200)
    acc = float(np.mean(np.asarray(preds) == ys))
    assert acc >= min_acc, acc


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree
