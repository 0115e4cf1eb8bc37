"""Max pooling under lower_convs: XLA's values and XLA's (first-maximum) gradients, exactly.

Both the rewritten rule and ``select_and_scatter`` send each window's cotangent to the first
maximal input in row-major window order, and the gradient is a sum of whole cotangents (no
products), so values and gradients must agree bit for bit — ties included (inputs are rounded to
halves, so windows often hold equal values).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.extend.core as core
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.lowering import lower_convs
from advjax.models import max_pool_2x2

# (window, strides, padding) for nn.max_pool on (B, H, W, C).
POOLS = [
    ((2, 2), (2, 2), "VALID"),
    ((3, 3), (2, 2), "SAME"),
    ((3, 3), (1, 1), "VALID"),
    ((2, 3), (1, 2), ((1, 0), (0, 2))),
    ((3, 2), (3, 1), "SAME"),
    ((3, 3), (3, 3), "VALID"),      # tiling windows (reshape rule), remainders cropped
    ((1, 2), (1, 2), "VALID"),
]


def _ties(shape, seed=0):
    return jnp.round(2 * jax.random.normal(jax.random.key(seed), shape)) / 2


def _no_scatter(fn, *args):
    text = str(jax.make_jaxpr(fn)(*args))
    return "select_and_scatter" not in text and "select_and_gather" not in text


@pytest.mark.parametrize("window,strides,padding", POOLS)
def test_nn_max_pool_value_and_gradient_bit_equal(window, strides, padding):
    x = _ties((2, 9, 8, 3))

    def f(v):
        return nn.max_pool(v, window, strides, padding)

    ct = jax.random.normal(jax.random.key(1), jax.eval_shape(f, x).shape)
    g = lower_convs(f, mode="gemm")
    np.testing.assert_array_equal(jax.jit(g)(x), f(x))
    want = jax.vjp(f, x)[1](ct)[0]
    got = jax.jit(lambda v, c: jax.vjp(g, v)[1](c)[0])(x, ct)
    np.testing.assert_array_equal(got, want)
    assert _no_scatter(lambda v, c: jax.vjp(g, v)[1](c)[0], x, ct)


def test_window_dilation_and_forward_mode():
    x = _ties((2, 9, 9, 2), seed=2)

    def f(v):
        return lax.reduce_window(v, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 1, 2, 1),
                                 ((0, 0), (1, 1), (0, 1), (0, 0)), window_dilation=(1, 2, 1, 1))

    g = lower_convs(f, mode="gemm")
    t = jax.random.normal(jax.random.key(3), x.shape)
    np.testing.assert_array_equal(g(x), f(x))
    # Forward mode on tie-free inputs: XLA's JVP (select_and_gather_add) reduces the window in an
    # unspecified order, so its choice among tied maxima is not first-max.
    free = jax.random.normal(jax.random.key(7), x.shape)
    np.testing.assert_array_equal(jax.jvp(g, (free,), (t,))[1], jax.jvp(f, (free,), (t,))[1])
    # Reverse mode: XLA has no VJP with window dilation; the lowered VJP must be the adjoint of
    # XLA's JVP: <ct, J t> = <J^T ct, t> (sums of a few hundred float32 products: rtol 1e-5).
    ct = jax.random.normal(jax.random.key(4), f(free).shape)
    lhs = jnp.vdot(ct, jax.jvp(f, (free,), (t,))[1])
    rhs = jnp.vdot(jax.vjp(g, free)[1](ct)[0], t)
    np.testing.assert_allclose(rhs, lhs, rtol=1e-5)


def test_matches_max_pool_2x2_rule_and_vmap():
    x = _ties((4, 8, 8, 3), seed=5)
    g = lower_convs(lambda v: nn.max_pool(v, (2, 2), (2, 2)), mode="gemm")
    loss = lambda p: lambda v: jnp.sum(p(v[None]) ** 3)  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(loss(g))))(x)
    want = jax.vmap(jax.grad(loss(max_pool_2x2)))(x)
    np.testing.assert_array_equal(got, want)


def test_select_and_scatter_inside_fn_is_rewritten():
    """A max-pool gradient already taken inside ``fn`` (a gradient penalty) is rewritten too."""
    x = _ties((2, 8, 8, 2), seed=6)

    def penalty(v):
        gx = jax.grad(lambda u: jnp.sum(nn.max_pool(u, (2, 2), (2, 2)) ** 2))(v)
        return jnp.sum(gx * v)

    g = lower_convs(penalty, mode="gemm")
    assert _no_scatter(g, x)
    np.testing.assert_array_equal(jax.jit(g)(x), penalty(x))


@pytest.mark.parametrize("window,strides,padding,tiles", [
    ((2, 2), (2, 2), "VALID", True), ((3, 3), (3, 3), "VALID", True),
    ((3, 3), (2, 2), "VALID", False), ((2, 2), (2, 2), ((0, 1), (0, 0)), False)])
def test_tiling_windows_take_the_reshape_rule(window, strides, padding, tiles):
    """Stride = window without padding: value and gradient come from reshapes (no
    reduce_window, no strided slices); every other pooling keeps XLA's value."""
    x = _ties((2, 9, 8, 3), seed=8)

    def f(v):
        return nn.max_pool(v, window, strides, padding)

    g = lower_convs(f, mode="gemm")
    grad = lambda v: jax.grad(lambda u: jnp.sum(g(u) ** 3))(v)  # noqa: E731
    text = str(jax.make_jaxpr(lambda v: (g(v), grad(v)))(x))
    assert ("reduce_window_max" not in text) == tiles
    if tiles:
        assert "strides=(" not in text                     # no strided slice either
    np.testing.assert_array_equal(grad(x), jax.grad(lambda u: jnp.sum(f(u) ** 3))(x))


def _max_rank(jaxpr) -> int:
    """The highest rank of any value in ``jaxpr`` and its sub-jaxprs."""
    ranks = [len(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars
             if hasattr(v.aval, "shape")]
    ranks += [_max_rank(sub) for eqn in jaxpr.eqns for sub in core.jaxprs_in_params(eqn.params)]
    return max(ranks, default=0)


@pytest.mark.parametrize("pool", ["nn.max_pool", "max_pool_2x2"])
def test_tiling_pools_stay_within_six_dimensions_under_vmap(pool):
    """The tiling reshape merges the unpooled axes into their neighbours: NHWC 2×2 pooling is
    (N·H/2, 2, W/2, 2, C), so a per-example model under vmap never holds a rank-7 array (XLA:CPU
    fuses at most six dimensions; a rank-7 pool ran a vmapped LeNet5 forward 2.3× slower)."""
    x = _ties((3, 8, 6, 4), seed=9)
    f = (lambda v: nn.max_pool(v, (2, 2), (2, 2))) if pool == "nn.max_pool" else max_pool_2x2
    per_example = lower_convs(lambda v: f(v[None])[0] ** 3, mode="gemm")
    vg = jax.vmap(jax.grad(lambda v: jnp.sum(per_example(v))))
    closed = jax.make_jaxpr(lambda v: (jax.vmap(per_example)(v), vg(v)))(x)
    assert _max_rank(closed.jaxpr) == 6
    want = jax.grad(lambda u: jnp.sum(nn.max_pool(u, (2, 2), (2, 2)) ** 3))(x)
    np.testing.assert_array_equal(vg(x), want)
    np.testing.assert_array_equal(jax.vmap(per_example)(x),
                                  nn.max_pool(x, (2, 2), (2, 2)) ** 3)
