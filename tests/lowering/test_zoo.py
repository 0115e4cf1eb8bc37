"""Every zoo model, and small CNNs with custom_vjp / custom_jvp / remat / scan / cond around their
convolutions, through ``lower_convs`` in both forms the package uses (``"tangent"``: the attacks;
``"auto"``: training and explicit ``mode="gemm"``): logits, losses and input gradients under
``jit(vmap(value_and_grad))`` equal the native ones, and nothing warns except the parts that run
natively on purpose.

Tolerances (``max|Δ| ≤ rtol · max|reference|``): the rewrite only reorders float32 sums. One
convolution output is a sum of ``n = taps · channels`` products (``n ≤ 800`` in the zoo), so it
moves by at most ``γ_n Σ|w||x| ≈ n · 6e-8`` of the layer's absolute scale (5e-5 at worst, ~√n · 6e-8
≈ 2e-6 typically) and the layers after it are Lipschitz: through the 2-3 convolutions of the MNIST
CNNs and the small models ``rtol = 1e-4``; compounding over the 44 layers of the ResNet
``rtol = 1e-3``. Models without convolutions or pools run JAX's own program: bit-equal.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from advjax import models
from advjax.lowering import lower_convs

DN = ("NHWC", "HWIO", "NHWC")


def _linen(module, shape, **kwargs):
    x = jax.random.uniform(jax.random.key(0), (2, *shape))
    variables = module.init(jax.random.key(1), x[:1], **kwargs)
    # Non-trivial running statistics and last layers (some are zero at init).
    variables = jax.tree.map(
            lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size).reshape(a.shape)).astype(a.dtype),
            variables)
    return (lambda v: module.apply(variables, v[None], **kwargs)[0]), x


def _nnx(cls, shape, **kwargs):
    module = cls(**kwargs, rngs=nnx.Rngs(1))
    return models.nnx_logits_fn(module), jax.random.uniform(jax.random.key(0), (2, *shape))


MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
ZOO = {
    **{name: (lambda name=name: _linen(models.szegedy_model(name), MNIST), 0.0)
       for name in models.SZEGEDY_MODELS},
    "MnistCNN": (lambda: _linen(models.MnistCNN(), MNIST), 1e-4),
    "MnistCNN-hhrelu": (lambda: _linen(models.MnistCNN(activation="hhrelu"), MNIST),
                        1e-4),
    "LeNet5": (lambda: _linen(models.LeNet5(), MNIST), 1e-4),
    "NNXMnistCNN": (lambda: _nnx(models.NNXMnistCNN, MNIST), 1e-4),
    "NNXLeNet5": (lambda: _nnx(models.NNXLeNet5, MNIST), 1e-4),
    "NNXPreActResNet-8": (lambda: _nnx(models.NNXPreActResNet, CIFAR, depth=8), 1e-3),
}
SLOW_ZOO = {
    "PreActResNet-44": (lambda: _linen(models.PreActResNet(depth=44), CIFAR, train=False), 1e-3),
    "NNXPreActResNet-44": (lambda: _nnx(models.NNXPreActResNet, CIFAR, depth=44), 1e-3),
}


def _close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    if rtol == 0.0:
        np.testing.assert_array_equal(got, want)
    else:
        err, scale = np.max(np.abs(got - want)), np.max(np.abs(want))
        assert err <= rtol * scale, (err, scale)


def _loss(f):
    return lambda v: jax.nn.logsumexp(f(v)) - f(v)[0]


def _check(logits_fn, x, rtol, form, expect_warning=None):
    lowered = lower_convs(logits_fn, mode="gemm", form=form)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = jax.jit(jax.vmap(jax.value_and_grad(_loss(lowered))))(x)
        got_logits = jax.jit(jax.vmap(lowered))(x)
    messages = [str(w.message) for w in caught if "lower_convs" in str(w.message)]
    if expect_warning is None:
        assert not messages, messages
    else:
        assert messages and all(expect_warning in m for m in messages), messages
    want = jax.jit(jax.vmap(jax.value_and_grad(_loss(logits_fn))))(x)
    _close(got[0], want[0], rtol)
    _close(got[1], want[1], rtol)
    _close(got_logits, jax.jit(jax.vmap(logits_fn))(x), rtol)
    return lowered


@pytest.mark.parametrize("form", ["tangent", "auto"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model(name, form):
    make, rtol = ZOO[name]
    logits_fn, x = make()
    _check(logits_fn, x, rtol, form)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["tangent", "auto"])
@pytest.mark.parametrize("name", sorted(SLOW_ZOO))
def test_zoo_model_slow(name, form):
    make, rtol = SLOW_ZOO[name]
    logits_fn, x = make()
    _check(logits_fn, x, rtol, form)


# ----------------------------------------------------------------------------- wrapped convs

RNG = np.random.default_rng(5)
W1 = jnp.asarray(RNG.normal(size=(3, 3, 1, 8)) / 3, jnp.float32)
W2 = jnp.asarray(RNG.normal(size=(3, 3, 8, 8)) / 8, jnp.float32)
WD = jnp.asarray(RNG.normal(size=(8, 5)) / 3, jnp.float32)


def _conv(y, w, stride=1):
    return lax.conv_general_dilated(y, w, (stride, stride), "SAME", dimension_numbers=DN)


def _block(y):
    return jax.nn.relu(_conv(y, W2))


def _custom_vjp_block():
    block = jax.custom_vjp(_block)
    block.defvjp(lambda y: (_block(y), y), lambda y, g: jax.vjp(_block, y)[1](g))
    return block


def _custom_jvp_block():
    block = jax.custom_jvp(_block)
    block.defjvp(lambda p, t: jax.jvp(_block, p, t))
    return block


def _scan_block(y):
    return lax.scan(lambda c, _: (_block(c), None), y, None, length=2)[0]


def _cond_block(y):
    return lax.cond(jnp.mean(y) > 0.1, _block, lambda v: -_block(v), y)


WRAPPERS = {
    "custom_vjp": (_custom_vjp_block, "kept a custom_vjp_call native"),
    "custom_jvp": (_custom_jvp_block, "kept a custom_jvp_call native"),
    "checkpoint": (lambda: jax.checkpoint(_block), None),
    "checkpoint_policy": (lambda: jax.checkpoint(
        _block, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable), None),
    "scan": (lambda: _scan_block, None),
    "cond": (lambda: _cond_block, None),
    "jit": (lambda: jax.jit(_block), None),
}


@pytest.mark.parametrize("form", ["tangent", "auto"])
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_small_cnn_with_wrapped_convolutions(wrapper, form):
    make, warning = WRAPPERS[wrapper]
    block = make()

    def logits_fn(v):
        y = jax.nn.relu(_conv(v[None], W1))
        y = block(y)
        y = models.max_pool_2x2(y)
        return jnp.mean(y, axis=(0, 1, 2)) @ WD

    x = jax.random.uniform(jax.random.key(2), (3, 12, 12, 1))
    lowered = _check(logits_fn, x, 1e-4, form, warning)
    if warning is None:   # the wrapped convolution's input gradient is rewritten too
        text = str(jax.make_jaxpr(jax.vmap(jax.grad(_loss(lowered))))(x))
        from tests.lowering.test_conv import conv_layouts
        assert all(spec == (3, 2, 0, 1) and set(dil) == {1}
                   for spec, dil in conv_layouts(text))
