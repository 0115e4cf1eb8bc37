"""Masked defences: AutoAttack versus the adaptive evaluation, against the known truth.

Each defence of :mod:`advjax.models.masked` wraps advertorch's clean-trained MNIST LeNet5 (the
first N test images, L-infinity budget ``eps``). One ``evaluate(defended, version="adaptive",
surrogate=bpda_twin)`` per defence gives both figures with the same keys: AutoAttack's (robust
after its standard stages, on the deployed model) and the adaptive one (then MALT-targeted
APGD, the transfer stage on the BPDA twin, and more Square restarts when a masking check
trips; the per-example worst case). The truth comes from the undefended LeNet5 evaluated with
the same stages:

* argmax inside, zero-gradient twin: the same decision function as the LeNet5, so the truth is
  the LeNet5's robust accuracy (exact up to what the attacks find on it);
* quantisation (L levels) and thermometer encoding (L levels): the LeNet5 up to a pixel shift
  ``delta`` (``1 / (2 (L-1))`` and ``1 / L``): the truth lies between the LeNet5's robust
  accuracy at ``eps - delta`` and ``eps + delta`` (bracket);
* k-WTA: no closed form; the best known value (an upper bound) is the per-example worst case of
  this run and an adaptive evaluation of the BPDA twin itself with the LeNet5 as surrogate.

Settings are reduced (``--steps``, ``--n-targets``, ``--queries``, ``--square-restarts``) so the
whole table runs in minutes on two cores; every row uses the same ones. Each evaluation keeps a
state file under ``--work`` and resumes after its last finished stage. Robust accuracies come
with 95 % Wilson intervals.

    python benchmarks/masked_defences.py --n 64 --out benchmarks/results/masked_defences.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from advjax import io
from advjax.attacks import evaluate
from advjax.metrics import stats
from advjax.models import linen_logits_fn, load_lenet5, masked
from advjax.models.cnn import LeNet5


def _mnist(n: int):
    from advjax import data
    ds = data.load("mnist_local", "all", limit=n)
    return np.asarray(ds.images, np.float32), np.asarray(ds.labels)


def defences(variables, levels_q: int, levels_t: int, k: int) -> dict:
    lenet = linen_logits_fn(LeNet5(), variables)
    return {
        "argmax inside": (masked.argmax_inside(lenet), "same", 0.0),
        "zero-gradient twin": (masked.MaskedDefence(masked.mask_gradients(lenet), lenet, lenet),
                               "same", 0.0),
        f"quantisation (L={levels_q})": (masked.quantized(lenet, levels_q), "bracket",
                                         1.0 / (2 * (levels_q - 1))),
        f"thermometer (L={levels_t})": (masked.thermometer(lenet, levels_t), "bracket",
                                        1.0 / levels_t),
        f"k-WTA (k={k} of 200)": (masked.kwta_lenet5(variables, k), "best known", 0.0),
    }


def _interval(flags) -> list[float]:
    ci = stats.wilson(int(np.sum(flags)), len(flags))
    return [float(ci.low), float(ci.high)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n-targets", type=int, default=3)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--square-restarts", type=int, default=2)
    ap.add_argument("--levels-quantisation", type=int, default=256)
    ap.add_argument("--levels-thermometer", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/advjax_masked_defences")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    root = Path(os.environ["ADVJAX_DATA_DIR"])
    _, variables = load_lenet5(root / "advertorch-lenet5", "clntrained")
    xs, labels = _mnist(args.n)
    settings = dict(steps=args.steps, n_targets=args.n_targets, queries=args.queries,
                    square_restarts=args.square_restarts, batch_size=args.batch)
    key = jax.random.key(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lenet = linen_logits_fn(LeNet5(), variables)
    t_start = time.perf_counter()

    def run(name, fn, eps, **kw):
        t0 = time.perf_counter()
        state = work / ("".join(c if c.isalnum() else "_" for c in name) + ".npz")
        ev = evaluate(fn, xs, labels, eps=eps, key=key, state_path=state,
                      **settings, **kw)
        print(f"{name}: {ev.robust_accuracy} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return ev

    truth_runs = {}

    def undefended_at(eps):
        if eps not in truth_runs:
            truth_runs[eps] = run(f"lenet5 eps {eps:.5f}", lenet, eps)
        return truth_runs[eps]

    rows = []
    base = undefended_at(args.eps)
    for name, (d, kind, delta) in defences(variables, args.levels_quantisation,
                                           args.levels_thermometer, args.k).items():
        ev = run(name, d.defended, args.eps, version="adaptive", surrogate=d.bpda)
        aa_stage = ev.autoattack_stages[-1]
        robust_aa = ev.clean_correct & ~ev.invalid & ((ev.broken_by < 0) | (
            ev.broken_by > ev.stages.index(aa_stage)))
        robust_ad = ev.robust
        row = dict(defence=name, truth_kind=kind, clean=float(ev.clean_accuracy),
                   autoattack=float(robust_aa.mean()), autoattack_ci=_interval(robust_aa),
                   adaptive=float(robust_ad.mean()), adaptive_ci=_interval(robust_ad),
                   broken_beyond_autoattack=ev.broken_beyond_autoattack(),
                   skipped=ev.skipped, robust_accuracy=ev.robust_accuracy,
                   seconds=ev.seconds, attacked=ev.attacked,
                   checks=[c.name for c in ev.checks if c.tripped])
        if kind == "same":
            row.update(truth=float(base.robust.mean()), truth_ci=_interval(base.robust),
                       disagreements=int(np.sum(base.robust != robust_ad)))
        elif kind == "bracket":
            lo_ev = undefended_at(round(args.eps - delta, 6))
            hi_ev = undefended_at(round(args.eps + delta, 6))
            row.update(truth=float(base.robust.mean()), delta=delta,
                       truth_bracket=[float(hi_ev.robust.mean()), float(lo_ev.robust.mean())])
        else:
            twin = run(name + " bpda twin", d.bpda, args.eps, version="adaptive",
                       surrogate=d.undefended)
            best = robust_ad & twin.robust
            row.update(truth=float(best.mean()), truth_ci=_interval(best),
                       truth_note="best known: per-example worst case of this run and an "
                                  "adaptive evaluation of the BPDA twin (LeNet5 surrogate)",
                       twin_adaptive=float(twin.robust.mean()))
        rows.append(row)

    meta = dict(machine=platform.platform(), cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, date=datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%d %H:%M UTC"), load_average=list(os.getloadavg()),
                model="advertorch LeNet5 (clean-trained)", n=args.n, eps=args.eps,
                settings={k: v for k, v in settings.items() if k != "batch_size"},
                undefended=float(base.robust.mean()), undefended_ci=_interval(base.robust),
                undefended_clean=float(base.clean_accuracy),
                wall_seconds=time.perf_counter() - t_start,
                command="python benchmarks/masked_defences.py " + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))
    io.atomic_write_json(args.out, {"meta": meta, "rows": rows})
    print(render({"meta": meta, "rows": rows}))


def render(res: dict) -> str:
    """The Markdown table of benchmarks/README.md."""
    def pct(v, ci=None):
        return f"{100 * v:.1f} %" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    lines = ["| defence | clean | AutoAttack | adaptive | broken beyond AutoAttack (stage: n) "
             "| truth | adaptive at truth? |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        beyond = ", ".join(f"{s}: {n}" for s, n in r["broken_beyond_autoattack"].items()
                           if s not in r["skipped"])
        if r["truth_kind"] == "bracket":
            lo, hi = r["truth_bracket"]
            truth = f"{pct(lo)} – {pct(hi)} (LeNet5 at eps ± {r['delta']:.4f})"
            ok = lo - 1e-9 <= r["adaptive"] <= hi + 1e-9
        elif r["truth_kind"] == "same":
            truth = f"{pct(r['truth'], r['truth_ci'])} (LeNet5, same decisions)"
            ok = r["disagreements"] <= 1
            truth += f"; {r['disagreements']} examples differ"
        else:
            truth = f"{pct(r['truth'], r['truth_ci'])} (best known, upper bound)"
            # The twin's evaluation found at most one more example (of n) than this run.
            ok = r["adaptive"] - r["truth"] <= 1 / res["meta"]["n"] + 1e-9
        aa, ad = pct(r["autoattack"], r["autoattack_ci"]), pct(r["adaptive"], r["adaptive_ci"])
        lines.append(f"| {r['defence']} | {pct(r['clean'])} | {aa} | {ad} | {beyond or '—'} | "
                     f"{truth} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
