"""FAB's hyperplane-box projection: the bisection of ``advjax.attacks.fab`` vs sorting the
breakpoints (the textbook algorithm, as advjax did before 2026-12-02), vmapped over a batch of
MNIST-sized problems, in one process.

Usage:
  python benchmarks/fab_projection.py [--batch 200] [--n 784] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)


def sorted_projection(p, w, b, lo, hi, norm):
    """The projection by sorting the breakpoints (the former implementation)."""
    import jax.numpy as jnp
    c = b - jnp.dot(w, p)
    s = jnp.where(c >= 0, 1.0, -1.0).astype(p.dtype)
    up = s * w > 0
    room = jnp.maximum(jnp.where(up, hi - p, p - lo), 0.0)
    aw = jnp.abs(w)
    weight = aw * aw if norm == "l2" else aw
    brk = (jnp.where(aw > 0, room / jnp.where(aw > 0, aw, 1.0), 0.0) if norm == "l2"
           else jnp.where(aw > 0, room, 0.0))
    order = jnp.argsort(brk)
    bs, ws = brk[order], weight[order]
    sat = jnp.concatenate([jnp.zeros(1, p.dtype), jnp.cumsum(ws * bs)[:-1]])
    rest = jnp.cumsum(ws[::-1])[::-1]
    target = jnp.abs(c)
    k = jnp.sum(sat + bs * rest < target)
    n = p.shape[0]
    kk = jnp.minimum(k, n - 1)
    tau = jnp.where(k >= n, bs[n - 1], (target - sat[kk]) / jnp.maximum(rest[kk], 1e-30))
    step = jnp.minimum(tau, brk)
    d = s * jnp.sign(w) * (step * aw if norm == "l2" else step)
    return jnp.where(target > 0, d, 0.0)


def main() -> None:
    import jax
    import jax.numpy as jnp

    from advjax.attacks.fab import project_hyperplane_box
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--n", type=int, default=784)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.uniform(size=(args.batch, args.n)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(args.batch, args.n)), jnp.float32)
    b = jnp.sum(w * p, axis=1) + jnp.asarray(rng.normal(size=args.batch), jnp.float32)
    fns = {name: jax.jit(jax.vmap(lambda p, w, b, f=f: f(p, w, b, 0.0, 1.0, "linf")))
           for name, f in (("bisection", project_hyperplane_box), ("sort", sorted_projection))}
    out = {k: f(p, w, b) for k, f in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(p, w, b))
            times[k].append(time.perf_counter() - t)
    result = {"batch": args.batch, "n": args.n,
              "ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
              "max_abs_difference": float(jnp.max(jnp.abs(out["bisection"] - out["sort"])))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
