"""Lower bounds (Jacobian norms) and margin certificates: closed forms and attack checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import certified_radius, jacobian_norm, layer_bounds, local_lower_bound


def _mat(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _mlp(seed):
    w1, b1 = _mat(seed, (6, 16), 0.6), _mat(seed + 1, (16,), 0.1)
    w2, b2 = _mat(seed + 2, (16, 4), 0.6), _mat(seed + 3, (4,), 0.1)
    return lambda x: jnp.tanh(x @ w1 + b1) @ w2 + b2


def test_jacobian_norm_of_linear_map_is_sigma_max():
    w = _mat(0, (5, 3))
    true = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
    assert float(jacobian_norm(lambda x: x @ w, jnp.zeros(5))) == pytest.approx(true, rel=1e-5)
    # wide outputs use forward mode: same value
    w2 = _mat(1, (2, 9))
    true2 = np.linalg.svd(np.asarray(w2, np.float64), compute_uv=False)[0]
    assert float(jacobian_norm(lambda x: x @ w2, jnp.zeros(2))) == pytest.approx(true2, rel=1e-5)


def test_lower_bound_matches_explicit_jacobians_and_refinement_helps():
    fn = _mlp(10)
    xs = _mat(20, (8, 6))
    explicit = max(np.linalg.svd(np.asarray(jax.jacfwd(fn)(x), np.float64),
                                 compute_uv=False)[0] for x in xs)
    plain = float(local_lower_bound(fn, xs))
    assert plain == pytest.approx(explicit, rel=1e-5)
    refined = float(local_lower_bound(fn, xs, refine_steps=10, step_size=0.1))
    assert refined >= plain * (1 - 1e-6)
    upper = layer_bounds(fn, jnp.zeros(6)).total
    assert refined <= upper * (1 + 1e-5)
    jitted = jax.jit(lambda xs: local_lower_bound(fn, xs, refine_steps=2))(xs)
    assert float(jitted) == pytest.approx(float(local_lower_bound(fn, xs, refine_steps=2)),
                                          rel=1e-5)


def test_noise_needs_a_key():
    with pytest.raises(ValueError, match="`key`"):
        local_lower_bound(_mlp(0), _mat(1, (2, 6)), noise=0.1)
    val = local_lower_bound(_mlp(0), _mat(1, (2, 6)), noise=0.1, key=jax.random.key(0))
    assert np.isfinite(float(val))


def test_certified_radius_closed_form():
    logits = jnp.array([3.0, 1.0, 2.5])
    # margin 0.5 to class 2, L = 1: radius 0.5 / sqrt(2)
    assert float(certified_radius(logits, 0, 1.0)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-6)
    # not the top class: 0
    assert float(certified_radius(logits, 1, 1.0)) == 0.0
    # per-pair constants
    r = certified_radius(logits, 0, jnp.array([0.0, 4.0, 0.25]), pairwise=True)
    assert float(r) == pytest.approx(min(2.0 / 4.0, 0.5 / 0.25), rel=1e-6)


def test_pairwise_radius_is_exact_for_linear_models():
    """For z = W x + b the boundary to class j is at distance m_j / ‖w_y - w_j‖ exactly."""
    w, b = _mat(2, (4, 5)), _mat(3, (5,))
    x = _mat(4, (4,))
    z = x @ w + b
    y = int(jnp.argmax(z))
    pair_lip = jnp.linalg.norm(w[:, y:y + 1] - w, axis=0)
    r_pair = float(certified_radius(z, y, pair_lip, pairwise=True))
    j = int(jnp.argmin(jnp.where(jnp.arange(5) == y, jnp.inf, (z[y] - z) / pair_lip)))
    direction = (w[:, j] - w[:, y]) / pair_lip[j]
    just_inside = x + 0.999 * r_pair * direction
    just_outside = x + 1.001 * r_pair * direction
    assert int(jnp.argmax(just_inside @ w + b)) == y
    assert int(jnp.argmax(just_outside @ w + b)) != y
    # the global-L radius is smaller (sound)
    lip = float(np.linalg.svd(np.asarray(w), compute_uv=False)[0])
    assert float(certified_radius(z, y, lip)) <= r_pair * (1 + 1e-6)


def test_certified_radius_is_never_violated():
    fn = _mlp(30)
    lip = layer_bounds(fn, jnp.zeros(6)).total
    xs = _mat(40, (32, 6), 2.0)
    logits = jax.vmap(fn)(xs)
    labels = jnp.argmax(logits, -1).astype(jnp.int32)
    radii = jax.jit(jax.vmap(certified_radius, in_axes=(0, 0, None)))(logits, labels, lip)
    eager = jnp.stack([certified_radius(z, y, lip) for z, y in zip(logits, labels, strict=True)])
    np.testing.assert_allclose(np.asarray(radii), np.asarray(eager), rtol=1e-6)
    assert float(radii.min()) > 0
    # random directions on the sphere of radius 0.999 r
    key = jax.random.key(5)
    d = jax.random.normal(key, (64, *xs.shape))
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    pert = xs[None] + 0.999 * radii[None, :, None] * d
    flipped = jnp.argmax(jax.vmap(jax.vmap(fn))(pert), -1) != labels[None]
    assert not bool(flipped.any())

    # an L2 PGD attack on the margin restricted to the certified ball
    def attack(x, y, r):
        def margin(delta):
            z = fn(x + delta)
            return z[y] - jnp.max(jnp.where(jnp.arange(z.shape[0]) == y, -jnp.inf, z))

        def step(_, delta):
            g = jax.grad(margin)(delta)
            delta = delta - 0.2 * r * g / (jnp.linalg.norm(g) + 1e-12)
            return delta * jnp.minimum(1.0, 0.999 * r / (jnp.linalg.norm(delta) + 1e-12))

        delta = jax.lax.fori_loop(0, 50, step, jnp.zeros_like(x))
        return margin(delta)

    final_margins = jax.jit(jax.vmap(attack))(xs, labels, radii)
    assert float(final_margins.min()) > 0


def test_certified_radius_input_checks():
    with pytest.raises(ValueError, match="`logits`"):
        certified_radius(jnp.zeros((2, 3)), 0, 1.0)
    with pytest.raises(TypeError, match="`label`"):
        certified_radius(jnp.zeros(3), 0.5, 1.0)
    with pytest.raises(ValueError, match="`lipschitz`"):
        certified_radius(jnp.zeros(3), 0, -1.0)
