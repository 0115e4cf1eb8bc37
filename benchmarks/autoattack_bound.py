"""How fast the standard AutoAttack ensemble can possibly run on this machine: a FLOP bound.

The standard version fixes the work per still-robust example (:class:`advjax.attacks.autoattack.
Settings`: APGD-CE 100 gradient steps x 1 restart; APGD-T and FAB-T 100 steps for each of 9
target classes; Square 5000 queries, one forward pass each), and every stage attacks only the
examples the earlier stages left robust. Given a parity run (``autoattack_parity.py``'s results
file: the examples each stage attacked and the official code's seconds per stage), this counts
the FLOPs that work needs with XLA's cost analysis of the model (forward pass; forward +
input-gradient for a gradient step), and divides by a 4096² fp32 matmul's measured throughput
(``attacks.measure_matmul_roofline``, the median of five):
the time each stage would take at 100 % of the matmul roofline, and so the largest speed-up over
the official code that any implementation of the same protocol could show here. FAB-T is
counted at one gradient step per iteration (its extra forward passes not counted), so its bound
is loose in advjax's favour; the others are exact counts of the protocol's passes.

Usage (needs ADVJAX_DATA_DIR):
  python benchmarks/autoattack_bound.py \
      benchmarks/results/autoattack_lenet5adv_n200_linf_fab_bisect.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

sys.path.insert(0, str(Path(__file__).parent))


def stage_passes(settings, attacked: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``{stage: (gradient steps, forward-only passes)}`` of the standard protocol, per stage,
    for ``attacked[stage]`` examples."""
    return {"apgd-ce": (attacked["apgd-ce"] * settings.steps * settings.apgd_restarts, 0),
            "apgd-t": (attacked["apgd-t"] * settings.steps * settings.n_targets, 0),
            "fab-t": (attacked["fab-t"] * settings.steps * settings.n_targets, 0),
            "square": (0, attacked["square"] * settings.queries)}


def model_flops(model: str) -> tuple[float, float]:
    """(forward, forward + input-gradient) FLOPs of one example: XLA's cost analysis at batch
    256 (the gradient step by ``attacks._step_flops``, as every speed table here counts it),
    divided by 256."""
    import jax
    import jax.numpy as jnp
    from attacks import _step_flops
    from autoattack_parity import RESNETS, _flax_model, _images

    from advjax.models import linen_logits_fn
    module, variables = _flax_model(model)
    xs, _ = _images(model, 256)
    apply = (linen_logits_fn(module, variables, train=False) if model in RESNETS
             else linen_logits_fn(module, variables))
    cost = jax.jit(jax.vmap(apply)).lower(jnp.asarray(xs, jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / len(xs), _step_flops(apply, xs) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="an autoattack_parity.py results file")
    args = ap.parse_args()
    from attacks import measure_matmul_roofline

    from advjax.attacks.autoattack import Settings
    res = json.loads(args.results.read_text())
    roofline = measure_matmul_roofline()
    rows = {r["framework"]: r for r in res["rows"]}
    adv, official = rows["advjax"], rows["official"]
    fwd, step = model_flops(adv["model"])
    passes = stage_passes(Settings(norm=adv["norm"]), adv["attacked"])
    print(f"model {adv['model']} {adv['norm']}: forward {fwd / 1e6:.2f} MFLOP, gradient step "
          f"{step / 1e6:.2f} MFLOP per example; roofline (median of 5 4096² matmuls) "
          f"{roofline:.1f} GFLOP/s; {os.cpu_count()} cores")
    print("| stage | attacked | GFLOP | bound s | advjax s | advjax / bound | official s "
          "| largest possible speed-up | advjax speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = {"bound": 0.0, "advjax": 0.0, "official": 0.0}
    for stage, (grads, fwds) in passes.items():
        gflop = (grads * step + fwds * fwd) / 1e9
        bound = gflop / roofline
        t_adv, t_off = adv["seconds"][stage], official["seconds"][stage]
        tot["bound"] += bound
        tot["advjax"] += t_adv
        tot["official"] += t_off
        if bound == 0 or t_adv == 0:   # nothing left to attack: the stage did not run
            print(f"| {stage} | 0 | 0 | 0 | {t_adv:.1f} | — | {t_off:.1f} | — | — |")
            continue
        print(f"| {stage} | {adv['attacked'][stage]} | {gflop:.0f} | {bound:.1f} | {t_adv:.1f} | "
              f"{t_adv / bound:.2f} | {t_off:.1f} | {t_off / bound:.2f}× | {t_off / t_adv:.2f}× |")
    print(f"| all | | | {tot['bound']:.1f} | {tot['advjax']:.1f} | "
          f"{tot['advjax'] / tot['bound']:.2f} | {tot['official']:.1f} | "
          f"{tot['official'] / tot['bound']:.2f}× | {tot['official'] / tot['advjax']:.2f}× |")


if __name__ == "__main__":
    main()
