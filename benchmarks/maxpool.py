"""Gradient of 2×2 max pooling on XLA:CPU: ``nn.max_pool`` (select-and-scatter) vs
``advjax.models.max_pool_2x2`` (the same gradient from an elementwise first-maximum JVP).

Times ``jax.grad`` of ``sum(pool(x)**2)`` for the MNIST CNN's two pooling shapes at batch 256.
Usage: ``python benchmarks/maxpool.py``.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from advjax.models import max_pool_2x2


def _select_and_scatter_pool(x):
    return nn.max_pool(x, (2, 2), (2, 2))


def _time(fn, *args, repeats=10):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    rows = []
    for shape in [(256, 28, 28, 32), (256, 14, 14, 64)]:
        x = jax.random.normal(jax.random.key(0), shape)
        times = {}
        for name, pool in [("select_and_scatter", _select_and_scatter_pool),
                           ("advjax", max_pool_2x2)]:
            grad = jax.jit(jax.grad(lambda v, p=pool: jnp.sum(p(v) ** 2)))
            times[name] = _time(grad, x)
        rows.append({"shape": shape, **{k: v * 1e3 for k, v in times.items()},
                     "speedup": times["select_and_scatter"] / times["advjax"]})
        print(f"{str(shape):22s} select_and_scatter {times['select_and_scatter'] * 1e3:8.2f} ms"
              f"  advjax {times['advjax'] * 1e3:8.2f} ms"
              f"  speedup {rows[-1]['speedup']:.1f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
