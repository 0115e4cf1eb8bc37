"""Benchmark: conv operator norms by Fourier blocks (``fft``: certified host maximum;
``fft_svd``: the previous path, XLA's batched SVD of every block), power iteration (``exact``) and
the SVD of the explicit matrix (``explicit``, jacfwd + SVD; only where the matrix is small), and
``layer_bounds`` on a Woods et al. (2019) ResNet-44 (``--resnet``).

For 3×3 convolutions C→C on H×W inputs of growing size (16→16 on 8×8 up to 256→256 on 32×32) it
reports, per method, the compile time (``jax.jit(...).lower(...).compile()``), the steady-state time
(median of ``--repeats`` calls of the compiled function), the value, and ratios against ``fft``.

Usage::

    python benchmarks/lipschitz.py                       # default sizes, writes lipschitz.json
    python benchmarks/lipschitz.py --sizes 16:8 32:16 --repeats 3 --out /tmp/lip.json
    python benchmarks/lipschitz.py --quick               # two tiny sizes (used by the tests)
    python benchmarks/lipschitz.py --sizes 128:32 256:32 --methods fft fft_svd --repeats 0 \
        --resnet resnet44-standard                       # needs $ADVJAX_DATA_DIR

Sizes are ``C:H`` (square H×H input, C input and output channels).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from advjax.io import atomic_write_json, versions
from advjax.lipschitz import conv_norm, conv_operator, fourier_singular_values, layer_bounds
from advjax.lipschitz.spectral import circular_size, resolve_padding

DEFAULT_SIZES = ("16:8", "32:16", "64:16", "128:32", "256:32")
QUICK_SIZES = ("4:6", "8:8")


def _explicit(kernel, input_shape, strides, padding):
    op = conv_operator(kernel, input_shape, strides=strides, padding=padding)
    jac = jax.jacfwd(op)(jnp.zeros(input_shape, kernel.dtype))
    n = int(np.prod(input_shape))
    return jnp.linalg.svd(jac.reshape(-1, n), compute_uv=False)[0]


def _fft_svd(kernel, input_shape, strides, padding):
    """The previous ``method="fft"``: max of the batched (QR) SVD of every Fourier block."""
    pads, circular = resolve_padding(padding, input_shape[:2], kernel.shape[:2], strides)
    if circular:
        torus = input_shape[:2]
        eff = tuple(s if n % s == 0 else 1 for n, s in zip(torus, strides, strict=True))
    else:
        torus = tuple(circular_size(n, k, s, *p) for n, k, s, p in
                      zip(input_shape[:2], kernel.shape[:2], strides, pads, strict=True))
        eff = strides
    return fourier_singular_values(kernel, tuple(torus), tuple(eff)).max()


def resnet_bounds(name: str, conv_method: str = "fft") -> dict:
    """Wall time of ``layer_bounds`` on a Woods ResNet-44 checkpoint (eval mode, 32×32×3 input)."""
    from advjax.data.local import resolve_data_dir
    from advjax.models import linen_logits_fn, load_woods2019

    path = resolve_data_dir() / "woods2019-resnet44" / f"{name}.pt"
    model, variables = load_woods2019(path)
    fn = linen_logits_fn(model, variables, train=False)
    t0 = time.perf_counter()
    report = layer_bounds(fn, jnp.zeros((32, 32, 3)), conv_method=conv_method)
    wall = time.perf_counter() - t0
    return {"checkpoint": name, "conv_method": conv_method, "wall_s": wall, "total": report.total,
            "conv_rows": sum(r.kind == "conv" for r in report.rows), "rows": len(report.rows)}


def _time(fn, kernel, repeats: int) -> dict:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(kernel).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    value = float(compiled(kernel).block_until_ready())  # warm-up (the steady time if repeats=0)
    times = [time.perf_counter() - t0] if repeats == 0 else []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled(kernel).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"value": value, "compile_s": compile_s, "steady_s": statistics.median(times)}


def run(sizes, *, strides: int, padding: str, repeats: int, explicit_max: int, exact_iters: int,
        exact_tol: float, methods) -> list[dict]:
    rows = []
    for spec in sizes:
        c, h = (int(v) for v in spec.split(":"))
        shape = (h, h, c)
        kernel = jax.random.normal(jax.random.PRNGKey(c * 1000 + h), (3, 3, c, c)) / (3 * c ** 0.5)
        row = {"channels": c, "size": h, "strides": strides, "padding": padding,
               "input_dim": h * h * c}
        fns = {
                "fft": functools.partial(conv_norm, input_shape=shape, strides=strides,
                                         padding=padding, method="fft"),
                "exact": functools.partial(conv_norm, input_shape=shape, strides=strides,
                                           padding=padding, method="exact", iters=exact_iters,
                                           tol=exact_tol),
                "explicit": functools.partial(_explicit, input_shape=shape, strides=(strides,) * 2,
                                              padding=padding),
                "fft_svd": functools.partial(_fft_svd, input_shape=shape, strides=(strides,) * 2,
                                             padding=padding),
        }
        for name in methods:
            if name == "explicit" and h * h * c > explicit_max:
                row[name] = None
                continue
            row[name] = _time(fns[name], kernel, repeats)
        base = row.get("fft")
        for name in methods:
            if name != "fft" and row.get(name) and base:
                row[name]["steady_ratio_vs_fft"] = row[name]["steady_s"] / base["steady_s"]
                row[name]["value_ratio_vs_fft"] = row[name]["value"] / base["value"]
        rows.append(row)
    return rows


def table(rows, methods) -> str:
    head = ["C→C on H×W", "input dim"]
    for m in methods:
        head += [f"{m} value", f"{m} compile s", f"{m} steady s"]
    head += [f"{m}/fft time" for m in methods if m != "fft"]
    head += ["fft/exact value"] if "exact" in methods else []
    head += ["|fft/fft_svd - 1|"] if "fft_svd" in methods else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['channels']}→{r['channels']} on {r['size']}×{r['size']}", str(r["input_dim"])]
        for m in methods:
            v = r.get(m)
            cells += ["n/a"] * 3 if v is None else [f"{v['value']:.7g}", f"{v['compile_s']:.3f}",
                                                     f"{v['steady_s']:.4f}"]
        for m in methods:
            if m == "fft":
                continue
            v = r.get(m)
            cells.append("n/a" if not v or "steady_ratio_vs_fft" not in v
                         else f"{v['steady_ratio_vs_fft']:.2f}")
        if "exact" in methods:
            v = r.get("exact")
            cells.append("n/a" if not v else f"{1.0 / v['value_ratio_vs_fft']:.4f}")
        if "fft_svd" in methods:
            v = r.get("fft_svd")
            cells.append("n/a" if not v else f"{abs(1.0 / v['value_ratio_vs_fft'] - 1):.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="C:H pairs")
    p.add_argument("--quick", action="store_true", help="two tiny sizes, one repeat")
    p.add_argument("--strides", type=int, default=1)
    p.add_argument("--padding", default="SAME", choices=["SAME", "VALID", "CIRCULAR"])
    p.add_argument("--methods", nargs="+", default=["fft", "fft_svd", "exact", "explicit"],
                   choices=["fft", "fft_svd", "exact", "explicit"])
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls after the warm-up (0: time the warm-up call itself)")
    p.add_argument("--explicit-max", type=int, default=4096,
                   help="largest input dimension H·W·C for the explicit-matrix SVD")
    p.add_argument("--exact-iters", type=int, default=500)
    p.add_argument("--exact-tol", type=float, default=1e-6)
    p.add_argument("--resnet", nargs="*", default=[], metavar="NAME",
                   help="time layer_bounds on these woods2019-resnet44 checkpoints "
                        "(e.g. resnet44-standard; needs $ADVJAX_DATA_DIR)")
    p.add_argument("--out", default="lipschitz.json", help="JSON output path")
    args = p.parse_args(argv)
    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    repeats = 1 if args.quick else args.repeats
    methods = ["fft", *[m for m in args.methods if m != "fft"]]
    load_before = os.getloadavg()
    rows = run(sizes, strides=args.strides, padding=args.padding, repeats=repeats,
               explicit_max=args.explicit_max, exact_iters=args.exact_iters,
               exact_tol=args.exact_tol, methods=methods) if sizes else []
    resnet = [resnet_bounds(name) for name in args.resnet]
    text = table(rows, methods)
    print(text)
    for r in resnet:
        print(f"layer_bounds {r['checkpoint']} ({r['conv_rows']} convs, {r['conv_method']}): "
              f"{r['wall_s']:.1f} s, total {r['total']:.6g}")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"({os.cpu_count()} CPUs)")
    result = {"rows": rows, "table": text, "resnet": resnet, "settings": vars(args),
              "load_average": {"before": load_before, "after": load_after},
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": str(jax.devices()[0]), "versions": versions(),
              "command": " ".join(["python", "benchmarks/lipschitz.py", *(argv or sys.argv[1:])])}
    atomic_write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
