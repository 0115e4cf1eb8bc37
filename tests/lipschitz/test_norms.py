"""LayerNorm / GroupNorm / RMSNorm (ε > 0): the bound max|γ|/√ε, and softmax (1/2), log_softmax
(√n) and logsumexp (1), against explicit Jacobians at random and adversarial inputs; look-alikes
must stay refused."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advjax.lipschitz import UnsupportedPrimitiveError, layer_bounds

EPS = 1e-3  # large enough that a small-variance input comes close to the bound 1/√ε


def _gamma_params(module, x, seed):
    params = module.init(jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 1.5, a.dtype), params)


def _max_abs_scale(params) -> float:
    return float(np.max(np.abs(np.asarray(params["params"]["scale"]))))


def _sigma_max(fn, points) -> float:
    """Largest singular value of the explicit Jacobian over ``points`` (float64 SVD)."""
    jac = jax.jit(jax.jacfwd(fn))
    best = 0.0
    for x in points:
        j = np.asarray(jac(x), np.float64).reshape(-1, x.size)
        best = max(best, float(np.linalg.svd(j, compute_uv=False)[0]))
    return best


def _points(shape, seed=0, n=12):
    """Random inputs, and adversarial ones where ‖J‖ is largest: a constant plus a tiny
    perturbation (variance << ε), tiny inputs (mean square << ε, for RMSNorm), an exactly
    constant input and zero (c = 0: J = diag(γ)P/√ε, P the centring or the identity)."""
    keys = jax.random.split(jax.random.key(seed), 3 * n)
    rand = [3.0 * jax.random.normal(k, shape) for k in keys[:n]]
    small = [jax.random.normal(k, shape) * 1e-3 + 2.0 for k in keys[n:2 * n]]
    tiny = [jax.random.normal(k, shape) * 1e-3 for k in keys[2 * n:]]
    return [*rand, *small, *tiny, jnp.full(shape, 0.7), jnp.zeros(shape)]


_MODULES = {
        "layernorm": lambda: nn.LayerNorm(epsilon=EPS),
        "rmsnorm": lambda: nn.RMSNorm(epsilon=EPS),
        "groupnorm": lambda: nn.GroupNorm(num_groups=3, epsilon=EPS),
}


@pytest.mark.parametrize("name", sorted(_MODULES))
def test_flax_norms_bound_is_max_gamma_over_sqrt_eps_and_sound(name):
    x = jnp.ones((2, 2, 6))
    module = _MODULES[name]()
    params = _gamma_params(module, x, seed=1)
    fn = lambda v: module.apply(params, v)
    report = layer_bounds(fn, x)
    expected = _max_abs_scale(params) / math.sqrt(np.float32(EPS))
    assert report.total == pytest.approx(expected, rel=1e-6)
    assert any(r.kind == "norm" for r in report.rows)
    truth = _sigma_max(fn, _points(x.shape, n=6))
    # sound (the float32 Jacobian rounds: 1e-4 relative), and close: RMSNorm attains the bound at
    # 0; the centred forms reach ‖diag(γ)P‖/√ε there, within 5% of max|γ|/√ε for these γ
    assert truth <= report.total * (1 + 1e-4)
    assert truth >= 0.95 * report.total


@pytest.mark.parametrize("ctor", [
        lambda: nnx.LayerNorm(6, epsilon=EPS, rngs=nnx.Rngs(0)),
        lambda: nnx.RMSNorm(6, epsilon=EPS, rngs=nnx.Rngs(0)),
        lambda: nnx.GroupNorm(6, num_groups=2, epsilon=EPS, rngs=nnx.Rngs(0)),
], ids=["layernorm", "rmsnorm", "groupnorm"])
def test_nnx_norms(ctor):
    module = ctor()
    module.scale.value = jnp.linspace(-2.5, 1.0, 6)
    x = jnp.ones((2, 6))
    report = layer_bounds(lambda v: module(v), x)
    assert report.total == pytest.approx(2.5 / math.sqrt(np.float32(EPS)), rel=1e-6)
    assert _sigma_max(lambda v: module(v), _points(x.shape, n=4)) <= report.total * (1 + 1e-4)


def _mean(v, axis=-1):
    return v.mean(axis, keepdims=True)


_HAND = {
        "jnp.var": lambda v: (v - _mean(v)) / jnp.sqrt(v.var(-1, keepdims=True) + EPS),
        "ddof=1": lambda v: (v - _mean(v)) / jnp.sqrt(v.var(-1, keepdims=True, ddof=1) + EPS),
        "pow2-rsqrt": lambda v: (v - _mean(v)) * jax.lax.rsqrt(_mean((v - _mean(v)) ** 2) + EPS),
        "fast-var": lambda v: (v - _mean(v)) / jnp.sqrt(_mean(v * v) - _mean(v) ** 2 + EPS),
        "rms": lambda v: v * (1.0 / jnp.sqrt(_mean(jnp.square(v)) + EPS)),
        "axis0": lambda v: (v - _mean(v, 0)) / jnp.sqrt(v.var(0, keepdims=True) + EPS),
}


@pytest.mark.parametrize("name", sorted(_HAND))
def test_hand_written_normalisations(name):
    fn = _HAND[name]
    x = jnp.ones((3, 5))
    report = layer_bounds(fn, x)
    assert report.total == pytest.approx(1 / math.sqrt(np.float32(EPS)), rel=1e-6)
    assert _sigma_max(fn, _points(x.shape, n=4)) <= report.total * (1 + 1e-4)


def test_norm_between_dense_layers_composes():
    w1 = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    w2 = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)), jnp.float32)
    ln = _HAND["jnp.var"]
    fn = lambda v: jnp.tanh(ln(v @ w1)) @ w2
    report = layer_bounds(fn, jnp.ones((1, 4)))
    s = [float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]) for w in (w1, w2)]
    assert report.total == pytest.approx(s[0] * s[1] / math.sqrt(np.float32(EPS)), rel=1e-5)
    assert _sigma_max(fn, _points((1, 4), n=6)) <= report.total


def _slice_gamma(v):  # γ computed from the input: a product of two input-dependent values
    return (v - _mean(v)) * (jax.lax.rsqrt(v.var(-1, keepdims=True) + EPS) * v[:, :1])


_LOOKALIKES = {
        "eps=0": lambda v: (v - _mean(v)) / jnp.sqrt(v.var(-1, keepdims=True)),
        "flax-eps=0": lambda v: nn.LayerNorm(epsilon=0.0).apply(
                {"params": {"scale": jnp.ones(5), "bias": jnp.zeros(5)}}, v),
        "var-other-axis": lambda v: (v - _mean(v)) / jnp.sqrt(v.var(0, keepdims=True) + EPS),
        "uncentred-numerator": lambda v: v / jnp.sqrt(v.var(-1, keepdims=True) + EPS),
        "centred-numerator-rms": lambda v: (v - _mean(v)) / jnp.sqrt(_mean(v * v) + EPS),
        "inexact-mean": lambda v: (v - v.sum(-1, keepdims=True) / 6.0)
        / jnp.sqrt(v.var(-1, keepdims=True) + EPS),
        "var-of-other-value": lambda v: (v - _mean(v))
        / jnp.sqrt((2.0 * v).var(-1, keepdims=True) + EPS),
        "fast-var-wrong-coef": lambda v: (v - _mean(v))
        / jnp.sqrt(_mean(v * v) - 0.5 * _mean(v) ** 2 + EPS),
        "var-centred-on-other-axis": lambda v: (v - _mean(v))
        / jnp.sqrt(((v - _mean(v, 0)) ** 2).mean(-1, keepdims=True) + EPS),
        "rolled-stats": lambda v: (v - _mean(v)) / jnp.sqrt(
                jnp.roll(v.var(-1, keepdims=True), 1, axis=0) + EPS),
        "transposed-stats": lambda v: (v - _mean(v)) / jnp.sqrt(
                jnp.transpose(v.var(-1, keepdims=True)) + EPS),
        "input-dependent-gamma": _slice_gamma,
        "x*x": lambda v: v * v,
        "gating": lambda v: v * jax.nn.sigmoid(v @ jnp.ones((5, 5))),
}


@pytest.mark.parametrize("name", sorted(_LOOKALIKES))
def test_lookalikes_stay_refused(name):
    with pytest.raises(UnsupportedPrimitiveError, match="no global Lipschitz|not globally"
                       "|combines input-dependent|no sound"):
        layer_bounds(_LOOKALIKES[name], jnp.ones((5, 5)))


def test_a_value_of_the_inside_used_elsewhere_is_walked_as_is():
    x = jnp.ones((3, 5))
    # the variance is also an output: it is walked (and refused) like any other value
    fn = lambda v: (_HAND["jnp.var"](v), v.var(-1))
    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(fn, x)


# ---------------------------------------------------------------------------------------------
# softmax family
# ---------------------------------------------------------------------------------------------


def _logit_points(shape, seed=0, n=8):
    """Random logits at several scales, and the adversarial ones: two equal top logits (softmax's
    ‖diag(p) − ppᵀ‖ = 1/2 there) and one dominant logit (p → e₁: ‖I − 1pᵀ‖ → √n, ‖p‖ → 1)."""
    keys = jax.random.split(jax.random.key(seed), n)
    scales = [(0.1, 1.0, 3.0, 10.0)[i % 4] for i in range(n)]
    rand = [s * jax.random.normal(k, shape) for k, s in zip(keys, scales, strict=True)]
    tie = jnp.zeros(shape).at[..., 2:].set(-30.0)
    top = jnp.zeros(shape).at[..., 0].set(30.0)
    return [*rand, tie, top]


_FAMILY = {  # fn, bound for groups of n = 5, least true sup over the adversarial points
        "softmax": (jax.nn.softmax, 0.5, 0.5),
        "softmax-axis0": (lambda v: jax.nn.softmax(v.T, axis=0), 0.5, 0.5),
        "log_softmax": (jax.nn.log_softmax, math.sqrt(5), 0.999 * math.sqrt(5)),
        "logsumexp-rows": (lambda v: jax.nn.logsumexp(v, axis=-1), 1.0, 0.999),
        "logsumexp-keepdims": (lambda v: jax.nn.logsumexp(v, axis=-1, keepdims=True), 1.0, 0.999),
        "logsumexp-all": (jax.nn.logsumexp, 1.0, 0.999),
        "hand-softmax": (lambda v: jnp.exp(v - v.max(-1, keepdims=True))
                         / jnp.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True), 0.5, 0.5),
}


@pytest.mark.parametrize("name", sorted(_FAMILY))
def test_softmax_family_constants_are_sound_and_attained(name):
    fn, bound, least = _FAMILY[name]
    x = jnp.zeros((3, 5))
    report = layer_bounds(fn, x)  # logsumexp-all: one group of all 15 entries, still ‖p‖₂ <= 1
    assert report.total == pytest.approx(bound, rel=1e-9)
    truth = _sigma_max(fn, _logit_points(x.shape))
    assert truth <= report.total * (1 + 1e-5)  # float32 Jacobian rounding
    if name != "logsumexp-all":  # (its adversarial point is a one-hot over all 15 entries)
        assert truth >= least * (1 - 1e-4)


_FAMILY_LOOKALIKES = {
        "sum-over-other-axis": lambda v: jnp.exp(v - v.max(-1, keepdims=True))
        / jnp.exp(v - v.max(-1, keepdims=True)).sum(0, keepdims=True),
        "shift-not-per-group": lambda v: jnp.exp(v - v.max(0, keepdims=True))
        / jnp.exp(v - v.max(0, keepdims=True)).sum(-1, keepdims=True),
        "log_softmax-other-denominator": lambda v: (v - v.max(-1, keepdims=True)) - jnp.log(
                jnp.exp(2.0 * v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)),
        "different-shifts": lambda v: jnp.exp(v - v.max(-1, keepdims=True))
        / jnp.exp(v - v.min(-1, keepdims=True)).sum(-1, keepdims=True),
        "logsumexp-other-shift-added": lambda v: jnp.log(jnp.exp(
                v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)) + v.min(-1, keepdims=True),
        "softmax-times-input": lambda v: jax.nn.softmax(v) * v,
}


@pytest.mark.parametrize("name", sorted(_FAMILY_LOOKALIKES))
def test_softmax_lookalikes_stay_refused(name):
    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(_FAMILY_LOOKALIKES[name], jnp.zeros((5, 5)))
