"""Spectral penalties and spectral normalisation against numpy SVD and conv_norm."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax.lipschitz import (
    conv_norm,
    conv_spec,
    dense_spec,
    spectral_normalize,
    spectral_penalty,
)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), strides=(2, 2), name="conv")(x))
        return nn.Dense(4, name="dense")(x.reshape(x.shape[0], -1))


def _params():
    return _Net().init(jax.random.key(0), jnp.zeros((1, 6, 6, 2)))["params"]


SPECS = (conv_spec("conv", "kernel", input_shape=(6, 6, 2), strides=2, padding="SAME"),
         dense_spec("dense", "kernel"))


def _run(penalty, params, state, n):
    update = jax.jit(penalty.update)
    for _ in range(n):
        value, state = update(params, state)
    return value, state


@pytest.mark.parametrize("use_jit", [False, True])
def test_power_estimates_converge_to_true_norms(use_jit):
    params = _params()
    penalty = spectral_penalty(SPECS, n_iters=20)
    state = penalty.init(params, jax.random.key(1))
    update = jax.jit(penalty.update) if use_jit else penalty.update
    for _ in range(15):
        value, state = update(params, state)
    dense_true = np.linalg.svd(np.asarray(params["dense"]["kernel"], np.float64),
                               compute_uv=False)[0]
    conv_true = float(conv_norm(params["conv"]["kernel"], (6, 6, 2), strides=2, tol=1e-7))
    np.testing.assert_allclose(np.asarray(state.sigmas), [conv_true, dense_true], rtol=1e-3)
    assert float(value) == pytest.approx(conv_true + dense_true, rel=1e-3)


def test_gradient_is_top_singular_pair():
    """d σ_max / d W = u vᵀ (numpy SVD) once the persistent vector has converged."""
    params = _params()
    penalty = spectral_penalty((dense_spec("dense", "kernel"),), n_iters=50)
    _, state = _run(penalty, params, penalty.init(params, jax.random.key(2)), 5)
    grad = jax.grad(lambda p: penalty.update(p, state)[0])(params)["dense"]["kernel"]
    u, _, vt = np.linalg.svd(np.asarray(params["dense"]["kernel"], np.float64))
    expected = np.outer(u[:, 0], vt[0])
    np.testing.assert_allclose(np.asarray(grad), expected, atol=2e-3)
    assert float(jnp.abs(grad).sum()) > 0
    zero_conv = jax.grad(lambda p: penalty.update(p, state)[0])(params)["conv"]["kernel"]
    assert float(jnp.abs(zero_conv).max()) == 0.0


def test_log_sum_and_training_lowers_the_bounds():
    params = _params()
    penalty = spectral_penalty(SPECS, n_iters=2, reduce="log_sum")
    state = penalty.init(params, jax.random.key(3))
    value, state = penalty.update(params, state)
    assert float(value) == pytest.approx(float(jnp.log(state.sigmas).sum()), rel=1e-5)
    opt = optax.sgd(0.05)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, state):
        (value, state), grads = jax.value_and_grad(penalty.update, has_aux=True)(params, state)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, state, value

    first = None
    for _ in range(30):
        params, opt_state, state, value = step(params, opt_state, state)
        first = float(value) if first is None else first
    assert float(value) < first - 0.1


def test_spectral_normalize_dense_and_jit():
    k = jnp.asarray(np.random.default_rng(4).normal(size=(7, 5)), jnp.float32)
    u = jax.random.normal(jax.random.key(5), (5,))
    fn = jax.jit(lambda k, u: spectral_normalize(k, u, n_iters=30))
    k_sn, u = fn(k, u)
    k_sn, u = fn(k, u)
    assert np.linalg.svd(np.asarray(k_sn), compute_uv=False)[0] == pytest.approx(1.0, rel=1e-4)
    eager, _ = spectral_normalize(k, u, n_iters=30)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(k_sn), rtol=1e-5, atol=1e-6)
    # gradients flow through sigma
    g = jax.grad(lambda k: spectral_normalize(k, u)[0].sum())(k)
    assert np.all(np.isfinite(np.asarray(g)))
    # conv kernels: the reshaped (-1, out) matrix gets norm 1
    kc = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3, 2, 4)), jnp.float32)
    kc_sn, _ = spectral_normalize(kc, jnp.ones(4), n_iters=100)
    assert np.linalg.svd(np.asarray(kc_sn).reshape(-1, 4), compute_uv=False)[0] == \
        pytest.approx(1.0, rel=1e-4)


def test_bad_specs_and_inputs():
    with pytest.raises(ValueError, match="`specs`"):
        spectral_penalty(())
    with pytest.raises(ValueError, match="`reduce`"):
        spectral_penalty(SPECS, reduce="max")
    with pytest.raises(KeyError, match="conv/kernel"):
        spectral_penalty((dense_spec("conv", "kernel", "x"),)).init(_params(), jax.random.key(0))
    with pytest.raises(ValueError, match="rank 2"):
        spectral_penalty((dense_spec("conv", "kernel"),)).init(_params(), jax.random.key(0))
    with pytest.raises(ValueError, match="`u`"):
        spectral_normalize(jnp.ones((3, 2)), jnp.ones(3))
