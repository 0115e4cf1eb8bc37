"""advjax's default CNN attacks vs the PyTorch peers, interleaved in ONE process (and optionally
a previous ``advjax/lowering.py`` beside the current one).

This machine's speed drifts by tens of percent between runs, so ratios from one framework per
subprocess, run one after the other, carry that drift. Here every framework is compiled first and
then timed in rounds (each round calls every framework once, in an order shuffled per round by
``--seed``), with the fp32 matmul roofline (a 4096² matmul in JAX) measured in the same rounds, so
each ratio and each roofline fraction compares calls made minutes apart at most. Each speed-up is
also given from the per-round pairs with a 95 % t-interval (:func:`paired_speedup`) and a verdict
against ``--aim`` (:func:`verdict`: met only when the interval's lower bound reaches it).
Rows: PGD-40 on advertorch's PGD-trained LeNet5 (``lenet5adv``) and on the
same weights as a plain Flax model with ``nn.Conv`` / ``nn.max_pool`` (``flaxlenet``), MNIST test
images; PGD-10 and APGD-100 on a Woods ResNet-44 (CIFAR-10 head images). Same weights, images and
settings as ``attacks.py``; every framework attacks the whole set in one call. Peers:
torchattacks (default), foolbox (PGD only: it has no APGD) and ART. Achieved GFLOP/s counts XLA's
forward + input-gradient FLOPs of one step times the step count.

Usage (needs ADVJAX_DATA_DIR and the bench extra):
  python benchmarks/interleaved.py --rounds 3 --out benchmarks/results/attacks_interleaved.json
  python benchmarks/interleaved.py --models resnet44 --n-resnet 64 --peers torchattacks foolbox art
  python benchmarks/interleaved.py --models flaxlenet --n-lenet 64 256 1024 --rounds 8  # sweep
  git show 7dd6db4:advjax/lowering.py > /tmp/lowering_7dd6db4.py
  python benchmarks/interleaved.py --baseline /tmp/lowering_7dd6db4.py   # a previous lowering
  python benchmarks/interleaved.py --xla-default   # also XLA:CPU's default kernels (advjax.xla_cpu)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

sys.path.insert(0, str(Path(__file__).parent))

ROWS = (("lenet5adv", "pgd"), ("flaxlenet", "pgd"), ("resnet44", "pgd"), ("resnet44", "apgd"))
PEERS = ("torchattacks", "foolbox", "art")


def _module_from(path: str):
    spec = importlib.util.spec_from_file_location("baseline_lowering", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _advjax_call(lowering, apply, cfg, attack, x, y, keys, compiler_options=None):
    import jax
    from attacks import advjax_cnn_attack
    run = advjax_cnn_attack(lowering.lower_convs(lambda v: apply(v[None])[0], mode="auto",
                                                 form="tangent"), attack, cfg, compiler_options)

    def call():
        res = jax.block_until_ready(run(x, y, keys))
        return float(np.mean(~np.asarray(res.success)))
    return call


def _torch_call(peer, model, module, variables, cfg, attack, xs, ys):
    import torch
    from attacks import _torch_cnn, torch_cnn_attack
    net = _torch_cnn(model, variables, module, "cpu")
    xt = torch.tensor(xs).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(ys).long()
    atk = torch_cnn_attack(peer, net, attack, cfg, len(xs), "cpu", tuple(xt.shape[1:]))

    def call():
        adv = atk(xt, yt)
        with torch.no_grad():
            return float((net(adv).argmax(1) == yt).float().mean())
    return call


def _roofline_call():
    """A 4096² fp32 matmul in JAX; returns its GFLOP/s."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))

    def call():
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        return 2 * 4096 ** 3 / (time.perf_counter() - t0) / 1e9
    return call


