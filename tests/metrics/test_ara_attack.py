"""Attack / BTR ARA through Algorithm 1 on binary linear models, where the minimal distortion is the
closed-form distance to the decision hyperplane."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from advjax.metrics import ara, attack_ara, btr_ara

SHAPE = (4, 4, 2)
D = int(np.prod(SHAPE))


@pytest.fixture(scope="module")
def binary():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, D)).astype(np.float32)
    b = np.array([0.3, -0.3], np.float32)
    xs = rng.uniform(0.2, 0.8, size=(12, *SHAPE)).astype(np.float32)
    z = xs.reshape(12, -1) @ w.T + b
    labels = np.argmax(z, axis=1).astype(np.int32)
    labels[:3] = 1 - labels[:3]  # three misclassified examples
    # Closed form: the CE gradient of a 2-class linear model is along w_y − w_other, so Algorithm 1
    # walks straight to the hyperplane; RMSE distance = margin / ||w_y − w_o|| / sqrt(D).
    wd = np.linalg.norm(w[0] - w[1])
    margin = z[np.arange(12), labels] - z[np.arange(12), 1 - labels]
    dist = np.where(margin > 0, margin / wd / np.sqrt(D), 0.0)
    logits_fn = lambda x: jnp.asarray(w) @ x.reshape(-1) + jnp.asarray(b)
    return xs, labels, dist, margin > 0, logits_fn


@pytest.mark.parametrize("fn", [attack_ara, btr_ara])
def test_distortions_match_the_hyperplane_distance(binary, fn):
    xs, labels, dist, correct, logits_fn = binary
    eps = 3.0 * dist.max()
    res = fn(logits_fn, xs, labels, num_classes=2, steps=120, eps=eps, momentum=0.0,
             chunk_size=5)
    # The returned point is the best crossing found along a path with ramp steps of at most
    # 2·eps/121 near the end; the crossing overshoots the hyperplane by less than one step.
    np.testing.assert_allclose(res.distortions, dist, rtol=0.02, atol=1e-7)
    assert np.all(res.distortions >= dist * (1 - 1e-4))
    np.testing.assert_array_equal(res.correct, correct)
    assert res.clean_accuracy == pytest.approx(correct.mean())
    assert not res.failed.any() and res.sanity_ok
    assert res.ara == pytest.approx(ara(res.distortions, correct, 2))
    assert res.ara_exact == pytest.approx(ara(dist, correct, 2, method="exact"), rel=0.02)
    assert res.ara <= res.ara_exact
    assert res.settings["criterion"] == ("l2_min" if fn is attack_ara else "btr")


def test_chunking_does_not_change_results(binary):
    xs, labels, dist, _, logits_fn = binary
    kw = dict(num_classes=2, steps=40, eps=3.0 * dist.max(), momentum=0.9)
    a = attack_ara(logits_fn, xs, labels, chunk_size=5, **kw)
    b = attack_ara(logits_fn, xs, labels, chunk_size=12, **kw)
    np.testing.assert_allclose(a.distortions, b.distortions, rtol=1e-6)


def test_too_small_budget_is_flagged(binary):
    xs, labels, dist, correct, logits_fn = binary
    res = attack_ara(logits_fn, xs, labels, num_classes=2, steps=20, eps=0.5 * np.median(
        dist[correct]), momentum=0.0)
    assert res.failed.any() and not res.sanity_ok
    # Failed examples count with distortion 0, as in the reference code (conservative).
    assert np.all(res.distortions[res.failed] == 0)


def test_bad_inputs(binary):
    xs, labels, _, _, logits_fn = binary
    with pytest.raises(ValueError, match="labels"):
        attack_ara(logits_fn, xs, labels + 5, num_classes=2, steps=2)
    with pytest.raises(ValueError, match="eps"):
        attack_ara(logits_fn, xs, labels, num_classes=2, steps=2, eps=0.0)
    with pytest.raises(ValueError, match="xs.*lie in"):
        attack_ara(logits_fn, xs + 2.0, labels, num_classes=2, steps=2)
    with pytest.raises(ValueError, match="momentum"):
        btr_ara(logits_fn, xs, labels, num_classes=2, steps=2, momentum=1.0)
