"""Cross-entropy and Szegedy's per-layer weight decay against hand (numpy) computations."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from advjax.train import TrainConfig, cross_entropy, kernel_layers, weight_decay_penalty


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.sigmoid(nn.Dense(5, name="Dense_0")(x))
        h = nn.sigmoid(nn.Dense(4, name="Dense_1")(h))
        return nn.Dense(3, name="Dense_2")(h)


@pytest.fixture(scope="module")
def params():
    return _Net().init(jax.random.key(0), jnp.ones((1, 6)))["params"]


def _hand(params, lams):
    # λ_k · Σ w² / k, k = units of the layer (output dimension); biases excluded.
    total = 0.0
    for name, lam in zip(("Dense_0", "Dense_1", "Dense_2"), lams, strict=True):
        w = np.asarray(params[name]["kernel"], np.float64)
        total += lam * np.sum(w * w) / w.shape[1]
    return total


def test_layers_in_definition_order(params):
    names = [n for n, _ in kernel_layers(params)]
    assert names == ["Dense_0", "Dense_1", "Dense_2"]


@pytest.mark.parametrize("jit", [False, True])
def test_weight_decay_tuple_equals_hand_computation(params, jit):
    lams = (1e-2, 3e-1, 2.0)
    fn = (lambda p: weight_decay_penalty(p, lams))
    fn = jax.jit(fn) if jit else fn
    np.testing.assert_allclose(float(fn(params)), _hand(params, lams), rtol=1e-6)


def test_weight_decay_mapping_scalar_and_grad(params):
    got = weight_decay_penalty(params, {"Dense_1": 0.5})
    np.testing.assert_allclose(float(got), _hand(params, (0.0, 0.5, 0.0)), rtol=1e-6)
    got = weight_decay_penalty(params, 0.1)
    np.testing.assert_allclose(float(got), _hand(params, (0.1, 0.1, 0.1)), rtol=1e-6)
    # Gradient: 2 λ w / k on kernels, exactly zero on biases.
    grads = jax.grad(lambda p: weight_decay_penalty(p, (1.0, 2.0, 3.0)))(params)
    for name, lam in (("Dense_0", 1.0), ("Dense_1", 2.0), ("Dense_2", 3.0)):
        w = np.asarray(params[name]["kernel"])
        np.testing.assert_allclose(grads[name]["kernel"], 2 * lam * w / w.shape[1], rtol=1e-5)
        assert not np.any(np.asarray(grads[name]["bias"]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scale=st.floats(0.1, 10.0), lam=st.floats(0.0, 5.0))
def test_weight_decay_is_quadratic_in_weights_and_linear_in_lambda(params, scale, lam):
    scaled = jax.tree.map(lambda p: p * scale, params)
    base = float(weight_decay_penalty(params, 1.0))
    got = float(weight_decay_penalty(scaled, lam))
    np.testing.assert_allclose(got, lam * scale**2 * base, rtol=1e-5, atol=1e-12)


def test_weight_decay_config_mapping_is_hashable():
    cfg = TrainConfig(weight_decay={"Dense_2": 1e-6, "Dense_0": 1e-5})
    assert cfg.weight_decay == (("Dense_0", 1e-5), ("Dense_2", 1e-6))
    hash(cfg)


def test_weight_decay_errors_name_the_argument(params):
    with pytest.raises(ValueError, match="one λ per layer"):
        weight_decay_penalty(params, (1.0, 2.0))
    with pytest.raises(ValueError, match="unknown layer"):
        weight_decay_penalty(params, {"Conv_9": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        weight_decay_penalty(params, (1.0, -1.0, 0.0))


@pytest.mark.parametrize("jit", [False, True])
def test_cross_entropy_matches_numpy(jit):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=7).astype(np.int32)
    ref = np.mean(logsumexp(logits, axis=1) - logits[np.arange(7), labels])
    fn = jax.jit(cross_entropy) if jit else cross_entropy
    np.testing.assert_allclose(float(fn(logits, labels)), ref, rtol=1e-5)
    w = rng.uniform(size=7).astype(np.float32)
    ref_w = np.sum(w * (logsumexp(logits, axis=1) - logits[np.arange(7), labels])) / np.sum(w)
    np.testing.assert_allclose(float(fn(logits, labels, w)), ref_w, rtol=1e-5)


def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))
    with pytest.raises(TypeError, match="labels"):
        cross_entropy(jnp.zeros((2, 3)), jnp.array([0.0, 1.0]))
