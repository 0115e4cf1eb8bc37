"""NNX twins of the zoo equal their linen models on the same weights, in both directions.

Tolerances: the twins run the same XLA convolutions and matmuls on the same float32 weights, so
the outputs agree to float32 rounding (atol 1e-5 on logits of magnitude <= ~30, rtol 1e-5); the
ResNet's 44 layers of BatchNorm accumulate a little more (atol 1e-4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advjax.models import (
    LeNet5,
    MnistCNN,
    NNXLeNet5,
    NNXMnistCNN,
    NNXPreActResNet,
    PreActResNet,
    linen_from_nnx,
    linen_logits_fn,
    load_lenet5,
    load_woods2019,
    nnx_apply_fn,
    nnx_from_linen,
    nnx_logits_fn,
    nnx_variables,
    set_nnx_variables,
)
from tests.conftest import require_data


def _perturbed(variables, key):
    """Every leaf moved off its initial value (zero-initialised conv2 kernels, unit BN scales)."""
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape, a.dtype)
                                     for a, k in zip(leaves, keys, strict=True)])


def _positive_var(variables):
    if "batch_stats" not in variables:
        return variables
    stats = jax.tree_util.tree_map_with_path(
            lambda p, a: jnp.abs(a) + 0.5 if p[-1].key == "var" else a, variables["batch_stats"])
    return {**variables, "batch_stats": stats}


def _init(module, x):
    """Jitted init (eager init compiles every op separately: slow on CPU)."""
    return dict(jax.jit(lambda k, xx: module.init(k, xx, train=False))(jax.random.key(0), x))


def _apply(module, variables, x, **kwargs):
    return jax.jit(lambda v, xx: module.apply(v, xx, **kwargs))(variables, x)


def _batched(logits_fn, x):
    return jax.jit(jax.vmap(logits_fn))(x)


def _random_images(key, shape):
    return jax.random.uniform(key, shape, jnp.float32)


CASES = [
    ("mnist_cnn", lambda: MnistCNN(), (4, 28, 28, 1)),
    ("mnist_cnn_digits_tanh", lambda: MnistCNN(features=(4, 8), dense=16, activation="tanh"),
     (4, 8, 8, 1)),
    ("lenet5", lambda: LeNet5(), (4, 28, 28, 1)),
    pytest.param("resnet14_hhrelu", lambda: PreActResNet(depth=14, activation="hhrelu"),
                 (3, 32, 32, 3), marks=pytest.mark.slow),
]
IDS = ["mnist_cnn", "mnist_cnn_digits_tanh", "lenet5", "resnet14_hhrelu"]


@pytest.mark.parametrize("name,make,shape", CASES, ids=IDS)
def test_linen_to_nnx_outputs_equal(name, make, shape):
    module = make()
    x = _random_images(jax.random.key(1), shape)
    variables = _positive_var(_perturbed(_init(module, x[:1]), jax.random.key(2)))
    model = nnx_from_linen(module, variables)
    ref = _apply(module, variables, x, train=False)
    np.testing.assert_allclose(_batched(nnx_logits_fn(model), x), ref, rtol=1e-5, atol=1e-4)
    # and back: linen_from_nnx returns the same module settings and the same variables
    module2, variables2 = linen_from_nnx(model)
    assert module2 == module
    jax.tree.map(np.testing.assert_array_equal, variables2, jax.tree.map(np.asarray, variables))


@pytest.mark.parametrize("name,make,shape", CASES, ids=IDS)
def test_nnx_to_linen_outputs_equal(name, make, shape):
    """Start from a freshly initialised NNX twin: the linen model built from it agrees."""
    x = _random_images(jax.random.key(3), shape)
    template = make()
    if isinstance(template, MnistCNN):
        model = NNXMnistCNN(template.features, template.dense, activation=template.activation,
                            input_shape=shape[1:], rngs=nnx.Rngs(4))
    elif isinstance(template, LeNet5):
        model = NNXLeNet5(rngs=nnx.Rngs(4))
    else:
        model = NNXPreActResNet(depth=template.depth, activation=template.activation,
                                rngs=nnx.Rngs(4))
    set_nnx_variables(model, _positive_var(_perturbed(nnx_variables(model), jax.random.key(5))))
    module, variables = linen_from_nnx(model)
    # the linen init has the same tree, so the structure of the NNX twin is the linen one
    init = _init(module, x[:1])
    assert jax.tree.structure(dict(init)) == jax.tree.structure(variables)
    assert jax.tree.map(jnp.shape, dict(init)) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(_batched(nnx_logits_fn(model), x),
                               _apply(module, variables, x, train=False), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_resnet_training_mode_and_running_statistics_equal():
    """Training-mode logits and the updated BatchNorm statistics agree (momentum convention)."""
    module = PreActResNet(depth=8)
    x = _random_images(jax.random.key(6), (5, 32, 32, 3))
    variables = _positive_var(_perturbed(_init(module, x[:1]), jax.random.key(7)))
    ref, ref_upd = _apply(module, variables, x, train=True, mutable=["batch_stats"])
    apply_fn, nvars = nnx_apply_fn(nnx_from_linen(module, variables))
    got, upd = jax.jit(lambda v, xx: apply_fn(v, xx, train=True, mutable=["batch_stats"]))(
            nvars, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 upd["batch_stats"], ref_upd["batch_stats"])


def test_set_nnx_variables_rejects_mismatched_trees():
    model = NNXLeNet5(rngs=nnx.Rngs(0))
    variables = nnx_variables(model)
    bad = {"params": {k: v for k, v in variables["params"].items() if k != "linear2"}}
    with pytest.raises(ValueError, match="missing.*linear2"):
        set_nnx_variables(model, bad)
    wrong = jax.tree.map(lambda a: a, variables)
    wrong["params"]["linear2"]["kernel"] = jnp.zeros((200, 3))
    with pytest.raises(ValueError, match="linear2/kernel has shape"):
        set_nnx_variables(model, wrong)
    with pytest.raises(ValueError, match="collections"):
        set_nnx_variables(NNXPreActResNet(depth=8, rngs=nnx.Rngs(0)),
                          {"params": nnx_variables(NNXPreActResNet(depth=8, rngs=nnx.Rngs(1)))[
                              "params"]})


def test_nnx_from_linen_rejects_other_modules():
    with pytest.raises(TypeError, match="MnistCNN, LeNet5 or PreActResNet"):
        nnx_from_linen(object(), {"params": {}})


@pytest.mark.data
@pytest.mark.parametrize("which", ["clntrained", "advtrained"])
def test_lenet5_checkpoint_loads_into_nnx(which):
    path = require_data("advertorch-lenet5", "lenet5_mnist.npz")
    module, variables = load_lenet5(path, which)
    model = nnx_from_linen(module, variables)
    x = _random_images(jax.random.key(8), (16, 28, 28, 1))
    np.testing.assert_allclose(_batched(nnx_logits_fn(model), x),
                               _batched(linen_logits_fn(module, variables), x),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["standard", "robust"])
def test_woods2019_checkpoint_loads_into_nnx(name):
    path = require_data("woods2019-resnet44", f"resnet44-{name}.pt")
    module, variables = load_woods2019(path)
    model = nnx_from_linen(module, variables)
    x = _random_images(jax.random.key(9), (8, 32, 32, 3))
    ref = _apply(module, variables, x, train=False)
    np.testing.assert_allclose(_batched(nnx_logits_fn(model), x), ref, rtol=1e-5, atol=1e-4)
    module2, variables2 = linen_from_nnx(model)
    assert module2 == module
    np.testing.assert_array_equal(_apply(module2, variables2, x, train=False), ref)
