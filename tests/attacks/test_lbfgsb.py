"""The pure-JAX box-constrained L-BFGS against scipy's L-BFGS-B, closed forms and KKT conditions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from advjax.attacks._lbfgsb import minimize_box


def _box_quadratic(seed: int, n: int = 12):
    """``0.5 x^T Q x - b^T x`` on a box cutting the unconstrained minimiser (bounds active)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    q = a @ a.T / n + 0.2 * np.eye(n)
    b = rng.normal(size=n) * 2.0
    lo = -rng.uniform(0.1, 0.6, size=n)
    hi = rng.uniform(0.1, 0.6, size=n)
    return q, b, lo, hi


def _scipy_box(fun, grad, x0, lo, hi):
    res = scipy.optimize.minimize(fun, x0, jac=grad, method="L-BFGS-B",
                                  bounds=list(zip(lo, hi, strict=True)),
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 2000})
    return res.x, res.fun


def _active(x, lo, hi, tol):
    return np.where(x <= lo + tol, -1, np.where(x >= hi - tol, 1, 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_quadratic_matches_scipy_float64(seed, maybe_jit):
    # Truth: scipy L-BFGS-B in float64 (tolerances 1e-12); same minimiser to 1e-6, same objective
    # to 1e-10 relative, and the same coordinates at each bound.
    q, b, lo, hi = _box_quadratic(seed)
    x_ref, f_ref = _scipy_box(lambda x: 0.5 * x @ q @ x - b @ x, lambda x: q @ x - b,
                              np.zeros_like(b), lo, hi)
    with jax.enable_x64(True):
        qj, bj = jnp.asarray(q), jnp.asarray(b)

        def solve(x0):
            return minimize_box(lambda x: 0.5 * x @ qj @ x - bj @ x, x0, lo, hi,
                                max_iterations=300, pgtol=1e-12, ftol=0.0)

        res = maybe_jit(solve)(jnp.zeros(b.shape, jnp.float64))
        x = np.asarray(res.x)
        assert res.x.dtype == jnp.float64
        np.testing.assert_allclose(x, x_ref, atol=1e-6)
        np.testing.assert_allclose(float(res.value), f_ref, rtol=1e-10, atol=1e-12)
        act = _active(x, lo, hi, 1e-9)
        np.testing.assert_array_equal(act, _active(x_ref, lo, hi, 1e-9))
        assert np.count_nonzero(act) >= 2, "the box must cut the unconstrained minimiser"
        assert bool(res.converged)
        assert float(res.projected_grad_norm) < 1e-8


def test_box_quadratic_kkt_float32():
    # Independent of scipy: KKT of the box QP. Interior coordinates have zero gradient; coordinates
    # at the lower bound a non-negative gradient, at the upper bound a non-positive one.
    q, b, lo, hi = _box_quadratic(3, n=20)
    qj, bj = jnp.asarray(q, jnp.float32), jnp.asarray(b, jnp.float32)
    res = jax.jit(lambda x0: minimize_box(lambda x: 0.5 * x @ qj @ x - bj @ x, x0, lo, hi,
                                          max_iterations=200, pgtol=1e-5))(jnp.zeros(20))
    x = np.asarray(res.x, np.float64)
    g = q @ x - b
    assert np.all(x >= lo - 1e-7) and np.all(x <= hi + 1e-7)
    at_lo, at_hi = x <= lo + 1e-6, x >= hi - 1e-6
    free = ~at_lo & ~at_hi
    assert np.max(np.abs(g[free]), initial=0.0) < 1e-4
    assert np.all(g[at_lo] > -1e-4) and np.all(g[at_hi] < 1e-4)


def _logistic(seed: int, n: int = 15, m: int = 40):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(m, n))
    y = (rng.random(m) < 0.5).astype(float)
    lo, hi = np.full(n, -0.15), np.full(n, 0.25)

    def f_np(w):
        z = a @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.05 * w @ w)

    def g_np(w):
        z = a @ w
        return a.T @ (1.0 / (1.0 + np.exp(-z)) - y) + 0.1 * w

    def f_jax(w):
        aj, yj = jnp.asarray(a, w.dtype), jnp.asarray(y, w.dtype)
        z = aj @ w
        return jnp.sum(jnp.logaddexp(0.0, z) - yj * z) + 0.05 * jnp.sum(w * w)

    return f_np, g_np, f_jax, lo, hi


@pytest.mark.parametrize("dtype,atol_x,rtol_f", [("float64", 1e-6, 1e-10), ("float32", 2e-3, 1e-5)])
def test_logistic_matches_scipy(dtype, atol_x, rtol_f):
    # Truth: scipy L-BFGS-B in float64 on a bounded L2-regularised logistic regression.
    f_np, g_np, f_jax, lo, hi = _logistic(0)
    x_ref, f_ref = _scipy_box(f_np, g_np, np.zeros_like(lo), lo, hi)
    with jax.enable_x64(dtype == "float64"):
        tol = 1e-12 if dtype == "float64" else 1e-6
        res = jax.jit(lambda x0: minimize_box(f_jax, x0, lo, hi, max_iterations=300, pgtol=tol,
                                              ftol=0.0))(jnp.zeros(lo.shape, dtype))
        x = np.asarray(res.x, np.float64)
    np.testing.assert_allclose(x, x_ref, atol=atol_x)
    np.testing.assert_allclose(f_np(x), f_ref, rtol=rtol_f)
    np.testing.assert_array_equal(_active(x, lo, hi, 1e-6), _active(x_ref, lo, hi, 1e-6))
    assert np.count_nonzero(_active(x_ref, lo, hi, 1e-6)) >= 1


