"""The per-example c search against a plain-Python transcription of the cleverhans loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advjax.attacks.c_search import c_search


def reference_search(c_star, dist_fn, initial_const, steps, growth=10.0):
    """cleverhans ``LBFGS_impl.attack`` bookkeeping (papers.md Appendix A), in plain Python.

    ``solve(c)`` succeeds iff ``c >= c_star`` with distortion ``dist_fn(c)``.
    """
    lower, upper, c = 0.0, math.inf, initial_const
    best_d, best_c, n_ok, tried = math.inf, None, 0, []
    for _ in range(steps):
        tried.append(c)
        ok = c >= c_star
        if ok:
            n_ok += 1
            if dist_fn(c) < best_d:
                best_d, best_c = dist_fn(c), c
            upper = min(upper, c)
            c = (lower + upper) / 2
        else:
            lower = max(lower, c)
            c = c * growth if math.isinf(upper) else (lower + upper) / 2
    return {"distortion": best_d, "const": best_c if best_c is not None else tried[-1],
            "lower": lower, "upper": upper, "num_successes": n_ok, "tried": tried}


def _solve_factory(c_star, dist_kind="linear"):
    """A synthetic inner solve: success iff ``c >= c_star``; candidate = ``[c, c]``."""

    def dist(c):
        if dist_kind == "linear":
            return c
        return jnp.abs(c - 2.0 * c_star) + 1.0  # not monotone: the smallest is not the first

    def solve(c):
        return jnp.stack([c, c]), c >= c_star, dist(c)

    return solve


def _np_dist(c, c_star, dist_kind):
    return c if dist_kind == "linear" else abs(c - 2.0 * c_star) + 1.0


@pytest.mark.parametrize("c_star,initial_const,steps,dist_kind", [
    (3.7, 1e-2, 9, "linear"),      # three growth steps (0.01, 0.1, 1 fail; 10 succeeds), bisection
    (3.7, 1e-2, 3, "linear"),      # never succeeds within the budget
    (1e-4, 1e-2, 6, "linear"),     # first c already succeeds: halving down
    (0.37, 1.0, 8, "nonmonotone"),  # the kept candidate is the least distorted, not the last one
    (5.0, 5.0, 5, "linear"),       # success exactly at c_star
])
def test_matches_reference_loop(c_star, initial_const, steps, dist_kind, maybe_jit):
    # Truth: the plain-Python cleverhans loop (float64); tolerance float32 round-off.
    ref = reference_search(c_star, lambda c: _np_dist(c, c_star, dist_kind), initial_const, steps)
    solve = _solve_factory(c_star, dist_kind)
    fallback = jnp.full((2,), -1.0)
    run = lambda c0: c_search(solve, c0, fallback, search_steps=steps)
    out = maybe_jit(run)(initial_const)
    assert bool(out.success) == (ref["num_successes"] > 0)
    assert int(out.num_successes) == ref["num_successes"]
    np.testing.assert_allclose(float(out.const), ref["const"], rtol=1e-5)
    np.testing.assert_allclose(float(out.lower), ref["lower"], rtol=1e-5)
    if math.isinf(ref["upper"]):
        assert math.isinf(float(out.upper))
        assert math.isinf(float(out.distortion))
        np.testing.assert_array_equal(np.asarray(out.x_best), [-1.0, -1.0])  # the fallback
    else:
        np.testing.assert_allclose(float(out.upper), ref["upper"], rtol=1e-5)
        np.testing.assert_allclose(float(out.distortion), ref["distortion"], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out.x_best), [ref["const"]] * 2, rtol=1e-5)
        # The bracket holds the threshold: lower < c_star <= upper.
        assert float(out.lower) < c_star <= float(out.upper) * (1 + 1e-6)


def test_bisection_converges_to_threshold():
    # After growth to the first success, every bisection step halves the bracket [c/10, c]:
    # with 30 steps the smallest successful c is within float32 precision of c_star.
    c_star = 0.123456
    out = c_search(_solve_factory(c_star), 1e-3, jnp.zeros(2), search_steps=30)
    np.testing.assert_allclose(float(out.upper), c_star, rtol=1e-5)
    np.testing.assert_allclose(float(out.distortion), c_star, rtol=1e-5)


def test_growth_factor_and_cap():
    # growth=2: the first success is the first power of two times c0 above c_star.
    out = c_search(_solve_factory(5.0), 1.0, jnp.zeros(2), search_steps=4, growth=2.0)
    assert float(out.upper) == 8.0 and float(out.lower) == 4.0
    capped = c_search(_solve_factory(1e9), 1.0, jnp.zeros(2), search_steps=6, max_const=100.0)
    assert not bool(capped.success) and float(capped.const) == 100.0


def test_jit_vmap_per_example_threshold_and_initial_const():
    # Each example has its own c_star (closed over through a vmapped argument) and its own c0.
    c_stars = jnp.asarray([0.05, 3.7, 1e-4, 40.0])
    c0s = jnp.asarray([1e-2, 1e-2, 1.0, 0.5])

    def one(c_star, c0):
        return c_search(lambda c: (jnp.stack([c, c]), c >= c_star, c), c0, jnp.zeros(2),
                        search_steps=7)

    batched = jax.jit(jax.vmap(one))(c_stars, c0s)
    for i in range(4):
        ref = reference_search(float(c_stars[i]), lambda c: c, float(c0s[i]), 7)
        np.testing.assert_allclose(float(batched.const[i]), ref["const"], rtol=1e-5)
        assert int(batched.num_successes[i]) == ref["num_successes"]
        single = one(c_stars[i], c0s[i])
        np.testing.assert_allclose(float(batched.upper[i]), float(single.upper), rtol=1e-6)


def test_bad_settings():
    solve = _solve_factory(1.0)
    with pytest.raises(ValueError, match="search_steps"):
        c_search(solve, 1.0, jnp.zeros(2), search_steps=0)
    with pytest.raises(ValueError, match="growth"):
        c_search(solve, 1.0, jnp.zeros(2), search_steps=3, growth=1.0)
    with pytest.raises(ValueError, match="initial_const"):
        c_search(solve, -1.0, jnp.zeros(2), search_steps=3)
    with pytest.raises(ValueError, match="initial_const"):
        c_search(solve, float("nan"), jnp.zeros(2), search_steps=3)
    with pytest.raises(ValueError, match="initial_const"):
        c_search(solve, jnp.ones(2), jnp.zeros(2), search_steps=3)


_JITTED_SEARCH = jax.jit(lambda c_star, c0: c_search(
    lambda c: (jnp.stack([c, c]), c >= c_star, c), c0, jnp.zeros(2), search_steps=8))


@settings(max_examples=40, deadline=None)
@given(log_c_star=st.floats(-5.0, 5.0), log_c0=st.floats(-4.0, 2.0))
def test_property_bracket_and_reference(log_c_star, log_c0):
    # For any threshold and start: same bookkeeping as the reference loop, and the bracket
    # [lower, upper] always contains the threshold.
    c_star, c0 = 10.0 ** log_c_star, 10.0 ** log_c0
    out = _JITTED_SEARCH(jnp.float32(c_star), jnp.float32(c0))
    c_star32, c032 = float(np.float32(c_star)), float(np.float32(c0))
    ref = reference_search(c_star32, lambda c: c, c032, 8)
    assert int(out.num_successes) == ref["num_successes"]
    assert float(out.lower) <= c_star32 * (1 + 1e-6)
    if ref["num_successes"]:
        assert float(out.upper) >= c_star32 * (1 - 1e-6)
        np.testing.assert_allclose(float(out.distortion), ref["distortion"], rtol=1e-5)
