"""``lower_convs`` uses JAX's public API only and never crashes or changes a value on a program it
does not understand: custom_jvp / custom_vjp functions and unknown higher-order primitives around a
convolution run natively (with a one-line warning); a rewrite that fails leaves the whole function
native (with a warning). Min pools keep min semantics.

Tolerances: a convolution rewritten as GEMMs sums the same ``n = taps · channels`` products in
another order, so each output differs by at most ``γ_n Σ|w||x|`` (``γ_n ≈ n · 6e-8``; here
``n ≤ 72``, ~4e-6 of the layer's absolute scale) and, through the tanh / sum after it, the values
and gradients agree to 1e-5 relative. Parts that run natively, and pools (a max or min is exact; its
gradient routes whole cotangents), must agree exactly.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax import lowering
from advjax.lowering import lower_convs
from tests.lowering.test_conv import conv_layouts

DN = ("NHWC", "HWIO", "NHWC")
RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(3, 3, 2, 4)), jnp.float32)
X = jnp.asarray(RNG.uniform(size=(2, 6, 6, 2)), jnp.float32)


def _conv(x, w=W):
    return lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=DN)[0]


def test_the_module_uses_no_private_jax():
    """No ``jax._src`` import or attribute and no ``convert_constvars_jaxpr``-style private
    helper: a JAX upgrade must not break every CNN attack."""
    source = Path(lowering.__file__).read_text()
    tree = ast.parse(source)
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "_src" in node.module:
            private.append(node.module)
        if isinstance(node, ast.Import):
            private += [a.name for a in node.names if "_src" in a.name]
        if isinstance(node, ast.Attribute) and node.attr in ("_src", "linear_util",
                                                             "source_info_util"):
            private.append(node.attr)
    assert not private, private
    assert "jax._src" not in source and "._src" not in source


def _custom_vjp():
    @jax.custom_vjp
    def block(x):
        return jnp.tanh(_conv(x))

    def fwd(x):
        return block(x), x

    def bwd(x, g):
        return jax.vjp(lambda v: jnp.tanh(_conv(v)), x)[1](g)

    block.defvjp(fwd, bwd)
    return block


def _custom_jvp():
    @jax.custom_jvp
    def block(x):
        return jnp.tanh(_conv(x))

    @block.defjvp
    def _(primals, tangents):
        return jax.jvp(lambda v: jnp.tanh(_conv(v)), primals, tangents)

    return block


@pytest.mark.parametrize("make", [_custom_vjp, _custom_jvp], ids=["custom_vjp", "custom_jvp"])
@pytest.mark.parametrize("form", ["auto", "tangent"])
def test_custom_derivative_around_a_conv_runs_native_with_a_warning(make, form):
    """Crashed with ``AttributeError: ... convert_constvars_jaxpr`` before. The custom part is
    native, so its values and gradients equal the native ones exactly; the convolution outside it
    is still rewritten (1e-5, see the module docstring)."""
    block = make()

    def fn(x):
        return jnp.sum(block(x) ** 2) + jnp.sum(jnp.tanh(_conv(x, 0.5 * W)))

    lowered = lower_convs(fn, mode="gemm", form=form)
    with pytest.warns(RuntimeWarning, match="kept a custom_(jvp|vjp)_call native"):
        got = jax.jit(jax.vmap(jax.value_and_grad(lowered)))(X)
    want = jax.jit(jax.vmap(jax.value_and_grad(fn)))(X)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The convolution outside the custom function is still lowered: its input gradient runs no
    # transposed convolution (the custom part's bwd keeps its one).
    with pytest.warns(RuntimeWarning, match="kept a custom_(jvp|vjp)_call native"):
        transposed = [sum(spec != (3, 2, 0, 1) or set(dil) != {1} for spec, dil in conv_layouts(
                str(jax.make_jaxpr(jax.grad(f))(X[0])))) for f in (lowered, fn)]
    assert transposed == [1, 2]


def test_an_unknown_higher_order_primitive_runs_native_with_a_warning():
    """``custom_linear_solve`` (``linear_solve`` holds jaxprs the lowering does not rebuild)
    around a convolution: the native program for that part, the same values."""
    w = jnp.zeros((3, 3, 2, 2)).at[1, 1].set(jnp.eye(2) * 3.0) + 0.1 * W[..., :2]

    def fn(b):
        matvec = lambda v: _conv(v, w)  # noqa: E731
        solve = lambda mv, r: r / 3.0  # noqa: E731
        return jnp.sum(jnp.tanh(lax.custom_linear_solve(matvec, b, solve, symmetric=False)))

    with pytest.warns(RuntimeWarning, match="kept a custom_linear_solve native"):
        got = lower_convs(fn, mode="gemm")(X[0])
    np.testing.assert_array_equal(got, fn(X[0]))


def test_a_failing_rewrite_runs_the_whole_function_natively(monkeypatch):
    """Any error inside the rewrite (here a broken GEMM rule) leaves the native program: a warning
    and the native values, never a crash."""
    def broken(*args, **kwargs):
        raise NotImplementedError("a rule that cannot handle this convolution")

    monkeypatch.setattr(lowering, "conv_gemm", broken)

    def fn(x):
        return jnp.tanh(_conv(x))

    lowered = lower_convs(fn, mode="gemm")
    with pytest.warns(RuntimeWarning, match="native .*NotImplementedError"):
        got = jax.jit(jax.vmap(lowered))(X)
    np.testing.assert_array_equal(got, jax.jit(jax.vmap(fn))(X))


def test_no_warning_for_the_programs_it_rewrites():
    """jit, remat, scan and cond around convolutions are rewritten silently."""
    def fn(x):
        y = jax.jit(_conv)(x)
        y = jax.checkpoint(lambda v: jnp.tanh(_conv(v[..., :2])))(y)
        y, _ = lax.scan(lambda c, _: (jnp.tanh(_conv(c, W[..., :2, :2])), None), y[..., :2],
                        None, length=2)
        return lax.cond(jnp.sum(y) > 0, lambda v: _conv(v, W[..., :2, :]),
                        lambda v: -_conv(v, W[..., :2, :]), y).sum()

    lowered = lower_convs(fn, mode="gemm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = jax.jit(jax.value_and_grad(lowered))(X[0])
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(lowered))(X[0]))
    want = jax.jit(jax.value_and_grad(fn))(X[0])
    # Five convolutions deep (2 of them in a scan): the float32 rounding of each compounds
    # through the chain. Against a float64 evaluation both programs are within ~4e-6 · max|g|
    # eagerly; XLA's jitted native gradient was measured 3e-5 · max|g| from the lowered one, so
    # 1e-4 · max|g| (and 1e-5 for the scalar value).
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert np.max(np.abs(got[1] - want[1])) <= 1e-4 * np.max(np.abs(want[1]))


# ----------------------------------------------------------------------------- min pools

MIN_POOLS = {
    "neg_max_pool": lambda u: -nn.max_pool(-u, (3, 3), (2, 2), "SAME"),
    "reduce_window_min": lambda u: lax.reduce_window(u, jnp.inf, lax.min, (1, 3, 3, 1),
                                                     (1, 2, 2, 1), "SAME"),
    "tiling_min": lambda u: lax.reduce_window(u, jnp.inf, lax.min, (1, 2, 2, 1), (1, 2, 2, 1),
                                              "VALID"),
    "padded_min": lambda u: lax.reduce_window(u, jnp.inf, lax.min, (1, 2, 3, 1), (1, 1, 2, 1),
                                              ((0, 0), (1, 0), (0, 2), (0, 0))),
}


@pytest.mark.parametrize("name", sorted(MIN_POOLS))
def test_min_pool_gradients_keep_min_semantics(name):
    """A min pool (and a min-pool gradient taken inside ``fn``, which XLA writes as
    ``select_and_scatter_add`` with ``le``) must give the native values and gradients bit for
    bit: minima and cotangent routing are exact, so nothing but a wrong rule (e.g. a min taken
    as a max) can differ. Inputs are rounded to halves so windows hold ties; with a max the value
    below changes by hundreds."""
    pool = MIN_POOLS[name]
    x = jnp.round(4 * jax.random.normal(jax.random.key(1), (2, 9, 8, 3))) / 2

    def min_grad(v):
        return jax.grad(lambda u: jnp.sum(pool(u) ** 3))(v)

    def fn(v):
        return jnp.sum(min_grad(v) * v) + jnp.sum(pool(v) ** 2)

    lowered = lower_convs(fn, mode="gemm")
    text = str(jax.make_jaxpr(lowered)(x))
    assert "select_and_scatter" not in text          # the gradient inside fn was rewritten
    np.testing.assert_array_equal(lowered(x), fn(x))
    np.testing.assert_array_equal(jax.jit(lowered)(x), jax.jit(fn)(x))
    np.testing.assert_array_equal(jax.jit(jax.grad(lowered))(x), jax.jit(jax.grad(fn))(x))
    per_example = lower_convs(lambda v: jnp.sum(min_grad(v[None]) * v), mode="gemm")
    np.testing.assert_array_equal(
            jax.jit(jax.vmap(per_example))(x),
            jax.jit(jax.vmap(lambda v: jnp.sum(min_grad(v[None]) * v)))(x))
    g_lowered = jax.jit(lambda v: jax.vjp(lower_convs(pool, mode="gemm"), v)[1](pool(v))[0])(x)
    np.testing.assert_array_equal(g_lowered, jax.vjp(pool, x)[1](pool(x))[0])


def test_an_already_lowered_function_inside_another_is_kept_silently():
    """``shard_attack(..., conv_lowering="gemm")`` lowers a whole attack whose ``logits_fn`` the
    attack boundary already lowered: the inner rules (custom_jvp functions of this module) are
    kept as they are, without a warning, and the values are those of the native program."""
    def fn(x):
        return jnp.tanh(_conv(x))

    inner = lower_convs(fn, mode="gemm", form="tangent")
    outer = lower_convs(lambda x: jnp.sum(inner(x) ** 2), mode="gemm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = jax.jit(jax.vmap(jax.value_and_grad(outer)))(X)
    want = jax.jit(jax.vmap(jax.value_and_grad(lambda x: jnp.sum(fn(x) ** 2))))(X)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
