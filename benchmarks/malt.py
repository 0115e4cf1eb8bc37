"""MALT's claim measured: "AutoAttack's successes at a fraction of the cost" (Melamed, Yehudai &
Shamir, NeurIPS 2024, arXiv:2407.02240), on the advertorch LeNet5 pair (MNIST, L-infinity 0.3)
and the Woods et al. ResNet-44s (CIFAR-10 test head, L-infinity 8/255).

Targeted APGD (targeted DLR, AutoAttack's official options, 100 steps, 1 restart) with three
target selections (:mod:`advjax.attacks.targets`): AutoAttack's (the 9 classes ranked 2nd-10th by
the clean logits), MALT's (the classes with the nearest linearised boundary first; top-k for k in
``--malt-k``) and MultiTargeted (every other class; on these 10-class models the same 9 targets
as AutoAttack's, in the same order for every clean-correct example).

How it is measured. For each clean-correct example and each ranking (logits, MALT), one
targeted run per position ``p = 0..8`` of the ranking, with exactly the keys the stage uses
(``fold_in(fold_in(key, example), 0)``, then ``fold_in(., p)``, then restart 0): the per-position
success flags. A stage with the first ``k`` targets of a ranking breaks an example iff one of its
first ``k`` positions succeeds, and runs ``1 + (first successful position)`` targeted runs (``k``
if none succeeds): first success wins, as in AutoAttack. The same numbers are then checked
against the real ``evaluate`` stages ('apgd-t', 'apgd-malt' with each k, 'apgd-mt'), which are
timed (seconds, compilation excluded). Two views: the targeted stage alone on every clean-correct
example, and after APGD-CE (the examples APGD-CE left robust), the brief's
"APGD-CE + targeted stage".

Cost: targeted runs per example (each at most 100 APGD iterations + 1 start gradient, i.e. at
most 101 forward + backward passes; a run stops at its first misclassified iterate), MALT's
ranking: 1 forward + K backward passes per example (the Jacobian), and seconds.

Usage (2 busy cores; about 20-40 min):
  timeout 3000 python benchmarks/malt.py --n-lenet 100 --n-resnet 32 \\
      --out benchmarks/results/malt_2026-12-07.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

sys.path.insert(0, str(Path(__file__).parent))
from autoattack_parity import RESNETS, _eps, _flax_model, _images  # noqa: E402

STEPS = 100
N_POS = 9          # K - 1 on these 10-class models


def _logits_fn(model):
    from advjax.models import linen_logits_fn

    module, variables = _flax_model(model)
    if model in RESNETS:
        return linen_logits_fn(module, variables, train=False)
    return linen_logits_fn(module, variables)


def position_flags(logits_fn, selection: str, xs, ys, eps: float, key, batch: int):
    """``(n, N_POS)`` bool: whether the targeted run on position ``p`` of the ranking succeeds,
    with the keys of a single-stage ``evaluate`` (stage 0) on these rows; and the seconds."""
    import jax
    import jax.numpy as jnp

    from advjax.attacks import _boundary, losses, targets
    from advjax.attacks.apgd_targeted import OFFICIAL, apgd_search

    def one(x, label, k_example):
        k_stage = jax.random.fold_in(k_example, 0)
        ranked = targets.select(selection, logits_fn, x, label, N_POS, norm="linf")

        def run(p):
            target = ranked[p]

            def loss_fn(z, _k):
                logits = logits_fn(z)
                return losses.targeted_dlr_loss(logits, label, target), logits

            run_key = _boundary.example_keys(jax.random.fold_in(k_stage, p), 1)[0]
            _, s, *_ = apgd_search(loss_fn, x, label, jnp.asarray(eps, x.dtype), run_key,
                                  norm="linf", steps=STEPS, lo=0.0, hi=1.0, **OFFICIAL)
            return s

        return jax.lax.map(run, jnp.arange(N_POS))

    f = jax.jit(jax.vmap(one))
    keys = _boundary.example_keys(key, len(xs))
    out, t_run, compiled = [], 0.0, {}
    for i in range(0, len(xs), batch):
        sl = slice(i, i + batch)
        args = (jnp.asarray(xs[sl]), jnp.asarray(ys[sl], jnp.int32), keys[sl])
        rows = len(args[0])
        if rows not in compiled:               # compilation excluded from the seconds
            compiled[rows] = f.lower(*args).compile()
        t0 = time.perf_counter()
        out.append(np.asarray(compiled[rows](*args)))
        t_run += time.perf_counter() - t0
    return np.concatenate(out), t_run


def derive(flags: np.ndarray, k: int):
    """``(broken (n,), runs (n,))`` of the stage with the first ``k`` positions."""
    f = flags[:, :k]
    broken = f.any(1)
    runs = np.where(broken, np.argmax(f, 1) + 1, k)
    return broken, runs


def run_model(model: str, n: int, malt_ks: tuple[int, ...], batch: int,
              real_ks: tuple[int, ...]) -> dict:
    import jax

    from advjax.attacks.evaluate import evaluate
    from advjax.metrics.stats import wilson

    logits_fn = _logits_fn(model)
    xs, ys = _images(model, n)
    eps = _eps(model, "linf")
    key = jax.random.key(0)
    t0 = time.perf_counter()
    ce = evaluate(logits_fn, xs, ys, eps=eps, key=key, attacks=["apgd-ce"], batch_size=batch)
    clean = ce.clean_correct
    idx = np.flatnonzero(clean)
    after_ce = ce.robust[idx]                        # among the clean-correct rows
    xs_c, ys_c = xs[idx], ys[idx]
    row = dict(model=model, n=n, eps=eps, clean=float(clean.mean()),
               robust_apgd_ce=float(ce.robust.mean()), seconds_apgd_ce=ce.seconds["apgd-ce"])
    flags, secs = {}, {}
    for sel in ("logits", "malt"):
        flags[sel], secs[sel] = position_flags(logits_fn, sel, xs_c, ys_c, eps, key, batch)
    row["sweep_seconds"] = secs

    configs = {"apgd-t (AutoAttack, 9 by logits)": ("logits", 9)}
    for k in malt_ks:
        configs[f"apgd-malt k={k}"] = ("malt", k)
    for k in malt_ks:
        if k < 9:
            configs[f"apgd-t k={k} by logits (control)"] = ("logits", k)
    aa_alone, _ = derive(flags["logits"], 9)
    views = {}
    for view, rows in (("alone", np.ones(len(idx), bool)), ("after_apgd_ce", after_ce)):
        out = {}
        for name, (sel, k) in configs.items():
            broken, runs = derive(flags[sel], k)
            b, r, aa = broken[rows], runs[rows], aa_alone[rows]
            still = clean.copy()
            still[idx[rows & broken]] = False
            if view == "after_apgd_ce":
                still &= ce.robust
            ci = wilson(int(still.sum()), n)
            out[name] = dict(
                robust=float(still.mean()), robust_ci95=[ci.low, ci.high],
                broken=int(b.sum()), attacked=int(rows.sum()),
                targeted_runs=int(r.sum()), runs_per_example=float(r.mean()) if len(r) else 0.0,
                max_passes_upper_bound=int(r.sum()) * (STEPS + 1)
                + (int(rows.sum()) * 11 if sel == "malt" else 0),
                missed_vs_aa=int((aa & ~b).sum()), extra_vs_aa=int((b & ~aa).sum()))
            if out[name]["missed_vs_aa"] or int(aa.sum()):
                miss = wilson(out[name]["missed_vs_aa"], int(aa.sum()))
                out[name]["miss_rate_ci95"] = [miss.estimate, miss.low, miss.high]
        views[view] = out
    row["views"] = views

    # The real stages on the rows APGD-CE left robust: timed, and checked against the sweep.
    rob = idx[after_ce]
    real = {}
    # 'apgd-mt' is not timed separately: on these 10-class models its targets and their order
    # are apgd-t's for every clean-correct example (test_targets checks MT >= APGD-T).
    stage_cfgs = [("apgd-t", {}, ("logits", 9))]
    stage_cfgs += [("apgd-malt", {"malt_targets": k}, ("malt", k)) for k in real_ks]
    # The sweep's keys are those of a single-stage evaluate on the clean-correct rows; the real
    # stage runs on those rows too (examples APGD-CE broke are attacked as well: the check
    # compares every clean-correct row), timed.
    for stage, kw, (sel, k) in stage_cfgs:
        ev = evaluate(logits_fn, xs_c, ys_c, eps=eps, key=key, attacks=[stage],
                      batch_size=batch, steps=STEPS, **kw)
        broken = ev.broken_by == 0
        expect, _ = derive(flags[sel], k)
        name = stage + ("" if not kw else f" k={k}")
        real[name] = dict(seconds=ev.seconds[stage], compile_seconds=ev.compile_seconds[stage],
                          broken=int(broken.sum()), attacked=int(len(idx)),
                          agrees_with_sweep=bool(np.array_equal(broken, expect)),
                          disagreements=int((broken != expect).sum()))
    row["real_stages_alone"] = real
    row["robust_after_ce_rows"] = int(len(rob))
    row["wall_seconds"] = time.perf_counter() - t0
    return row


def verdict(views: dict, k: int) -> str:
    """MALT top-k against AutoAttack's APGD-T: "not reproduced" when MALT misses an example
    APGD-T breaks (the claim is "matching all of AutoAttack's successes"), "reproduced" when it
    misses none with a 95% Wilson upper bound of the miss rate below 10% and fewer targeted
    runs, "inconclusive" otherwise (too few APGD-T successes to bound the miss rate)."""
    m = views[f"apgd-malt k={k}"]
    aa = views["apgd-t (AutoAttack, 9 by logits)"]
    if m["missed_vs_aa"] > 0:
        return "not reproduced"
    ci = m.get("miss_rate_ci95")
    if ci and ci[2] < 0.10 and m["targeted_runs"] < aa["targeted_runs"]:
        return "reproduced"
    return "inconclusive"


def main() -> None:
    global STEPS
    import jax

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lenet5adv,resnet44-robust")
    ap.add_argument("--n-lenet", type=int, default=100)
    ap.add_argument("--n-resnet", type=int, default=32)
    ap.add_argument("--malt-k", default="1,2,3,9")
    ap.add_argument("--real-k", default="1,3", help="MALT k of the timed real stages")
    ap.add_argument("--steps", type=int, default=STEPS, help="APGD steps (100; less: smoke)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    STEPS = a.steps
    ks = tuple(int(k) for k in a.malt_k.split(","))
    real_ks = tuple(int(k) for k in a.real_k.split(","))
    meta = dict(machine=platform.platform(), processor=platform.processor(),
                cores=os.cpu_count(), python=platform.python_version(), jax=jax.__version__,
                advjax_commit=os.popen("git rev-parse --short HEAD").read().strip(),
                date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                load_average_start=list(os.getloadavg()), steps=STEPS, norm="linf",
                malt_k=list(ks), command=" ".join(sys.argv))
    rows = []
    for model in a.models.split(","):
        n = a.n_resnet if model in RESNETS else a.n_lenet
        row = run_model(model, n, ks, a.batch, real_ks)
        for view in ("alone", "after_apgd_ce"):
            row.setdefault("verdicts", {})[view] = {k: verdict(row["views"][view], k)
                                                    for k in ks}
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
        if a.out:
            meta["load_average_end"] = list(os.getloadavg())
            Path(a.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    for row in rows:
        print(f"\n{row['model']} (n={row['n']}, clean {row['clean']:.1%}, "
              f"after APGD-CE {row['robust_apgd_ce']:.1%})")
        for view, out in row["views"].items():
            print(f"  [{view}]")
            for name, r in out.items():
                print(f"    {name:36s} robust {r['robust']:.1%} "
                      f"[{r['robust_ci95'][0]:.1%}, {r['robust_ci95'][1]:.1%}]  runs "
                      f"{r['targeted_runs']:4d}  missed {r['missed_vs_aa']}  extra "
                      f"{r['extra_vs_aa']}")


if __name__ == "__main__":
    main()
