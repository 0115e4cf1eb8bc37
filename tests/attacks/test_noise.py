"""Gaussian-noise baseline: the RMS of the perturbation, the box, keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from advjax.attacks.noise import gaussian_noise


def test_rms_statistics_unclipped(linear_problem):
    # rmse^2 of d i.i.d. N(0, s^2) values is s^2 chi2_d / d: mean s^2, sd s^2 sqrt(2/d).
    p = linear_problem
    n, rms = 2000, 0.05
    noise = gaussian_noise(p.logits_fn, clip=False)
    attack = jax.jit(jax.vmap(lambda x, y, s, k: noise(x, y, rms=s, key=k),
                              in_axes=(None, None, 0, 0)))
    keys = jax.random.split(jax.random.key(0), n)
    res = attack(jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0]), jnp.full((n,), rms), keys)
    d = p.xs[0].size
    ms = np.asarray(res.rmse, np.float64) ** 2
    se = rms ** 2 * np.sqrt(2.0 / d) / np.sqrt(n)
    assert abs(ms.mean() - rms ** 2) < 5 * se
    # Every coordinate is N(0, rms^2): KS test on the pooled, standardised noise.
    z = (np.asarray(res.x_adv) - p.xs[0][None]).reshape(-1) / rms
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3


def test_clipped_to_box_and_keys(linear_problem, maybe_jit):
    p = linear_problem
    attack = gaussian_noise(p.logits_fn)
    attack = maybe_jit(attack)
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    a = attack(x, y, rms=0.5, key=jax.random.key(3))
    b = attack(x, y, rms=0.5, key=jax.random.key(3))
    c = attack(x, y, rms=0.5, key=jax.random.key(4))
    assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1
    assert float(a.x_adv.min()) == 0 or float(a.x_adv.max()) == 1  # rms 0.5: clipping happened
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(np.asarray(a.x_adv), np.asarray(c.x_adv))
    expected = np.clip(np.asarray(x) + 0.5 * np.asarray(jax.random.normal(jax.random.key(3),
                                                                          x.shape)), 0, 1)
    np.testing.assert_allclose(a.x_adv, expected, atol=1e-6)
    np.testing.assert_allclose(a.logits, p.logits_fn(a.x_adv), atol=1e-5)


def test_zero_rms_is_identity_and_success_flag(linear_problem):
    p = linear_problem
    attack = jax.vmap(gaussian_noise(p.logits_fn))
    keys = jax.random.split(jax.random.key(0), len(p.xs))
    res = attack(jnp.asarray(p.xs), jnp.asarray(p.labels), rms=jnp.zeros(len(p.xs)), key=keys)
    np.testing.assert_array_equal(res.x_adv, p.xs)
    assert not bool(jnp.any(res.success)) and bool(jnp.all(res.clean_correct))


def test_bad_inputs(linear_problem):
    p = linear_problem
    attack = gaussian_noise(p.logits_fn)
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    with pytest.raises(ValueError, match="key"):
        attack(x, y, rms=0.1)
    with pytest.raises(ValueError, match="rms"):
        attack(x, y, rms=-0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="rms"):
        attack(x, y, rms=float("nan"), key=jax.random.key(0))
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray(4), rms=0.1, key=jax.random.key(0))


def test_jit_vmap_matches_python_loop(linear_problem):
    p = linear_problem
    attack = gaussian_noise(p.logits_fn)
    n = len(p.xs)
    rms = jnp.linspace(0.0, 0.3, n)
    keys = jax.random.split(jax.random.key(7), n)
    batched = jax.jit(jax.vmap(attack))(jnp.asarray(p.xs), jnp.asarray(p.labels), rms=rms,
                                        key=keys)
    for i in range(n):
        r = attack(jnp.asarray(p.xs[i]), jnp.asarray(p.labels[i]), rms=rms[i], key=keys[i])
        np.testing.assert_allclose(batched.x_adv[i], r.x_adv, atol=1e-6)
        assert bool(batched.success[i]) == bool(r.success)
