"""benchmarks/minimal_norm_optimality.py: its optimality against an independent numerical
integration of the robust-accuracy curves, and on a linear model whose minimal L2 distances are a
closed form (an attack reaching them scores 1; a uniformly worse one the formula's value)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from tests.attacks.conftest import linear_min_l2, make_linear_problem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mno():
    """The module ``benchmarks/minimal_norm_optimality.py`` (benchmarks is no package)."""
    spec = importlib.util.spec_from_file_location(
        "minimal_norm_optimality", ROOT / "benchmarks" / "minimal_norm_optimality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _curve_area(d, upper, grid):
    """Area under ``eps -> #{d_i > eps} / N`` on ``[0, upper]`` by the trapezoid rule on a fine
    grid: an integration independent of the closed form ``mean(min(d, upper))``."""
    rho = (np.asarray(d)[None, :] > grid[:, None]).mean(1)
    return np.trapezoid(rho, grid) if hasattr(np, "trapezoid") else np.trapz(rho, grid)


def test_optimality_is_the_normalised_area_between_the_curves(mno):
    rng = np.random.default_rng(0)
    best = rng.uniform(0.5, 3.0, 40)
    best[:3] = 0.0                      # clean misclassified
    best[3] = np.inf                    # broken by no attack
    attack = best * rng.uniform(1.0, 1.6, 40)
    attack[4:7] = np.inf                # this attack failed where the others did not
    big = best[np.isfinite(best)].max()
    grid = np.linspace(0.0, big, 200_001)
    a, a_star = _curve_area(attack, big, grid), _curve_area(best, big, grid)
    worst = np.count_nonzero(best) / best.size * big
    want = 1 - (a - a_star) / (worst - a_star)
    # The grid integral of a step curve errs by at most one grid cell per jump: 40 jumps of
    # height 1/40 and width big / 2e5, i.e. ~1.5e-5 in each area; 1e-4 covers it.
    assert mno.optimality(attack, best) == pytest.approx(want, abs=1e-4)
    assert mno.optimality(best, best) == pytest.approx(1.0, abs=1e-12)
    nothing = np.where(best > 0, np.inf, 0.0)    # found no adversarial point at all
    assert mno.optimality(nothing, best) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < mno.optimality(attack, best) < 1.0
    # Median ratio: examples with 0 < best < inf only (36 of 40), inf where the attack failed.
    keep = (best > 0) & np.isfinite(best)
    assert mno.median_ratio(attack, best) == pytest.approx(np.median(attack[keep] / best[keep]))


def test_bad_distances_are_rejected(mno):
    with pytest.raises(ValueError, match="d_attack"):
        mno.optimality(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=">= 0"):
        mno.optimality(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="norm"):
        mno.distances(np.zeros((1, 2)), np.zeros((1, 2)), [True], [False], "l3")


def test_distances_per_norm(mno):
    x = np.zeros((3, 2, 2), np.float32)
    x_adv = x.copy()
    x_adv[:, 0, 0] = [0.5, -0.3, 0.2]
    x_adv[:, 1, 1] = [0.0, 0.4, 0.0]
    adv = np.array([True, True, False])
    wrong = np.array([False, False, True])
    np.testing.assert_allclose(mno.distances(x, x_adv, adv, wrong, "l2"), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(mno.distances(x, x_adv, adv, wrong, "l1"), [0.5, 0.7, 0.0])
    np.testing.assert_allclose(mno.distances(x, x_adv, adv, wrong, "linf"), [0.5, 0.4, 0.0])
    np.testing.assert_allclose(mno.distances(x, x_adv, adv, wrong, "l0"), [1, 2, 0])
    fail = mno.distances(x, x_adv, np.array([False, True, True]), np.zeros(3, bool), "l2")
    assert fail[0] == np.inf and fail[2] == pytest.approx(0.2)


PROBLEM = make_linear_problem(seed=3, shape=(5, 5, 1), num_classes=4, n=12, margin=0.35)


def _deepfool_distances(mno, overshoot):
    P = PROBLEM
    att = attacks.deepfool(P.logits_fn, overshoot=overshoot, candidates=None)
    res = jax.jit(jax.vmap(att))(jnp.asarray(P.xs), jnp.asarray(P.labels))
    x_adv = np.asarray(res.x_adv)
    pred = np.asarray(jax.vmap(lambda x: jnp.argmax(P.logits_fn(x)))(jnp.asarray(x_adv)))
    return mno.distances(P.xs, x_adv, pred != P.labels, np.zeros(len(P.xs), bool), "l2")


def test_closed_form_minimum_scores_one_and_a_worse_attack_the_formula(mno):
    P = PROBLEM
    truth = np.array([linear_min_l2(P.W, P.b, x, y) for x, y in zip(P.xs, P.labels, strict=True)])
    # DeepFool on an affine model with all classes as candidates and the box inactive: one step
    # lands at (1 + overshoot) times the minimal perturbation, plus 1e-4 / ||w|| from its margin
    # offset (relative 1e-4 / m_j, below 1e-3 for margins > 0.1 here).
    exact = _deepfool_distances(mno, 0.0)
    np.testing.assert_allclose(exact, truth, rtol=2e-3)
    assert mno.optimality(exact, truth) == pytest.approx(1.0, abs=2e-3)
    assert mno.median_ratio(exact, truth) == pytest.approx(1.0, abs=2e-3)
    # 10 % overshoot: every distance 1.1 d*; optimality by the closed form of the areas
    # (clean accuracy 1): 1 - (mean min(1.1 d*, D) - mean d*) / (D - mean d*).
    worse = _deepfool_distances(mno, 0.1)
    np.testing.assert_allclose(worse, 1.1 * truth, rtol=2e-3)
    big = truth.max()
    want = 1 - (np.minimum(1.1 * truth, big).mean() - truth.mean()) / (big - truth.mean())
    # 2e-3: the attack's relative error above, carried through areas of order D.
    assert mno.optimality(worse, truth) == pytest.approx(want, abs=2e-3)
    # Here 10 % too far on every example costs ~5 % of the area between best and worst.
    assert mno.optimality(worse, truth) < 0.97
    assert mno.median_ratio(worse, truth) == pytest.approx(1.1, rel=2e-3)


def test_plan_stays_within_the_budget(mno):
    # Every attack's steps are set so that its passes per example (as counted in the module
    # docstring) do not exceed the budget, and use most of it (FAB: within one step of K + 3).
    k = 10
    plan = mno.attack_plan(PROBLEM.logits_fn, "l2", 1000, k)
    assert [e["name"] for e in plan] == ["FMN-L2", "DDN", "CW-L2", "FAB-L2", "DeepFool-L2"]
    for e in plan:
        assert e["passes_max"] <= 1000
        assert e["passes_max"] > 1000 - (k + 3), e["name"]
    assert {e["name"] for e in mno.attack_plan(PROBLEM.logits_fn, "linf", 1000, k)} == {
        "FMN-Linf", "FAB-Linf"}
    assert [e["name"] for e in mno.attack_plan(PROBLEM.logits_fn, "l0", 1000, k)] == ["FMN-L0"]
