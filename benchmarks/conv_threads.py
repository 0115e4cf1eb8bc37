"""One (256, 14, 14, 32) -> 64 3x3 convolution and a matmul of the same FLOPs on XLA:CPU, with
XLA's default kernels and with advjax's option (``advjax.xla_cpu``), in one process.

Run it as is and pinned to one core to see whether a kernel uses more than one thread:
  python benchmarks/conv_threads.py
  taskset -c 0 python benchmarks/conv_threads.py
"""

from __future__ import annotations

import time

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)


def main() -> None:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from advjax import xla_cpu
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((256, 14, 14, 32), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 64), np.float32))
    a = jnp.asarray(rng.standard_normal((256 * 14 * 14, 288), np.float32))
    b = jnp.asarray(rng.standard_normal((288, 64), np.float32))
    flops = 2 * 256 * 14 * 14 * 288 * 64

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    print(f"XLA_FLAGS={advjax.xla_cpu.FLAG if xla_cpu.STATUS == xla_cpu.APPLIED else 'as set'}"
          f" (advjax.xla_cpu: {xla_cpu.STATUS}); {len(jax.devices())} device(s)")
    for kernel, options in (("advjax option", None), ("XLA default", xla_cpu.XLA_DEFAULT_OPTIONS)):
        for name, fn, args in (("conv", conv, (x, w)), ("matmul", jnp.matmul, (a, b))):
            f = jax.jit(fn, compiler_options=options)
            f(*args).block_until_ready()
            ts = []
            for _ in range(20):
                t0 = time.perf_counter()
                f(*args).block_until_ready()
                ts.append(time.perf_counter() - t0)
            med = float(np.median(ts))
            print(f"{kernel:14s} {name:7s} {1e3 * med:7.2f} ms  {flops / med / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
