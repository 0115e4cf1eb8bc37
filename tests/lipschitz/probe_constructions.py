"""Probes: ``layer_bounds`` of each hard construction (former crashes, integer wrap-around,
sub-resolution jumps, former refusals), printed as the total or the refusal. Not a test module:
test_regressions.py and test_coverage.py check each against its truth.

Run: ``python -m tests.lipschitz.probe_constructions [NAME ...]``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from advjax.lipschitz import layer_bounds

calls = [0]
def cb(x):
    calls[0] += 1
    return np.float32(2.0)
P = {
 "maxpred": (lambda x: jnp.where(jnp.maximum(x > 0, x > 1), x, 0.0), (4,)),
 "key_noise": (lambda x: x + jax.random.normal(jax.random.key(0), x.shape), (4,)),
 "io_callback": (lambda x: x * io_callback(cb, jax.ShapeDtypeStruct((), jnp.float32), 1.0), (4,)),
 "complex_const": (lambda x: x * jnp.real(jnp.asarray(1+2j)*jnp.asarray(1-1j)), (4,)),
 "int8_wrap": (lambda x: (lambda p: jnp.where(p * 100 + p * 100 + 100 > 50, x, x + 1))(
     (x > 0).astype(jnp.int8)), (4,)),
 "uint8_wrap": (lambda x: (lambda p: jnp.where(p - 1 < 5, x, x + 1))(
     (x > 0).astype(jnp.uint8)), (4,)),
 "sigmoid_jump": (lambda x: jax.nn.sigmoid(jnp.where(x > 0, x + 40.5, x + 40)), (4,)),
 "masked_softmax": (lambda x: jax.nn.softmax(jnp.where(jnp.arange(4) < 3, x, -jnp.inf)), (4,)),
 "softmax_where": (lambda x: jax.nn.softmax(x, where=jnp.arange(4) < 3), (4,)),
 "log_softmax_where": (lambda x: jax.nn.log_softmax(x, where=jnp.arange(4) < 3), (4,)),
 "logsumexp_b": (lambda x: jax.nn.logsumexp(x, b=jnp.array([1., 2., 0.5, 1.])), (4,)),
 "standardize": (lambda x: jax.nn.standardize(x), (4,)),
 "elu_relu": (lambda x: jax.nn.elu(jax.nn.relu(x)), (4,)),
 "softplus_tanh": (lambda x: jax.nn.softplus(jnp.tanh(x)), (4,)),
 "leaky_elu": (lambda x: jax.nn.leaky_relu(jax.nn.elu(x)), (4,)),
 "gelu70": (lambda x: jax.nn.gelu(x + 70), (4,)),
 "sort": (lambda x: jnp.sort(x), (4,)),
 "top_k": (lambda x: jax.lax.top_k(x, 2)[0], (4,)),
 "norm": (lambda x: jnp.linalg.norm(x), (4,)),
 "scatter_add": (lambda x: jnp.zeros(3).at[jnp.array([0, 0, 2, 1])].add(x), (4,)),
 "cumsum": (lambda x: jnp.cumsum(x), (4,)),
 "opt_barrier": (lambda x: jax.lax.optimization_barrier(x) * 2, (4,)),
 "debug_print": (lambda x: (jax.debug.print("{}", x), x * 2)[1], (4,)),
 "squareplus": (lambda x: jax.nn.squareplus(x - 56), (4,)),
}
def h3(x):
    return jax.lax.fori_loop(0, 700, lambda i, h: h / 3, x)
P["loop_h3"] = (h3, (4,))
names = sys.argv[1:] or list(P)
for n in names:
    f, s = P[n]
    calls[0] = 0
    try:
        r = layer_bounds(f, jnp.zeros(s))
        out = f"{r.total!r}"
    except Exception as e:
        out = f"{type(e).__name__}: {str(e)[:150]}"
    extra = f" (io_callback calls {calls[0]})" if n == "io_callback" else ""
    print(f"{n:18s} {out}{extra}", flush=True)
