"""Distributed scaling: sharded PGD and a data-parallel train step on 1-8 devices, 1-4 processes.

For every configuration the script reports, per workload,

* throughput: examples per second of the global batch, best of ``--repeats`` timed calls after one
  warm-up call; "first call" is that warm-up call including compilation;
* per-device memory: ``compiled.memory_analysis()`` of the compiled SPMD executable (arguments,
  outputs, temporaries, generated code; ``peak`` = arguments + outputs + temporaries − aliased),
  where the backend provides it;
* collectives: the number of ``all-reduce``, ``all-gather``, ``reduce-scatter``,
  ``collective-permute`` and ``all-to-all`` instructions in the optimised HLO
  (``.compile().as_text()``; asynchronous ``*-start`` forms count once, ``*-done`` not at all).

Configurations:

* ``--devices D ...`` (default 1 2 4 8): one process with ``D`` CPU devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=D``, set in a fresh subprocess per ``D``).
* ``--processes P ...`` (default 1 2 4): ``P`` real processes on 127.0.0.1 joined by
  ``jax.distributed`` (``tests/distributed/launch.py``'s ``run_processes``), ``--local-devices``
  CPU devices each (default 1).

Workloads:

* ``pgd``: ``advjax.parallel.shard_attack`` of ``advjax.attacks.pgd`` (L∞, random start, one
  typed key folded per example) on a small CNN (two convolutions, one dense layer, 28×28×1 inputs,
  10 classes). Every process passes the same whole arrays, as the contract allows. The HLO and
  memory figures are those of the program ``shard_attack`` runs, as its ``lower`` gives it (the
  same per-device ``vmap`` under ``shard_map``, shapes and shardings). Attacks are independent per
  example, so its collective count should be 0. A failure is recorded in its row as
  ``failed: <message>``.
* ``train``: one jitted data-parallel SGD step of the same CNN (softmax cross-entropy), parameters
  replicated and the batch split over a 1-D ``"batch"`` mesh with ``NamedSharding``; each process
  builds its rows of the global batch with ``jax.make_array_from_process_local_data``. The step
  is built by :func:`make_train_step` only: swapping in the project's own data-parallel step is a
  change of that one function.

On a CPU-only machine (the 2-core machine these tables were first made on) all "devices" share the
same few cores, so throughput only shows the overhead of splitting the work (partitioning, copies,
collectives over gloo between processes), never a speed-up. On a GPU/TPU machine with as many
accelerators the same script gives real scaling figures (run it with ``JAX_PLATFORMS`` unset and
``--devices`` up to the accelerator count; the forced host device count then only affects CPU).

Usage::

    python benchmarks/scaling.py --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --devices 1 2 --processes 1 --batch 16 --steps 2 --out /tmp/s.json

Prints a Markdown table and writes JSON (rows, command, machine, versions, date) to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE_RE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
ROWS_TAG = "SCALING_ROWS "


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective instructions per kind in an HLO module's text (``*-start`` counted, ``*-done``
    not), plus ``total``."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        m = _COLLECTIVE_RE.search(line)
        if m and "=" in line[: m.start() + 1]:
            counts[m.group(1)] += 1
    counts["total"] = sum(counts.values())
    return counts


def memory_of(compiled) -> dict | None:
    """Per-device sizes in bytes from ``compiled.memory_analysis()``; None where unavailable."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without it raise various errors
        return None
    if m is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["peak_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                         + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
    return out


# ----------------------------------------------------------------------------- worker side


def _cnn():
    import flax.linen as nn

    class SmallCNN(nn.Module):
        """conv 3×3×8 → ReLU → conv 3×3×16 stride 2 → ReLU → dense 10 (28×28×1 inputs)."""

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    return SmallCNN()


def _timed(fn, repeats: int, *, warm_up: bool = True) -> tuple[float | None, list[float]]:
    """Runs ``fn`` once (warm-up, compiles) unless ``warm_up`` is False, then ``repeats`` timed
    calls; returns (first call's seconds or None, timed calls' seconds)."""
    import jax

    first = None
    if warm_up:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, times


def _row(workload: str, cfg: dict, batch: int) -> dict:
    return {"workload": workload, **cfg, "batch": batch, "status": "ok", "examples_per_s": None,
            "best_s": None, "times_s": None, "first_call_s": None, "memory": None,
            "collectives": None, "hlo_source": None}


def bench_pgd(model, variables, xs, labels, *, mesh, steps: int, eps: float, repeats: int,
              row: dict) -> dict:
    """(a) ``shard_attack(pgd(...))``: throughput, memory and collectives of what it compiled."""
    import jax

    from advjax import parallel
    from advjax.attacks import pgd

    def logits_fn(x):
        return model.apply(variables, x[None])[0]

    attack = pgd(logits_fn, norm="linf", steps=steps, random_start=True)
    key = jax.random.key(1)
    run = parallel.shard_attack(attack, mesh)
    first, _ = _timed(lambda: run(xs, labels, eps=eps, key=key), 0)
    _, times = _timed(lambda: run(xs, labels, eps=eps, key=key), repeats, warm_up=False)
    # The program shard_attack runs, as its ``lower`` gives it (the same jit, shapes, shardings).
    compiled = run.lower(xs, labels, eps=eps, key=key).compile()
    row["hlo_source"] = "shard_attack.lower"
    return _finish(row, compiled, first, times, xs.shape[0])


def make_train_step(model, optimizer, mesh):
    """The data-parallel train step: ``step(params, opt_state, x, y) -> (params, opt_state, loss)``.

    Parameters and optimiser state replicated, ``x``/``y`` split along the ``"batch"`` mesh axis;
    gradients are the mean over the global batch (XLA inserts the all-reduce). Swap this function
    for the project's own data-parallel step to benchmark that instead.
    """
    import jax
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("batch"))

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, in_shardings=(replicated, replicated, batch, batch),
                   out_shardings=(replicated, replicated, replicated), donate_argnums=(0, 1))