def paired_speedup(advjax_s, peer_s, level: float = 0.95) -> dict:
    """advjax's speed-up over a peer from per-round paired times, with a confidence interval.

    Round ``r`` timed both frameworks minutes apart, so the per-round ratios
    ``peer_s[r] / advjax_s[r]`` cancel most of the machine's drift. The estimate is their
    geometric mean; the interval is Student's t on the log ratios (``level`` two-sided), which
    needs at least two rounds (``nan`` bounds otherwise).

    Args:
      advjax_s, peer_s: seconds per call, one per round, same length.
      level: the interval's coverage in (0, 1).

    Returns:
      ``{"ratio", "low", "high", "rounds"}`` (ratios > 1: advjax is faster).
    """
    from scipy import stats
    a, b = np.asarray(advjax_s, float), np.asarray(peer_s, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"`advjax_s` and `peer_s` must be equal-length 1-D; got {a.shape}, "
                         f"{b.shape}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1); got {level}.")
    logs = np.log(b / a)
    mean = float(np.mean(logs))
    if len(logs) < 2:
        return {"ratio": float(np.exp(mean)), "low": float("nan"), "high": float("nan"),
                "rounds": len(logs)}
    half = float(stats.t.ppf(0.5 + level / 2, len(logs) - 1) * np.std(logs, ddof=1)
                 / np.sqrt(len(logs)))
    return {"ratio": float(np.exp(mean)), "low": float(np.exp(mean - half)),
            "high": float(np.exp(mean + half)), "rounds": len(logs)}


def verdict(ci: dict, aim: float) -> str:
    """``"met"`` when the interval's lower bound reaches ``aim``, ``"not met"`` when its upper
    bound is below it, ``"inconclusive"`` otherwise (and with fewer than two rounds)."""
    if not (np.isfinite(ci["low"]) and np.isfinite(ci["high"])):
        return "inconclusive"
    if ci["low"] >= aim:
        return "met"
    return "not met" if ci["high"] < aim else "inconclusive"


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version({"art": "adversarial-robustness-toolbox"}.get(package, package))
    except PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default=None,
                    help="path of a previous advjax/lowering.py to time beside the current one")
    ap.add_argument("--xla-default", action="store_true",
                    help="also time advjax with XLA:CPU's default kernels (advjax.xla_cpu off "
                         "for that one program)")
    ap.add_argument("--models", nargs="+", default=["lenet5adv", "flaxlenet", "resnet44"],
                    choices=["lenet5adv", "flaxlenet", "resnet44"])
    ap.add_argument("--peers", nargs="+", default=["torchattacks"], choices=PEERS)
    ap.add_argument("--n-lenet", type=int, nargs="+", default=[256],
                    help="MNIST test images per LeNet5 row (one row per value: a batch sweep)")
    ap.add_argument("--n-resnet", type=int, nargs="+", default=[16],
                    help="CIFAR-10 head images per ResNet-44 row (one row per value)")
    ap.add_argument("--attacks", nargs="+", default=["pgd", "apgd"], choices=["pgd", "apgd"],
                    help="ResNet-44 rows to run (the LeNet5 rows are PGD only)")
    ap.add_argument("--aim", type=float, default=2.0,
                    help="speed-up over each peer that the verdict tests (issue: LeNet5 2x)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the per-round call order")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds of idle before each timed call, so that the previous call's "
                         "thread pools (OpenMP, XLA) have stopped spinning")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from attacks import _attack_settings, _cnn_data, _cnn_jax, _step_flops

    from advjax import lowering, xla_cpu
    lowerings = {"advjax": (lowering, None)}
    if args.baseline:
        lowerings["advjax-baseline"] = (_module_from(args.baseline), None)
    if args.xla_default:
        lowerings["advjax-xla-default"] = (lowering, xla_cpu.XLA_DEFAULT_OPTIONS)
    out = {"meta": dict(machine=platform.platform(), cores=os.cpu_count(), jax=jax.__version__,
                        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        rounds=args.rounds, baseline=args.baseline, peers=args.peers,
                        aim=args.aim, seed=args.seed, settle_s=args.settle,
                        order="shuffled per round",
                        xla_flags=os.environ.get("XLA_FLAGS", ""), xla_cpu=xla_cpu.STATUS,
                        torch=_version("torch"), **{p: _version(p) for p in args.peers}),
           "rows": []}
    roofline = _roofline_call()
    order_rng = np.random.default_rng(args.seed)
    plan = [(model, attack, n) for model, attack in ROWS
            if model in args.models and (model != "resnet44" or attack in args.attacks)
            for n in (args.n_resnet if model == "resnet44" else args.n_lenet)]
    for model, attack, n in plan:
        cfg = _attack_settings(model, attack, None)
        xs, ys = _cnn_data(model, n, False)
        module, variables, apply = _cnn_jax(model, False, 44, "standard")
        x, y = jnp.asarray(xs), jnp.asarray(ys)
        keys = jax.random.split(jax.random.key(0), n)
        calls, first, robust = {}, {}, {}
        for name, (mod, options) in lowerings.items():
            calls[name] = _advjax_call(mod, apply, cfg, attack, x, y, keys, options)
        peers = [p for p in args.peers if not (p == "foolbox" and attack != "pgd")]
        for peer in peers:
            calls[peer] = _torch_call(peer, model, module, variables, cfg, attack, xs, ys)
        for name, call in calls.items():
            t0 = time.perf_counter()
            robust[name] = call()
            first[name] = time.perf_counter() - t0
        times = {name: [] for name in calls}
        rooflines = []
        for _ in range(args.rounds):
            rooflines.append(roofline())
            for name in order_rng.permutation(list(calls)):
                time.sleep(args.settle)  # the previous call's spinning worker threads go idle
                t0 = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - t0)
        rooflines.append(roofline())
        gflop = _step_flops(lambda v, f=apply: f(v[None])[0], xs) * cfg["steps"] / 1e9
        peak = float(np.median(rooflines))
        row = {"model": model, "attack": f"{attack}-{cfg['steps']}", "n": n, "gflop": gflop,
               "roofline_gflops": peak, "rooflines": rooflines, "load_end": os.getloadavg()}
        for name in calls:
            med = float(np.median(times[name]))
            row[name] = dict(images_per_s=n / med, seconds=times[name],
                             robust_accuracy=robust[name], gflops=gflop / med,
                             roofline_fraction=gflop / med / peak,
                             compile_s=(first[name] - med) if name in lowerings else None)
        for peer in peers:
            row[f"advjax_vs_{peer}"] = row["advjax"]["images_per_s"] / \
                row[peer]["images_per_s"]
            ci = paired_speedup(times["advjax"], times[peer])
            row[f"advjax_vs_{peer}_paired"] = {**ci, "verdict": verdict(ci, args.aim)}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)
    print(render(out))


