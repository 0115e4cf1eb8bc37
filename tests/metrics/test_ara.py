"""ARA (papers.md §2.10) against hand values, scipy quadrature and an independent Riemann sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from advjax.metrics import accuracy_vs_distortion, ara


def survival(d, eps):
    """P_b[d_b > eps], written directly from the definition."""
    return np.mean(np.asarray(d)[None, :] > np.asarray(eps)[:, None], axis=1)


def ara_quad(d, num_classes):
    """The definition integrated by scipy.quad with the jump points given as break points."""
    d = np.asarray(d, dtype=np.float64)
    if d.max() == 0:
        return 0.0
    f = lambda e: max(0.0, float(survival(d, [e])[0]) - 1.0 / num_classes)
    pts = np.unique(d[d > 0])
    value, _ = integrate.quad(f, 0.0, float(d.max()), points=pts[:-1] if pts.size > 1 else None,
                              limit=10 * d.size + 50, epsabs=1e-13, epsrel=1e-12)
    return value


def ara_fine_grid(d, num_classes, m=200_001):
    """Midpoint rule on a fine grid (error <= jump count * h; the survival function is a step)."""
    d = np.asarray(d, dtype=np.float64)
    if d.max() == 0:
        return 0.0
    h = d.max() / m
    mids = (np.arange(m) + 0.5) * h
    return float(h * np.sum(np.maximum(0.0, survival(d, mids) - 1.0 / num_classes)))


def ara_riemann_reference(d, num_classes, bins):
    """The official recipe spelled out bin by bin: A_j = #{d >= (j+1)·gap}/n, last bin empty."""
    d = np.asarray(d, dtype=np.float64)
    d_max = d.max()
    if d_max == 0:
        return 0.0
    gap = d_max / bins
    total = 0.0
    for j in range(bins):
        if j == bins - 1:
            a = 0.0
        else:
            a = np.mean(d * bins / d_max >= j + 1)
        total += max(0.0, a - 1.0 / num_classes)
    return gap * total


def test_hand_values_exactly_representable():
    # d = 1/4, 1/2, 3/4, 1 and K = 2: both methods give 0.5·0.25 + 0.25·0.25 = 0.1875.
    d = np.array([0.25, 0.5, 0.75, 1.0])
    assert ara(d, None, 2, method="exact") == pytest.approx(0.1875, abs=1e-15)
    assert ara(d, None, 2, method="riemann", bins=4) == pytest.approx(0.1875, abs=1e-15)
    # d = 0.1, 0.2, 0.3 and K = 10: 0.1·0.9 + 0.1·(2/3 − 0.1) + 0.1·(1/3 − 0.1) = 0.17.
    assert ara([0.1, 0.2, 0.3], None, 10, method="exact") == pytest.approx(0.17, abs=1e-12)


def test_correct_mask_sets_distortion_to_zero():
    d = np.array([0.25, 0.5, 0.75, 1.0])
    correct = np.array([True, True, True, False])
    # Masked: d = (0.25, 0.5, 0.75, 0); K = 2: survival 3/4 on [0, .25), 1/2 after: 0.0625.
    assert ara(d, correct, 2, method="exact") == pytest.approx(0.0625, abs=1e-15)
    assert ara(d, correct, 2, method="exact") == ara(np.array([0.25, 0.5, 0.75, 0.0]), None, 2,
                                                      method="exact")
    assert ara(d, correct.astype(np.int32), 2) == ara(d, correct, 2)


@pytest.mark.parametrize("method", ["exact", "riemann"])
def test_all_wrong_is_zero(method):
    d = np.array([0.3, 0.1, 0.2])
    assert ara(d, np.zeros(3, bool), 10, method=method) == 0.0
    assert ara(np.zeros(5), None, 10, method=method) == 0.0


@pytest.mark.parametrize("n", [1, 7])
def test_ties_and_single_example(n):
    c, k, bins = 0.0123, 10, 1000
    d = np.full(n, c)
    assert ara(d, None, k, method="exact") == pytest.approx(c * (1 - 1 / k), rel=1e-12)
    # Riemann: every example sits in the last bin, so A_j = 1 except A_last = 0.
    assert ara(d, None, k, bins=bins) == pytest.approx(c * (1 - 1 / bins) * (1 - 1 / k), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 10, 100])
