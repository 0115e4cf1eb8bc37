"""Regressions of the graph walk: constructions that crashed, or were bounded unsoundly.

Truth for the bounds: the float64 Jacobian SVD at sampled points (a sound bound is >= every one)
and, for jumps, the executed function itself (a bound claimed for a function that jumps is wrong).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from advjax.lipschitz import UnsupportedPrimitiveError, certified_radius, layer_bounds


def _sampled_jacobian_norm(fn, shape, n=64, scale=3.0, seed=0) -> float:
    """Largest float64 Jacobian spectral norm of ``fn`` at ``n`` random points (a lower bound of
    its Lipschitz constant)."""
    rng = np.random.default_rng(seed)
    with jax.enable_x64():
        jac = jax.jit(jax.jacfwd(fn))
        best = 0.0
        for _ in range(n):
            x = jnp.asarray(rng.normal(scale=scale, size=shape), jnp.float64)
            j = np.asarray(jac(x), np.float64).reshape(-1, int(np.prod(shape)))
            best = max(best, float(np.linalg.svd(j, compute_uv=False)[0]))
    return best


# ---------------------------------------------------------------------------------------------
# Crashes
# ---------------------------------------------------------------------------------------------


def test_max_of_two_predicates_is_a_predicate():
    # was AttributeError in _Evaluator._grow (a predicate has no growth record)
    fn = lambda x: jnp.where(jnp.maximum(x > 0, x > 1), x, 0.0)
    assert layer_bounds(fn, jnp.zeros(4)).total == 1.0
    fn = lambda x: jnp.where(jnp.minimum(x > 0, x < 1), x, 0.0)  # jumps at 1
    with pytest.raises(UnsupportedPrimitiveError, match="discontinuous"):
        layer_bounds(fn, jnp.zeros(4))
    fn = lambda x: jnp.where(jnp.minimum(x > 0, x < 1), x * (1 - x), 0.0)  # continuous
    assert layer_bounds(fn, jnp.zeros(4)).total >= _sampled_jacobian_norm(fn, (4,), scale=1.0)


def test_prng_keys_built_from_literals_are_constants():
    # was TypeError: the matcher called np.asarray on a key
    fn = lambda x: x + jax.random.normal(jax.random.key(0), x.shape)
    assert layer_bounds(fn, jnp.zeros(4)).total == 1.0
    fn = lambda x: 3.0 * x * jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, x.shape) / 0.5
    assert layer_bounds(fn, jnp.zeros(8)).total <= 6.0


def test_side_effects_are_never_executed():
    calls = []

    def cb(v):
        calls.append(v)
        return np.float32(2.0)

    fn = lambda x: x * io_callback(cb, jax.ShapeDtypeStruct((), jnp.float32), 1.0)
    with pytest.raises(UnsupportedPrimitiveError, match="io_callback"):
        layer_bounds(fn, jnp.zeros(4))
    unused = lambda x: (io_callback(cb, jax.ShapeDtypeStruct((), jnp.float32), 1.0), 2 * x)[1]
    assert layer_bounds(unused, jnp.zeros(4)).total == 2.0
    assert calls == []


def test_complex_constants_are_not_cast_to_float():
    fn = lambda x: x * jnp.real(jnp.asarray(1 + 2j, jnp.complex64) * jnp.asarray(1 - 1j))
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        assert layer_bounds(fn, jnp.zeros(4)).total == 3.0


# ---------------------------------------------------------------------------------------------
# Unsound constructions
# ---------------------------------------------------------------------------------------------


def _jump(fn, t=0.0, h=1e-4) -> float:
    """``|f(t + h) − f(t − h)|`` of the executed float32 program (a witness of a jump)."""
    y = fn(jnp.full((3,), t + h, jnp.float32)) - fn(jnp.full((3,), t - h, jnp.float32))
    return float(jnp.max(jnp.abs(y)))


WRAPS = {
        # 1·100 + 1·100 + 100 = 300 wraps to 44 in int8: the test flips at x = 0
        "int8": lambda x: (lambda p: jnp.where(p * 100 + p * 100 + 100 > 50, x, x + 1))(
                (x > 0).astype(jnp.int8)),
        # 0 − 1 wraps to 255 in uint8
        "uint8": lambda x: (lambda p: jnp.where(p - 1 < 5, x, x + 1))((x > 0).astype(jnp.uint8)),
        # integer division truncates: 3 // 2 = 1, 0 // 2 = 0 (exact rationals: 3/2 != 1, 0 != 1)
        "int-div": lambda x: (lambda p: jnp.where(jax.lax.div(p * 3, 2) == 1, x, x + 1))(
                (x > 0).astype(jnp.int32)),
}


@pytest.mark.parametrize("name", sorted(WRAPS))
def test_integer_arithmetic_on_predicates_is_the_executed_one(name):
    fn = WRAPS[name]
    assert _jump(fn) > 0.99  # witness: the executed function jumps by 1 at x = 0 (slope ~5e3)
    with pytest.raises(UnsupportedPrimitiveError, match="wraps around|discontinuous"):
        layer_bounds(fn, jnp.zeros(3))


def test_integer_arithmetic_within_its_dtype_keeps_its_bound():
    fn = lambda x: (lambda p: jnp.where(p * 100 + p * 100 + 100 > 50, x, x + 1))(
            (x > 0).astype(jnp.int32))  # 300 fits: always the first branch
    assert _jump(fn) < 1e-3
    assert layer_bounds(fn, jnp.zeros(3)).total == 1.0
    fn = lambda x: (lambda p: jnp.where(jax.lax.div(p * 3, 2) == 1, x, x))(
            (x > 0).astype(jnp.int32))
    assert layer_bounds(fn, jnp.zeros(3)).total == 1.0


def test_a_jump_below_float64_resolution_inside_a_transcendental_is_refused():
    fn = lambda x: jax.nn.sigmoid(jnp.where(x > 0, x + 40.5, x + 40.0))
    # witness in exact arithmetic: σ(40.5) − σ(40) = e^-40 − e^-40.5 + O(e^-80) > 0, while both
    # round to 1.0 in float64
    assert math.exp(-40.0) - math.exp(-40.5) > 1e-18
    assert 1 / (1 + math.exp(-40.5)) == 1 / (1 + math.exp(-40.0))
    with pytest.raises(UnsupportedPrimitiveError, match="discontinuous"):
        layer_bounds(fn, jnp.zeros(3))


@pytest.mark.parametrize("fn,knot", [
        (lambda x: jax.nn.sigmoid(jnp.where(x > 0, 2 * x, x)), 0.0),
        (lambda x: jnp.where(x > 1, jnp.tanh(x) + (x - 1), jnp.tanh(x)), 1.0),
        (lambda x: jnp.where(x > 0, 1 + x, jnp.exp(x)), 0.0),
        (lambda x: jnp.where(x > 4, jnp.sqrt(x), 2 + (x - 4) / 4), 4.0),
], ids=["sigmoid-rational", "same-expression", "exp-at-0", "sqrt-at-4"])
def test_continuity_through_transcendentals_is_proved_exactly(fn, knot):
    total = layer_bounds(fn, jnp.zeros(3)).total
    assert math.isfinite(total)
    assert _jump(fn, knot, 1e-3) <= total * 2e-3 * (1 + 1e-3)
    assert total >= _sampled_jacobian_norm(fn, (3,), scale=2.0)


def test_products_of_bounds_round_up_and_never_underflow():
    fn = lambda x: jax.lax.fori_loop(0, 700, lambda i, h: h / 3, x)
    total = layer_bounds(fn, jnp.zeros(4)).total
    assert total > 0  # the exact constant 3^-700 ≈ 1e-334 is below every positive float64
    z = jnp.array([1.0, 0.0, -1.0])
    radius = float(certified_radius(z, 0, total))
    assert math.isfinite(radius) and radius > 0
    fn = lambda x: jax.lax.fori_loop(0, 40, lambda i, h: h / 3, x)
    total = layer_bounds(fn, jnp.zeros(4)).total
    assert Fraction(total) >= Fraction(1, 3 ** 40)  # rounded up, not to nearest
    assert total <= 3.0 ** -40 * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------
# One list of call primitives for every traversal
# ---------------------------------------------------------------------------------------------


def test_the_matcher_follows_the_same_calls_as_the_walk():
    from advjax.lipschitz import _normalize, _prims, rules

    assert _normalize._CALLS is _prims.CALLS
    assert {n for n, r in rules.DEFAULT_RULES.items() if r is rules.call_rule} == set(_prims.CALLS)

    @jax.custom_vjp
    def variance(v):
        return jnp.var(v, -1, keepdims=True)

    variance.defvjp(lambda v: (variance(v), v), lambda v, g: (jnp.zeros_like(v),))
    eps = 0.25
    fn = lambda x: (x - jnp.mean(x, -1, keepdims=True)) / jnp.sqrt(variance(x) + eps)
    total = layer_bounds(fn, jnp.zeros(5)).total  # was refused: custom_vjp_call not followed
    assert total == pytest.approx(1 / math.sqrt(eps), rel=1e-6)
    plain = lambda x: (x - jnp.mean(x, -1, keepdims=True)) / jnp.sqrt(
            jnp.var(x, -1, keepdims=True) + eps)  # the same primal, differentiable forward
    assert _sampled_jacobian_norm(plain, (5,), scale=0.05) <= total


def test_normalisations_dispatch_through_the_rule_table():
    from advjax.lipschitz import DEFAULT_RULES

    fn = lambda x: jax.nn.softmax(x)
    assert layer_bounds(fn, jnp.zeros(4)).total == pytest.approx(0.5)
    # without the table's rule the product is walked as is (and refused: exp is unbounded)
    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(fn, jnp.zeros(4), rules=DEFAULT_RULES.without("softmax"))
    # a user's rule for the synthetic primitive is the one applied
    seen = []

    def rule(w, eqn, ins):
        seen.append(eqn.params["match"].kind)
        return DEFAULT_RULES["softmax"](w, eqn, ins)

    table = DEFAULT_RULES.extend({"softmax": rule})
    assert layer_bounds(fn, jnp.zeros(4), rules=table).total == pytest.approx(0.5)
    assert seen and set(seen) == {"softmax"}
