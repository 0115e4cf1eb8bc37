"""layer_bounds: exact tiny cases (closed forms, explicit Jacobian + SVD) and sampled soundness."""

from __future__ import annotations

import math
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import (
    UnsupportedPrimitiveError,
    contrast_normalize,
    dense_norm,
    jacobian_norm,
    layer_bounds,
    local_lower_bound,
    table5,
)
from advjax.lipschitz import _elementwise as ew
from advjax.lipschitz._elementwise import INPUT, Node, NotLipschitzError, const, lipschitz_constant


def _mat(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _svd(m) -> float:
    return float(np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)[0])


def _explicit_norm(fn, x) -> float:
    """Operator norm of a LINEAR fn from its explicit Jacobian (numpy SVD)."""
    jac = np.asarray(jax.jacfwd(fn)(x), np.float64).reshape(-1, x.size)
    return float(np.linalg.svd(jac, compute_uv=False)[0])


# ---------------------------------------------------------------------------------------------
# Exact tiny networks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_jit", [False, True])
def test_single_linear_layer_is_exact(use_jit):
    w, b = _mat(0, (6, 4)), _mat(1, (4,))
    fn = lambda x: x @ w + b
    fn = jax.jit(fn) if use_jit else fn
    report = layer_bounds(fn, jnp.zeros(6))
    assert report.total == pytest.approx(_svd(w), rel=1e-5)
    assert [r.kind for r in report.rows] == ["dense"]
    assert report.rows[0].param_shape == (6, 4)
    # The Jacobian is constant: the lower bound equals the upper bound.
    lower = float(local_lower_bound(fn, _mat(2, (3, 6))))
    assert lower == pytest.approx(report.total, rel=1e-5)


def test_linear_relu_linear_is_the_product():
    v, w = _mat(3, (5, 7)), _mat(4, (7, 3))
    fn = lambda x: jax.nn.relu(x @ v + 0.1) @ w
    report = layer_bounds(fn, jnp.zeros(5))
    assert report.total == pytest.approx(_svd(v) * _svd(w), rel=1e-5)
    assert [r.kind for r in report.rows] == ["dense", "activation", "dense"]
    assert report.rows[1].bound == 1.0
    assert report.total >= float(local_lower_bound(fn, _mat(5, (16, 5)), refine_steps=3))


def test_residual_sum_rule():
    v, w = _mat(6, (4, 4)), _mat(7, (4, 4))
    fn = lambda x: x + jax.nn.relu(x @ v) @ w
    report = layer_bounds(fn, jnp.zeros(4))
    assert report.total == pytest.approx(1.0 + _svd(v) * _svd(w), rel=1e-5)


def test_structural_ops_are_exact():
    x = jnp.zeros((3, 4))
    cases = {
            "sum": (lambda x: jnp.sum(x), np.sqrt(12.0)),
            "mean": (lambda x: jnp.mean(x, axis=0), 1 / np.sqrt(3.0)),
            "broadcast": (lambda x: jnp.broadcast_to(x, (5, 3, 4)), np.sqrt(5.0)),
            "concat": (lambda x: jnp.concatenate([x, 2.0 * x]), np.sqrt(5.0)),
            "transpose-slice": (lambda x: x.T[1:, :2].reshape(-1), 1.0),
            "pad": (lambda x: jnp.pad(x, 2), 1.0),
            "gather-repeat": (lambda x: x[jnp.array([0, 0, 2])], np.sqrt(2.0)),
            "scale-array": (lambda x: x * jnp.arange(1.0, 5.0), 4.0),
            "divide-array": (lambda x: x / jnp.array([2.0, 4.0, 0.5, 1.0]), 2.0),
    }
    for name, (fn, expected) in cases.items():
        report = layer_bounds(fn, x)
        assert report.total == pytest.approx(expected, rel=1e-5), name
        assert report.total == pytest.approx(_explicit_norm(fn, x), rel=1e-5), name


