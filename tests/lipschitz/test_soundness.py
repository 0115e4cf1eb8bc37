"""Soundness holes of the graph walk: each construction is bounded correctly or refused.

Truth: explicit Jacobians + SVD for linear maps, and for elementwise functions the largest
difference quotient on a dense float64 grid that contains every threshold and points 1e-9 on
either side of it (a jump of size j there shows as a slope of about j / 2e-9).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import UnsupportedPrimitiveError, layer_bounds, local_lower_bound
from advjax.lipschitz.contrast import contrast_norm_p


def _explicit_norm(fn, x) -> float:
    jac = np.asarray(jax.jacfwd(fn)(x), np.float64).reshape(-1, x.size)
    return float(np.linalg.svd(jac, compute_uv=False)[0])


def _grid_slope(fn_np, knots=(), lo=-4.0, hi=4.0, n=8001) -> float:
    """Largest |difference quotient| of a float64 scalar function on a grid refined at knots."""
    pts = [np.linspace(lo, hi, n)]
    for k in knots:
        pts.append(np.array([k - 1e-9, k, k + 1e-9]))
    grid = np.unique(np.concatenate(pts))
    vals = fn_np(grid)
    return float(np.max(np.abs(np.diff(vals)) / np.diff(grid)))


# ---------------------------------------------------------------------------------------------
# Casts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
        lambda x: x.astype(jnp.int32).astype(jnp.float32),
        lambda x: (x * 255).astype(jnp.uint8) / 255,
        lambda x: jnp.where(x.astype(jnp.int32) > 0, x, 0.0),
        lambda x: x.astype(bool).astype(jnp.float32),
        lambda x: jax.nn.relu(x).astype(jnp.int8).astype(jnp.float32),
], ids=["int-roundtrip", "uint8-quantise", "int-ste", "bool-roundtrip", "int8"])
def test_narrowing_casts_are_refused(fn):
    with pytest.raises(UnsupportedPrimitiveError, match="cast"):
        layer_bounds(fn, jnp.zeros(6))


def test_reduce_precision_is_refused():
    with pytest.raises(UnsupportedPrimitiveError, match="reduce_precision"):
        layer_bounds(lambda x: jax.lax.reduce_precision(x, 5, 10), jnp.zeros(6))


def test_float_casts_are_the_identity_and_predicate_casts_are_steps():
    fn = lambda x: 2.0 * jax.nn.relu(x.astype(jnp.bfloat16)).astype(jnp.float32)
    assert layer_bounds(fn, jnp.zeros(4)).total == 2.0
    # bool -> int8 -> int32 -> float: exact 0/1 values, a step: refused as discontinuous
    step = lambda x: (x > 0).astype(jnp.int8).astype(jnp.int32).astype(jnp.float32)
    with pytest.raises(UnsupportedPrimitiveError, match="discontinuous"):
        layer_bounds(step, jnp.zeros(4))
    # ... and a continuous use of a predicate cast is bounded exactly (slope 1 + 0 = 1)
    ok = lambda x: x + 0.0 * (x > 0).astype(jnp.int32).astype(jnp.float32)
    assert layer_bounds(ok, jnp.zeros(4)).total == 1.0


# ---------------------------------------------------------------------------------------------
# Gather index semantics
# ---------------------------------------------------------------------------------------------

_IDX = jnp.array([9, 9, 9])


@pytest.mark.parametrize("fn,expected", [
        (lambda x: x[_IDX], math.sqrt(3.0)),  # promise_in_bounds: XLA clamps to x[5]
        (lambda x: x.at[_IDX].get(mode="clip"), math.sqrt(3.0)),
        (lambda x: x.at[jnp.array([9, 9, 2])].get(mode="fill", fill_value=0.0), 1.0),
        (lambda x: x.at[jnp.array([-9, 0, 2])].get(mode="clip"), math.sqrt(2.0)),
        (lambda x: x.reshape(2, 3)[jnp.array([1, 5, 5]), :].ravel(), math.sqrt(3.0)),
], ids=["promise", "clip", "fill", "clip-negative", "rows"])
def test_gather_counts_reads_with_the_real_index_semantics(fn, expected):
    x = jnp.arange(6.0)
    report = layer_bounds(fn, x)
    assert report.total == pytest.approx(expected, rel=1e-12)
    assert report.total == pytest.approx(_explicit_norm(fn, x), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Hidden jumps (exact point values at every breakpoint)
# ---------------------------------------------------------------------------------------------

JUMPS = {
        "cos-of-step": (lambda xp: lambda x: xp.cos(3.0 * (x > 0)), [0.0]),
        "sin-of-where": (lambda xp: lambda x: xp.sin(xp.where(x > 0, x + 1, x)), [0.0]),
        "sin-isolated-point": (lambda xp: lambda x: xp.sin(xp.where(x == 0, 5.0, x)), [0.0]),
        "small-relative-jump": (lambda xp: lambda x: xp.where(x > 0, x + 1e6 + 0.5, x + 1e6),
                                [0.0]),
        "tanh-of-jump-at-third": (lambda xp: lambda x: xp.tanh(xp.where(3 * x > 1, x, x + 0.25)),
                                  [1 / 3]),
        "abs-of-jump-in-max": (lambda xp: lambda x: xp.maximum(xp.abs(xp.where(x >= 1, x, 1 - x)),
                                                               0.5), [1.0]),
}


@pytest.mark.parametrize("name", sorted(JUMPS))
def test_hidden_jumps_are_refused(name):
    make, knots = JUMPS[name]
    # truth: the function really jumps (huge difference quotient at the knot)
    assert _grid_slope(make(np), knots) > 1e6
    with pytest.raises(UnsupportedPrimitiveError, match="discontinuous"):
        layer_bounds(make(jnp), jnp.zeros(3))


CONTINUOUS = {
        "relu-at-a-third": (lambda xp: lambda x: xp.where(3 * x > 1, 3 * x - 1, 0.0), [1 / 3], 3.0),
        "abs-of-where": (lambda xp: lambda x: xp.abs(xp.where(x > 0, x - 1, x + 1)), [0.0], 1.0),
        "isolated-point-same-value": (lambda xp: lambda x: xp.where(x == 2, 2.0, x), [2.0], 1.0),
        "sin-of-continuous-where": (lambda xp: lambda x: xp.sin(xp.where(x > 1, 2 * x - 1, x)),
                                    [1.0], 2.0),
}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_continuous_piecewise_functions_keep_their_bound(name):
    make, knots, expected = CONTINUOUS[name]
    total = layer_bounds(make(jnp), jnp.zeros(3)).total
    assert total == pytest.approx(expected, rel=1e-12)
    assert _grid_slope(make(np), knots) <= expected * (1 + 1e-6)


# ---------------------------------------------------------------------------------------------
# Parameters: NaN constants, contrast normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
        lambda x: x / jnp.array([1.0, jnp.nan, 2.0, 3.0]),
        lambda x: x * jnp.nan,
        lambda x: x @ jnp.full((4, 2), jnp.nan),
        lambda x: jnp.maximum(x, jnp.array([0.0, jnp.inf, 0.0, 0.0])),
], ids=["div-array", "mul-scalar", "dense", "max-inf"])
def test_non_finite_constants_raise(fn):
    with pytest.raises(UnsupportedPrimitiveError, match="NaN|non-finite"):
        layer_bounds(fn, jnp.zeros(4))


@pytest.mark.parametrize("eps,gamma", [(1.0, -0.5), (0.0, 0.5), (1.0, 1.5), (math.nan, 0.5)])
def test_contrast_norm_parameters_are_validated_by_the_rule(eps, gamma):
    fn = lambda x: contrast_norm_p.bind(x, eps=eps, gamma=gamma, axis=(0,))
    with pytest.raises(UnsupportedPrimitiveError, match="contrast normalisation"):
        layer_bounds(fn, jnp.zeros(4))


# ---------------------------------------------------------------------------------------------
# custom_jvp: the walk bounds the primal; the lower bound can measure the primal too
# ---------------------------------------------------------------------------------------------


def test_custom_jvp_lower_bound_measures_the_primal_on_request():
    @jax.custom_jvp
    def ident(x):
        return x

    ident.defjvp(lambda p, t: (ident(p[0]), 10.0 * t[0]))  # a rule that lies about the slope
    total = layer_bounds(ident, jnp.zeros(3)).total
    assert total == 1.0  # the primal
    xs = jax.random.normal(jax.random.key(0), (4, 3))
    # default: JAX's derivative, custom rule included (documented): 10 > the primal's L
    assert float(local_lower_bound(ident, xs)) == pytest.approx(10.0, rel=1e-6)
    primal = float(local_lower_bound(ident, xs, primal_step=1e-2))
    assert primal == pytest.approx(1.0, rel=1e-5) and primal <= total * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------
# Fuzz: random compositions of elementwise pieces with jumps
# ---------------------------------------------------------------------------------------------


def _random_expr(rng, depth, knots):
    """A random scalar expression tree; thresholds are dyadic so float32 holds them exactly."""
    if depth == 0 or rng.random() < 0.2:
        return ("x",)
    kind = rng.choice(["aff", "relu", "tanh", "sin", "abs", "where", "where-same", "max",
                       "clip", "step", "silu"])
    sub = lambda: _random_expr(rng, depth - 1, knots)
    if kind == "aff":
        return ("aff", float(rng.integers(-8, 9)) / 4, float(rng.integers(-8, 9)) / 4, sub())
    if kind in ("relu", "tanh", "sin", "abs", "silu"):
        return (kind, sub())
    if kind in ("where", "where-same", "step"):
        c = float(rng.integers(-8, 9)) / 4
        knots.add(c)
        op = rng.choice(["gt", "ge", "eq"])
        if kind == "where":
            return ("where", op, c, sub(), sub())
        if kind == "where-same":  # both branches equal: continuous
            s = sub()
            return ("where", op, c, s, s)
        return ("step", op, c, float(rng.integers(-2, 3)) * 0.5, sub())
    if kind == "max":
        return ("max", sub(), sub())
    return ("clip", sub())


def _eval(t, x, xp):
    k = t[0]
    if k == "x":
        return x
    if k == "aff":
        return t[1] * _eval(t[3], x, xp) + t[2]
    if k == "relu":
        return xp.maximum(_eval(t[1], x, xp), 0.0)
    if k in ("tanh", "sin", "abs"):
        return getattr(xp, k)(_eval(t[1], x, xp))
    if k == "silu":
        s = _eval(t[1], x, xp)
        return s / (1.0 + xp.exp(-s))
    if k == "max":
        return xp.maximum(_eval(t[1], x, xp), _eval(t[2], x, xp))
    if k == "clip":
        return xp.clip(_eval(t[1], x, xp), -1.0, 1.0)
    cmp = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b}[t[1]]
    if k == "where":
        return xp.where(cmp(x, t[2]), _eval(t[3], x, xp), _eval(t[4], x, xp))
    return _eval(t[4], x, xp) + t[3] * cmp(x, t[2]).astype(x.dtype)


def test_fuzz_random_elementwise_compositions_have_no_unsound_total():
    rng = np.random.default_rng(12)
    accepted = refused = 0
    for _ in range(60):
        knots: set[float] = set()
        tree = _random_expr(rng, 4, knots)
        try:
            total = layer_bounds(lambda x, t=tree: _eval(t, x, jnp), jnp.zeros(2)).total
        except UnsupportedPrimitiveError:
            refused += 1
            continue
        accepted += 1
        slope = _grid_slope(lambda g, t=tree: _eval(t, g, np), sorted(knots))
        # float64 values of size <= ~10 differenced over 2e-9: rounding <= ~1e-5 in the slope
        assert slope <= total * (1 + 1e-6) + 1e-4, (tree, total, slope)
    assert accepted >= 15 and refused >= 5, (accepted, refused)


def test_a_chain_of_hundreds_of_elementwise_steps_is_bounded_without_recursion():
    # x <- 0.9 tanh(x) + 0.01, 400 times: 1200 scalar operations fused into one expression
    # (the analysis once recursed per operation and hit Python's limit at ~200 steps).
    steps = 400

    def chain(x):
        for _ in range(steps):
            x = jnp.tanh(x) * 0.9 + 0.01
        return x

    total = layer_bounds(chain, jnp.ones((3,))).total
    # sup |chain'| on a float64 grid (the slope peaks near x = 0; it is below 1e-40 for |x| > 20).
    x = np.linspace(-20.0, 20.0, 400_001)
    d = np.ones_like(x)
    for _ in range(steps):
        d *= 0.9 * (1.0 - np.tanh(x) ** 2)
        x = 0.9 * np.tanh(x) + 0.01
    assert d.max() <= total <= 1.01 * d.max()
