"""Confidence intervals and verdicts: closed forms, coverage, pairing, and flips with the data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advjax.metrics import stats


def test_wilson_matches_closed_forms():
    # k = 0: the upper bound is z² / (n + z²) exactly (centre and half-width coincide).
    z = 1.959963984540054
    iv = stats.wilson(0, 10)
    assert iv.low == pytest.approx(0.0, abs=1e-15)
    assert iv.high == pytest.approx(z * z / (10 + z * z), rel=1e-12)
    # k = 5 of 10: the textbook interval [0.2366, 0.7634] (Newcombe 1998, Table I), symmetric.
    iv = stats.wilson(5, 10)
    assert (iv.low, iv.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # From an array of booleans, same as from the count.
    assert stats.wilson(np.array([1, 1, 0, 1])) == stats.wilson(3, 4)
    assert math.isnan(stats.wilson(0, 0).estimate)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes"):
        stats.wilson(11, 10)
    with pytest.raises(ValueError, match="booleans"):
        stats.wilson(np.array([0.5, 1.0]))


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 200)
    a, b = stats.bootstrap(x, seed=3), stats.bootstrap(x, seed=3)
    assert a == b
    assert a.low < a.estimate < a.high
    # Width ≈ 2·1.96·σ/√n for a mean (CLT); the percentile bootstrap agrees within 15%.
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * x.std() / np.sqrt(200), rel=0.15)
    # Coverage over 60 fresh samples: 95% nominal; at least 50 of 60 (binomial 1% tail ≈ 52).
    covered = 0
    for i in range(60):
        s = rng.normal(0.0, 1.0, 50)
        iv = stats.bootstrap(s, seed=i, resamples=400)
        covered += iv.low < 0.0 < iv.high
    assert covered >= 50


def test_bootstrap_of_nan_statistic_is_nan():
    iv = stats.bootstrap(np.array([np.nan, 1.0]))
    assert not iv.defined
    assert stats.direction_verdict(iv) == stats.INCONCLUSIVE
    assert not stats.bootstrap(np.zeros(0)).defined


def test_paired_difference_uses_the_pairing():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, 100)          # large between-example spread
    a, b = base + 0.1 + rng.normal(0, 0.01, 100), base
    paired = stats.paired_difference(a, b, seed=0)
    assert paired.estimate == pytest.approx(np.mean(a) - np.mean(b))
    assert paired.low > 0.05 and paired.high < 0.15       # the +0.1 shift is resolved
    unpaired = stats.difference(stats.bootstrap(a, seed=1), stats.bootstrap(b, seed=2))
    assert unpaired.low < 0 < unpaired.high                 # ignoring the pairing cannot tell
    assert stats.direction_verdict(paired) == stats.REPRODUCED
    assert stats.direction_verdict(unpaired) == stats.INCONCLUSIVE


def test_paired_statistic_on_tuples():
    d = np.array([0.1, 0.2, 0.3, 0.4])
    c = np.array([True, True, False, True])
    iv = stats.paired_difference((d, c), (d / 2, c), statistic=lambda x, k: float(np.mean(x[k])),
                                 seed=0, resamples=200)
    assert iv.estimate == pytest.approx(np.mean(d[c]) / 2)


def _iv(est, lo, hi):
    return stats.Interval(est, lo, hi, 0.95, 10, "test")


@pytest.mark.parametrize("interval, expected", [
    (_iv(0.1, 0.05, 0.15), stats.REPRODUCED),
    (_iv(-0.1, -0.15, -0.05), stats.NOT_REPRODUCED),
    (_iv(0.01, -0.05, 0.07), stats.INCONCLUSIVE),
])
def test_direction_verdict_flips_with_the_numbers(interval, expected):
    assert stats.direction_verdict(interval) == expected


def test_equivalence_and_threshold_verdicts():
    assert stats.equivalence_verdict(_iv(0.02, -0.05, 0.08), 0.15) == stats.REPRODUCED
    assert stats.equivalence_verdict(_iv(0.3, 0.2, 0.4), 0.15) == stats.NOT_REPRODUCED
    assert stats.equivalence_verdict(_iv(0.1, 0.0, 0.2), 0.15) == stats.INCONCLUSIVE
    assert stats.threshold_verdict(stats.wilson(100, 100), 0.9) == stats.REPRODUCED
    assert stats.threshold_verdict(stats.wilson(10, 100), 0.9) == stats.NOT_REPRODUCED
    assert stats.threshold_verdict(stats.wilson(9, 10), 0.9) == stats.INCONCLUSIVE


def test_attack_failure_and_claims():
    assert stats.attack_failure([False, False]) == ("the attack failed on every example "
                                                    "(success 0/2)")
    assert stats.attack_failure([True, False], [np.nan, np.nan]) == ("the attack's distortions "
                                                                     "are NaN")
    assert stats.attack_failure([True, False], [0.1, np.nan]) == ""
    claim = stats.blocked("examples transfer", "the attack failed")
    assert claim.verdict == stats.INCONCLUSIVE and "Blocked" in claim.sentence()
    with pytest.raises(ValueError, match="verdict"):
        stats.Claim("x", "proven", "y")
