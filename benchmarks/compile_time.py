"""Compile time of advjax's programs: each case in a FRESH process, then a second process with
JAX's persistent compilation cache warm.

Cases (``--cases``, default all):

* ``square_linf_mlp`` / ``square_l2_mlp``: ``jit(vmap(square(...)))`` of a tiny MLP
  (28x28x1 -> 32 -> 10), 64 images: lower and compile seconds, StableHLO lines.
* ``evaluate_l2_mlp``: ``evaluate`` (standard AutoAttack, L2, eps 0.05) of an MLP
  (784 -> 128 -> 10, seeded random weights) on 357 MNIST test images (random images without
  ``ADVJAX_DATA_DIR``).
* ``evaluate_linf_lenet5adv``: ``evaluate`` (L-infinity, eps 0.3) of advertorch's PGD-trained
  LeNet5 on 64 MNIST test images (needs ``ADVJAX_DATA_DIR``; skipped otherwise).
* ``evaluate_linf_nnx_bn``: an NNX CNN with BatchNorm (eval mode, random weights), 64 MNIST
  images, eps 0.002.
* ``evaluate_linf_linen_gn_resnet``: a small linen ResNet with GroupNorm (3 stages of one
  residual block, random weights), 64 CIFAR-10 test images (random without the data),
  eps 0.5/255.

The random-weight models get small budgets so that every stage keeps robust examples and so
compiles (a stage with no example left is not compiled at all).
* ``..._native``: the same with ``lower_convs(fn, mode="native")`` (XLA's own convolutions and
  their transposes instead of the attack boundary's ``"tangent"`` derivatives): what the
  convolution lowering costs in compile time.

Per case and process: the compile seconds (``Evaluation.compile_seconds`` summed over the
stages, plus the clean pass and the probe's first call, i.e. ``lower().compile()`` wall time;
for the Square cases ``lower`` + ``compile``), run seconds, the process's wall time from start
to end (imports included), the persistent cache's hits and misses (JAX's monitoring events),
the optimised HLO lines of each stage program, and the load average. ``--quick`` (default)
uses 10 APGD/FAB steps and 500 Square queries: compile time does not depend on them (the loops
are ``while_loop``s), run time does.

``--src DIR`` runs the cases with another checkout on ``PYTHONPATH`` (the "before" column).

Usage:
  python benchmarks/compile_time.py --out benchmarks/results/compile_time_2026-12-07.json \\
      [--cases square_l2_mlp ...] [--src /path/to/old/checkout] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("square_linf_mlp", "square_l2_mlp", "evaluate_l2_mlp", "evaluate_linf_lenet5adv",
         "evaluate_linf_nnx_bn", "evaluate_linf_linen_gn_resnet",
         "evaluate_linf_lenet5adv_native", "evaluate_linf_nnx_bn_native")


# ----------------------------------------------------------------------------- one process
def _mnist(n):
    import numpy as np
    if os.environ.get("ADVJAX_DATA_DIR"):
        from advjax import data
        ds = data.load("mnist_local", "all", limit=n)
        return np.asarray(ds.images), np.asarray(ds.labels), "mnist"
    rng = np.random.default_rng(0)
    return (rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32),
            "random")


def _cifar(n):
    import numpy as np
    if os.environ.get("ADVJAX_DATA_DIR"):
        from advjax import data
        ds = data.load("cifar10_head", "all", limit=n)
        return np.asarray(ds.images), np.asarray(ds.labels), "cifar10"
    rng = np.random.default_rng(0)
    return (rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32),
            "random")


def _mlp(hidden, seed=0):
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (784, hidden)) / 28.0
    w2 = jax.random.normal(k2, (hidden, 10)) / jnp.sqrt(hidden)
    return lambda x: jnp.tanh(x.reshape(-1) @ w1) @ w2


def _nnx_bn():
    import jax.numpy as jnp
    from flax import nnx

    from advjax.models import nnx_logits_fn

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
            self.b1 = nnx.BatchNorm(16, rngs=rngs)
            self.c2 = nnx.Conv(16, 32, (3, 3), strides=(2, 2), rngs=rngs)
            self.b2 = nnx.BatchNorm(32, rngs=rngs)
            self.out = nnx.Linear(14 * 14 * 32, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.b1(self.c1(x)))
            x = nnx.relu(self.b2(self.c2(x)))
            return self.out(jnp.reshape(x, (x.shape[0], -1)))

    return nnx_logits_fn(Net(nnx.Rngs(0)))


def _linen_gn_resnet():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from advjax.models import linen_logits_fn

    class Block(nn.Module):
        features: int
        stride: int

        @nn.compact
        def __call__(self, x):
            y = nn.Conv(self.features, (3, 3), strides=self.stride)(x)
            y = nn.relu(nn.GroupNorm(num_groups=4)(y))
            y = nn.GroupNorm(num_groups=4)(nn.Conv(self.features, (3, 3))(y))
            if x.shape != y.shape:
                x = nn.Conv(self.features, (1, 1), strides=self.stride)(x)
            return nn.relu(x + y)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.GroupNorm(num_groups=4)(nn.Conv(16, (3, 3))(x)))
            for f, s in ((16, 1), (32, 2), (64, 2)):
                x = Block(f, s)(x)
            return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))

    module = ResNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return linen_logits_fn(module, variables)


def _evaluate_case(logits_fn, xs, labels, eps, norm, quick):
    import jax

    from advjax.attacks.evaluate import AutoAttackEvaluator

    settings = dict(steps=10, queries=500) if quick else {}
    ev = AutoAttackEvaluator(logits_fn, norm=norm, **settings)
    t0 = time.perf_counter()
    res = ev(xs, labels, eps=eps, key=jax.random.key(0))
    wall = time.perf_counter() - t0
    hlo = {s: [c.as_text().count("\n") for c in ev._compiled[s].values()] for s in ev.stages}
    comp = sum(res.compile_seconds.values())
    run = sum(res.seconds.values())
    return dict(compile_s=comp, run_s=run, evaluate_wall_s=wall,
                other_s=wall - comp - run,        # clean pass, probe, masking checks: mostly
                stage_compile_s=res.compile_seconds, stage_run_s=res.seconds,  # compilation
                hlo_lines=hlo, attacked=res.attacked, clean_accuracy=res.clean_accuracy,
                robust_accuracy=res.robust_accuracy)


def _square_case(norm, quick):
    import jax
    import jax.numpy as jnp

    from advjax.attacks.square import square

    f = _mlp(32)
    xs, labels, _ = _mnist(64)
    att = square(f, norm=norm, queries=500 if quick else 5000)
    eps = 0.3 if norm == "linf" else 1.5
    fn = jax.jit(jax.vmap(lambda x, y, k: att(x, y, eps=eps, key=k).x_adv))
    args = (jnp.asarray(xs), jnp.asarray(labels), jax.random.split(jax.random.key(0), 64))
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    compiled(*args).block_until_ready()
    t3 = time.perf_counter()
    return dict(lower_s=t1 - t0, xla_compile_s=t2 - t1, compile_s=t2 - t0, run_s=t3 - t2,
                stablehlo_lines=lowered.as_text().count("\n"),
                hlo_lines=compiled.as_text().count("\n"))


def one_process(case: str, quick: bool) -> dict:
    t_start = time.perf_counter()
    if case.endswith("_native"):
        from advjax.lowering import lower_convs
        out = _one(case[:-len("_native")], quick, lambda fn: lower_convs(fn, mode="native"))
    else:
        out = _one(case, quick, lambda fn: fn)
    out["process_wall_s"] = time.perf_counter() - t_start
    return out


def _one(case: str, quick: bool, wrap) -> dict:
    import jax
    from jax import monitoring

    import advjax
    events: dict = {}

    def count(name, **kw):
        events[name] = events.get(name, 0) + 1

    monitoring.register_event_listener(count)
    durations: dict = {}

    def add(name, seconds, **kw):
        durations[name] = durations.get(name, 0.0) + seconds

    # JAX's own split of a compilation: tracing to a jaxpr, lowering to MLIR, XLA compile (or
    # cache retrieval).
    monitoring.register_event_duration_secs_listener(add)
    if os.environ.get("COMPILE_TIME_CACHE"):
        if hasattr(advjax, "enable_compilation_cache"):
            advjax.enable_compilation_cache(os.environ["COMPILE_TIME_CACHE"])
        else:                                      # an older checkout: the same settings
            jax.config.update("jax_compilation_cache_dir", os.environ["COMPILE_TIME_CACHE"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if case.startswith("square_"):
        out = _square_case("l2" if "l2" in case else "linf", quick)
    elif case == "evaluate_l2_mlp":
        xs, labels, source = _mnist(357)
        out = _evaluate_case(_mlp(128), xs, labels, 0.05, "l2", quick)
        out["data"] = source
    elif case == "evaluate_linf_lenet5adv":
        from advjax.models import linen_logits_fn, load_lenet5
        module, variables = load_lenet5(
            Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5", "advtrained")
        xs, labels, source = _mnist(64)
        out = _evaluate_case(wrap(linen_logits_fn(module, variables)), xs, labels, 0.3, "linf",
                             quick)
    elif case == "evaluate_linf_nnx_bn":
        xs, labels, source = _mnist(64)
        out = _evaluate_case(wrap(_nnx_bn()), xs, labels, 0.002, "linf", quick)
        out["data"] = source
    elif case == "evaluate_linf_linen_gn_resnet":
        xs, labels, source = _cifar(64)
        out = _evaluate_case(_linen_gn_resnet(), xs, labels, 0.5 / 255, "linf", quick)
        out["data"] = source
    else:
        raise ValueError(f"unknown case {case!r}; one of {CASES}")
    out["cache_hits"] = events.get("/jax/compilation_cache/cache_hits", 0)
    out["cache_misses"] = events.get("/jax/compilation_cache/cache_misses", 0)
    out["jax_durations_s"] = {k: v for k, v in durations.items() if "/compile/" in k
                              or "compilation_cache" in k}
    return out


# ----------------------------------------------------------------------------- driver
def _spawn(case: str, src: Path, cache: str | None, quick: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "JAX_PLATFORMS": "cpu"}
    env.pop("COMPILE_TIME_CACHE", None)
    if cache:
        env["COMPILE_TIME_CACHE"] = cache
    load = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", case]
                          + ([] if quick else ["--full"]), env=env, capture_output=True,
                          text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return dict(error=proc.stderr[-2000:], loadavg_before=load)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(loadavg_before=load, loadavg_after=os.getloadavg(), subprocess_wall_s=wall)
    return out


def _append(path: Path, run: dict) -> None:
    import jax
    doc = json.loads(path.read_text()) if path.exists() else {"runs": []}
    doc.setdefault("machine", dict(cpus=os.cpu_count(), jax=jax.__version__,
                                   python=sys.version.split()[0]))
    doc["runs"].append(run)
    path.write_text(json.dumps(doc, indent=1))


def table(doc: dict) -> str:
    """Markdown: one row per case and label, first process (compile s, run s, load average
    before it) and, where measured, the cache-warm second process (compile s, whole process s,
    cache hits / misses)."""
    rows = ["| case | code | compile s | run s | load | 2nd process: compile s | "
            "2nd process: wall s | hits / misses |", "|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "—" if v is None else f"{v:.1f}"

    for r in doc["runs"]:
        a, b = r["first"], r["second"] or {}
        if "error" in a:
            rows.append(f"| {r['case']} | {r['label']} | error | | | | | |")
            continue
        rows.append(f"| {r['case']} | {r['label']} | {f(a['compile_s'])} | {f(a['run_s'])} | "
                    f"{a['loadavg_before'][0]:.1f} | {f(b.get('compile_s'))} | "
                    f"{f(b.get('process_wall_s'))} | "
                    f"{b.get('cache_hits', '—')} / {b.get('cache_misses', '—')} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--src", type=Path, default=ROOT,
                        help="checkout on PYTHONPATH (default: this one)")
    parser.add_argument("--label", default=None, help="name of this run in --out")
    parser.add_argument("--full", action="store_true",
                        help="published steps and queries (default: 10 steps, 500 queries)")
    parser.add_argument("--no-second", action="store_true",
                        help="skip the second (cache-warm) process")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (appended to)")
    parser.add_argument("--table", type=Path, default=None,
                        help="print the Markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    quick = not args.full
    if args.one:
        print(json.dumps(one_process(args.one, quick)))
        return 0
    label = args.label or str(args.src)
    runs = []
    for case in args.cases:
        if case.startswith("evaluate_linf_lenet5adv") and not os.environ.get("ADVJAX_DATA_DIR"):
            print(f"{case}: skipped (needs ADVJAX_DATA_DIR)", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as cache:
            first = _spawn(case, args.src, cache, quick)
            second = None if args.no_second else _spawn(case, args.src, cache, quick)
        runs.append(dict(case=case, label=label, quick=quick, first=first, second=second))
        if args.out:
            _append(args.out, runs[-1])
        short = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in first.items()
                 if k in ("compile_s", "run_s", "process_wall_s", "loadavg_before", "error")}
        print(case, "first", short, file=sys.stderr)
        if second:
            print(case, "second", {k: (round(v, 2) if isinstance(v, float) else v)
                                   for k, v in second.items()
                                   if k in ("compile_s", "process_wall_s", "cache_hits",
                                            "cache_misses", "error")}, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
