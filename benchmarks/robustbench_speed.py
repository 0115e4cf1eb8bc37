"""RobustBench-size speed: one sharded advjax ``evaluate`` of a WideResNet-28-10 beside the official
AutoAttack on the same PyTorch model with the same weights.

Three subprocesses of this script: ``prepare`` (PyTorch) builds RobustBench's WideResNet
(``benchmarks/_torch_models.TorchWideResNet``, RobustBench's own layer code) with seeded random
weights and batch-norm statistics, or reads ``--checkpoint`` (a RobustBench WRN file), saves the
weights as a ``torch.save`` file and picks the first ``--n`` CIFAR-10 test images of
``$ADVJAX_DATA_DIR``; ``advjax`` imports that file with
:func:`advjax.models.robustbench.load_checkpoint`
(no torch) and runs :func:`advjax.attacks.evaluate` sharded over every device; ``official`` runs
``autoattack.AutoAttack(version="custom")`` on the PyTorch model. Both run the same stages with the
same reduced budget (``--steps`` APGD/FAB iterations, ``--n-targets`` target classes, ``--queries``
Square queries, one restart), at the published CIFAR-10 L∞ budget 8/255.

With random weights the labels are the model's own clean predictions (so every image is attacked
by every stage and the timing is not of an empty robust set); with ``--checkpoint`` the true labels.
Reported: wall seconds per stage and in all, advjax's compile seconds apart, robust accuracy after
each stage on both sides, the device, and the load average before and after.

Usage (torch + the official autoattack + jax in one interpreter, e.g. the bench environment)::

    python benchmarks/robustbench_speed.py --n 8 --out benchmarks/results/robustbench_speed.json

The same command runs on a GPU or TPU host: the advjax side uses every JAX device, the official
side CUDA when PyTorch sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
EPS = 8 / 255


def prepare(args) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from _torch_models import TorchWideResNet, randomise_batch_norm

    from advjax import data as data_lib

    torch.manual_seed(args.seed)
    net = TorchWideResNet(args.depth, 10, args.width)
    if args.checkpoint:
        from advjax.models.robustbench import read_state_dict

        state, _ = read_state_dict(args.checkpoint)
        state = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()
                 if not k.startswith("sub_block1.")}
        net.load_state_dict(state)
    else:
        randomise_batch_norm(net, args.seed)
    net.eval()
    weights = Path(args.work) / "weights.pt"
    torch.save({k: v for k, v in net.state_dict().items()}, weights)
    ds = data_lib.load("cifar10_head", "all", limit=args.n)
    x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    labels = ds.labels if args.checkpoint else pred.astype(np.int32)
    np.savez(Path(args.work) / "data.npz", x=ds.images, y=labels)


def run_advjax(args) -> dict:
    import jax
    import numpy as np

    from advjax.attacks.evaluate import evaluate
    from advjax.models import linen_logits_fn
    from advjax.models.robustbench import load_checkpoint

    module, variables, sha = load_checkpoint(Path(args.work) / "weights.pt",
                                             arch=f"WideResNet-{args.depth}-{args.width}",
                                             mean=(0.0,) * 3, std=(1.0,) * 3)
    d = np.load(Path(args.work) / "data.npz")
    t0 = time.perf_counter()
    ev = evaluate(linen_logits_fn(module, variables), d["x"], d["y"], eps=EPS, norm="linf",
                  key=jax.random.key(args.seed), version="standard", attacks=STAGES,
                  steps=args.steps, n_targets=args.n_targets, queries=args.queries,
                  batch_size=args.batch)
    wall = time.perf_counter() - t0
    return dict(framework="advjax", clean=ev.clean_accuracy,
                robust={s: ev.robust_accuracy[s] for s in ev.stages}, seconds=ev.seconds,
                compile_seconds=ev.compile_seconds, attacked=ev.attacked,
                run_seconds=sum(ev.seconds.values()),
                total_compile_seconds=sum(ev.compile_seconds.values()), wall_seconds=wall,
                # model passes (advjax.attacks.passes), hardware-independent: per stage the
                # totals over the attacked examples and the means per attacked example
                forward_passes=ev.forward_passes, backward_passes=ev.backward_passes,
                forward_per_example=ev.forward_per_example,
                backward_per_example=ev.backward_per_example,
                forward_per_image=(len(d["y"]) + sum(ev.forward_passes.values())) / len(d["y"]),
                backward_per_image=sum(ev.backward_passes.values()) / len(d["y"]),
                devices=[str(d) for d in jax.devices()], jax=jax.__version__, sha256=sha[0])


def run_official(args) -> dict:
    import io
    from contextlib import redirect_stdout

    import numpy as np
    import torch
    from autoattack import AutoAttack

    sys.path.insert(0, str(Path(__file__).parent))
    from _torch_models import TorchWideResNet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    net = TorchWideResNet(args.depth, 10, args.width)
    net.load_state_dict(torch.load(Path(args.work) / "weights.pt", weights_only=True))
    net = net.eval().to(device)
    d = np.load(Path(args.work) / "data.npz")
    x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(d["y"]).long().to(device)
    aa = AutoAttack(net, norm="Linf", eps=EPS, version="custom", attacks_to_run=list(STAGES),
                    device=device, seed=args.seed)
    aa.apgd.n_restarts, aa.apgd.n_iter = 1, args.steps
    aa.apgd_targeted.n_restarts, aa.apgd_targeted.n_iter = 1, args.steps
    aa.apgd_targeted.n_target_classes = args.n_targets
    aa.fab.n_restarts, aa.fab.n_iter, aa.fab.n_target_classes = 1, args.steps, args.n_targets
    aa.square.n_queries = args.queries
    buf = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        aa.run_standard_evaluation(x, y, bs=args.batch)
    wall = time.perf_counter() - t0
    log = buf.getvalue()
    clean = float(re.search(r"initial accuracy: ([\d.]+)%", log).group(1)) / 100
    robust, seconds, prev = {}, {}, 0.0
    for name, acc, total in re.findall(r"robust accuracy after ([A-Z-]+): ([\d.]+)% "
                                       r"\(total time ([\d.]+) s\)", log):
        robust[name.lower()] = float(acc) / 100
        seconds[name.lower()] = float(total) - prev
        prev = float(total)
    return dict(framework="official", clean=clean, robust=robust, seconds=seconds,
                run_seconds=wall, wall_seconds=wall, device=device, torch=torch.__version__)


def _child(role: str, args) -> dict | None:
    cmd = [sys.executable, __file__, "--role", role, "--work", args.work]
    for flag in ("n", "depth", "width", "steps", "n_targets", "queries", "batch", "seed"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    load = os.getloadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{role} failed")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return None
    row = json.loads(lines[-1][7:])
    row.update(load_average_start=load, load_average_end=os.getloadavg())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="CIFAR-10 test images")
    ap.add_argument("--depth", type=int, default=28)
    ap.add_argument("--width", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10, help="APGD / FAB iterations, both sides")
    ap.add_argument("--n-targets", type=int, default=3, help="APGD-T / FAB-T targets, both sides")
    ap.add_argument("--queries", type=int, default=100, help="Square queries, both sides")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="a RobustBench WideResNet file")
    ap.add_argument("--frameworks", nargs="+", default=["advjax", "official"],
                    choices=["advjax", "official"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--role", choices=["prepare", "advjax", "official"], help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        fn = {"prepare": prepare, "advjax": run_advjax, "official": run_official}[args.role]
        row = fn(args)
        if row is not None:
            print("RESULT " + json.dumps(row))
        return
    with tempfile.TemporaryDirectory(prefix="robustbench-speed-") as work:
        args.work = work
        _child("prepare", args)
        rows = [_child(fw, args) for fw in args.frameworks]
    meta = dict(machine=platform.platform(), cores=os.cpu_count(),
                python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                model=f"WideResNet-{args.depth}-{args.width}",
                weights=args.checkpoint or f"random (seed {args.seed}); labels = clean predictions",
                n=args.n, eps=EPS, stages=STAGES, steps=args.steps, n_targets=args.n_targets,
                queries=args.queries, restarts=1, batch=args.batch,
                load_average_end=os.getloadavg())
    result = dict(meta=meta, rows=rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))


def render(result: dict) -> str:
    """A Markdown table of the two sides."""
    lines = ["| framework | clean | " + " | ".join(f"after {s}" for s in STAGES)
             + " | run s | compile s | load avg (start) | fwd / bwd passes per image |",
             "|---|---|" + "---|" * len(STAGES) + "---|---|---|---|"]
    for r in result["rows"]:
        robust = " | ".join(f"{r['robust'].get(s, float('nan')):.3f}" for s in STAGES)
        comp = r.get("total_compile_seconds")
        lines.append(f"| {r['framework']} | {r['clean']:.3f} | {robust} | {r['run_seconds']:.1f} "
                     f"| {'—' if comp is None else f'{comp:.1f}'} | "
                     f"{r['load_average_start'][0]:.1f} | "
                     + (f"{r['forward_per_image']:.0f} / {r['backward_per_image']:.0f} |"
                        if "forward_per_image" in r else "— |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
