"""``advjax.attacks.projections`` and ``advjax.attacks.losses`` against independent truths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import losses, projections


def _l2_box_truth(v, x, eps, lo=0.0, hi=1.0):
    """float64 projection by bisection on t (60 halvings: |t error| < 1e-18), as in the KKT
    characterisation z = clip(x + t (v - x)) with ||z - x|| = eps."""
    d = v - x

    def dist(t):
        return np.linalg.norm(np.clip(x + t * d, lo, hi) - x)

    if dist(1.0) <= eps:
        return np.clip(v, lo, hi)
    a, b = 0.0, 1.0
    for _ in range(60):
        m = 0.5 * (a + b)
        a, b = (m, b) if dist(m) <= eps else (a, m)
    return np.clip(x + a * d, lo, hi)


@pytest.mark.parametrize("seed", range(6))
def test_exact_l2_box_projection_against_float64_bisection(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 200))
    x = rng.uniform(0, 1, d)
    if seed % 2:  # saturated pixels, as in MNIST: many coordinates on a face
        x = np.where(rng.random(d) < 0.6, rng.choice([0.0, 1.0], d), x)
    v = x + rng.normal(size=d) * rng.uniform(0.05, 2.0)
    eps = float(rng.uniform(0.05, 1.5))
    z = np.asarray(projections.project_l2_box(jnp.asarray(v, jnp.float32),
                                              jnp.asarray(x, jnp.float32), eps, 0.0, 1.0))
    truth = _l2_box_truth(v, x, eps)
    np.testing.assert_allclose(z, truth, atol=3e-6)  # float32 inputs, O(1) coordinates
    assert np.linalg.norm(z - x) <= eps * (1 + 1e-6) and z.min() >= 0 and z.max() <= 1
    # The rescale-then-clip variant is feasible and never nearer to v.
    zc = np.asarray(projections.project_l2_box(jnp.asarray(v, jnp.float32),
                                               jnp.asarray(x, jnp.float32), eps, 0.0, 1.0,
                                               method="clip"))
    assert np.linalg.norm(zc - x) <= eps * (1 + 1e-6)
    assert np.linalg.norm(zc - v) >= np.linalg.norm(z - v) - 1e-5


def test_projections_of_points_inside_and_linf_box():
    x = jnp.asarray([0.0, 0.5, 1.0])
    inside = jnp.asarray([0.1, 0.5, 0.9])
    np.testing.assert_allclose(projections.project_l2_box(inside, x, 1.0, 0.0, 1.0), inside)
    # L-inf ∩ box is a coordinate-wise clip to [max(x - eps, lo), min(x + eps, hi)].
    z = projections.project_linf_box(jnp.asarray([-1.0, 0.9, 2.0]), x, 0.25, 0.0, 1.0)
    np.testing.assert_allclose(z, [0.0, 0.75, 1.0])
    np.testing.assert_allclose(projections.project_l2(jnp.asarray([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_allclose(projections.steepest_direction(jnp.asarray([3.0, -4.0]), "l2"),
                               [0.6, -0.8])
    # "l1" is a projection norm now (project_l1_box, tests/attacks/test_l1.py); "l3" is not.
    with pytest.raises(ValueError, match="norm"):
        projections.project(x, x, 1.0, "l3", 0.0, 1.0)
    with pytest.raises(ValueError, match="method"):
        projections.project_l2_box(x, x, 1.0, 0.0, 1.0, method="bisect")


def test_ball_samples_stay_in_their_balls():
    keys = jax.random.split(jax.random.key(0), 200)
    lin = jax.vmap(lambda k: projections.sample_ball(k, (5,), 0.3, "linf"))(keys)
    l2 = jax.vmap(lambda k: projections.sample_ball(k, (5,), 0.3, "l2"))(keys)
    assert float(jnp.abs(lin).max()) <= 0.3 and float(jnp.abs(lin).max()) > 0.25
    assert float(jnp.linalg.norm(l2, axis=1).max()) <= 0.3 + 1e-6


def test_losses_closed_forms():
    z = jnp.asarray([2.0, 1.0, 0.5, -1.0])
    lse = np.log(np.sum(np.exp(np.asarray(z))))
    np.testing.assert_allclose(losses.ce_loss(z, 1), lse - 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.margin_loss(z, 0), 1.0 - 2.0)
    np.testing.assert_allclose(losses.margin_loss(z, 2), 2.0 - 0.5)
    np.testing.assert_allclose(losses.targeted_margin_loss(z, 1), 1.0 - 2.0)
    # DLR: -(z_y - max_other) / (z_pi1 - z_pi3); targeted: denominator z_pi1 - (z_pi3 + z_pi4)/2.
    np.testing.assert_allclose(losses.dlr_loss(z, 0), -(2.0 - 1.0) / (2.0 - 0.5), rtol=1e-6)
    np.testing.assert_allclose(losses.targeted_dlr_loss(z, 0, 3),
                               -(2.0 - (-1.0)) / (2.0 - 0.5 * (0.5 - 1.0)), rtol=1e-6)
    np.testing.assert_allclose(losses.attack_loss("ce", z, 1, 2), -losses.ce_loss(z, 2))
    np.testing.assert_allclose(losses.attack_loss("margin", z, 1, 2),
                               losses.targeted_margin_loss(z, 2))
    with pytest.raises(ValueError, match="loss"):
        losses.attack_loss("hinge", z, 0)
