"""Explanations of the four example images with the imported Woods 2019 ResNet-44 checkpoints.

Needs ADVJAX_DATA_DIR with ``woods2019-resnet44/``; slow (four ResNet-44s, 35 steps each on CPU).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.explain import confidence_caption, explain, explanation_grid, explanation_targets
from tests.conftest import require_data

pytestmark = [pytest.mark.slow, pytest.mark.data]

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
LABELS = np.array([8, 6, 3, 1], np.int32)  # test indices 2, 5, 8, 9: ship, frog, cat, automobile
NETWORKS = ("standard", "adv-train", "all", "robust")
logger = logging.getLogger(__name__)


def load_images(root):
    from PIL import Image

    return np.stack([np.asarray(Image.open(root / "images" / f"test_image_{i}.png").convert("RGB"),
                                np.float32) / 255.0 for i in range(4)])


@functools.cache
def _explainer(module):
    """One compiled function per architecture; the variables are an argument."""
    from advjax.models import linen_logits_fn

    @jax.jit
    def run(variables, xs, labels):
        f = linen_logits_fn(module, variables, train=False)
        second = jax.vmap(lambda x, y: explanation_targets(f(x), y, "second")[0])(xs, labels)
        xs2 = jnp.concatenate([xs, xs])
        ts = jnp.concatenate([labels, second])
        return jax.vmap(lambda x, t: explain(f, x, t, rho=0.1, steps=35, eps_overshoot=5.0))(
            xs2, ts)

    return run


@pytest.fixture(scope="module")
def explanations():
    root = require_data("woods2019-resnet44")
    try:
        from advjax.models import load_woods2019
    except ImportError:  # pragma: no cover - the loader is part of advjax.models
        pytest.skip("advjax.models.load_woods2019 is not available")
    images = load_images(root)
    out = {}
    for name in NETWORKS:
        module, variables = load_woods2019(root / f"resnet44-{name}.pt")
        out[name] = jax.device_get(_explainer(module)(variables, jnp.asarray(images),
                                                      jnp.asarray(LABELS)))
    return images, out


def test_grid_png_for_the_four_images(explanations, tmp_path):
    images, out = explanations
    rows, captions = [], []
    for name in NETWORKS:
        e = out[name]
        rows.append(e.image[:4])
        captions.append([confidence_caption(e.probs_before[i], e.probs_after[i], int(e.target[i]),
                                            CLASSES) for i in range(4)])
    path = explanation_grid(images, np.stack(rows), captions, tmp_path / "woods2019_real.png",
                            image_captions=[CLASSES[y] for y in LABELS], row_labels=NETWORKS,
                            title="g_explain+, true class, rho = 0.1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in NETWORKS:
        img = np.asarray(out[name].image)
        assert img.min() >= 0.0 and img.max() <= 1.0
        # The true-class target of every image is the explained class.
        np.testing.assert_array_equal(out[name].target[:4], LABELS)


def test_robust_networks_move_further_toward_the_true_class(explanations):
    _, out = explanations
    real = {n: float(np.mean(out[n].strength[:4])) for n in NETWORKS}
    second = {n: float(np.mean(out[n].strength[4:])) for n in NETWORKS}
    rmse = {n: np.round(np.asarray(out[n].rmse), 4).tolist() for n in NETWORKS}
    p_real = {n: np.round(np.asarray(out[n].probs_after)[np.arange(4), LABELS], 3).tolist()
              for n in NETWORKS}
    logger.info("strength (nats / RMSE), true class: %s", real)
    logger.info("strength (nats / RMSE), most-confident wrong class: %s", second)
    logger.info("RMSE: %s; p(true) after: %s", rmse, p_real)
    print("true-class strength", real, "\nsecond-class strength", second, "\nrmse", rmse)
    # The robust networks have RMSE budget left to spend on the true class: the explanation lands
    # on the rho sphere and raises the true-class confidence.
    for name in ("all", "robust"):
        np.testing.assert_allclose(out[name].rmse[:4], 0.1, rtol=0.05)
        assert np.all(out[name].prob_gain[:4] > 0.1)
        assert real[name] > 5 * max(real["standard"], 1e-3)
    # The standard network is already saturated on the true class (p ~ 1), so the same budget
    # buys it almost nothing; towards a WRONG class it is the non-robust one: it moves much
    # further per unit RMSE than the robust networks (an adversarial example, not an explanation).
    assert real["standard"] < 0.1
    for name in ("adv-train", "all", "robust"):
        assert second["standard"] > 3 * second[name]
