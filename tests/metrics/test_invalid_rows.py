"""Metrics never count an example whose attack input was invalid (``aux["valid_input"]`` False)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import fgsm
from advjax.metrics import (
    accuracy,
    accuracy_vs_distortion,
    ara,
    distortion_stats,
    robust_accuracy_curve,
)
from tests.attacks.conftest import make_linear_problem

P = make_linear_problem(seed=7, num_classes=4, n=6)


def test_accuracy_checks_the_label_range():
    labels = P.labels.copy()
    labels[2] = 4  # K = 4
    with pytest.raises(ValueError, match=r"labels.*\[0, 4\)"):
        accuracy(P.logits_fn, P.xs, labels)
    assert accuracy(P.logits_fn, P.xs, P.labels) == 1.0


def test_robust_curve_refuses_invalid_rows():
    # [0, 255] images pass the metric's own checks (finite) but not the attack's box.
    attack = fgsm(P.logits_fn)
    with pytest.raises(ValueError, match=r"1 of 6 example\(s\) had invalid input"):
        xs = P.xs.copy()
        xs[3] *= 255.0
        robust_accuracy_curve(attack, xs, P.labels, [0.0, 0.1], key=jax.random.key(0))
    _, acc = robust_accuracy_curve(attack, P.xs, P.labels, [0.0], key=jax.random.key(0))
    assert acc[0] == 1.0


def test_distortion_stats_exclude_and_count_invalid_rows():
    attack = jax.jit(jax.vmap(fgsm(P.logits_fn)))
    eps = jnp.full((6,), 0.2).at[1].set(-1.0).at[4].set(jnp.nan)
    res = attack(jnp.asarray(P.xs), jnp.asarray(P.labels), eps=eps)
    stats = distortion_stats(res)
    keep = np.array([0, 2, 3, 5])
    alone = attack(jnp.asarray(P.xs[keep]), jnp.asarray(P.labels[keep]), eps=eps[keep])
    expected = distortion_stats(alone)
    assert stats.invalid == 2 and stats.n == 4 and expected.invalid == 0
    for name in ("clean_accuracy", "success_rate", "error_rate", "mean_rmse", "mean_l2"):
        np.testing.assert_allclose(getattr(stats, name), getattr(expected, name), rtol=1e-6)


def test_ara_refuses_nan_distortions_of_invalid_rows():
    d = np.array([0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="NaN.*valid_input"):
        ara(d, None, 10)
    with pytest.raises(ValueError, match="NaN"):
        accuracy_vs_distortion(d, None, [0.1])
