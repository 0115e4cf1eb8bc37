"""Cost of the exact L2 ∩ box projection, and PGD / APGD throughput with each L2 projection.

Projections timed (``jit(vmap)`` over 256 inputs in [0, 1], MNIST and CIFAR-10 sizes, steps that
leave the box and the ball, as in PGD):

* ``bisect40``: the former exact projection, 40 bisection passes on the KKT multiplier
  (re-implemented here for the comparison);
* ``exact``: ``advjax.attacks.projections.project_l2_box`` (active-set iteration, 2-3 passes);
* ``clip``: rescale onto the ball, then clip (``method="clip"``);
* ``grad``: for scale, one input gradient of a 784-256-256-10 MLP at the same batch.

Then L2 PGD-40 and APGD-40 on that MLP at batch 256 with each projection (``bisect40`` by patching
the library's projection), images per second. Every figure is the median of ``--repeats`` timed
calls after a compile call, all peers side by side in one process.

Usage: ``python benchmarks/projection.py [--repeats 7] [--out benchmarks/results/projection.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import apgd, pgd, projections


def bisect40(x_adv, x, eps, lo, hi, *, method="exact", iters=40):
    """The former exact L2 ∩ box projection: bisection on ``t`` in ``clip(x + t v)``."""
    del method
    v = x_adv - x

    def dist(t):
        return projections.l2_norm(jnp.clip(x + t * v, lo, hi) - x)

    inside = dist(1.0) <= eps

    def body(_, bracket):
        t_lo, t_hi = bracket
        mid = 0.5 * (t_lo + t_hi)
        ok = dist(mid) <= eps
        return jnp.where(ok, mid, t_lo), jnp.where(ok, t_hi, mid)

    zero = jnp.zeros((), v.dtype)
    t_lo, _ = jax.lax.fori_loop(0, iters, body, (zero, jnp.ones((), v.dtype)))
    return jnp.clip(x + jnp.where(inside, 1.0, t_lo) * v, lo, hi)


def _median_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _mlp(d, key):
    sizes = [d, 256, 256, 10]
    keys = jax.random.split(key, len(sizes) - 1)
    ws = [jax.random.normal(k, (a, b)) / np.sqrt(a) for k, a, b in
          zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def logits_fn(x):
        h = x.reshape(-1)
        for w in ws[:-1]:
            h = jax.nn.relu(h @ w)
        return h @ ws[-1]

    return logits_fn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n = args.batch
    key = jax.random.key(0)
    rows = []
    for shape in [(28, 28, 1), (32, 32, 3)]:
        k1, k2 = jax.random.split(jax.random.fold_in(key, shape[-1]))
        x = jax.random.uniform(k1, (n, *shape))
        x = jnp.where(x < 0.3, 0.0, x)  # saturated pixels, as in MNIST
        step = 2.0 * jax.random.normal(k2, (n, *shape)) / np.sqrt(np.prod(shape))
        eps = jnp.full((n,), 1.0)
        fns = {
            "bisect40": lambda a, b, e: bisect40(a, b, e, 0.0, 1.0),
            "exact": lambda a, b, e: projections.project_l2_box(a, b, e, 0.0, 1.0),
            "clip": lambda a, b, e: projections.project_l2_box(a, b, e, 0.0, 1.0,
                                                                method="clip"),
        }
        row = {"shape": list(shape), "batch": n}
        for name, fn in fns.items():
            row[f"{name}_ms"] = 1e3 * _median_time(jax.jit(jax.vmap(fn)), x + step, x, eps,
                                                   repeats=args.repeats)
        logits_fn = _mlp(int(np.prod(shape)), key)
        grad = jax.jit(jax.vmap(jax.grad(lambda z, f=logits_fn: jax.nn.logsumexp(f(z)))))
        row["grad_ms"] = 1e3 * _median_time(grad, x, repeats=args.repeats)
        rows.append(row)
        print(json.dumps(row))

    # Attack throughput on the MNIST-size MLP.
    shape = (28, 28, 1)
    logits_fn = _mlp(784, key)
    x = jax.random.uniform(jax.random.fold_in(key, 7), (n, *shape))
    labels = jnp.argmax(jax.vmap(logits_fn)(x), -1)
    eps = jnp.full((n,), 1.0)
    keys = jax.random.split(key, n)
    original = projections.project_l2_box
    attack_rows = []
    for attack_name, build in [("pgd", lambda m: pgd(logits_fn, norm="l2", steps=40,
                                                      projection=m)),
                               ("apgd", lambda m: apgd(logits_fn, norm="l2", steps=40,
                                                        projection=m))]:
        row = {"attack": f"{attack_name}-l2-40", "batch": n}
        for proj_name in ("bisect40", "exact", "clip"):
            if proj_name == "bisect40":
                projections.project_l2_box = bisect40
            try:
                attack = build("clip" if proj_name == "clip" else "exact")
                run = jax.jit(jax.vmap(attack))
                t = _median_time(lambda a, b, c, d, r=run: r(a, b, eps=c, key=d).x_adv, x, labels,
                                 eps, keys, repeats=max(3, args.repeats // 2))
            finally:
                projections.project_l2_box = original
            row[f"{proj_name}_img_per_s"] = n / t
        attack_rows.append(row)
        print(json.dumps(row))

    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python":
            platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                    time.gmtime()),
            "loadavg": os.getloadavg()}
    out = {"meta": meta, "projection": rows, "attacks": attack_rows}
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
