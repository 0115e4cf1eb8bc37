"""Regressions of the graph walk (issue 32): constructions that crashed, or were bounded unsoundly.

Truth for the bounds: the float64 Jacobian SVD at sampled points (a sound bound is >= every one)
and, for jumps, the executed function itself (a bound claimed for a function that jumps is wrong).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from advjax.lipschitz import UnsupportedPrimitiveError, layer_bounds


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