def test_exact_matches_quadrature_and_fine_grid(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    d = rng.exponential(0.02, size=n)
    d[rng.random(n) < 0.2] = 0.0  # some misclassified examples
    exact = ara(d, None, k, method="exact")
    assert exact == pytest.approx(ara_quad(d, k), abs=1e-12)
    assert exact == pytest.approx(ara_fine_grid(d, k), abs=n * d.max() / 200_001 + 1e-15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bins", [1, 10, 1000])
def test_riemann_matches_official_recipe_and_is_below_exact(seed, bins):
    rng = np.random.default_rng(100 + seed)
    d = rng.gamma(2.0, 0.01, size=int(rng.integers(1, 300)))
    k = 10
    riemann = ara(d, None, k, bins=bins)
    exact = ara(d, None, k, method="exact")
    assert riemann == pytest.approx(ara_riemann_reference(d, k, bins), rel=1e-12, abs=1e-15)
    assert riemann <= exact + 1e-15
    # A right Riemann sum of a non-increasing function misses at most gap · (A(0) − A(d_max)).
    assert exact - riemann <= d.max() / bins + 1e-15


def test_paper_toy_gap_is_small():
    # papers.md quotes a toy check 0.02177 (Riemann) vs 0.02189 (exact); here the relative gap of
    # 1000 bins on a realistic distribution is of the same order (below 1%).
    rng = np.random.default_rng(0)
    d = rng.exponential(0.02, size=1000)
    riemann, exact = ara(d, None, 10), ara(d, None, 10, method="exact")
    assert 0 <= (exact - riemann) / exact < 0.01


distortion_lists = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)),
    min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(distortion_lists, st.randoms(use_true_random=False), st.sampled_from([2, 10, 1000]))
def test_order_invariance(values, rnd, k):
    d = np.array(values)
    perm = np.array(rnd.sample(range(len(values)), len(values)))
    for method in ("exact", "riemann"):
        assert ara(d[perm], None, k, method=method) == ara(d, None, k, method=method)


@settings(max_examples=60, deadline=None)
@given(distortion_lists, st.sampled_from([2, 10]), st.integers(-3, 3))
def test_riemann_below_exact_and_scale_equivariant(values, k, log2_scale):
    d = np.array(values)
    riemann, exact = ara(d, None, k), ara(d, None, k, method="exact")
    assert riemann <= exact + 1e-15
    assert exact <= (1 - 1 / k) * d.max() + 1e-15
    s = 2.0 ** log2_scale  # powers of two scale exactly, so even the binning is unchanged
    assert ara(s * d, None, k) == pytest.approx(s * riemann, rel=1e-12, abs=1e-300)
    assert ara(s * d, None, k, method="exact") == pytest.approx(s * exact, rel=1e-12, abs=1e-300)


def test_accuracy_vs_distortion_is_the_survival_function():
    rng = np.random.default_rng(3)
    d = rng.exponential(0.02, size=50)
    correct = rng.random(50) < 0.8
    grid = np.linspace(0, 0.1, 37)
    acc = accuracy_vs_distortion(d, correct, grid)
    brute = np.array([np.mean(correct & (d > e)) for e in grid])
    np.testing.assert_array_equal(acc, brute)
    assert acc[0] == pytest.approx(correct.mean())
    assert np.all(np.diff(acc) <= 0)
    # The exact ARA is the integral of this curve above 1/K.
    fine = np.linspace(0, d.max(), 400_001)
    mid = 0.5 * (fine[1:] + fine[:-1])
    integral = np.sum(np.diff(fine) * np.maximum(0, accuracy_vs_distortion(d, correct, mid) - 0.1))
    assert ara(d, correct, 10, method="exact") == pytest.approx(integral, abs=50 * d.max() / 4e5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(distortions=np.array([0.1, -0.2])), ValueError, "distortions.*>= 0"),
        (dict(distortions=np.array([0.1, np.nan])), ValueError, "distortions.*NaN"),
        (dict(distortions=np.zeros((2, 2))), ValueError, "distortions.*rank 1"),
        (dict(distortions=np.zeros(0)), ValueError, "at least one"),
        (dict(correct=np.ones(3, bool)), ValueError, "correct.*shape"),
        (dict(correct=np.array([0, 2])), ValueError, "correct"),
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(num_classes=2.5), ValueError, "num_classes"),
        (dict(method="trapezoid"), ValueError, "method"),
        (dict(bins=0), ValueError, "bins"),
    ],
)
def test_bad_inputs_are_named(kwargs, exc, match):
    args = dict(distortions=np.array([0.1, 0.2]), correct=None, num_classes=10)
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k in ("method", "bins")}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ara(args["distortions"], args["correct"], args["num_classes"], **extra)