def test_average_pool_non_overlapping_is_exact_and_overlap_is_sound():
    x = jnp.zeros((1, 6, 6, 2))
    avg = lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))
    assert layer_bounds(avg, x).total == pytest.approx(_explicit_norm(avg, x), rel=1e-5)
    assert layer_bounds(avg, x).total == pytest.approx(0.5, rel=1e-6)
    avg3 = lambda x: nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME")
    assert layer_bounds(avg3, x).total >= _explicit_norm(avg3, x) * (1 - 1e-6)


def test_max_pool_bounds():
    x = jnp.zeros((1, 6, 6, 1))
    disjoint = layer_bounds(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), x)
    assert disjoint.total == 1.0 and disjoint.rows[0].kind == "pool"
    overlap = layer_bounds(lambda x: nn.max_pool(x, (3, 3), strides=(1, 1)), x)
    assert overlap.total == pytest.approx(3.0)  # sqrt(9 windows cover the centre pixels)
    # A worst case: the all-ones perturbation of the centre 4×4 moves all 16 outputs.
    fn = lambda x: nn.max_pool(x, (3, 3), strides=(1, 1))
    assert overlap.total >= float(local_lower_bound(fn, _mat(8, (4, 1, 6, 6, 1))))


def test_conv_layer_bound_is_the_conv_norm():
    k = _mat(9, (3, 3, 2, 3))
    fn = lambda x: jax.lax.conv_general_dilated(x[None], k, (2, 2), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    x = jnp.zeros((8, 8, 2))
    fft = layer_bounds(fn, x)
    exact = layer_bounds(fn, x, conv_method="exact", conv_kwargs={"tol": 1e-7})
    true = _explicit_norm(fn, x)
    assert fft.total >= true * (1 - 1e-5)
    assert exact.total == pytest.approx(true, rel=1e-4)
    assert fft.rows[0].stride == (2, 2) and fft.rows[0].kind == "conv"


def test_depthwise_and_dilated_conv():
    k = _mat(10, (3, 3, 1, 4))  # feature_group_count = 4 (depthwise)
    x = jnp.zeros((7, 7, 4))
    dw = lambda x: jax.lax.conv_general_dilated(
            x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=4)[0]
    assert layer_bounds(dw, x).total >= _explicit_norm(dw, x) * (1 - 1e-5)
    k2 = _mat(11, (3, 3, 4, 2))
    dil = lambda x: jax.lax.conv_general_dilated(
            x[None], k2, (1, 1), "SAME", rhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    exact = layer_bounds(dil, x, conv_method="exact", conv_kwargs={"tol": 1e-7}).total
    assert exact == pytest.approx(_explicit_norm(dil, x), rel=1e-4)


def test_batchnorm_eval_is_max_scale():
    class BN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x)

    variables = BN().init(jax.random.key(0), jnp.zeros((1, 5)))
    scale, var = _mat(12, (5,)), jnp.abs(_mat(13, (5,))) + 0.1
    variables = {"params": {"BatchNorm_0": {"scale": scale, "bias": _mat(14, (5,))}},
                 "batch_stats": {"BatchNorm_0": {"mean": _mat(15, (5,)), "var": var}}}
    fn = lambda x: BN().apply(variables, x[None])[0]
    report = layer_bounds(fn, jnp.zeros(5))
    expected = float(jnp.max(jnp.abs(scale / jnp.sqrt(var + 1e-3))))
    assert report.total == pytest.approx(expected, rel=1e-5)
    assert "scale" in [r.kind for r in report.rows]


def test_contrast_normalisation_bound():
    eps, gamma = 0.5, 0.75
    fn = lambda x: contrast_normalize(x, eps=eps, gamma=gamma, axis=-1)
    x = jnp.zeros((3, 4))
    report = layer_bounds(fn, x)
    assert report.total == pytest.approx(eps ** -gamma)
    # tight at 0 (Jacobian eps^-gamma I), and an upper bound elsewhere
    assert float(jacobian_norm(fn, x)) == pytest.approx(eps ** -gamma, rel=1e-5)
    assert float(local_lower_bound(fn, _mat(16, (16, 3, 4)))) <= eps ** -gamma * (1 + 1e-6)
    # the primitive composes with jit / vmap / grad
    g = jax.jit(jax.vmap(jax.grad(lambda x: fn(x).sum())))(_mat(17, (2, 3, 4)))
    g_ref = jax.vmap(jax.grad(lambda x: (x / (eps + (x * x).sum(-1, keepdims=True)) ** gamma)
                              .sum()))(_mat(17, (2, 3, 4)))
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Elementwise nonlinearities (closed-form Lipschitz constants)
# ---------------------------------------------------------------------------------------------


def _hhrelu_where(x, d=0.5):
    return jnp.where(x <= 0, 0.0, jnp.where(x <= d, x * x / (2 * d), x - d / 2))


ACTIVATIONS = {
        "relu": (jax.nn.relu, 1.0),
        "leaky_relu": (lambda x: jax.nn.leaky_relu(x, 0.2), 1.0),
        "steep_leaky": (lambda x: jnp.where(x > 0, x, 3.0 * x), 3.0),
        "sigmoid": (jax.nn.sigmoid, 0.25),
        "tanh": (jnp.tanh, 1.0),
        "scaled_tanh": (lambda x: 2.0 * jnp.tanh(3.0 * x), 6.0),
        "softplus": (jax.nn.softplus, 1.0),
        "hhrelu_where": (_hhrelu_where, 1.0),
        "hhrelu_zoo": (None, 1.0),
        "clip": (lambda x: jnp.clip(2.0 * x, -1.0, 1.0), 2.0),
        "abs": (jnp.abs, 1.0),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_constants(name):
    fn, expected = ACTIVATIONS[name]
    if fn is None:
        from advjax.models import half_huber_relu

        fn = half_huber_relu
    x = jnp.zeros((5,))
    report = layer_bounds(fn, x)
    assert report.total == pytest.approx(expected, rel=1e-6)
    # independent check: the largest difference quotient on a grid (step 1e-3; float32 rounding
    # of the values allows ~1e-3 relative) reaches the bound and does not exceed it
    grid = np.linspace(-10.0, 10.0, 20001)
    vals = np.asarray(jax.vmap(fn)(jnp.asarray(grid, jnp.float32)), np.float64)
    slopes = np.abs(np.diff(vals)) / np.diff(grid)
    assert slopes.max() <= expected * (1 + 5e-3)
    assert slopes.max() >= expected * 0.99


@pytest.mark.parametrize("fn,match", [
        (lambda x: x * x, "mul"),
        (jnp.exp, "exp"),
        (lambda x: (x > 0).astype(jnp.float32), "discontinuous"),
        (lambda x: jnp.where(x > 1.0, x, 0.0), "discontinuous"),
        (lambda x: jnp.where(x * x > 0, 1.0, 0.0), "cannot be located"),
        (jnp.cumprod, "cumprod"),
        (lambda x: jax.lax.cummax(x), "cummax"),
        (lambda x: jnp.round(x), "round"),
])
def test_unsupported_or_non_lipschitz_raise(fn, match):
    with pytest.raises(UnsupportedPrimitiveError, match=match):
        layer_bounds(fn, jnp.zeros((4,)))


def test_product_of_two_input_dependent_values_raises():
    w = _mat(18, (4, 4))
    with pytest.raises(UnsupportedPrimitiveError, match="not globally Lipschitz"):
        layer_bounds(lambda x: (x @ w) * x, jnp.zeros(4))


def test_scalar_analysis_directly():
    relu = Node("max", (INPUT, const(0.0)))
    assert lipschitz_constant(relu) == 1.0
    step = Node("select_n", (Node("gt", (INPUT, const(0.0))), const(0.0), const(1.0)))
    with pytest.raises(NotLipschitzError, match="discontinuous"):
        lipschitz_constant(step)


# ---------------------------------------------------------------------------------------------
# Soundness on small models: total >= largest Jacobian norm found
# ---------------------------------------------------------------------------------------------


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.sigmoid(nn.Dense(12)(x))
        x = nn.sigmoid(nn.Dense(12)(x))
        return nn.Dense(4)(x)


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), strides=(1, 1))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.tanh(nn.Conv(4, (3, 3), strides=(2, 2), padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(x)


class _ResBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), use_bias=False)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        h = nn.Conv(3, (3, 3), use_bias=False)(h)
        h = nn.leaky_relu(nn.BatchNorm(use_running_average=True)(h), 0.1)
        x = x + nn.Conv(3, (3, 3), use_bias=False)(h)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(3)(x)


