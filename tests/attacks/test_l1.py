"""The L1 threat model: the exact L1-ball ∩ box projection, APGD-L1, FAB-L1's hyperplane step and
AutoAttack's L1 stages, against independent truths (a float64 bisection, the projection's
variational inequality, scipy's linear programs, the closed-form knapsack of a linear model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from advjax import attacks
from advjax.attacks import projections
from advjax.attacks.apgd import l1_schedule, l1_sparse_step
from advjax.attacks.fab import project_hyperplane_box


def _bisection_projection(xa, x, eps, lo, hi):
    """float64 reference: ``z = x + sign(v) clip(|v| - lam, 0, room)`` with ``lam`` found by 200
    bisection steps on ``sum clip(|v| - lam, 0, room) = eps`` (0 when already inside)."""
    v = xa - x
    av = np.abs(v)
    room = av if lo is None else np.where(v >= 0, hi - x, x - lo)
    f = lambda lam: np.clip(av - lam, 0, room).sum()  # noqa: E731
    if f(0.0) <= eps:
        return x + np.sign(v) * np.minimum(av, room)
    a, b = 0.0, av.max()
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if f(m) > eps else (a, m)
    return x + np.sign(v) * np.clip(av - b, 0, room)


def _cases(n, seed=0):
    rng = np.random.default_rng(seed)
    for t in range(n):
        d = int(rng.integers(1, 50))
        x = rng.uniform(0, 1, d)
        x[rng.uniform(size=d) < 0.2] = rng.choice([0.0, 1.0])      # points on the box's faces
        xa = x + rng.normal(0, rng.uniform(0.01, 2), d)
        eps = [0.0, rng.uniform(0, 0.5), rng.uniform(0, 5)][t % 3]
        box = (0.0, 1.0) if t % 4 else (None, None)
        yield x, xa, eps, box


def test_l1_box_projection_matches_a_float64_bisection():
    for x, xa, eps, (lo, hi) in _cases(300):
        p = np.asarray(projections.project_l1_box(jnp.asarray(xa, jnp.float32),
                                                  jnp.asarray(x, jnp.float32), eps, lo, hi))
        ref = _bisection_projection(xa, x, eps, lo, hi)
        # float32 inputs: 1e-5 absolute on coordinates of order 1.
        np.testing.assert_allclose(p, ref, atol=1e-5)
        assert np.abs(p - np.float32(x)).sum() <= eps + 1e-5
        if lo is not None:
            assert p.min() >= lo and p.max() <= hi


def test_l1_box_projection_is_the_nearest_feasible_point():
    # Variational inequality of a Euclidean projection onto a convex set C:
    # <xa - p, z - p> <= 0 for every z in C. Checked against random feasible points and the
    # ball's vertices clipped to the box (all in C), in float64 from the float32 result.
    rng = np.random.default_rng(1)
    for x, xa, eps, (lo, hi) in _cases(100, seed=2):
        xa32, x32 = np.float32(xa), np.float32(x)
        p = np.asarray(projections.project_l1_box(jnp.asarray(xa32), jnp.asarray(x32), eps, lo,
                                                  hi), np.float64)
        d = x.size
        zs = []
        for _ in range(30):
            u = rng.laplace(size=d)
            z = x32 + u / np.abs(u).sum() * eps * rng.uniform()
            zs.append(z if lo is None else np.clip(z, lo, hi))
        for i in range(d):
            for s in (-1, 1):
                z = np.array(x32, np.float64)
                z[i] += s * eps
                zs.append(z if lo is None else np.clip(z, lo, hi))
        for z in zs:
            assert np.dot(xa32 - p, z - p) <= 1e-5 * (1 + np.abs(xa32 - p).sum()), (eps, d)


def test_l1_sparse_step_keeps_the_top_k_signs_with_unit_l1_norm():
    g = jnp.asarray([0.1, -3.0, 2.0, 0.0, -0.5, 1.0, 0.2, -0.3, 4.0, 0.05])
    s = np.asarray(l1_sparse_step(g, jnp.float32(0.3)))     # top 3 of 10
    np.testing.assert_allclose(s, np.array([0, -1, 1, 0, 0, 0, 0, 0, 1, 0]) / 3, atol=1e-7)
    assert l1_schedule(100) == ((3.0, 30), (2.0, 30), (1.0, 40))   # autopgd_base.py's


def test_fab_l1_hyperplane_step_matches_a_linear_program():
    # min ||d||_1 s.t. w . (p + d) = b, lo <= p + d <= hi: scipy's LP with d = d+ - d-.
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(2, 20))
        p = rng.uniform(0, 1, n)
        w = rng.normal(size=n)
        b = float(w @ p + rng.normal(0, 0.5))
        d = np.asarray(project_hyperplane_box(jnp.asarray(p, jnp.float32),
                                              jnp.asarray(w, jnp.float32), jnp.float32(b),
                                              0.0, 1.0, "l1"), np.float64)
        res = scipy.optimize.linprog(np.ones(2 * n), A_eq=np.concatenate([w, -w])[None],
                                     b_eq=[b - w @ p],
                                     bounds=[(0, 1 - pi) for pi in p] + [(0, pi) for pi in p])
        if res.status != 0:           # the hyperplane misses the box: every coordinate at a bound
            continue
        assert abs(np.abs(d).sum() - res.fun) <= 1e-4 * (1 + res.fun)
        assert abs(w @ (p + d) - b) <= 1e-4 * (1 + abs(b))
        assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)


def _binary_linear(seed, d=36):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x = rng.uniform(0.2, 0.8, d)
    m = 0.6                               # margin z_0 - z_1 at x
    W = np.stack([w, np.zeros(d)], 1)
    b = np.array([m - w @ x, 0.0])
    return W, b, x


def _best_margin_reduction(W, b, x, eps):
    """Closed form: the largest decrease of z_0 - z_1 within ||d||_1 <= eps and the box [0, 1]:
    the knapsack fills the largest |w_i| first, each up to its room towards -sign(w_i)."""
    w = W[:, 0] - W[:, 1]
    room = np.where(w > 0, x, 1 - x)
    total, left = 0.0, eps
    for i in np.argsort(-np.abs(w)):
        take = min(room[i], left)
        total += take * abs(w[i])
        left -= take
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apgd_l1_reaches_the_l1_optimal_margin_of_a_linear_model(seed):
    W, b, x = _binary_linear(seed)
    fn = lambda z: z.reshape(-1) @ jnp.asarray(W, jnp.float32) + jnp.asarray(b, jnp.float32)  # noqa: E731
    w = W[:, 0] - W[:, 1]
    # Budgets: a third of the minimal L1 distance (not breakable: the margin left must be the
    # closed form's, to 2 % of the decrease), and 5 % above it (must break).
    reach = np.cumsum(np.sort(np.abs(w) * np.where(w > 0, x, 1 - x))[::-1])
    lo_eps, hi_eps = 0.02, 5.0
    for _ in range(60):                   # the minimal L1 distance, by bisection on the budget
        mid = (lo_eps + hi_eps) / 2
        lo_eps, hi_eps = ((mid, hi_eps) if _best_margin_reduction(W, b, x, mid) < 0.6
                          else (lo_eps, mid))
    assert reach[-1] > 0.6
    d_min = hi_eps
    attack = attacks.apgd(fn, norm="l1", steps=100, loss="ce")
    x32 = jnp.asarray(x, jnp.float32)
    small = attack(x32, 0, eps=d_min / 3, key=jax.random.key(seed))
    z = np.asarray(small.x_adv, np.float64)
    achieved = 0.6 - ((z @ W + b)[0] - (z @ W + b)[1])
    best = _best_margin_reduction(W, b, x, d_min / 3)
    assert not bool(small.success)
    assert achieved <= best + 1e-5                      # no budget can be beaten
    assert achieved >= 0.98 * best, (achieved, best)
    big = attack(x32, 0, eps=1.05 * d_min, key=jax.random.key(seed))
    assert bool(big.success)
    assert np.abs(np.asarray(big.x_adv) - x).sum() <= 1.05 * d_min + 1e-4


def test_autoattack_l1_stages_and_settings():
    fn = lambda z: z.reshape(-1) @ jnp.ones((16, 10)) * jnp.arange(10.0)  # noqa: E731
    aa = attacks.autoattack(fn, norm="l1")
    assert aa.stages == ("apgd-ce", "apgd-t", "fab-t")
    from advjax.attacks.autoattack import settings_for
    cfg = settings_for("standard", "l1")
    assert (cfg.apgd_restarts, cfg.apgd_n_targets, cfg.n_targets) == (5, 5, 9)
    with pytest.raises(ValueError, match="square"):
        attacks.autoattack(fn, norm="l1", attacks=("apgd-ce", "square"))
