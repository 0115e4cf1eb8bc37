"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller).

Compares sharded with single-device results for a per-example function and, when available, for the
library's attacks, metrics and bounds; prints one JSON line with the findings.
"""

import json

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


def _matches_vmap(n):
    """Sharded, streamed and one-key results on ``n`` examples against ``jit(vmap)``."""
    xs = jax.random.uniform(jax.random.key(0), (n, 4, 4, 1))
    labels = jnp.arange(n) % 3
    keys = jax.random.split(jax.random.key(1), n)
    eps = jnp.linspace(0.0, 0.3, n)
    ref = jax.jit(jax.vmap(gradient_step))(xs, labels, key=keys, eps=eps)
    sharded = parallel.shard_attack(gradient_step)(xs, labels, key=keys, eps=eps)
    streamed = parallel.stream(gradient_step, xs, labels, chunk_size=5, key=keys, eps=eps)
    # One key for the whole set: example i must get fold_in(key, i) on every path.
    one_key = jax.random.key(7)
    folded = jax.vmap(lambda i: jax.random.fold_in(one_key, i))(jnp.arange(n))
    ref_k = jax.jit(jax.vmap(gradient_step))(xs, labels, key=folded, eps=eps)["x_adv"]
    got_k = [parallel.shard_attack(gradient_step)(xs, labels, key=one_key, eps=eps)["x_adv"],
             parallel.stream(gradient_step, xs, labels, chunk_size=5, key=one_key,
                             eps=eps)["x_adv"]]
    diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))  # noqa: E731
    return {"max_abs_diff": diff(ref["x_adv"], sharded["x_adv"]),
            "labels_equal": bool(jnp.all(ref["label"] == sharded["label"])),
            "shape": list(sharded["x_adv"].shape),
            "stream_max_abs_diff": diff(ref["x_adv"], streamed["x_adv"]),
            "single_key_max_abs_diff": max(diff(ref_k, g) for g in got_k)}


COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all",
               "reduce-scatter")


def collectives(hlo: str) -> dict:
    """How many times each cross-device collective occurs in a compiled program's text."""
    return {op: hlo.count(op) for op in COLLECTIVES}


def main():
    out = {"device_count": jax.device_count(),
           # 13 examples are padded up to the device count; 16 divide by it.
           "by_size": {str(n): _matches_vmap(n) for n in (13, 16)}}
    # Divisible batch: the output must really be split over all devices.
    m = 16
    run = parallel.shard_attack(gradient_step)
    args = (jnp.ones((m, 4, 4, 1)) * 0.5, jnp.zeros((m,), jnp.int32))
    kw = dict(key=jax.random.split(jax.random.key(2), m), eps=0.1)
    compiled = run.lower(*args, **kw).compile()
    x_sharding = compiled.input_shardings[0][0][0]
    out["num_shards"] = len(x_sharding.device_set)
    out["shard_rows"] = [x_sharding.shard_shape((m, 4, 4, 1))[0]]
    out["distinct_devices"] = len({d.id for d in x_sharding.device_set})
    out["collectives"] = collectives(compiled.as_text())
    out["ragged"] = {str(n): ragged_layout(n) for n in (13, 12, 16)}
    out.update(library_checks())
    print(json.dumps(out))


def ragged_layout(n):
    """Where shard_attack leaves n result rows on the 8 devices: the devices that hold rows,
    rows held per device (a copy counts again), whether the sharding is replicated, and the
    values against jit(vmap)."""
    xs = jax.random.uniform(jax.random.key(3), (n, 4, 4, 1))
    labels = jnp.arange(n) % 3
    keys = jax.random.split(jax.random.key(4), n)
    got = parallel.shard_attack(gradient_step)(xs, labels, key=keys, eps=0.1)["x_adv"]
    ref = jax.jit(jax.vmap(gradient_step))(xs, labels, key=keys, eps=jnp.full(n, 0.1))["x_adv"]
    rows = sorted(s.data.shape[0] for s in got.addressable_shards)
    return {"devices": len(got.sharding.device_set), "rows_per_device": rows,
            "replicated": bool(got.sharding.is_fully_replicated and len(rows) > 1),
            "spec": str(getattr(got.sharding, "spec", None)),
            "equal": bool(np.array_equal(np.asarray(got), np.asarray(ref)))}


def library_checks():
    """PGD, lbfgs, ARA and layer_bounds on 8 devices vs the single-device computation."""
    import flax.linen as nn

    from advjax import attacks, lipschitz, metrics
    from advjax.models import linen_logits_fn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x.reshape((x.shape[0], -1))
            return nn.Dense(3)(nn.tanh(nn.Dense(16)(x)))

    n = 13
    xs = jax.random.uniform(jax.random.key(3), (n, 4, 4, 1))
    module = Net()
    variables = module.init(jax.random.key(4), xs[:1])
    fn = linen_logits_fn(module, variables)
    labels = jnp.argmax(jax.vmap(fn)(xs), -1)
    keys = jax.random.split(jax.random.key(5), n)
    eps = jnp.linspace(0.05, 0.5, n)
    found = {}
    pgd = attacks.pgd(fn, norm="l2", steps=10)
    ref = jax.jit(jax.vmap(pgd))(xs, labels, key=keys, eps=eps)
    got = parallel.shard_attack(pgd)(xs, labels, key=keys, eps=eps)
    found["pgd_diff"] = float(jnp.max(jnp.abs(ref.x_adv - got.x_adv)))
    found["pgd_success_equal"] = bool(jnp.all(ref.success == got.success))
    compiled = parallel.shard_attack(pgd).lower(xs, labels, key=keys, eps=eps).compile()
    found["pgd_devices"] = len(compiled.input_shardings[0][0][0].device_set)
    found["pgd_collectives"] = collectives(compiled.as_text())
    lb = attacks.lbfgs(fn, search_steps=3, max_iterations=15)
    targets = (labels + 1) % 3
    ref = jax.jit(jax.vmap(lb))(xs, labels, target=targets)
    got = parallel.shard_attack(lb)(xs, labels, target=targets)
    found["lbfgs_diff"] = float(jnp.max(jnp.abs(ref.x_adv - got.x_adv)))
    ara_result = metrics.attack_ara(fn, np.asarray(xs), np.asarray(labels), num_classes=3,
                                    steps=20, eps=2.0, momentum=0.0, chunk_size=5)
    found["ara"] = float(ara_result.ara)
    found["ara_distortions"] = np.asarray(ara_result.distortions).tolist()
    found["bound"] = float(lipschitz.layer_bounds(fn, xs[0]).total)
    return found


if __name__ == "__main__":
    main()