def _randomise_batch_stats(variables, seed):
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.uniform(0.2, 2.0, a.shape),
                                                         a.dtype), variables["batch_stats"])
    return {**variables, "batch_stats": stats}


@pytest.mark.parametrize("model,shape", [(_MLP(), (5, 5, 1)), (_CNN(), (10, 10, 2)),
                                         (_ResBN(), (6, 6, 2))],
                         ids=["mlp-sigmoid", "cnn-maxpool", "resnet-bn"])
def test_total_bounds_jacobian_norms(model, shape):
    variables = model.init(jax.random.key(1), jnp.zeros((1, *shape)))
    if "batch_stats" in variables:
        variables = _randomise_batch_stats(variables, 3)
    fn = lambda x: model.apply(variables, x[None])[0]
    report = layer_bounds(fn, jnp.zeros(shape))
    xs = jax.random.normal(jax.random.key(2), (24, *shape))
    lower = float(local_lower_bound(fn, xs, refine_steps=5, step_size=0.2))
    assert 0 < lower <= report.total * (1 + 1e-5)
    # jitted model: same report (the walk enters the jit call)
    jitted = layer_bounds(jax.jit(fn), jnp.zeros(shape))
    assert jitted.total == pytest.approx(report.total, rel=1e-6)
    assert len(jitted.rows) == len(report.rows)
    # sampled pairs: |f(x) - f(y)| <= L |x - y|
    ys = xs + 0.3 * jax.random.normal(jax.random.key(4), xs.shape)
    num = jnp.linalg.norm(jax.vmap(fn)(xs) - jax.vmap(fn)(ys), axis=-1)
    den = jnp.linalg.norm((xs - ys).reshape(len(xs), -1), axis=-1)
    assert float(jnp.max(num / den)) <= report.total * (1 + 1e-5)