def bench_train(model, variables, xs, labels, *, mesh, repeats: int, row: dict) -> dict:
    """(b) the jitted data-parallel train step, fed by ``make_array_from_process_local_data``."""
    import jax
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    n = xs.shape[0]
    p, i = jax.process_count(), jax.process_index()
    rows = slice(i * n // p, (i + 1) * n // p)
    batch = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    x = jax.make_array_from_process_local_data(batch, np.asarray(xs)[rows], xs.shape)
    y = jax.make_array_from_process_local_data(batch, np.asarray(labels)[rows], labels.shape)

    def replicate(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, replicated, lambda idx: a[idx])

    optimizer = optax.sgd(0.01)
    params = jax.tree.map(replicate, variables["params"])
    opt_state = jax.tree.map(replicate, optimizer.init(variables["params"]))
    step = make_train_step(model, optimizer, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state, x, y).compile()
    compile_s = time.perf_counter() - t0
    row["hlo_source"] = "make_train_step"
    state = {"params": params, "opt_state": opt_state}

    def one():
        state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"],
                                                             x, y)
        return loss

    first, times = _timed(one, repeats)
    return _finish(row, compiled, compile_s + first, times, n)


def _finish(row, compiled, first, times, n):
    row["memory"] = memory_of(compiled)
    row["collectives"] = count_collectives(compiled.as_text())
    row["first_call_s"] = first
    row["times_s"] = times
    best = min(times) if times else first
    row["best_s"] = best
    row["examples_per_s"] = n / best
    return row


