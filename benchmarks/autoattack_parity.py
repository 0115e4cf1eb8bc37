"""AutoAttack parity and speed: advjax ``evaluate`` vs the official AutoAttack, same weights.

Side by side in one run, each framework in its own subprocess: the standard ensemble (APGD-CE ->
APGD-T -> FAB-T -> Square, published settings) on advertorch's clean-trained (``lenet5``) and
PGD-trained (``lenet5adv``) LeNet5 on the first N MNIST test images, or on the Woods et al.
ResNet-44s (``resnet44-standard``, ``resnet44-robust``) on the CIFAR-10 test head, L-infinity and
L2, and L1 with ``--norms l1`` (both L1 ensembles run Square-L1 last, advjax's with the official
L1 step; rows written before advjax had it hold three L1 stages, compared where both have them);
``--frameworks ... torchattacks`` adds torchattacks' ``AutoAttack``. Reported:
robust accuracy after each stage, wall time per stage (advjax: compilation excluded and reported
separately), throughput (images / s over the whole ensemble) and the ratio advjax / official.

Usage (needs ADVJAX_DATA_DIR and the bench extra plus ``pip install <auto-attack checkout>``):
  python benchmarks/autoattack_parity.py --n 200 --out benchmarks/results/autoattack.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

# MNIST L1: 5. The L1 literature's MNIST budget of 10 (Tramer & Boneh 2019) leaves 2 of 64 images
# of the L-infinity-trained LeNet5 robust to APGD-CE-L1 alone; 5 leaves 26 of 64 (2: 55 of 64),
# so 5 is the budget at which the stage-by-stage comparison has robust images to compare.
EPS = {"linf": 0.3, "l2": 2.0, "l1": 5.0}
# published standard-version CIFAR-10 settings (L1: RobustBench's 12)
EPS_CIFAR = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}
OFFICIAL_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
RESNETS = ("resnet44-standard", "resnet44-robust")  # Woods et al. (2019), CIFAR-10 test head
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def flags_to_str(flags) -> str:
    """``(N,)`` bools as a string of ``0`` / ``1`` (compact in JSON, one character per image)."""
    return "".join("1" if f else "0" for f in np.asarray(flags, bool).tolist())


def robust_after_stages(clean_correct, broken_by, stages=STAGES) -> dict[str, str]:
    """Per-image robustness after each stage from advjax's ``Evaluation`` flags.

    Args:
      clean_correct: ``(N,)`` bool, classified correctly before any attack.
      broken_by: ``(N,)`` int, index of the stage that broke the image, ``-1`` for none.

    Returns:
      ``{stage: "0110..."}``: image ``j`` is robust after stage ``i`` when it was classified
      correctly and no stage up to and including ``i`` broke it.
    """
    clean = np.asarray(clean_correct, bool)
    broken = np.asarray(broken_by)
    if clean.shape != broken.shape or clean.ndim != 1:
        raise ValueError("`clean_correct` and `broken_by` must be (N,) arrays of one shape; got "
                         f"{clean.shape} and {broken.shape}.")
    return {s: flags_to_str(clean & ((broken < 0) | (broken > i))) for i, s in enumerate(stages)}


def per_image_agreement(a: dict, b: dict, stages=STAGES) -> dict[str, dict[str, int]]:
    """Image by image, where two result rows' robustness flags differ after each stage.

    Args:
      a, b: result rows with ``robust_flags`` (``{stage: "0/1 string"}``) on the same images.

    Returns:
      ``{stage: {"only_a": images robust in a but broken in b, "only_b": the converse,
      "both": robust in both}}``. ``only_a == 0`` at every stage means every image ``b``
      broke, ``a`` broke too (``a`` at least as strong as ``b`` image by image, not only in
      count).
    """
    out = {}
    for s in stages:
        if s not in a["robust_flags"] or s not in b["robust_flags"]:
            continue                      # a stage one row lacks (L1 rows before Square-L1)
        fa, fb = a["robust_flags"][s], b["robust_flags"][s]
        if len(fa) != len(fb):
            raise ValueError(f"the rows hold different numbers of images at {s!r}: "
                             f"{len(fa)} and {len(fb)}.")
        ra = np.frombuffer(fa.encode(), np.uint8) == ord("1")
        rb = np.frombuffer(fb.encode(), np.uint8) == ord("1")
        out[s] = dict(only_a=int((ra & ~rb).sum()), only_b=int((rb & ~ra).sum()),
                      both=int((ra & rb).sum()))
    return out


def _mnist(n: int):
    from advjax import data
    ds = data.load("mnist_local", "all", limit=n)
    return np.asarray(ds.images), np.asarray(ds.labels)


def _eps(model: str, norm: str) -> float:
    return (EPS_CIFAR if model in RESNETS else EPS)[norm]


def _images(model: str, n: int):
    if model not in RESNETS:
        return _mnist(n)
    from advjax import data
    ds = data.load("cifar10_head", "all", limit=n)
    return np.asarray(ds.images, np.float32), np.asarray(ds.labels)


def _flax_model(model: str):
    """``(module, variables)`` of a LeNet5 (advertorch) or a Woods et al. ResNet-44."""
    from advjax.models import load_lenet5, load_woods2019

    root = Path(os.environ["ADVJAX_DATA_DIR"])
    if model in RESNETS:
        return load_woods2019(root / "woods2019-resnet44" / f"{model}.pt")
    return load_lenet5(root / "advertorch-lenet5",
                       "advtrained" if model == "lenet5adv" else "clntrained")


def run_advjax(model: str, norm: str, n: int, batch: int) -> dict:
    import jax

    from advjax.attacks.evaluate import evaluate
    from advjax.models import linen_logits_fn

    module, variables = _flax_model(model)
    if model in RESNETS:
        apply = linen_logits_fn(module, variables, train=False)
    else:
        apply = linen_logits_fn(module, variables)
    xs, ys = _images(model, n)
    t0 = time.perf_counter()
    ev = evaluate(apply, xs, ys, eps=_eps(model, norm), norm=norm,
                  key=jax.random.key(0), batch_size=batch)
    wall = time.perf_counter() - t0
    run = sum(ev.seconds.values())
    return dict(framework="advjax", model=model, norm=norm, eps=_eps(model, norm), n=n,
                clean=ev.clean_accuracy,
                robust={s: ev.robust_accuracy[s] for s in ev.stages},
                seconds=ev.seconds, compile_seconds=ev.compile_seconds, attacked=ev.attacked,
                run_seconds=run, wall_seconds=wall, images_per_s=n / run,
                **_passes_fields(ev),
                clean_flags=flags_to_str(ev.clean_correct),
                robust_flags=robust_after_stages(ev.clean_correct, ev.broken_by, ev.stages))


def _passes_fields(ev) -> dict:
    """Model passes beside the seconds (``advjax.attacks.passes``: forward / backward passes per
    example, independent of the hardware and batch size): per stage, the totals over the examples
    it attacked and the means per attacked example; and over the whole run per image of the set
    (the clean pass's one forward included)."""
    n = len(ev.clean_correct)
    return dict(forward_passes=ev.forward_passes, backward_passes=ev.backward_passes,
                forward_per_example=ev.forward_per_example,
                backward_per_example=ev.backward_per_example,
                forward_per_image=(n + sum(ev.forward_passes.values())) / n,
                backward_per_image=sum(ev.backward_passes.values()) / n)


def _torch_net_and_data(model: str, n: int):
    """``(net, x, y)``: the PyTorch twin of ``model`` (same weights, eval mode) and its first
    ``n`` images (NCHW float32) and labels (int64), for the PyTorch frameworks."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from attacks import _torch_model  # the same PyTorch LeNet5 as the attacks benchmark

    torch.set_num_threads(os.cpu_count() or 1)
    if model in RESNETS:
        from _torch_models import torch_preact_resnet
        net = torch_preact_resnet(*_flax_model(model))
    else:
        net = _torch_model(model, Path("/nonexistent"))
    xs, ys = _images(model, n)
    return net, torch.tensor(xs).permute(0, 3, 1, 2).contiguous(), torch.tensor(ys).long()


def run_official(model: str, norm: str, n: int, batch: int) -> dict:
    import torch
    from autoattack import AutoAttack
    from autoattack.state import EvaluationState

    net, x, y = _torch_net_and_data(model, n)
    snapshots: dict[str, str] = {}
    add_run_attack = EvaluationState.add_run_attack

    def add_and_snapshot(state, attack: str) -> None:  # called once after each stage
        snapshots[attack] = flags_to_str(state.robust_flags.cpu().numpy())
        add_run_attack(state, attack)

    EvaluationState.add_run_attack = add_and_snapshot
    with torch.no_grad():
        clean_flags = (net(x).argmax(1) == y).numpy()
    aa = AutoAttack(net, norm=OFFICIAL_NORM[norm], eps=_eps(model, norm),
                    version="standard", device="cpu", seed=0)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        aa.run_standard_evaluation(x, y, bs=batch)
    wall = time.perf_counter() - t0
    log = buf.getvalue()
    clean = float(re.search(r"initial accuracy: ([\d.]+)%", log).group(1)) / 100
    robust, total = {}, {}
    for name, acc, t in re.findall(r"robust accuracy after ([A-Z-]+): ([\d.]+)% "
                                   r"\(total time ([\d.]+) s\)", log):
        robust[name.lower()] = float(acc) / 100
        total[name.lower()] = float(t)
    seconds, prev = {}, 0.0
    for s in STAGES:
        if s in total:
            seconds[s] = total[s] - prev
            prev = total[s]
    flags, last = {}, flags_to_str(clean_flags)
    for s in STAGES:                      # stages skipped once nothing is robust
        robust.setdefault(s, robust[list(robust)[-1]] if robust else 0.0)
        last = flags[s] = snapshots.get(s, last)
    return dict(framework="official", model=model, norm=norm, eps=_eps(model, norm), n=n,
                clean=clean, robust=robust,
                seconds=seconds, run_seconds=wall, wall_seconds=wall, images_per_s=n / wall,
                torch=torch.__version__, clean_flags=flags_to_str(clean_flags),
                robust_flags=flags)


def run_torchattacks(model: str, norm: str, n: int, batch: int) -> dict:
    """torchattacks' ``AutoAttack(version="standard")`` on the same PyTorch twin and images.

    Its stages are run one after another on the still-robust images exactly as its
    ``MultiAttack.forward`` does, timed per stage. Note its defaults: APGD-CE, APGD-T and FAB-T
    take ``steps=10`` (the published standard version takes 100), so it is a weaker ensemble.
    """
    import torch
    import torchattacks

    net, x, y = _torch_net_and_data(model, n)
    aa = torchattacks.AutoAttack(net, norm={"linf": "Linf", "l2": "L2"}[norm],
                                 eps=_eps(model, norm), version="standard", n_classes=10, seed=0)
    with torch.no_grad():
        robust = net(x).argmax(1) == y
    clean = float(robust.float().mean())
    clean_flags = flags_to_str(robust.numpy())
    out_robust, seconds, steps, flags = {}, {}, {}, {}
    t_all = time.perf_counter()
    for name, attack in zip(STAGES, aa._autoattack.attacks, strict=True):
        steps[name] = getattr(attack, "steps", getattr(attack, "n_queries", None))
        idx = torch.nonzero(robust).reshape(-1)
        t0 = time.perf_counter()
        if len(idx):
            for i in range(0, len(idx), batch):
                part = idx[i:i + batch]
                adv = attack(x[part], y[part])
                with torch.no_grad():
                    robust[part] = net(adv).argmax(1) == y[part]
        seconds[name] = time.perf_counter() - t0
        out_robust[name] = float(robust.float().mean())
        flags[name] = flags_to_str(robust.numpy())
    wall = time.perf_counter() - t_all
    return dict(framework="torchattacks", model=model, norm=norm, eps=_eps(model, norm), n=n,
                clean=clean, robust=out_robust, seconds=seconds, steps=steps, run_seconds=wall,
                wall_seconds=wall, images_per_s=n / wall, torch=torch.__version__,
                torchattacks=torchattacks.__version__, clean_flags=clean_flags,
                robust_flags=flags)


def skip_cost(n: int) -> dict:
    """Cost of ONE compiled ``jit(vmap(autoattack))`` call as the robust set shrinks: the same
    images with their labels (most robust on the PGD-trained LeNet5) vs with labels replaced by a
    wrong class for a fraction of the batch (already broken: every stage skips them)."""
    import jax
    import jax.numpy as jnp

    from advjax.attacks import autoattack
    from advjax.models import linen_logits_fn, load_lenet5

    module, variables = load_lenet5(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                                    "advtrained")
    xs, ys = _mnist(n)
    attack = jax.jit(jax.vmap(autoattack(linen_logits_fn(module, variables), norm="linf")))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(n))
    eps = jnp.full((n,), 0.3)
    out = {}
    for frac in (0.0, 0.5, 1.0):
        labels = np.asarray(ys).copy()
        m = int(round(frac * n))
        labels[:m] = (labels[:m] + 1) % 10
        args = (jnp.asarray(xs), jnp.asarray(labels))
        jax.block_until_ready(attack(*args, eps=eps, key=keys))            # compile
        t0 = time.perf_counter()
        r = jax.block_until_ready(attack(*args, eps=eps, key=keys))
        out[f"{frac:.1f}"] = dict(seconds=time.perf_counter() - t0,
                                  robust=float(1 - np.asarray(r.success).mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="+", default=["lenet5", "lenet5adv"])
    ap.add_argument("--norms", nargs="+", default=["linf", "l2"])
    ap.add_argument("--frameworks", nargs="+", default=["advjax", "official"],
                    choices=["advjax", "official", "torchattacks"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-cost", action="store_true",
                    help="instead of the parity run: time one jit(vmap(autoattack)) call on the "
                         "PGD-trained LeNet5 as the robust set shrinks, print it and exit")
    ap.add_argument("--one", nargs=3, metavar=("FRAMEWORK", "MODEL", "NORM"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.skip_cost:
        print(json.dumps(skip_cost(args.n), indent=1))
        return
    if args.one:
        fw, model, norm = args.one
        fn = {"advjax": run_advjax, "official": run_official,
              "torchattacks": run_torchattacks}[fw]
        load_start = os.getloadavg()
        row = fn(model, norm, args.n, args.batch)
        row.update(load_average_start=load_start, load_average_end=os.getloadavg())
        print("RESULT " + json.dumps(row))
        return
    import jax
    rows = []
    for model in args.models:
        for norm in args.norms:
            for fw in args.frameworks:
                proc = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--batch",
                                       str(args.batch), "--one", fw, model, norm],
                                      capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{fw} {model} {norm} failed")
                rows.append(json.loads(line[0][7:]))
                r = rows[-1]
                print(f"{fw:8s} {model:9s} {norm:4s} clean {r['clean']:.3f} "
                      + " ".join(f"{s} {r['robust'][s]:.3f}" for s in STAGES
                                 if s in r["robust"])
                      + f"  {r['images_per_s']:.2f} img/s", flush=True)
    meta = dict(machine=platform.platform(), cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load_average=os.getloadavg(), n=args.n, batch=args.batch, eps=EPS,
                eps_cifar=EPS_CIFAR, xla_flags=os.environ.get("XLA_FLAGS", ""))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(render(dict(meta=meta, rows=rows)))


def render(res: dict) -> str:
    """Markdown table: per-stage robust accuracy, advjax minus official, time, throughput."""
    rows = res["rows"]
    out = ["| model | norm (eps) | framework | clean | " + " | ".join(STAGES)
           + " | run s | compile s | images/s | advjax speed-up | fwd / bwd passes per image |",
           "|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|---|"]
    for r in rows:
        peer = [q for q in rows if q["model"] == r["model"] and q["norm"] == r["norm"]
                and q["framework"] == "official"]
        ratio = (f"{r['images_per_s'] / peer[0]['images_per_s']:.2f}×"
                 if peer and r["framework"] == "advjax" else "—")
        comp = (f"{sum(r['compile_seconds'].values()):.1f}" if "compile_seconds" in r else "—")
        eps = r.get("eps", res["meta"]["eps"][r["norm"]])
        out.append(f"| {r['model']} | {r['norm']} ({eps:.4g}) | "
                   f"{r['framework']} | {r['clean']:.3f} | "
                   + " | ".join(f"{r['robust'][s]:.3f}" if s in r["robust"] else "—"
                                for s in STAGES)
                   + f" | {r['run_seconds']:.1f} | {comp} | {r['images_per_s']:.2f} | {ratio} | "
                   + (f"{r['forward_per_image']:.0f} / {r['backward_per_image']:.0f} |"
                      if "forward_per_image" in r else "— |"))
    for r in rows:                        # image by image, advjax against each peer
        if r["framework"] != "advjax" or "robust_flags" not in r:
            continue
        for q in rows:
            if (q["model"], q["norm"]) != (r["model"], r["norm"]) or q is r \
                    or "robust_flags" not in q:
                continue
            agree = per_image_agreement(r, q)
            out.append(f"\n{r['model']} {r['norm']}, images robust in advjax but broken by "
                       f"{q['framework']} / the converse, after each stage: "
                       + ", ".join(f"{s} {a['only_a']} / {a['only_b']}"
                                   for s, a in agree.items()))
    return "\n".join(out)


if __name__ == "__main__":
    main()
