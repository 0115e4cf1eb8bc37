"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller).

Compares sharded with single-device results for a per-example function and, when available, for the
library's attacks, metrics and bounds; prints one JSON line with the findings.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from advjax import parallel


def gradient_step(x, label, *, key, eps):
    w = jnp.arange(x.size * 3, dtype=jnp.float32).reshape(x.size, 3) / x.size
    logits_fn = lambda v: v.reshape(-1) @ w
    grad = jax.grad(lambda v: -jax.nn.log_softmax(logits_fn(v))[label])(x)
    noise = jax.random.uniform(key, x.shape, minval=-1e-3, maxval=1e-3)
    return {"x_adv": jnp.clip(x + eps * jnp.sign(grad) + noise, 0, 1), "label": label}


def main():
    out = {"device_count": jax.device_count()}
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 13
    xs = jax.random.uniform(jax.random.key(0), (n, 4, 4, 1))
    labels = jnp.arange(n) % 3
    keys = jax.random.split(jax.random.key(1), n)
    eps = jnp.linspace(0.0, 0.3, n)
    ref = jax.jit(jax.vmap(gradient_step))(xs, labels, key=keys, eps=eps)
    sharded = parallel.shard_attack(gradient_step)(xs, labels, key=keys, eps=eps)
    out["max_abs_diff"] = float(jnp.max(jnp.abs(ref["x_adv"] - sharded["x_adv"])))
    out["labels_equal"] = bool(jnp.all(ref["label"] == sharded["label"]))
    out["shape"] = list(sharded["x_adv"].shape)
    # Divisible batch: the output must really be split over all devices.
    m = 16
    res16 = parallel.shard_attack(gradient_step)(
        jnp.ones((m, 4, 4, 1)) * 0.5, jnp.zeros((m,), jnp.int32),
        key=jax.random.split(jax.random.key(2), m), eps=0.1)
    shards = res16["x_adv"].addressable_shards
    out["num_shards"] = len(shards)
    out["shard_rows"] = sorted({s.data.shape[0] for s in shards})
    out["distinct_devices"] = len({s.device for s in shards})
    streamed = parallel.stream(gradient_step, xs, labels, chunk_size=5, key=keys, eps=eps)
    out["stream_max_abs_diff"] = float(np.max(np.abs(np.asarray(ref["x_adv"]) - streamed["x_adv"])))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
