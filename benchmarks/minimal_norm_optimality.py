"""Minimal-norm attacks compared at an equal forward+backward budget: per-example distances and
AttackBench's "optimality".

For each norm, every advjax minimal-norm attack runs on the same images with the same budget of
forward plus backward passes per example (the clean forward included):

  * L2: FMN-L2, DDN, CW-L2, FAB-L2 (untargeted), DeepFool (L2);
  * L-infinity: FMN-Linf, FAB-Linf (advjax has no DeepFool-Linf: ``attacks.deepfool`` is the
    L2 algorithm only, so that row is absent);
  * L1: FMN-L1, FAB-L1;
  * L0: FMN-L0 alone (its optimality against itself is 1 by construction: reported as distances
    only, no comparison).

Per example ``i`` and attack ``a``: ``d_a[i]`` the ``norm`` of ``x_adv - x`` when the returned point
is misclassified (recomputed here with the model, not taken from the attack), ``inf`` when the
attack found nothing, ``0`` for an image the model already misclassifies. ``d*[i] = min_a d_a[i]``,
the best any advjax attack found. L0 counts changed input entries (pixels x channels).

Optimality (Cinà et al. 2024, "AttackBench: Evaluating Gradient-based Attacks for Adversarial
Examples", arXiv:2404.19460, Sec. 3, and their ``analysis/plot.py``): the robust-accuracy curve
``rho_a(eps) = #{i : d_a[i] > eps} / N`` of an attack against the best curve ``rho*`` built from
``d*``, on ``[0, D]`` with ``D = max_i d*[i]`` over the finite ``d*``:

    optimality_a = 1 - (A_a - A*) / (A_worst - A*),
    A_a = int_0^D rho_a,  A* = int_0^D rho*,  A_worst = clean_acc * D,

``clean_acc`` the fraction of ``d*[i] > 0``. An attack that finds the best distance on every
example scores 1, one that finds nothing scores 0. The areas are exact integrals of the step
curves, ``int_0^D rho_a = mean_i min(d_a[i], D)``; AttackBench's code integrates the same curves
with the trapezoid rule over their jump points (a difference of at most ``D / N`` in each area).
Beside it: the median over the examples some attack broke (``0 < d* < inf``) of ``d_a / d*``
(``inf`` where ``a`` failed), and the fraction broken.

Budget (forward + backward passes per example, ``--budget``, default 1000; as written in the code,
before XLA merges any duplicate forward):
  * FMN, DDN: one ``value_and_grad`` per step, 2 passes: ``steps = (budget - 1) // 2``;
  * CW-L2: one ``value_and_grad`` per Adam step, 2 passes; ``search_steps = 5`` constants of
    ``steps = (budget - 1) // 10`` Adam steps each (abort_early may stop sooner: the passes actually
    used are reported), first constant 1, Adam step 0.1 (``CW_LR``);
  * FAB untargeted: per step the logits (1 forward), their full Jacobian by ``jax.jacrev``
    (1 forward + K backward) and the check of the new point (1 forward): ``K + 3`` passes,
    ``steps = (budget - 1) // (K + 3)`` (76 for K = 10 and 1000);
  * DeepFool: per step one ``vjp`` (1 forward), ``candidates = 10`` VJPs and the check (1 forward):
    12 passes, ``steps = (budget - 1) // 12``; it stops at the first misclassified point, so it
    uses far less (reported).

Usage (needs ADVJAX_DATA_DIR); the recorded runs (2 shared CPU cores, load ~13):
  timeout 2400 python benchmarks/minimal_norm_optimality.py --models lenet5 lenet5adv --n 100 \
      --budget 1000 --out benchmarks/results/minimal_norm_optimality_lenet5.json
  timeout 2400 python benchmarks/minimal_norm_optimality.py --models resnet44-standard \
      resnet44-robust --n 16 --budget 300 --batch 16 \
      --out benchmarks/results/minimal_norm_optimality_resnet44.json
The ResNet-44s get 300 passes (not 1000) to fit the CPUs: FAB then has 23 steps, CW 5 x 29. CW's
Adam step 0.1 was chosen on LeNet5; on resnet44-standard at 300 passes CW-L2 is far from the best
with it (median ratio 27) and also with 0.01 without early abort (median ratio 3.2, optimality
0.03; a one-off probe, not in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

NORMS = ("l2", "linf", "l1", "l0")
CW_SEARCH_STEPS = 5
DEEPFOOL_CANDIDATES = 10
# CW's Adam step: its default 1e-2 is meant for thousands of steps per constant; at 99 it broke 8 of
# 20 LeNet5 images (lr 0.1: 19 of 20, median L2 1.42; 0.05: 19, 1.48; initial constant 0.1 or 1:
# the same), tried on the first 20 MNIST test images before the recorded runs.
CW_LR = 0.1


def distances(x: np.ndarray, x_adv: np.ndarray, adversarial: np.ndarray,
              clean_wrong: np.ndarray, norm: str) -> np.ndarray:
    """Per-example ``norm`` of ``x_adv - x``: ``inf`` where not ``adversarial``, 0 where the clean
    image is already misclassified.

    Args:
      x, x_adv: ``(N, ...)`` images.
      adversarial: ``(N,)`` bool, ``x_adv`` misclassified.
      clean_wrong: ``(N,)`` bool, ``x`` misclassified.
      norm: ``"l0"`` (changed entries), ``"l1"``, ``"l2"`` or ``"linf"``.

    Returns:
      ``(N,)`` float64 distances.
    """
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}; got {norm!r}.")
    d = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    size = {"l0": lambda: (d != 0).sum(1).astype(np.float64),
            "l1": lambda: np.abs(d).sum(1),
            "l2": lambda: np.sqrt((d * d).sum(1)),
            "linf": lambda: np.abs(d).max(1, initial=0.0)}[norm]()
    size = np.where(np.asarray(adversarial, bool), size, np.inf)
    return np.where(np.asarray(clean_wrong, bool), 0.0, size)


def _check_pair(d_attack, d_best):
    a = np.asarray(d_attack, np.float64)
    b = np.asarray(d_best, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("`d_attack` and `d_best` must be non-empty (N,) arrays of one shape; got "
                         f"{a.shape} and {b.shape}.")
    if np.any(np.isnan(a)) or np.any(np.isnan(b)) or np.any(a < 0) or np.any(b < 0):
        raise ValueError("distances must be >= 0 (inf allowed, no NaN).")
    return a, b


def optimality(d_attack, d_best) -> float:
    """AttackBench's optimality of one attack's distances against the best distances.

    Args:
      d_attack: ``(N,)`` the attack's per-example distances (``inf``: not broken, 0: clean
        misclassified).
      d_best: ``(N,)`` the best distances over all attacks (``d_best <= d_attack`` is expected;
        not required: a reference such as a closed form may be larger on some example).

    Returns:
      ``1 - (A - A*) / (clean_acc D - A*)`` with ``D`` the largest finite ``d_best``,
      ``A = mean(min(d_attack, D))``, ``A* = mean(min(d_best, D))``, ``clean_acc`` the fraction of
      ``d_best > 0`` (see the module docstring); NaN when the best curve has zero area to compare
      against (``clean_acc D == A*``: nothing broken, or every distance 0).
    """
    a, b = _check_pair(d_attack, d_best)
    finite = b[np.isfinite(b)]
    if finite.size == 0:
        return float("nan")
    big = float(finite.max())
    area = np.minimum(a, big).mean()
    best_area = np.minimum(b, big).mean()
    worst_area = np.count_nonzero(b) / b.size * big
    if worst_area - best_area <= 0:
        return float("nan")
    return float(1.0 - (area - best_area) / (worst_area - best_area))


def median_ratio(d_attack, d_best) -> float:
    """Median of ``d_attack / d_best`` over the examples with ``0 < d_best < inf`` (``inf`` where
    the attack failed on one); NaN if there are none."""
    a, b = _check_pair(d_attack, d_best)
    keep = (b > 0) & np.isfinite(b)
    if not keep.any():
        return float("nan")
    return float(np.median(a[keep] / b[keep]))


def attack_plan(logits_fn, norm: str, budget: int, num_classes: int) -> list[dict]:
    """The attacks of one norm with their steps set to ``budget`` passes per example.

    Returns:
      ``[{"name", "attack", "needs_key", "settings", "passes_max", "passes_used"}]`` with
      ``passes_used(result) -> (N,)`` the passes each example actually used (clean forward
      included).
    """
    from advjax import attacks

    if budget < 30:
        raise ValueError(f"`budget` must be >= 30 passes; got {budget}.")
    two = (budget - 1) // 2
    fab_steps = (budget - 1) // (num_classes + 3)
    df_steps = (budget - 1) // (DEEPFOOL_CANDIDATES + 2)
    cw_steps = (budget - 1) // (2 * CW_SEARCH_STEPS)

    def fixed(p):
        return lambda res: np.full(np.shape(res.success), p, np.int64)

    plan = []
    if norm in ("l2", "linf", "l1", "l0"):
        plan.append(dict(name=f"FMN-{norm.upper() if norm != 'linf' else 'Linf'}",
                         attack=attacks.fmn(logits_fn, norm=norm, steps=two), needs_key=False,
                         settings=dict(steps=two), passes_max=1 + 2 * two,
                         passes_used=fixed(1 + 2 * two)))
    if norm == "l2":
        plan.append(dict(name="DDN", attack=attacks.ddn(logits_fn, steps=two), needs_key=True,
                         settings=dict(steps=two, gamma=0.05, init_norm=1.0),
                         passes_max=1 + 2 * two, passes_used=fixed(1 + 2 * two)))
        plan.append(dict(
            name="CW-L2",
            attack=attacks.cw_l2(logits_fn, steps=cw_steps, search_steps=CW_SEARCH_STEPS,
                                 initial_const=1.0, learning_rate=CW_LR),
            needs_key=False,
            settings=dict(steps=cw_steps, search_steps=CW_SEARCH_STEPS, initial_const=1.0,
                          learning_rate=CW_LR, abort_early=True),
            passes_max=1 + 2 * cw_steps * CW_SEARCH_STEPS,
            passes_used=lambda res: 1 + 2 * np.asarray(res.aux["iterations"], np.int64)))
    if norm in ("l2", "linf", "l1"):
        name = {"l2": "FAB-L2", "linf": "FAB-Linf", "l1": "FAB-L1"}[norm]
        plan.append(dict(name=name, attack=attacks.fab(logits_fn, norm=norm, steps=fab_steps),
                         needs_key=True, settings=dict(steps=fab_steps, n_restarts=1),
                         passes_max=1 + (num_classes + 3) * fab_steps,
                         passes_used=fixed(1 + (num_classes + 3) * fab_steps)))
    if norm == "l2":
        plan.append(dict(
            name="DeepFool-L2",
            attack=attacks.deepfool(logits_fn, steps=df_steps, candidates=DEEPFOOL_CANDIDATES),
            needs_key=False,
            settings=dict(steps=df_steps, candidates=DEEPFOOL_CANDIDATES, overshoot=0.02),
            passes_max=1 + (DEEPFOOL_CANDIDATES + 2) * df_steps,
            passes_used=lambda res: 1 + (DEEPFOOL_CANDIDATES + 2)
            * np.asarray(res.aux["steps"], np.int64)))
    return plan


def run_attack(entry: dict, logits_fn, xs: np.ndarray, ys: np.ndarray, norm: str,
               batch: int) -> dict:
    """One attack over all images in batches of ``batch``; distances recomputed here."""
    import jax
    import jax.numpy as jnp

    fn = jax.jit(jax.vmap(entry["attack"]))
    predict = jax.jit(jax.vmap(lambda x: jnp.argmax(logits_fn(x))))
    advs, used = [], []
    t0 = time.perf_counter()
    for s in range(0, len(xs), batch):
        x = jnp.asarray(xs[s:s + batch])
        y = jnp.asarray(ys[s:s + batch])
        kw = {}
        if entry["needs_key"]:
            kw["key"] = jax.random.split(jax.random.key(s), len(x))
        res = fn(x, y, **kw)
        advs.append(np.asarray(res.x_adv))
        used.append(entry["passes_used"](res))
    seconds = time.perf_counter() - t0
    x_adv = np.concatenate(advs)
    pred_adv = np.asarray(predict(jnp.asarray(x_adv)))
    pred = np.asarray(predict(jnp.asarray(xs)))
    d = distances(xs, x_adv, pred_adv != ys, pred != ys, norm)
    used = np.concatenate(used)
    return dict(name=entry["name"], settings=entry["settings"], passes_max=entry["passes_max"],
                passes_mean=float(used.mean()), seconds_with_compile=seconds,
                distances=[float(v) for v in d])


def summarise(rows: list[dict]) -> None:
    """Adds ``best``, and per attack ``optimality``, ``median_ratio``, ``broken``, in place."""
    d = np.array([r["distances"] for r in rows["attacks"]])
    best = d.min(0)
    rows["best"] = [float(v) for v in best]
    rows["broken_by_any"] = float(np.mean(np.isfinite(best) & (best > 0)))
    for r, da in zip(rows["attacks"], d, strict=True):
        r["optimality"] = optimality(da, best) if len(d) > 1 else None
        r["median_ratio"] = median_ratio(da, best) if len(d) > 1 else None
        r["broken"] = float(np.mean(np.isfinite(da) & (da > 0)))
        fin = da[np.isfinite(da) & (da > 0)]
        r["median_distance"] = float(np.median(fin)) if fin.size else None
        r["best_count"] = int(np.sum((da <= best) & np.isfinite(best) & (best > 0)))


def _model(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from autoattack_parity import RESNETS, _flax_model, _images

    from advjax.models import linen_logits_fn
    module, variables = _flax_model(name)
    if name in RESNETS:
        return linen_logits_fn(module, variables, train=False), _images
    return linen_logits_fn(module, variables), _images


def render(res: dict) -> str:
    """Markdown table: per model and norm, each attack's optimality, median ratio, broken."""
    out = ["| model (n, budget) | norm | attack | steps | passes max / mean | broken | "
           "median dist | median ratio to best | optimality | s (with compile) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for blk in res["blocks"]:
        for r in blk["attacks"]:
            opt = "—" if r["optimality"] is None else f"{r['optimality']:.3f}"
            mr = "—" if r["median_ratio"] is None else f"{r['median_ratio']:.3f}"
            md = "—" if r["median_distance"] is None else f"{r['median_distance']:.4g}"
            steps = r["settings"].get("steps")
            if "search_steps" in r["settings"]:
                steps = f"{r['settings']['search_steps']}×{steps}"
            out.append(f"| {blk['model']} ({blk['n']}, {blk['budget']}) | {blk['norm']} | "
                       f"{r['name']} | {steps} | {r['passes_max']} / {r['passes_mean']:.0f} | "
                       f"{r['broken']:.2f} | {md} | {mr} | {opt} | "
                       f"{r['seconds_with_compile']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "lenet5adv"])
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import jax

    res = dict(meta=dict(machine=platform.platform(), cores=os.cpu_count(),
                         python=platform.python_version(), jax=jax.__version__,
                         advjax=getattr(advjax, "__version__", "?"),
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         load_average_start=os.getloadavg(), argv=sys.argv[1:],
                         n=args.n, budget=args.budget, batch=args.batch), blocks=[])
    for model in args.models:
        logits_fn, images = _model(model)
        xs, ys = images(model, args.n)
        xs = np.asarray(xs, np.float32)
        ys = np.asarray(ys, np.int32)
        k = int(np.shape(logits_fn(xs[0]))[-1])
        for norm in args.norms:
            blk = dict(model=model, norm=norm, n=len(xs), budget=args.budget, attacks=[])
            for entry in attack_plan(logits_fn, norm, args.budget, k):
                row = run_attack(entry, logits_fn, xs, ys, norm, args.batch)
                blk["attacks"].append(row)
                print(f"{model} {norm} {row['name']}: {row['seconds_with_compile']:.0f} s",
                      flush=True)
            summarise(blk)
            res["blocks"].append(blk)
            if args.out:      # after every block: a time cap loses at most the block under way
                res["meta"]["load_average_end"] = os.getloadavg()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(res, indent=1))
            print(render(dict(blocks=[blk])), flush=True)
    print(render(res))


if __name__ == "__main__":
    main()