def test_rosenbrock_unbounded_closed_form():
    # Truth: the Rosenbrock minimiser (1, 1) (no bounds); and with the box x <= 0.5 the constrained
    # minimiser (0.5, 0.25) (x = 0.5 is active, y = x^2).
    def rosen(v):
        return (1.0 - v[0]) ** 2 + 100.0 * (v[1] - v[0] ** 2) ** 2

    with jax.enable_x64(True):
        x0 = jnp.asarray([-1.2, 1.0])
        res = jax.jit(lambda x0: minimize_box(rosen, x0, max_iterations=200, pgtol=1e-10))(x0)
        np.testing.assert_allclose(np.asarray(res.x), [1.0, 1.0], atol=1e-6)
        res = minimize_box(rosen, x0, jnp.asarray([-2.0, -2.0]), jnp.asarray([0.5, 2.0]),
                           max_iterations=200, pgtol=1e-10)
        np.testing.assert_allclose(np.asarray(res.x), [0.5, 0.25], atol=1e-6)


def test_jit_vmap_equals_loop_per_example_bounds_and_start():
    # Per-example start points, bounds and problem data all map; results equal single calls.
    q, b, lo, hi = _box_quadratic(4, n=8)
    rng = np.random.default_rng(0)
    bs = jnp.asarray(b[None] + rng.normal(size=(3, 8)), jnp.float32)
    los = jnp.asarray(lo[None] * rng.uniform(0.5, 1.5, size=(3, 8)), jnp.float32)
    his = jnp.asarray(hi[None] * rng.uniform(0.5, 1.5, size=(3, 8)), jnp.float32)
    x0s = jnp.asarray(rng.uniform(-2, 2, size=(3, 8)), jnp.float32)  # outside: projected first
    qj = jnp.asarray(q, jnp.float32)

    def solve(x0, bv, lo_, hi_):
        return minimize_box(lambda x: 0.5 * x @ qj @ x - bv @ x, x0, lo_, hi_, max_iterations=60)

    batched = jax.jit(jax.vmap(solve))(x0s, bs, los, his)
    single_fn = jax.jit(solve)
    for i in range(3):
        single = single_fn(x0s[i], bs[i], los[i], his[i])
        np.testing.assert_allclose(np.asarray(batched.x[i]), np.asarray(single.x), atol=1e-5)
        assert int(batched.iterations[i]) == int(single.iterations)
        assert np.all(np.asarray(batched.x[i]) >= np.asarray(los[i]))
        assert np.all(np.asarray(batched.x[i]) <= np.asarray(his[i]))


def test_matrix_shaped_variable_and_iteration_cap():
    # Works on any shape (flattened inside); never runs more than max_iterations.
    target = jnp.arange(6.0).reshape(2, 3) / 6.0
    res = minimize_box(lambda x: jnp.sum((x - target) ** 2 * jnp.arange(1.0, 7.0).reshape(2, 3)),
                       jnp.zeros((2, 3)), 0.0, 0.5, max_iterations=50, pgtol=1e-7)
    assert res.x.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(res.x), np.minimum(np.asarray(target), 0.5), atol=1e-5)
    capped = minimize_box(lambda x: jnp.sum(jnp.cosh(x - 3.0)), jnp.zeros(4), max_iterations=2)
    assert int(capped.iterations) <= 2 and not bool(capped.converged)


def test_bad_inputs():
    f = lambda x: jnp.sum(x * x)
    with pytest.raises(TypeError, match="x0"):
        minimize_box(f, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="x0"):
        minimize_box(f, jnp.asarray([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="lower"):
        minimize_box(f, jnp.zeros(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="armijo"):
        minimize_box(f, jnp.zeros(3), armijo=1.5)
    with pytest.raises(ValueError, match="max_iterations"):
        minimize_box(f, jnp.zeros(3), max_iterations=0)
    with pytest.raises(ValueError, match="history"):
        minimize_box(f, jnp.zeros(3), history=0)


@jax.jit
def _solve_qp(q, b, lo, hi):
    return minimize_box(lambda x: 0.5 * x @ q @ x - b @ x, jnp.zeros_like(b), lo, hi,
                        max_iterations=200, pgtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.floats(0.05, 2.0))
def test_property_kkt_random_box_qps(seed, width):
    # Any strictly convex box QP (n = 10, one compiled solver): the result is in the box and
    # satisfies KKT to float32 accuracy; the objective is within 1e-5 of scipy L-BFGS-B's.
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(10, 10))
    q = a @ a.T / 10 + 0.3 * np.eye(10)
    b = rng.normal(size=10) * 2.0
    lo = -rng.uniform(0.0, width, size=10)
    hi = rng.uniform(0.0, width, size=10) + 1e-3
    res = _solve_qp(*(jnp.asarray(v, jnp.float32) for v in (q, b, lo, hi)))
    x = np.asarray(res.x, np.float64)
    assert np.all(x >= np.float32(lo) - 1e-7) and np.all(x <= np.float32(hi) + 1e-7)
    g = q @ x - b
    at_lo, at_hi = x <= lo + 1e-5, x >= hi - 1e-5
    free = ~at_lo & ~at_hi
    scale = 1.0 + np.abs(b).max()
    assert np.max(np.abs(g[free]), initial=0.0) < 1e-3 * scale
    assert np.all(g[at_lo] > -1e-3 * scale) and np.all(g[at_hi] < 1e-3 * scale)
    _, f_ref = _scipy_box(lambda v: 0.5 * v @ q @ v - b @ v, lambda v: q @ v - b,
                          np.zeros(10), lo, hi)
    assert 0.5 * x @ q @ x - b @ x <= f_ref + 1e-5 * scale ** 2
