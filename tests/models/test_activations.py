"""Half-Huber ReLU against its closed form (any delta), activation lookup, 2×2 max pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from advjax.models import activation, half_huber_relu, max_pool_2x2
from tests.models._reference import hhrelu as hhrelu_np


@pytest.mark.parametrize("delta", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("jit", [False, True])
def test_hhrelu_closed_form_and_derivatives(delta, jit):
    x = np.linspace(-3, 3, 601).astype(np.float32)
    f = jax.jit(half_huber_relu, static_argnums=1) if jit else half_huber_relu
    np.testing.assert_allclose(f(x, delta), hhrelu_np(x.astype(np.float64), delta),
                               rtol=1e-6, atol=1e-6)
    d1 = jax.vmap(jax.grad(lambda t: half_huber_relu(t, delta)))
    d2 = jax.vmap(jax.grad(jax.grad(lambda t: half_huber_relu(t, delta))))
    d1, d2 = (jax.jit(d1), jax.jit(d2)) if jit else (d1, d2)
    # First derivative: clip(x, 0, delta) / delta (papers.md §2.8), continuous.
    np.testing.assert_allclose(d1(x), np.clip(x, 0, delta) / delta, rtol=1e-6, atol=1e-6)
    # Second derivative: 1/delta strictly inside (0, delta), 0 outside [0, delta].
    inside = (x > 1e-3) & (x < delta - 1e-3)
    outside = (x < -1e-3) | (x > delta + 1e-3)
    np.testing.assert_allclose(np.asarray(d2(x))[inside], 1.0 / delta, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d2(x))[outside], 0.0, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(x=st.floats(-10, 10, allow_nan=False, width=32), delta=st.floats(0.05, 4.0))
def test_hhrelu_bounds_and_continuity(x, delta):
    y = float(half_huber_relu(jnp.float32(x), delta))
    # max(x - delta/2, 0) <= HHReLU(x) <= ReLU(x): the bowl lies between the two ramps.
    assert max(x - delta / 2, 0.0) - 1e-5 <= y <= max(x, 0.0) + 1e-5
    # Continuity at the knots: the values on both sides differ by at most slope (<= 1) * 2h.
    for knot in (0.0, delta):
        lo = float(half_huber_relu(jnp.float32(knot - 1e-4), delta))
        hi = float(half_huber_relu(jnp.float32(knot + 1e-4), delta))
        assert abs(hi - lo) <= 2e-4 + 1e-5  # slope <= 1: no jump


def test_hhrelu_finite_gradients_far_out():
    g = jax.vmap(jax.grad(lambda t: half_huber_relu(t, 0.5)))(jnp.array([-1e30, 1e30, 0.0, 0.5]))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [0.0, 1.0, 0.0, 1.0])


def test_hhrelu_rejects_bad_delta():
    with pytest.raises(ValueError, match="delta"):
        half_huber_relu(jnp.ones(3), 0.0)
    with pytest.raises(ValueError, match="delta"):
        activation("hhrelu", delta=-1.0)


def test_activation_lookup_matches_references():
    x = np.linspace(-4, 4, 81).astype(np.float32)
    np.testing.assert_allclose(activation("relu")(x), np.maximum(x, 0))
    np.testing.assert_allclose(activation("sigmoid")(x), scipy.special.expit(x), rtol=1e-6)
    np.testing.assert_allclose(activation("tanh")(x), np.tanh(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(activation("leaky_relu")(x), np.where(x > 0, x, 0.01 * x),
                               rtol=1e-6)
    np.testing.assert_allclose(activation("leaky_relu", negative_slope=0.2)(x),
                               np.where(x > 0, x, 0.2 * x), rtol=1e-6)
    np.testing.assert_allclose(activation("hhrelu", delta=0.25)(x), hhrelu_np(x, 0.25),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="`name` must be one of"):
        activation("gelu")
    with pytest.raises(ValueError, match="takes settings"):
        activation("relu", delta=0.5)


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 5, 7, 2)])
def test_max_pool_2x2_matches_numpy(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    b, h, w, c = shape
    ref = x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    np.testing.assert_array_equal(max_pool_2x2(x), ref)
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x), ref)
    with pytest.raises(ValueError, match="rank 4"):
        max_pool_2x2(x[0])
