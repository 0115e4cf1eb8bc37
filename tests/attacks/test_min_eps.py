"""Minimum eps by bisection: closed-form minimal distances of a linear model; the curve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.apgd import apgd
from advjax.attacks.min_eps import accuracy_vs_eps, min_eps
from tests.attacks.conftest import linear_min_l2


def test_bisection_finds_the_closed_form_minimum(linear_problem):
    # APGD-DLR L2 on a linear model succeeds for every eps a little above the minimal distance d
    # (closed form) and can never succeed below it, so the bisection lands in
    # [d, d * 1.01 + eps_max / 2**steps].
    p = linear_problem
    d = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    labels = p.labels.copy()
    labels[0] = (labels[0] + 1) % 4                             # misclassified: eps_min = 0
    search = jax.jit(jax.vmap(min_eps(apgd(p.logits_fn, norm="l2", loss="dlr", steps=20),
                                      eps_max=1.0, steps=12)))
    keys = jax.random.split(jax.random.key(0), len(d))
    e, r = search(jnp.asarray(p.xs), jnp.asarray(labels), key=keys)
    e = np.asarray(e)
    tol = 1.0 / 2 ** 12
    assert e[0] == 0
    assert np.all(e[1:] >= d[1:] * (1 - 1e-5)) and np.all(e[1:] <= d[1:] * 1.01 + tol)
    assert np.asarray(r.success).all()
    assert np.all(np.asarray(r.l2)[1:] <= e[1:] * (1 + 1e-5))
    # The curve: from the per-example minima, no loop over eps.
    grid = np.array([0.0, np.median(e), 10.0])
    np.testing.assert_allclose(accuracy_vs_eps(e, grid), [(e > g).mean() for g in grid])
    assert accuracy_vs_eps(np.array([np.inf, 0.1, np.nan]), [0.2])[0] == 0.5
    with pytest.raises(ValueError, match="eps_max"):
        min_eps(apgd(p.logits_fn), eps_max=0.0)


def test_unreachable_is_inf(linear_problem):
    p = linear_problem
    search = jax.jit(min_eps(apgd(p.logits_fn, norm="l2", steps=5), eps_max=1e-3, steps=3))
    e, _ = search(jnp.asarray(p.xs[1]), jnp.asarray(p.labels[1]), key=jax.random.key(0))
    assert np.isinf(float(e))


# A 1-D linear model whose decision boundary lies at exactly float32(0.3) from x = 0 in L∞ and L2:
# z = x @ W + b = (x - 0.3, 0.3 - x), label 1. At x_adv = float32(0.3) both logits are exactly 0
# (Sterbenz), argmax takes class 0: broken; one float32 below, class 1 wins. The closed form
# (z_y - z_j) / ||w_y - w_j|| = 0.6 / 2 gives the same minimal distortion in both norms.
_W = np.array([[1.0, -1.0]], np.float32)
_B = np.array([-0.3, 0.3], np.float32)
_E3 = np.float32(0.3)


def _edge_model(x):
    return x.reshape(-1) @ jnp.asarray(_W) + jnp.asarray(_B)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_curve_counts_an_example_broken_at_exactly_the_grid_budget(norm):
    from advjax.attacks import fgsm
    from advjax.metrics import robust_accuracy_curve
    from tests.attacks.conftest import linear_min_linf

    x, y = jnp.zeros((1,), jnp.float32), jnp.asarray(1)
    closed = (linear_min_linf if norm == "linf" else linear_min_l2)(
        _W.astype(np.float64), _B.astype(np.float64), np.zeros(1), 1)
    assert closed == pytest.approx(0.3, abs=1e-7)
    attack = fgsm(_edge_model, norm=norm)
    # The premise, checked: this attack breaks the example at float32(0.3) and not just below.
    assert bool(attack(x, y, eps=jnp.float32(_E3)).success)
    assert not bool(attack(x, y, eps=jnp.float32(np.nextafter(_E3, np.float32(0)))).success)
    # Bisection from eps_max = 0.6: the first midpoint is float32(0.3) exactly.
    e, r = jax.jit(min_eps(attack, eps_max=0.6, steps=12))(x, y, key=jax.random.key(0))
    assert e.dtype == jnp.float32 and float(e) == float(_E3)
    assert bool(r.success) and float(r.linf) == float(_E3)
    grid = [0.29, 0.3, 0.31]
    # Independent truth: robust accuracy from running the attack at each grid budget.
    _, truth = robust_accuracy_curve(attack, x[None], y[None], grid, key=jax.random.key(0))
    np.testing.assert_array_equal(truth, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(accuracy_vs_eps(np.asarray(e)[None], grid), truth)
    # The grid is rounded to the budget's dtype, so float64 budgets keep float64 comparisons.
    assert accuracy_vs_eps(np.array([0.3]), [np.nextafter(0.3, 0)])[0] == 1.0
    # A budget beyond float32's range rounds to inf; never-broken examples stay robust there.
    np.testing.assert_array_equal(
        accuracy_vs_eps(np.array([np.inf, 1.0], np.float32), [1e39]), [0.5])


def test_a_success_below_eps_max_is_kept_when_eps_max_fails():
    # A deterministic attack whose success is not monotone in eps: FGSM on the model above
    # (succeeds for eps >= float32(0.3)) reported as failing for eps >= 0.8. At eps_max = 1 it
    # fails, at the first midpoint 0.5 it succeeds; the bisection then closes in on 0.3.
    from advjax.attacks import fgsm

    inner = fgsm(_edge_model, norm="linf")

    def band(x, label, *, eps, key=None):
        r = inner(x, label, eps=eps, key=key)
        return r.replace(success=r.success & (eps < 0.8))

    x, y = jnp.zeros((1,), jnp.float32), jnp.asarray(1)
    assert not bool(band(x, y, eps=jnp.float32(1.0)).success)
    steps = 12
    search = jax.jit(jax.vmap(min_eps(band, eps_max=1.0, steps=steps)))
    e, r = search(x[None], y[None], key=jax.random.split(jax.random.key(0), 1))
    e = float(e[0])
    assert float(_E3) <= e <= float(_E3) + 1.0 / 2 ** steps
    assert bool(r.success[0])
    np.testing.assert_array_equal(np.asarray(r.x_adv[0]), [e])  # the adversarial found at e
    assert float(r.linf[0]) == e
