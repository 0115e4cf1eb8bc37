"""``lower_convs`` traces ``fn`` once per call and keeps no trace across calls.

A trace's constants are the values ``fn`` closes over when it is traced; a trace kept across calls
(the earlier design, keyed on the signature) handed back the old model after the closed-over
parameters changed. Every test here compares against ``fn`` itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.lowering import lower_convs

DN = ("NHWC", "HWIO", "NHWC")


def _counting_conv(w):
    calls = []

    def conv(x, scale=1.0):
        calls.append(x.shape)
        y = lax.conv_general_dilated(x[None], w.astype(x.dtype), (1, 1), "SAME",
                                     dimension_numbers=DN)[0]
        return jnp.sum(jnp.tanh(y)) * scale + jnp.arange(2).sum()

    return conv, calls


def _data():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    x = jnp.asarray(rng.uniform(size=(6, 6, 2)), jnp.float32)
    return w, x


def test_one_trace_per_call_and_values_unchanged():
    """Each call traces ``fn`` exactly once (``make_jaxpr``; the rewrite re-evaluates the jaxpr,
    not ``fn``), so the cost of not keeping traces is one trace per call, as for plain eager JAX."""
    w, x = _data()
    conv, calls = _counting_conv(w)
    lowered = lower_convs(conv, mode="gemm")
    want = conv(x)
    calls.clear()
    for _ in range(3):
        np.testing.assert_allclose(lowered(x), want, rtol=1e-5)
    assert len(calls) == 3
    # Inside one traced attack (grad of a loop body plus a final check): one trace per call site.
    calls.clear()
    g = jax.jit(lambda x: jax.grad(lowered)(x) + lowered(x + 0.1) * 0.0)(x)
    assert len(calls) == 2
    np.testing.assert_allclose(g, jax.grad(conv)(x), rtol=2e-5, atol=1e-6)


def _lenet_like(params, x):
    y = lax.conv_general_dilated(x[None], params["w1"], (1, 1), "SAME", dimension_numbers=DN)
    y = jax.nn.relu(y)
    y = lax.conv_general_dilated(y, params["w2"], (1, 1), "SAME", dimension_numbers=DN)
    return jnp.tanh(y[0]).sum(axis=(0, 1))


def test_a_changed_closure_is_seen_eagerly_and_in_a_new_jit():
    """Parameters closed over in a mutable dict change between calls: the same lowered function
    must return the new model's logits and gradients, eagerly and inside a brand-new ``jax.jit``
    (which re-traces, as plain JAX does). The old trace cache returned the first model's values."""
    rng = np.random.default_rng(3)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)}
    x = jnp.asarray(rng.uniform(size=(6, 6, 2)), jnp.float32)

    def native(v):
        return _lenet_like(params, v)

    for form in ("auto", "tangent"):
        lowered = lower_convs(native, mode="gemm", form=form)
        for scale in (1.0, -0.7, 2.5):
            params["w1"] = params["w1"] * scale
            want, want_g = native(x), jax.grad(lambda v: native(v)[1])(x)
            # Sums of <= 36 float32 products per output through tanh: 1e-5 relative.
            np.testing.assert_allclose(lowered(x), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(jax.jit(lambda v, f=lowered: f(v))(x), want,
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(jax.jit(jax.grad(lambda v, f=lowered: f(v)[1]))(x), want_g,
                                       rtol=1e-5, atol=1e-5)


def test_an_nnx_module_updated_in_place_is_seen():
    """A closure calling an NNX module directly (``nnx_logits_fn`` splits the module once and
    documents that later changes are not seen; a plain closure sees them)."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
            self.dense = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.dense(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))

    module = Net(nnx.Rngs(0))

    def logits_fn(v):
        return module(v[None])[0]

    lowered = lower_convs(logits_fn, mode="gemm")
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(6, 6, 2)), jnp.float32)
    np.testing.assert_allclose(lowered(x), logits_fn(x), rtol=1e-5, atol=1e-6)
    module.conv.kernel.value = -2.0 * module.conv.kernel.value
    module.dense.bias.value = module.dense.bias.value + 1.0
    np.testing.assert_allclose(lowered(x), logits_fn(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda v: lowered(v))(x), logits_fn(x),
                               rtol=1e-5, atol=1e-6)


def test_new_shape_dtype_static_leaf_or_configuration_is_honoured():
    w, x = _data()
    conv, calls = _counting_conv(w)
    lowered = lower_convs(conv, mode="gemm")
    lowered(x)
    lowered(x[:4])                       # shape
    lowered(x.astype(jnp.bfloat16))      # dtype
    assert len(calls) == 3
    # A static leaf equal in value but not in type (1 == 1.0 == True) is another trace.
    typed = lower_convs(lambda x, scale: (conv(x, scale), jnp.asarray(scale)), mode="gemm")
    for scale in (1.0, 1, True, 2.0):
        value, kept = typed(x, scale)
        np.testing.assert_allclose(value, conv(x, scale), rtol=1e-5)
        assert kept.dtype == jnp.asarray(scale).dtype and kept == scale
    # x64 changes the dtypes the trace creates (``jnp.arange``) for the same arguments.
    with jax.enable_x64(True):
        assert typed(x, 1.0)[0].dtype == jnp.float32
        assert typed(x, 1)[1].dtype == jnp.int64
    assert typed(x, 1)[1].dtype == jnp.int32


def test_named_axis_environment_is_part_of_the_signature():
    w, x = _data()
    # ``psum(1, "i")`` is the size of the vmapped axis, folded into the trace: the same
    # per-example signature under another axis size must trace again.
    lowered = lower_convs(lambda x: jnp.sum(lax.conv_general_dilated(
        x[None], w, (1, 1), "SAME", dimension_numbers=DN)) * lax.psum(1, "i"), mode="gemm")
    base = float(jnp.sum(lax.conv_general_dilated(x[None], w, (1, 1), "SAME",
                                                  dimension_numbers=DN)))
    for size in (2, 3, 2):
        out = jax.vmap(lowered, axis_name="i")(jnp.broadcast_to(x, (size, *x.shape)))
        np.testing.assert_allclose(out, np.full(size, size * base), rtol=1e-5)


def test_wrappers_built_inside_a_transformation_differentiate_through_their_closures():
    """Wrappers made inside ``grad`` (closing over its tracer, or calling a shared wrapper with
    it) give the gradients of the plain functions. The reuse guard itself is checked by the test
    below, where one wrapper sees a different enclosing tracer on each call."""
    w, x = _data()

    def outer(v):
        # The wrapped function closes over ``v``, a tracer of this grad.
        inner = lower_convs(lambda x: jnp.sum(lax.conv_general_dilated(
            x[None], w * v, (1, 1), "SAME", dimension_numbers=DN)), mode="gemm")
        return inner(x) + inner(x * 2.0)

    shared = lower_convs(lambda x, v: jnp.sum(lax.conv_general_dilated(
        x[None], w, (1, 1), "SAME", dimension_numbers=DN)) * v, mode="gemm")

    def closing(v):
        return shared(x, v) + lower_convs(lambda y: shared(y, v), mode="gemm")(x)

    for v in (1.5, 2.5):
        np.testing.assert_allclose(jax.grad(outer)(v), 3.0 * float(jnp.sum(lax.conv_general_dilated(
            x[None], w, (1, 1), "SAME", dimension_numbers=DN))), rtol=1e-5)
        np.testing.assert_allclose(jax.grad(closing)(v), jax.grad(
            lambda v: 2.0 * jnp.sum(lax.conv_general_dilated(
                x[None], w, (1, 1), "SAME", dimension_numbers=DN)) * v)(v), rtol=1e-5)


def test_a_closure_tracer_from_one_trace_never_leaks_into_the_next():
    w, x = _data()
    captured = {}

    def fn(x):
        return jnp.sum(lax.conv_general_dilated(x[None], w * captured["v"], (1, 1), "SAME",
                                                dimension_numbers=DN))

    lowered = lower_convs(fn, mode="gemm")

    def f(v):
        captured["v"] = v
        return lowered(x)

    ref = float(jnp.sum(lax.conv_general_dilated(x[None], w, (1, 1), "SAME",
                                                 dimension_numbers=DN)))
    np.testing.assert_allclose(jax.grad(f)(2.0), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(f)(3.0), 3.0 * ref, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(f)(4.0), ref, rtol=1e-5)
