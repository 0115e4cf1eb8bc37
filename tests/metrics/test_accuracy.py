"""Clean accuracy and robust-accuracy curves on a linear model with a closed-form minimal attack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.result import make_result
from advjax.metrics import accuracy, ara, correct_predictions, robust_accuracy_curve

D, K, N = 6, 4, 40


def linear_model(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(K, D)).astype(np.float32)
    b = rng.normal(size=(K,)).astype(np.float32) * 0.1
    xs = rng.normal(size=(N, D)).astype(np.float32)
    labels = np.argmax(xs @ w.T + b, axis=1).astype(np.int32)
    flip = rng.random(N) < 0.25  # a quarter get a random (mostly wrong) label
    labels = np.where(flip, rng.integers(0, K, size=N), labels).astype(np.int32)
    logits_fn = lambda x: jnp.asarray(w) @ x + jnp.asarray(b)
    return w, b, xs, labels, logits_fn


def min_distance_numpy(w, b, xs, labels):
    """Closed form: L2 distance to the nearest decision boundary of the true class (unboxed)."""
    z = xs @ w.T + b
    out = np.empty(xs.shape[0])
    for i, (zi, y) in enumerate(zip(z, labels, strict=True)):
        others = [j for j in range(K) if j != y]
        out[i] = min((zi[y] - zi[j]) / np.linalg.norm(w[y] - w[j]) for j in others)
    return out  # negative when already misclassified


def minimal_linear_attack(w, b):
    """Moves ``min(eps, distance·1.001)`` toward the nearest boundary: monotone in eps."""
    w, b = jnp.asarray(w), jnp.asarray(b)
    logits_fn = lambda x: w @ x + b

    def attack(x, label, *, eps, key=None):
        del key
        z = logits_fn(x)
        diff = w[label][None, :] - w  # (K, D)
        norms = jnp.linalg.norm(diff, axis=1)
        dist = (z[label] - z) / jnp.where(norms > 0, norms, 1.0)
        dist = jnp.where(jnp.arange(K) == label, jnp.inf, dist)
        j = jnp.argmin(dist)
        step = jnp.minimum(eps, dist[j] * 1.001)
        x_adv = x - step * diff[j] / norms[j]
        return make_result(logits_fn, x, x_adv, label)

    return attack


def test_accuracy_matches_numpy():
    w, b, xs, labels, logits_fn = linear_model()
    expected = np.mean(np.argmax(xs @ w.T + b, axis=1) == labels)
    assert accuracy(logits_fn, xs, labels, batch_size=7) == pytest.approx(expected, abs=0)
    np.testing.assert_array_equal(
        correct_predictions(logits_fn, xs, labels, batch_size=64),
        np.argmax(xs @ w.T + b, axis=1) == labels)


def test_robust_curve_matches_closed_form_and_is_monotone():
    w, b, xs, labels, _ = linear_model(1)
    dist = min_distance_numpy(w, b, xs, labels)
    correct = dist > 0
    # Grid: 0, the midpoints between consecutive distances, and beyond the largest: every step
    # of the curve is visited and no grid point ties with a distance.
    s = np.sort(dist[correct])
    grid = np.concatenate([[0.0], 0.5 * (s[1:] + s[:-1]), [s[-1] + 1.0]])
    assert np.min(np.abs(dist[correct, None] - grid[None, :])) > 1e-5
    eps, acc = robust_accuracy_curve(minimal_linear_attack(w, b), xs, labels, grid,
                                     key=jax.random.key(0), batch_size=16)
    expected = np.mean(correct[:, None] & (dist[:, None] > grid[None, :]), axis=0)
    np.testing.assert_array_equal(eps, grid)
    np.testing.assert_allclose(acc, expected, atol=0)
    assert np.all(np.diff(acc) <= 0)
    assert acc[0] == pytest.approx(correct.mean())
    # Batch size does not change the result.
    _, acc2 = robust_accuracy_curve(minimal_linear_attack(w, b), xs, labels, grid,
                                    key=jax.random.key(0), batch_size=N)
    np.testing.assert_array_equal(acc, acc2)
    # The ARA of the closed-form distortions integrates this same curve (in these L2 units).
    d = np.where(correct, dist, 0.0)
    fine = np.linspace(0, d.max(), 2001)
    _, acc_fine = robust_accuracy_curve(minimal_linear_attack(w, b), xs, labels, fine,
                                        key=jax.random.key(0))
    riemann_from_curve = np.sum(np.diff(fine) * np.maximum(0, acc_fine[1:] - 1 / K))
    assert riemann_from_curve == pytest.approx(ara(d, None, K, bins=2000), abs=2 * d.max() / 2000)


def test_robust_curve_passes_per_example_keys():
    # A random attack that succeeds when its uniform draw is below eps: the curve is the
    # empirical CDF of the draws, which must be fold_in(key, index)-based.
    logits_fn = lambda x: jnp.stack([x[0], -x[0]])
    xs = np.ones((12, 1), np.float32)
    labels = np.zeros(12, np.int32)

    def attack(x, label, *, eps, key):
        u = jax.random.uniform(key)
        x_adv = jnp.where(u < eps, -x, x)
        return make_result(logits_fn, x, x_adv, label)

    key = jax.random.key(5)
    grid = np.linspace(0, 1, 11)
    _, acc = robust_accuracy_curve(attack, xs, labels, grid, key=key, batch_size=5)
    u = np.array([jax.random.uniform(jax.random.fold_in(key, i)) for i in range(12)])
    expected = np.mean(u[:, None] >= grid[None, :].astype(np.float32), axis=0)
    np.testing.assert_allclose(acc, expected, atol=0)


@pytest.mark.parametrize(
    "xs, labels, grid, match",
    [
        (np.zeros((3, 2), np.int32), np.zeros(3, np.int32), [0.1], "xs.*floating"),
        (np.zeros((3, 2), np.float32), np.zeros(2, np.int32), [0.1], "labels.*shape"),
        (np.zeros((3, 2), np.float32), np.zeros(3, np.float32), [0.1], "labels.*integer"),
        (np.zeros((3, 2), np.float32), np.zeros(3, np.int32), [-0.1], "eps_grid.*>= 0"),
        (np.zeros((3, 2), np.float32), np.zeros(3, np.int32), [], "eps_grid"),
        (np.full((3, 2), np.nan, np.float32), np.zeros(3, np.int32), [0.1], "xs.*NaN"),
    ],
)
def test_bad_inputs(xs, labels, grid, match):
    w, b, *_ = linear_model()
    with pytest.raises((ValueError, TypeError), match=match):
        robust_accuracy_curve(minimal_linear_attack(w[:, :2], b), xs, labels, np.asarray(grid),
                              key=jax.random.key(0))


def test_robust_curve_with_l2_pgd_on_binary_linear_model():
    # For two classes the CE gradient direction is constant (w_other − w_y), so L2 PGD walks
    # straight to the hyperplane: it succeeds exactly when eps exceeds the closed-form distance
    # (inputs kept far enough inside [0, 1] that the box is never active).
    from advjax.attacks import pgd

    rng = np.random.default_rng(4)
    d = 8
    w = rng.normal(size=(2, d)).astype(np.float32)
    w /= np.linalg.norm(w[0] - w[1]) * 4  # ||w_0 − w_1|| = 1/4
    xs = rng.uniform(0.4, 0.6, size=(30, d)).astype(np.float32)
    b = -w @ np.full(d, 0.5, np.float32)  # the hyperplane passes through the centre
    z = xs @ w.T + b
    labels = np.argmax(z, axis=1).astype(np.int32)
    labels[:4] = 1 - labels[:4]
    margin = z[np.arange(30), labels] - z[np.arange(30), 1 - labels]
    dist = margin / np.linalg.norm(w[0] - w[1])
    correct = margin > 0
    s = np.sort(dist[correct])
    grid = np.concatenate([[0.0], 0.5 * (s[1:] + s[:-1]), [s[-1] + 0.01]])
    assert grid.max() < 0.35  # moving 0.35 in L2 from [0.4, 0.6]^8 stays inside the box
    logits_fn = lambda x: jnp.asarray(w) @ x + jnp.asarray(b)
    attack = pgd(logits_fn, norm="l2", steps=20, rel_step_size=0.1, random_start=False)
    _, acc = robust_accuracy_curve(attack, xs, labels, grid, key=jax.random.key(0))
    expected = np.mean(correct[:, None] & (dist[:, None] > grid[None, :]), axis=0)
    np.testing.assert_allclose(acc, expected, atol=0)
    assert np.all(np.diff(acc) <= 0)


def test_metrics_run_through_the_one_chunked_runner_with_per_example_results(monkeypatch):
    # correct_predictions and robust_accuracy_curve call advjax.parallel.stream (no private chunk
    # loop), and their per-example rows equal the per-example function called one example at a
    # time (example b with key fold_in(key, b)), whatever the chunk size (N = 13: uneven chunks).
    import importlib

    from advjax import parallel
    from advjax.attacks import pgd

    acc_mod = importlib.import_module("advjax.metrics.accuracy")
    calls = []

    def spy(fn, *arrays, **kw):
        calls.append(kw.get("chunk_size"))
        return parallel.stream(fn, *arrays, **kw)

    monkeypatch.setattr(acc_mod, "stream", spy)
    w, b, xs, labels, logits_fn = linear_model()
    xs, labels = xs[:13], labels[:13]
    attack = pgd(logits_fn, norm="linf", steps=3, random_start=True, lo=None, hi=None)
    grid = np.array([0.0, 0.05, 0.2, 1.0])
    key = jax.random.key(7)
    robust_ref = np.array([[bool(r.clean_correct & ~r.success) for r in
                            (attack(jnp.asarray(x), y, eps=jnp.float32(e),
                                    key=jax.random.fold_in(key, i)) for e in grid)]
                           for i, (x, y) in enumerate(zip(xs, labels, strict=True))])
    correct_ref = np.array([int(np.argmax(logits_fn(jnp.asarray(x)))) == y
                            for x, y in zip(xs, labels, strict=True)])
    assert 0 < robust_ref.sum() < robust_ref.size
    for bs in (4, 13, 256):
        calls.clear()
        np.testing.assert_array_equal(correct_predictions(logits_fn, xs, labels, batch_size=bs),
                                      correct_ref)
        robust, invalid = acc_mod._robust_rows(attack, xs, labels, grid, key=key, batch_size=bs)
        np.testing.assert_array_equal(robust, robust_ref)
        assert not invalid.any()
        _, acc = robust_accuracy_curve(attack, xs, labels, grid, key=key, batch_size=bs)
        np.testing.assert_array_equal(acc, robust_ref.mean(axis=0))
        assert calls == [bs] * 3