def test_chain_total_equals_product_of_rows():
    model = _MLP()
    variables = model.init(jax.random.key(5), jnp.zeros((1, 4)))
    report = layer_bounds(lambda x: model.apply(variables, x[None])[0], jnp.zeros(4))
    assert report.total == pytest.approx(report.product, rel=1e-6)
    dense = [r.bound for r in report.rows if r.kind == "dense"]
    kernels = [variables["params"][f"Dense_{i}"]["kernel"] for i in range(3)]
    np.testing.assert_allclose(dense, [float(dense_norm(k)) for k in kernels], rtol=1e-5)
    assert [r.bound for r in report.rows if r.kind == "activation"] == [0.25, 0.25]


def test_table5_markdown():
    model = _CNN()
    variables = model.init(jax.random.key(6), jnp.zeros((1, 10, 10, 2)))
    report = layer_bounds(lambda x: model.apply(variables, x[None])[0], jnp.zeros((10, 10, 2)))
    md = report.to_markdown()
    assert md == table5(report)
    lines = md.splitlines()
    assert lines[0] == "| Layer | Kind | Size | Stride | Upper bound |"
    assert any("| conv | 2×3×3×3 | 1 |" in ln for ln in lines)
    assert any("| conv | 3×3×3×4 | 2 |" in ln for ln in lines)
    assert any("| dense | 16×3 | N/A |" in ln for ln in lines)
    assert f"{report.total:.4g}" in lines[-1]
    assert len([ln for ln in lines if ln.startswith("| _CNN")]) == len(report.rows)


