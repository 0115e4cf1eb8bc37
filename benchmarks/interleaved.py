"""advjax's default CNN attacks vs torchattacks, interleaved in ONE process (and optionally a
previous ``advjax/lowering.py`` beside the current one).

This machine's speed drifts by tens of percent between runs, so ratios from one framework per
subprocess, run one after the other, carry that drift. Here every framework is compiled first and
then timed in rounds (A, B, C, A, B, C, ...), so each ratio compares calls made minutes apart at
most. Rows: PGD-40 on advertorch's PGD-trained LeNet5 (256 MNIST test images), PGD-10 and
APGD-100 on a Woods ResNet-44 (16 CIFAR-10 head images). Same weights, images and settings as
``attacks.py``.

Usage (needs ADVJAX_DATA_DIR and the bench extra):
  python benchmarks/interleaved.py --rounds 3 --out benchmarks/results/attacks_interleaved.json
  git show 7dd6db4:advjax/lowering.py > /tmp/lowering_7dd6db4.py
  python benchmarks/interleaved.py --baseline /tmp/lowering_7dd6db4.py   # a previous lowering
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

sys.path.insert(0, str(Path(__file__).parent))

ROWS = (("lenet5adv", "pgd", 256), ("resnet44", "pgd", 16), ("resnet44", "apgd", 16))


def _module_from(path: str):
    spec = importlib.util.spec_from_file_location("baseline_lowering", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _advjax_call(lowering, apply, cfg, attack, x, y, keys):
    import jax
    from attacks import advjax_cnn_attack
    run = advjax_cnn_attack(lowering.lower_convs(lambda v: apply(v[None])[0], mode="auto",
                                                 form="tangent"), attack, cfg)

    def call():
        res = jax.block_until_ready(run(x, y, keys))
        return float(np.mean(~np.asarray(res.success)))
    return call


def _torch_call(model, module, variables, cfg, attack, xs, ys):
    import torch
    import torchattacks
    from attacks import _torch_cnn
    net = _torch_cnn(model, variables, module, "cpu")
    xt = torch.tensor(xs).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(ys).long()
    if attack == "pgd":
        atk = torchattacks.PGD(net, eps=cfg["eps"], alpha=cfg["step"], steps=cfg["steps"],
                               random_start=False)
    else:
        atk = torchattacks.APGD(net, norm="Linf", eps=cfg["eps"], steps=cfg["steps"],
                                n_restarts=1, loss="ce", seed=0)

    def call():
        adv = atk(xt, yt)
        with torch.no_grad():
            return float((net(adv).argmax(1) == yt).float().mean())
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default=None,
                    help="path of a previous advjax/lowering.py to time beside the current one")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from attacks import _attack_settings, _cnn_data, _cnn_jax

    from advjax import lowering
    lowerings = {"advjax": lowering}
    if args.baseline:
        lowerings["advjax-baseline"] = _module_from(args.baseline)
    out = {"meta": dict(machine=platform.platform(), cores=os.cpu_count(), jax=jax.__version__,
                        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        rounds=args.rounds, baseline=args.baseline), "rows": []}
    for model, attack, n in ROWS:
        cfg = _attack_settings(model, attack, None)
        xs, ys = _cnn_data(model, n, False)
        module, variables, apply = _cnn_jax(model, False, 44, "standard")
        x, y = jnp.asarray(xs), jnp.asarray(ys)
        keys = jax.random.split(jax.random.key(0), n)
        calls, first, robust = {}, {}, {}
        for name, mod in lowerings.items():
            calls[name] = _advjax_call(mod, apply, cfg, attack, x, y, keys)
        calls["torchattacks"] = _torch_call(model, module, variables, cfg, attack, xs, ys)
        for name, call in calls.items():
            t0 = time.perf_counter()
            robust[name] = call()
            first[name] = time.perf_counter() - t0
        times = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
        row = {"model": model, "attack": f"{attack}-{cfg['steps']}", "n": n,
               "load_end": os.getloadavg()}
        for name in calls:
            med = float(np.median(times[name]))
            row[name] = dict(images_per_s=n / med, seconds=times[name],
                             robust_accuracy=robust[name],
                             compile_s=(first[name] - med) if name != "torchattacks" else None)
        row["advjax_vs_torchattacks"] = row["advjax"]["images_per_s"] / \
            row["torchattacks"]["images_per_s"]
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
