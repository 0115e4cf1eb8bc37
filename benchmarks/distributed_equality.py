"""Per-example equality across process × device layouts, and the collectives of the programs.

Runs the multi-process test workers (``tests/distributed/workers``) as real processes on
127.0.0.1 (CPU devices, gloo) for P × D in 1×1, 1×8, 2×4, 4×2, and prints, for each layout, the
largest difference from the one-process, one-device result:

* ``shard_attack`` / ``stream`` (PGD, N = 13 rows, uneven rows per process, one process with
  none): success flags that differ (count) and max |Δ x_adv|, for the whole set on every process
  (``data_layout="global"``), each process's own rows (``"local"``) and ``parallel.gather``;
* ``attacks.evaluate`` (APGD-CE then APGD-T, N = 12, each process its own rows): stage flags
  that differ (count) and max |Δ x_adv|;
* ``train.fit`` (PGD adversarial training of a BatchNorm MLP, 10 steps, Adam): max |Δ parameter|
  and max |Δ BatchNorm statistic|;
* the collectives in the compiled data-parallel train step on 2, 4, 8 devices (``train_hlo``).

The tests (``tests/distributed``) assert these within their stated tolerances; this script
prints the figures. Usage, from the repository root:

  python benchmarks/distributed_equality.py [--out benchmarks/results/distributed_equality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.distributed.launch import run_processes  # noqa: E402

LAYOUTS = [(1, 1), (1, 8), (2, 4), (4, 2)]
ATTACK_ROWS = {1: [13], 2: [6, 7], 4: [3, 0, 5, 5]}


def attack_rows(tmp: Path) -> list[dict]:
    import jax

    from tests.distributed.workers import attack_worker as w

    n = sum(ATTACK_ROWS[1])
    logits_fn, xs, labels, eps = w.problem(n)
    key = jax.random.key(w.KEY_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jax.numpy.arange(n))
    ref = jax.jit(jax.vmap(w.make_attack(logits_fn)))(xs, labels, key=keys, eps=eps)
    ref_x, ref_s = np.asarray(ref.x_adv), np.asarray(ref.success)
    rows = []
    for p, d in LAYOUTS:
        counts = ATTACK_ROWS[p]
        out = tmp / f"attack-{p}x{d}"
        run_processes(["tests/distributed/workers/attack_worker.py", out, n,
                       ",".join(map(str, counts))], p, local_devices=d, timeout=300, cwd=ROOT)
        starts = np.concatenate([[0], np.cumsum(counts)])
        worst = {}
        for i in range(p):
            got = np.load(f"{out}.{i}.npz")
            own = slice(starts[i], starts[i + 1])
            for name, sel in (("shard_global", slice(None)), ("stream_global", slice(None)),
                              ("shard_gathered", slice(None)), ("shard_local", own)):
                dx = float(np.max(np.abs(got[f"{name}_x"] - ref_x[sel]), initial=0.0))
                ds = int(np.sum(got[f"{name}_s"] != ref_s[sel]))
                prev = worst.get(name, (0.0, 0))
                worst[name] = (max(prev[0], dx), prev[1] + ds)
        for name, (dx, ds) in worst.items():
            rows.append({"what": f"attack {name}", "layout": f"{p}x{d}", "max_abs_diff": dx,
                         "flags_differing": ds, "n": n})
        print(f"attack {p}x{d}: " + ", ".join(f"{k} {v[0]:.2g} ({v[1]} flags)"
                                               for k, v in worst.items()), flush=True)
    return rows


EVALUATE_ROWS = {1: [12], 2: [7, 5], 4: [5, 0, 4, 3]}


def evaluate_rows(tmp: Path) -> list[dict]:
    import jax

    from advjax.attacks import evaluate
    from tests.distributed.workers import evaluate_worker as w

    n = sum(EVALUATE_ROWS[1])
    logits_fn, xs, labels = w.problem(n)
    ref = evaluate(logits_fn, xs, labels, eps=w.EPS, key=jax.random.key(w.KEY_SEED), **w.SETTINGS)
    rows = []
    for p, d in LAYOUTS:
        counts = EVALUATE_ROWS[p]
        out = tmp / f"evaluate-{p}x{d}"
        run_processes(["tests/distributed/workers/evaluate_worker.py", out, tmp / f"s{p}{d}.npz",
                       "local", ",".join(map(str, counts)), "0"], p, local_devices=d,
                      timeout=600, cwd=ROOT)
        starts = np.concatenate([[0], np.cumsum(counts)])
        dx, flags = 0.0, 0
        for i in range(p):
            got = np.load(f"{out}.{i}.npz")
            own = slice(starts[i], starts[i + 1])
            dx = max(dx, float(np.max(np.abs(got["x_adv"] - ref.x_adv[own]), initial=0.0)))
            flags += int(np.sum(got["broken_by"] != ref.broken_by[own]))
        rows.append({"what": "evaluate (APGD-CE + APGD-T, local rows)", "layout": f"{p}x{d}",
                     "max_abs_diff": dx, "broken_by_differing": flags, "n": n})
        print(f"evaluate {p}x{d}: x_adv {dx:.2g}, broken_by differing {flags}", flush=True)
    return rows


def train_rows(tmp: Path) -> list[dict]:
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    results = {}
    for p, d in LAYOUTS:
        out = tmp / f"train-{p}x{d}"
        run_processes(["tests/distributed/workers/train_fit.py", out, "pgd", "global", "-", -1],
                      p, local_devices=d, timeout=600, cwd=ROOT, env=env)
        results[(p, d)] = dict(np.load(f"{out}.0.npz"))
    ref = results[(1, 1)]
    rows = []
    for (p, d), res in results.items():
        params = max(float(np.max(np.abs(res[k] - ref[k]))) for k in res if k.startswith("arr_"))
        stats = float(np.max(np.abs(res["batch_stats"] - ref["batch_stats"])))
        rows.append({"what": "train.fit (PGD adversarial, 10 steps)", "layout": f"{p}x{d}",
                     "max_abs_diff_params": params, "max_abs_diff_batch_stats": stats,
                     "eval_accuracy": float(np.ravel(res["eval_accuracy"])[-1])})
        print(f"train {p}x{d}: params {params:.2g}, batch stats {stats:.2g}", flush=True)
    return rows


def collective_rows(tmp: Path) -> dict:
    out = tmp / "hlo.npz"
    run_processes(["tests/distributed/workers/train_hlo.py", out], 1, local_devices=8,
                  timeout=600, cwd=ROOT)
    res = np.load(out)
    names = [str(n) for n in res["collectives"]]
    table = {}
    for config, ds in (("plain", (2, 4, 8)), ("pgd", (2, 8))):
        for d in ds:
            table[f"{config} train step, {d} devices"] = dict(
                zip(names, res[f"{config}_{d}"].tolist(), strict=True))
    for k, v in table.items():
        print(f"{k}: {v}", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/distributed_equality.json")
    args = parser.parse_args()
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = {
            "command": "python benchmarks/distributed_equality.py --out " + args.out,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_average_start": os.getloadavg()},
            "attack": attack_rows(tmp),
            "evaluate": evaluate_rows(tmp),
            "train": train_rows(tmp),
            "collectives": collective_rows(tmp),
        }
    import jax

    record["versions"] = {"python": platform.python_version(), "jax": jax.__version__}
    record["wall_seconds"] = time.time() - start
    record["machine"]["load_average_end"] = os.getloadavg()
    path = Path(args.out)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(record, indent=1))
    os.replace(tmp_path, path)
    print(f"wrote {path} in {record['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