def test_call_primitives_are_walked():
    @jax.custom_vjp
    def act(x):
        return jnp.tanh(x)

    act.defvjp(lambda x: (act(x), x), lambda x, g: (g * (1 - jnp.tanh(x) ** 2),))
    assert layer_bounds(lambda x: 3.0 * act(x), jnp.zeros(3)).total == pytest.approx(3.0)
    remat = jax.checkpoint(lambda x: 2.0 * jax.nn.relu(x))
    assert layer_bounds(remat, jnp.zeros(3)).total == pytest.approx(2.0)
    nested = jax.jit(lambda x: jax.jit(jax.nn.sigmoid)(x) * 4.0)
    assert layer_bounds(nested, jnp.zeros(3)).total == pytest.approx(1.0)


@pytest.mark.parametrize("fn,match", [
        # (a fori_loop with a static trip count is now composed: tests/lipschitz/test_layers.py)
        (lambda x: jax.lax.while_loop(lambda v: v.sum() < 3, lambda v: v + 1.0, x), "while"),
        (lambda x: jax.lax.cond(x.sum() > 0, lambda v: v, lambda v: -v, x), "cond"),
        (jnp.exp, "exp"),  # (log_softmax is now bounded: tests/lipschitz/test_norms.py)
])
def test_control_flow_and_unbounded_functions_raise(fn, match):
    with pytest.raises(UnsupportedPrimitiveError, match=match):
        layer_bounds(fn, jnp.zeros(3))


