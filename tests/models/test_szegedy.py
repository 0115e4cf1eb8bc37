"""Szegedy MNIST nets: closed forms (softmax regression), numpy forwards, names, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from advjax.models import (
    FC10,
    MLP,
    SZEGEDY_MODELS,
    SZEGEDY_WEIGHT_DECAY,
    AutoencoderClassifier,
    linen_logits_fn,
    szegedy_model,
)
from tests.models._transforms import check_logits_fn_transforms

_X = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
_Y = np.array([0, 3, 7, 9], np.int32)


def _init(module):
    return jax.jit(module.init)(jax.random.key(0), jnp.asarray(_X))


@pytest.mark.parametrize(("name", "layers"), [
    ("FC10", [(784, 10)]),
    ("FC100-100-10", [(784, 100), (100, 100), (100, 10)]),
    ("FC200-200-10", [(784, 200), (200, 200), (200, 10)]),
    ("FC123-456-10", [(784, 123), (123, 456), (456, 10)]),
])
def test_fc_models_layer_names_and_shapes(name, layers):
    module = szegedy_model(name)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.asarray(_X)))["params"]
    assert sorted(params) == [f"Dense_{i}" for i in range(len(layers))]
    for i, shape in enumerate(layers):
        assert params[f"Dense_{i}"]["kernel"].shape == shape
        assert params[f"Dense_{i}"]["bias"].shape == (shape[1],)
    assert len(SZEGEDY_WEIGHT_DECAY.get(name, SZEGEDY_WEIGHT_DECAY["FC10(1e-4)"])) == len(layers)


def test_names_map_to_modules():
    assert set(SZEGEDY_MODELS) == {"FC10", "FC100-100-10", "FC200-200-10", "FC123-456-10",
                                   "AE400-10"}
    assert isinstance(szegedy_model("FC10(1e-2)"), FC10)
    assert szegedy_model("FC100-100-10'") == MLP(hidden=(100, 100), activation="sigmoid")
    assert isinstance(szegedy_model("AE400-10"), AutoencoderClassifier)
    with pytest.raises(ValueError, match="`name` must be one of"):
        szegedy_model("FC10-10")
    with pytest.raises(TypeError, match="`name`"):
        szegedy_model(10)


def test_fc10_is_softmax_regression_closed_form():
    module = FC10()
    variables = _init(module)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    logits = module.apply(variables, _X)
    np.testing.assert_allclose(logits, _X.reshape(4, -1) @ w + b, rtol=1e-5, atol=1e-5)
    # The Jacobian of the per-example logits is W^T (closed form), for every input.
    jac = jax.jit(jax.vmap(jax.jacrev(linen_logits_fn(module, variables))))(_X)
    np.testing.assert_allclose(np.asarray(jac).reshape(4, 10, 784),
                               np.broadcast_to(w.T, (4, 10, 784)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh"])
def test_mlp_matches_numpy_forward(act):
    module = MLP(hidden=(20, 30), activation=act)
    variables = _init(module)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    f = {"sigmoid": scipy.special.expit, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[act]
    h = _X.reshape(4, -1).astype(np.float64)
    h = f(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    h = f(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    ref = h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(module.apply(variables, _X), ref, rtol=1e-5, atol=1e-5)


def test_autoencoder_methods_match_numpy():
    module = AutoencoderClassifier()
    variables = _init(module)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    assert sorted(p) == ["classifier", "decoder", "encoder"]
    assert p["encoder"]["kernel"].shape == (784, 400)
    assert p["decoder"]["kernel"].shape == (400, 784)
    assert p["classifier"]["kernel"].shape == (400, 10)
    flat = _X.reshape(4, -1).astype(np.float64)
    code = scipy.special.expit(flat @ p["encoder"]["kernel"] + p["encoder"]["bias"])
    rec = scipy.special.expit(code @ p["decoder"]["kernel"] + p["decoder"]["bias"])
    np.testing.assert_allclose(module.apply(variables, _X, method="encode"), code,
                               rtol=1e-5, atol=1e-6)
    got_rec = module.apply(variables, jnp.asarray(code, jnp.float32), method="decode")
    assert got_rec.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(got_rec.reshape(4, -1), rec, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.apply(variables, _X, method="reconstruct").reshape(4, -1),
                               rec, rtol=1e-5, atol=1e-6)
    logits = code @ p["classifier"]["kernel"] + p["classifier"]["bias"]
    np.testing.assert_allclose(module.apply(variables, _X), logits, rtol=1e-5, atol=1e-5)
    # The logits do not depend on the decoder (frozen autoencoder + softmax on the code).
    grads = jax.grad(lambda v: module.apply(v, _X).sum())(variables)["params"]
    assert float(jnp.abs(grads["decoder"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(grads["encoder"]["kernel"]).max()) > 0.0


def test_input_validation():
    module = AutoencoderClassifier()
    variables = _init(module)
    with pytest.raises(ValueError, match=r"`x` must have shape \(B, 28, 28, 1\)"):
        module.apply(variables, jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match="`code` must have shape"):
        module.apply(variables, jnp.zeros((2, 10)), method="decode")
    with pytest.raises(ValueError, match="rank >= 2"):
        FC10().init(jax.random.key(0), jnp.zeros((784,)))
    with pytest.raises(TypeError, match="floating-point"):
        FC10().init(jax.random.key(0), jnp.zeros((2, 784), jnp.int32))


@pytest.mark.parametrize("name", ["FC10", "FC100-100-10", "AE400-10"])
def test_logits_fn_transforms(name):
    module = szegedy_model(name)
    check_logits_fn_transforms(module, _init(module), _X, _Y, train=False)
