"""The contract of the default rule table: every rule, on a random instance, bounds the float64
Jacobian of the function it is applied to (sampled points); a deliberately wrong rule fails it.

Each instance applies its primitive to a value that depends on the input (checked in the jaxpr),
so the rule itself runs. A rule added to the table without an instance here fails
``test_every_rule_has_an_instance``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.lipschitz import DEFAULT_RULES, UnsupportedPrimitiveError, layer_bounds
from advjax.lipschitz._prims import NORMALIZATIONS
from advjax.lipschitz.contrast import contrast_normalize

_RNG = np.random.default_rng(0)
_W = jnp.asarray(_RNG.normal(size=(4, 3)), jnp.float32)
_K = jnp.asarray(_RNG.normal(size=(3, 3, 1, 2)), jnp.float32)
_G = jnp.asarray([[0], [2], [2], [3]], jnp.int32)


def _ckpt(x):
    return jax.checkpoint(jnp.sin)(x)


@jax.custom_jvp
def _cjvp(x):
    return jnp.tanh(x)


_cjvp.defjvp(lambda p, t: (jnp.tanh(p[0]), t[0]))


@jax.custom_vjp
def _cvjp(x):
    return jnp.sin(x)


_cvjp.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def _scatter(x):
    return jnp.zeros(3).at[jnp.array([0, 2, 2, 1])].add(x)


# name -> (function of x, input shape)
INSTANCES = {
        "abs": (lambda x: jnp.abs(x), (4,)),
        "add": (lambda x: x + jnp.sin(x), (4,)),
        "add_any": (lambda x: jax.grad(lambda z: jnp.sum(jnp.sin(z)) + jnp.sum(jnp.cos(z)))(x),
                    (4,)),
        "advjax_contrast_norm": (lambda x: contrast_normalize(x, eps=1.0, gamma=0.5), (4,)),
        "broadcast_in_dim": (lambda x: jnp.broadcast_to(x, (3, 4)), (4,)),
        "clamp": (lambda x: lax.clamp(-1.0, 2.0 * x, 1.0), (4,)),
        "concatenate": (lambda x: jnp.concatenate([x, 2.0 * x]), (4,)),
        "cond": (lambda x: lax.cond(True, lambda v: 3.0 * v, lambda v: v, x), (4,)),
        "conv_general_dilated": (lambda x: lax.conv_general_dilated(
                x[None], _K.astype(x.dtype), (1, 1), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))[0],
                (5, 5, 1)),
        "convert_element_type": (lambda x: 2.0 * x.astype(jnp.bfloat16).astype(jnp.float32),
                                 (4,)),
        "cos": (lambda x: jnp.cos(2.0 * x), (4,)),
        "cumsum": (lambda x: jnp.cumsum(x), (5,)),
        "custom_jvp_call": (_cjvp, (4,)),
        "custom_vjp_call": (_cvjp, (4,)),
        "div": (lambda x: x / (1.0 + jnp.abs(x)), (4,)),
        "dot_general": (lambda x: x @ _W, (4,)),
        "dynamic_slice": (lambda x: lax.dynamic_slice(3.0 * x, (1,), (2,)), (4,)),
        "dynamic_update_slice": (lambda x: lax.dynamic_update_slice(x, 2.0 * x[:2], (1,)), (4,)),
        "eq": (lambda x: jnp.where(x == 1.0, 1.0, x), (4,)),
        "erf": (lambda x: lax.erf(x), (4,)),
        "erfc": (lambda x: lax.erfc(x), (4,)),
        "exp": (lambda x: jnp.exp(-x * x), (4,)),
        "expm1": (lambda x: jax.nn.elu(x), (4,)),
        "gather": (lambda x: x[jnp.array([0, 0, 3])], (4,)),
        "ge": (lambda x: jnp.where(x >= 0, x, 0.5 * x), (4,)),
        "gt": (lambda x: jnp.where(x > 0, x, 0.5 * x), (4,)),
        "integer_pow": (lambda x: x / (1.0 + x ** 2), (4,)),
        "jit": (jax.jit(lambda x: 2.0 * x), (4,)),
        "le": (lambda x: jnp.where(x <= 0, 0.5 * x, x), (4,)),
        "log": (lambda x: jnp.log(1.0 + x * x), (4,)),
        "log1p": (lambda x: jax.nn.softplus(x), (4,)),
        "logistic": (lambda x: jax.nn.sigmoid(3.0 * x), (4,)),
        "lt": (lambda x: jnp.where(x < 0, 0.5 * x, x), (4,)),
        "max": (lambda x: jnp.maximum(x, 0.2 * x), (4,)),
        "min": (lambda x: jnp.minimum(x, 0.2 * x), (4,)),
        "mul": (lambda x: 3.0 * x, (4,)),
        "ne": (lambda x: jnp.where(x != 1.0, x, 1.0), (4,)),
        "neg": (lambda x: -x, (4,)),
        "optimization_barrier": (lambda x: lax.optimization_barrier(2.0 * x), (4,)),
        "pad": (lambda x: jnp.pad(2.0 * x, 1), (4,)),
        "reduce_max": (lambda x: jnp.max(x.reshape(2, 2), axis=1), (4,)),
        "reduce_min": (lambda x: jnp.min(x.reshape(2, 2), axis=1), (4,)),
        "reduce_sum": (lambda x: jnp.sum(x), (4,)),
        "reduce_window_max": (lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (2,), (1,),
                                                          "VALID"), (5,)),
        "reduce_window_min": (lambda x: lax.reduce_window(x, jnp.inf, lax.min, (2,), (1,),
                                                          "VALID"), (5,)),
        "reduce_window_sum": (lambda x: lax.reduce_window(x, 0.0, lax.add, (3,), (1,), "VALID"),
                              (5,)),
        "remat2": (_ckpt, (4,)),
        "reshape": (lambda x: (2.0 * x).reshape(2, 2), (4,)),
        "rev": (lambda x: lax.rev(2.0 * x, (0,)), (4,)),
        "rsqrt": (lambda x: lax.rsqrt(1.0 + x * x), (4,)),
        "scan": (lambda x: lax.scan(lambda c, _: (0.5 * c + jnp.sin(c), None), x, None,
                                    length=3)[0], (4,)),
        "scatter-add": (_scatter, (4,)),
        "select_n": (lambda x: jnp.where(x > 0, x, 0.0), (4,)),
        "sin": (lambda x: jnp.sin(2.0 * x), (4,)),
        "slice": (lambda x: 2.0 * x[1:3], (4,)),
        "sort": (lambda x: jnp.sort(x), (4,)),
        "split": (lambda x: jnp.split(2.0 * x, 2)[1], (4,)),
        "sqrt": (lambda x: jnp.sqrt(1.0 + x * x), (4,)),
        "square": (lambda x: x / (1.0 + jnp.square(x)), (4,)),
        "squeeze": (lambda x: jnp.squeeze((2.0 * x)[None]), (4,)),
        "stop_gradient": (lambda x: lax.stop_gradient(2.0 * x), (4,)),
        "sub": (lambda x: x - jnp.sin(x), (4,)),
        "tanh": (lambda x: jnp.tanh(2.0 * x), (4,)),
        "tile": (lambda x: jnp.tile(x, 3), (4,)),
        "top_k": (lambda x: lax.top_k(x, 2)[0], (4,)),
        "transpose": (lambda x: (2.0 * x).T, (2, 3)),
        # recognised normalisations: synthetic primitives of the table (checked by their rows)
        "layer_norm": (lambda x: (x - jnp.mean(x)) / jnp.sqrt(jnp.var(x) + 4.0), (5,)),
        "rms_norm": (lambda x: x / jnp.sqrt(jnp.mean(x * x) + 4.0), (5,)),
        "softmax": (lambda x: jax.nn.softmax(x), (5,)),
        "log_softmax": (lambda x: jax.nn.log_softmax(x), (5,)),
        "logsumexp": (lambda x: jax.nn.logsumexp(x.reshape(2, 3), axis=1), (6,)),
        "while": (lambda x: lax.while_loop(lambda c: c[0] < 3,
                                           lambda c: (c[0] + 1, jnp.sin(c[1]) + c[1]), (0, x))[1],
                  (4,)),
}

# rules that refuse on purpose (their refusal is the contract)
REFUSING = {"reduce_precision": lambda x: lax.reduce_precision(x, 5, 10)}

# names no public JAX API of this version emits for an input-dependent value (aliases of the
# names above under other JAX versions), and the generic reduce_window (whose Jacobian JAX cannot
# compute under vmap; tests/lipschitz/test_layers.py checks it against explicit differences):
# each has the same rule function as the named one
ALIASES = {"copy": "reshape", "copy_p": "reshape", "core_call": "jit", "closed_call": "jit",
           "named_call": "jit", "pjit": "jit", "checkpoint": "remat2", "remat": "remat2",
           "custom_lin": "jit", "custom_vjp_call_jaxpr": "custom_vjp_call",
           "scatter_add": "scatter-add", "sharding_constraint": "reshape",
           "expand_dims": "reshape", "stack": "concatenate", "reduce_window": "reduce_window_max"}


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in (v if isinstance(v, tuple | list) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def _sampled(fn, shape, n=24, seed=1) -> float:
    rng = np.random.default_rng(seed)
    with jax.enable_x64():
        # forward mode, except where JAX lacks it (custom_vjp)
        text = str(jax.make_jaxpr(fn)(jnp.zeros(shape)))
        jac = jax.jit(jax.jacrev(fn) if "custom_vjp" in text else jax.jacfwd(fn))
        best = 0.0
        for _ in range(n):
            x = jnp.asarray(rng.normal(scale=2.0, size=shape), jnp.float64)
            j = np.asarray(jac(x), np.float64).reshape(-1, math.prod(shape))
            best = max(best, float(np.linalg.svd(j, compute_uv=False)[0]))
    return best


def _holds(fn, shape, rules=DEFAULT_RULES) -> bool:
    total = layer_bounds(fn, jnp.zeros(shape, jnp.float32), rules=rules).total
    return _sampled(fn, shape) <= total * (1 + 1e-6)  # float32 forward vs float64 truth


def test_every_rule_has_an_instance():
    covered = set(INSTANCES) | set(REFUSING) | set(ALIASES)
    assert covered == set(DEFAULT_RULES)
    for alias, name in ALIASES.items():
        assert DEFAULT_RULES[alias] is DEFAULT_RULES[name]


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_rule_bounds_the_jacobian(name):
    fn, shape = INSTANCES[name]
    if name in NORMALIZATIONS:
        rows = layer_bounds(fn, jnp.zeros(shape)).rows
        assert any(r.primitive == name for r in rows)
    else:
        assert name in _primitives(jax.make_jaxpr(fn)(jnp.zeros(shape)).jaxpr)
    assert _holds(fn, shape)


@pytest.mark.parametrize("name", sorted(REFUSING))
def test_refusing_rules_refuse(name):
    with pytest.raises(UnsupportedPrimitiveError, match=name):
        layer_bounds(REFUSING[name], jnp.zeros(4))


@pytest.mark.parametrize("name", ["dot_general", "conv_general_dilated", "reduce_sum", "sort",
                                  "cumsum", "scatter-add", "tile", "gather", "layer_norm",
                                  "softmax"])
def test_a_wrong_rule_fails_the_contract(name):
    rule = DEFAULT_RULES[name]

    def halved(w, eqn, ins):
        out = rule(w, eqn, ins)
        outs = out if isinstance(out, list) else [out]
        first = outs[0]
        outs[0] = w.fresh(w.lip(first) / 2, first.shape, first.dtype)
        return outs if isinstance(out, list) else outs[0]

    fn, shape = INSTANCES[name]
    assert _holds(fn, shape)
    assert not _holds(fn, shape, DEFAULT_RULES.extend({name: halved}))