def test_piecewise_linear_functions_are_exact_property():
    """Random continuous piecewise-linear g(u) = a·u + Σ b max(u - c, 0) + Σ d min(u - e, 0).

    The analysis must return exactly the largest |slope| over the pieces (closed form)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    coef = st.floats(-3.0, 3.0, allow_nan=False).map(lambda v: round(v, 3))
    knot = st.floats(-2.0, 2.0, allow_nan=False).map(lambda v: round(v, 3))

    @settings(max_examples=40, deadline=None)
    @given(a=coef, ups=st.lists(st.tuples(coef, knot), max_size=3),
           downs=st.lists(st.tuples(coef, knot), max_size=3))
    def check(a, ups, downs):
        node = Node("mul", (const(a), INPUT))
        for b, c in ups:
            node = Node("add", (node, Node("mul", (const(b), Node(
                    "max", (Node("sub", (INPUT, const(c))), const(0.0)))))))
        for d, e in downs:
            node = Node("add", (node, Node("mul", (const(d), Node(
                    "min", (Node("sub", (INPUT, const(e))), const(0.0)))))))
        knots = sorted({c for _, c in ups} | {e for _, e in downs})
        probes = [k - 1.0 for k in knots[:1]] + [k + 1.0 for k in knots[-1:]] + \
            [0.5 * (p + q) for p, q in zip(knots[:-1], knots[1:], strict=True)]
        probes = probes or [0.0]
        slopes = [a + sum(b for b, c in ups if u > c) + sum(d for d, e in downs if u < e)
                  for u in probes]
        assert lipschitz_constant(node) == pytest.approx(max(abs(s) for s in slopes), abs=1e-9)

    check()


def _ipow(x: Node, k: int) -> Node:
    return Node("integer_pow", (x,), params=(("y", k),))


_K = math.sqrt(2 / math.pi)
_TAIL_CASES = {  # expression of INPUT, numpy closed form
        "gelu-tanh": (Node("mul", (Node("mul", (const(0.5), INPUT)), Node("add", (const(1.0), Node(
            "tanh", (Node("mul", (const(_K), Node("add", (INPUT, Node("mul", (const(0.044715),
                                                                          _ipow(INPUT, 3))))))),
                     )))))), lambda x: 0.5 * x * (1 + np.tanh(_K * (x + 0.044715 * x ** 3)))),
        "gaussian": (Node("exp", (Node("neg", (Node("mul", (INPUT, INPUT)),)),)),
                     lambda x: np.exp(-x * x)),
        "softsign": (Node("div", (INPUT, Node("add", (const(1.0), Node("abs", (INPUT,)))))),
                     lambda x: x / (1 + np.abs(x))),
        "squareplus": (Node("mul", (const(0.5), Node("add", (INPUT, Node("sqrt", (Node("add", (
            Node("mul", (INPUT, INPUT)), const(4.0))),)))))),
                       lambda x: 0.5 * (x + np.sqrt(x * x + 4))),
        "silu": (Node("mul", (INPUT, Node("logistic", (INPUT,)))),
                 lambda x: x * np.exp(-np.logaddexp(0.0, -x))),  # x·σ(x), no cancellation
        "rsqrt": (Node("rsqrt", (Node("add", (Node("mul", (INPUT, INPUT)), const(1.0))),)),
                  lambda x: 1 / np.sqrt(x * x + 1)),
        "log1p-square": (Node("log1p", (Node("mul", (INPUT, INPUT)),)), lambda x: np.log1p(x * x)),
}


_TAIL_CASES["tanh-of-cube"] = (Node("tanh", (_ipow(INPUT, 3),)), lambda x: np.tanh(x ** 3))
_TAIL_CASES["shifted-rsqrt"] = (  # (u - 2)² + 1 written as u² - 4u + 5: opposite-sign sum
        Node("rsqrt", (Node("add", (Node("sub", (Node("mul", (INPUT, INPUT)),
                                                 Node("mul", (const(4.0), INPUT)))),
                                    const(5.0))),)), lambda x: 1 / np.sqrt((x - 2) ** 2 + 1))


def _at(b, s):
    """The growth bound ``C·s^p·exp(-a·s^q)`` at ``s`` (log space: no underflow)."""
    c, p, a, q = b
    return np.exp(np.log(c) + p * np.log(s) - a * s ** q) if c > 0 else np.zeros_like(s)


@pytest.mark.parametrize("t", [Fraction(1, 4), Fraction(1), Fraction(8)], ids=["T.25", "T1", "T8"])
@pytest.mark.parametrize("name", sorted(_TAIL_CASES))
def test_tail_growth_bounds_are_sound_on_unbounded_pieces(name, t):
    # The growth bounds alone decide the pieces [T, ∞) and (-∞, -T] here (the driver only uses
    # them beyond ±64, where they are tiny): pointwise, U(s) >= |f| and D(s) >= |f'|, and the
    # piece bound dominates sup|f'|. Truth: float64 values and difference quotients on a
    # geometric grid T..1e6 (relative step 7e-6: quotients match f' to ~1e-5 where f' is not
    # tiny); tolerance 1e-4 relative plus the rounding of the values (4 ulp of |f| over the step).
    # They are sign-blind magnitude bounds, so only finiteness is asked of their size (the
    # opposite-sign lower bound of u² - 4u needs T > 4).
    root, f = _TAIL_CASES[name]
    grid = np.geomspace(float(t), 1e6, 2_000_001)
    for lo, hi, xs in ((t, math.inf, grid), (-math.inf, -t, -grid[::-1])):
        ev = ew._Evaluator(lo, hi)
        r = ev.ev(root)
        bound = ev.tail_bound(r)
        vals = f(xs)
        quot = np.abs(np.diff(vals)) / np.diff(xs)
        s_mid = np.abs(0.5 * (xs[1:] + xs[:-1]))
        if name != "shifted-rsqrt" or t > 4:
            assert math.isfinite(bound)
        assert quot.max() <= bound * (1 + 1e-4), (lo, hi, quot.max(), bound)
        # pointwise (a bound of the derivative at s between two grid points: the larger end)
        if r.g.d is None:
            continue
        d_at = np.maximum(_at(r.g.d, s_mid * (1 - 1e-5)), _at(r.g.d, s_mid * (1 + 1e-5)))
        tol = 4 * np.finfo(np.float64).eps * np.maximum(np.abs(vals[1:]), np.abs(vals[:-1]))
        assert np.all(quot <= d_at * (1 + 1e-4) + tol / np.diff(xs) + 1e-300), (lo, hi)
        if r.g.u is not None:
            assert np.all(np.abs(vals) <= _at(r.g.u, np.abs(xs)) * (1 + 1e-9) + 1e-300), (lo, hi)