def render(res: dict) -> str:
    """Markdown table of one run: per row and framework, throughput, advjax's speed-up over it,
    compile time, robust accuracy, achieved GFLOP/s and fraction of the run's matmul roofline."""
    aim = res["meta"].get("aim", 2.0)
    out = ["| model | attack | N | framework | images/s | advjax speed-up | paired speed-up "
           f"(95% CI) | vs {aim:g}× | compile s | robust acc. | GFLOP/s | roofline |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["rows"]:
        names = [k for k in row if isinstance(row[k], dict) and "images_per_s" in row[k]]
        for name in names:
            r = row[name]
            ratio = row["advjax"]["images_per_s"] / r["images_per_s"]
            comp = "—" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
            paired = row.get(f"advjax_vs_{name}_paired")
            ci = ("—", "—") if paired is None else (
                    f"{paired['ratio']:.2f}× ({paired['low']:.2f}–{paired['high']:.2f})",
                    paired["verdict"])
            out.append(f"| {row['model']} | {row['attack']} | {row['n']} | {name} | "
                       f"{r['images_per_s']:.2f} | {ratio:.2f}× | {ci[0]} | {ci[1]} | {comp} | "
                       f"{r['robust_accuracy']:.3f} | {r['gflops']:.1f} | "
                       f"{r['roofline_fraction']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