def worker(args) -> None:
    """One configuration, in this process (one of P when the ADVJAX_* settings are present)."""
    from advjax import parallel

    distributed = parallel.initialize_distributed()

    import jax
    import jax.numpy as jnp
    import numpy as np

    cfg = {"processes": jax.process_count(), "devices_per_process": jax.local_device_count(),
           "global_devices": jax.device_count(), "distributed": distributed,
           "platform": jax.devices()[0].platform}
    mesh = parallel.make_mesh()
    model = _cnn()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
    rng = np.random.default_rng(0)
    xs = rng.uniform(size=(args.batch, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=args.batch).astype(np.int32)
    rows = []
    for name in args.workloads:
        row = _row(name, cfg, args.batch)
        try:
            if name == "pgd":
                bench_pgd(model, variables, xs, labels, mesh=mesh, steps=args.steps,
                          eps=args.eps, repeats=args.repeats, row=row)
            else:
                bench_train(model, variables, xs, labels, mesh=mesh, repeats=args.repeats,
                            row=row)
        except Exception as e:  # noqa: BLE001 - recorded in the row, the other rows still run
            msg = " ".join(str(e).split())
            row["status"] = f"failed: {type(e).__name__}: {msg[:300]}"
            row["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
        rows.append(row)
    print(ROWS_TAG + json.dumps(rows), flush=True)


# ----------------------------------------------------------------------------- driver side


def _worker_argv(args) -> list[str]:
    return [str(Path(__file__).resolve()), "--worker", "--batch", str(args.batch), "--steps",
            str(args.steps), "--eps", str(args.eps), "--repeats", str(args.repeats),
            "--workloads", *args.workloads]


def _parse_rows(stdout: str) -> list[dict]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(ROWS_TAG)]
    if not lines:
        raise RuntimeError("worker printed no result line")
    return json.loads(lines[-1][len(ROWS_TAG):])


def _failed_rows(args, cfg: dict, message: str) -> list[dict]:
    rows = []
    for name in args.workloads:
        row = _row(name, cfg, args.batch)
        row["status"] = "failed: " + " ".join(message.split())[:300]
        rows.append(row)
    return rows


def run_devices(args, d: int) -> list[dict]:
    """One process with ``d`` forced CPU devices, in a fresh subprocess."""
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={d}",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
                   os.pathsep))
    for name in ("ADVJAX_COORDINATOR_ADDRESS", "ADVJAX_NUM_PROCESSES", "ADVJAX_PROCESS_ID"):
        env.pop(name, None)
    if args.cpu:
        env["JAX_PLATFORMS"] = "cpu"
    cfg = {"processes": 1, "devices_per_process": d, "global_devices": d, "distributed": False}
    try:
        proc = subprocess.run([sys.executable, *_worker_argv(args)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return _failed_rows(args, cfg, f"timeout after {args.timeout} s")
    if proc.returncode != 0:
        return _failed_rows(args, cfg, f"exit {proc.returncode}: "
                            + " | ".join(proc.stderr.strip().splitlines()[-3:]))
    return _parse_rows(proc.stdout)


def run_multiprocess(args, p: int) -> list[dict]:
    """``p`` processes joined by jax.distributed, ``--local-devices`` CPU devices each."""
    from tests.distributed.launch import ProcessesFailed, run_processes

    cfg = {"processes": p, "devices_per_process": args.local_devices,
           "global_devices": p * args.local_devices, "distributed": True}
    try:
        stdouts = run_processes(_worker_argv(args), p, local_devices=args.local_devices,
                                timeout=args.timeout, cwd=REPO)
    except ProcessesFailed as e:
        return _failed_rows(args, cfg, str(e).splitlines()[0])
    per_process = [_parse_rows(out) for out in stdouts]
    rows = per_process[0]  # process 0's view; every process's best time kept beside it
    for j, row in enumerate(rows):
        row["best_s_per_process"] = [r[j]["best_s"] for r in per_process]
        statuses = {r[j]["status"] for r in per_process}
        if len(statuses) > 1:
            row["status"] = " / ".join(sorted(statuses))
    return rows


def environment() -> dict:
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "advjax"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else None},
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__},
        "advjax_commit": commit,
        "advjax_dirty": dirty,
    }


def _fmt_mem(mem) -> str:
    return "n/a" if not mem else f"{mem['peak_bytes'] / 2**20:.2f}"


def _fmt_coll(c) -> str:
    if not c:
        return "n/a"
    parts = [f"{k}={v}" for k, v in c.items() if k != "total" and v]
    return str(c["total"]) + (f" ({', '.join(parts)})" if parts else "")


def markdown_table(rows: list[dict]) -> str:
    head = ("| workload | jax.distributed | processes | devices/process | global devices | batch "
            "| examples/s | best s | first call s | peak MiB/device | collectives | status |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ok = r["status"] == "ok"
        lines.append("| " + " | ".join([
            r["workload"], "yes" if r["distributed"] else "no", str(r["processes"]),
            str(r["devices_per_process"]),
            str(r["global_devices"]), str(r["batch"]),
            f"{r['examples_per_s']:.1f}" if ok else "—",
            f"{r['best_s']:.4f}" if ok else "—",
            f"{r['first_call_s']:.2f}" if ok else "—",
            _fmt_mem(r["memory"]), _fmt_coll(r["collectives"]),
            r["status"].replace("|", "/")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4, 8],
                    help="CPU device counts of the single-process rows")
    ap.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4],
                    help="process counts of the jax.distributed rows")
    ap.add_argument("--local-devices", type=int, default=1,
                    help="CPU devices per process in the multi-process rows")
    ap.add_argument("--workloads", nargs="+", default=["pgd", "train"], choices=["pgd", "train"])
    ap.add_argument("--batch", type=int, default=64, help="global batch (examples)")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps")
    ap.add_argument("--eps", type=float, default=0.1, help="PGD L∞ budget")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    ap.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=True,
                    help="JAX_PLATFORMS=cpu in the single-process rows (--no-cpu on a GPU/TPU)")
    ap.add_argument("--out", type=Path, help="JSON results file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    rows = []
    for d in args.devices:
        rows += run_devices(args, d)
        print(f"done: 1 process x {d} device(s)", file=sys.stderr, flush=True)
    for p in args.processes:
        rows += run_multiprocess(args, p)
        print(f"done: {p} process(es) x {args.local_devices} device(s)", file=sys.stderr,
              flush=True)
    result = {
        "command": "python benchmarks/scaling.py " + " ".join(
            sys.argv[1:] if argv is None else list(argv)),
        **environment(),
        "settings": {"batch": args.batch, "pgd_steps": args.steps, "eps": args.eps,
                     "repeats": args.repeats, "local_devices": args.local_devices,
                     "model": "SmallCNN conv8-conv16/2-dense10 on 28x28x1"},
        "rows": rows,
    }
    print(markdown_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
