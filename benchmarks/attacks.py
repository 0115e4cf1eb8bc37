"""Attack throughput, compile time, memory and strength: advjax vs the peers, same weights.

Side by side in one run on the same machine:

* PGD-40 (L∞, eps 0.3, step 0.01, no random start — advertorch's published LeNet5 setting) on
  advertorch's clean-trained (``lenet5``) and PGD-trained (``lenet5adv``, published robust
  accuracy 93.2 %) LeNet5 and on a Szegedy FC100-100-10 MLP: advjax
  (``jax.jit(jax.vmap(pgd))``) vs torchattacks, foolbox 3 and ART.
* Szegedy's box-constrained L-BFGS minimum-distortion search: advjax ``lbfgs`` (batched, pure
  JAX) vs scipy's L-BFGS-B called once per example on the PyTorch model, with the same c search
  (initial 1e-2, ×10 until success, then bisection) and iteration budget.

Each measurement runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own.
Reported: compile (first-call) time, steady-state images/second, robust accuracy / mean distortion,
achieved GFLOP/s (forward + input-gradient FLOPs from XLA's cost analysis × steps) and the fraction
of the machine's fp32 matmul roofline (measured here), and ratios advjax / peer.

Usage (needs ADVJAX_DATA_DIR with mnist-test/ and advertorch-lenet5/, and the bench extra):
  python benchmarks/attacks.py --n 512 --out benchmarks/results/attacks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PGD = dict(eps=0.3, step=0.01, steps=40)
LBFGS = dict(initial_const=1e-2, search_steps=5, max_iterations=100, growth=10.0)


# ----------------------------------------------------------------------------- shared set-up

def _mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    from advjax import data
    ds = data.load("mnist_local", "all", limit=n)
    return np.asarray(ds.images), np.asarray(ds.labels)


def _lenet_jax(which: str = "clntrained"):
    from advjax.models import linen_logits_fn, load_lenet5
    module, variables = load_lenet5(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                                    which)
    return module, variables, linen_logits_fn(module, variables)


def _mlp_jax(cache: Path):
    """FC100-100-10 (sigmoid) trained for 3 epochs on the local MNIST train split (cached)."""
    import jax
    import optax

    from advjax import train
    from advjax.models import linen_logits_fn, szegedy_model

    module = szegedy_model("FC100-100-10")
    if cache.exists():
        arrays = dict(np.load(cache))
        params = {f"Dense_{i}": {"kernel": arrays[f"k{i}"], "bias": arrays[f"b{i}"]}
                  for i in range(3)}
    else:
        from advjax import data
        ds = data.load("mnist_local", "train")
        state = train.create_train_state(module, jax.random.key(0), ds.images[:1],
                                         optax.adam(1e-3))
        state, _ = train.fit(state, (ds.images, ds.labels), key=jax.random.key(1), epochs=3,
                             batch_size=64, progress=False)
        params = jax.tree.map(np.asarray, state.params)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{f"k{i}": params[f"Dense_{i}"]["kernel"] for i in range(3)},
                 **{f"b{i}": params[f"Dense_{i}"]["bias"] for i in range(3)})
    variables = {"params": params}
    return module, variables, linen_logits_fn(module, variables)


def _torch_model(model_name: str, cache: Path):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    if model_name.startswith("lenet5"):
        from advjax.models import load_lenet5_state
        sd = load_lenet5_state(Path(os.environ["ADVJAX_DATA_DIR"]) / "advertorch-lenet5",
                               "advtrained" if model_name == "lenet5adv" else "clntrained")
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(3136, 200), nn.ReLU(), nn.Linear(200, 10))
        names = ["0", "3", "7", "9"]
        for src, dst in zip(["conv1", "conv2", "linear1", "linear2"], names, strict=True):
            getattr(net, dst).weight.data = torch.tensor(sd[f"{src}.weight"])
            getattr(net, dst).bias.data = torch.tensor(sd[f"{src}.bias"])
    else:
        _, variables, _ = _mlp_jax(cache)
        p = variables["params"]
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Sigmoid(), nn.Linear(100, 100),
                            nn.Sigmoid(), nn.Linear(100, 10))
        for i, layer in enumerate([net[1], net[3], net[5]]):
            layer.weight.data = torch.tensor(np.asarray(p[f"Dense_{i}"]["kernel"]).T.copy())
            layer.bias.data = torch.tensor(np.asarray(p[f"Dense_{i}"]["bias"]))
    return net.eval()


def _to_nchw(xs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(xs.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- measurements

def _time_calls(fn, repeats: int) -> tuple[float, float]:
    """(first-call seconds, median steady-state seconds) of ``fn()``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def _step_flops(logits_fn, xs) -> float:
    """XLA's FLOP count of one batched forward + input-gradient backward pass."""
    import jax
    import jax.numpy as jnp

    def loss(x, y):
        return -jax.nn.log_softmax(logits_fn(x))[y]

    fn = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    cost = fn.lower(jnp.asarray(xs), jnp.zeros(len(xs), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def measure_matmul_roofline() -> float:
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    _, t = _time_calls(lambda: f(a).block_until_ready(), 5)
    return 2 * 4096 ** 3 / t / 1e9


def measure(framework: str, model_name: str, attack: str, n: int, batch: int, repeats: int,
            cache: Path) -> dict:
    xs, ys = _mnist(n)
    out: dict = {"framework": framework, "model": model_name, "attack": attack, "n": n}
    if framework == "advjax":
        import jax
        import jax.numpy as jnp

        from advjax import attacks
        if model_name.startswith("lenet5"):
            _, _, logits_fn = _lenet_jax("advtrained" if model_name == "lenet5adv"
                                         else "clntrained")
        else:
            _, _, logits_fn = _mlp_jax(cache)
        if attack == "pgd":
            atk = attacks.pgd(logits_fn, norm="linf", steps=PGD["steps"], step_size=PGD["step"],
                              random_start=False)
            run = jax.jit(jax.vmap(lambda x, y: atk(x, y, eps=PGD["eps"])))
        else:
            atk = attacks.lbfgs(logits_fn, **LBFGS)
            run = jax.jit(jax.vmap(lambda x, y: atk(x, y, target=(y + 1) % 10)))
        xb, yb = jnp.asarray(xs), jnp.asarray(ys)
        results = []

        def go():
            results.clear()
            for i in range(0, n, batch):
                r = run(xb[i:i + batch], yb[i:i + batch])
                results.append(r)
            jax.block_until_ready(results)

        first, steady = _time_calls(go, repeats)
        res = jax.tree.map(lambda *a: np.concatenate(a), *results)
        if attack == "pgd":
            out["robust_accuracy"] = float(np.mean(~res.success))
            step_flops = _step_flops(logits_fn, xs[:batch]) * (n / batch)
            # steps gradient steps + (steps + 1) scoring forwards (best-iterate tracking).
            out["gflop"] = step_flops * PGD["steps"] / 1e9
        else:
            out["success_rate"] = float(np.mean(res.success))
            out["mean_l2"] = float(np.mean(res.l2[res.success]))
        out.update(compile_s=first - steady, seconds=steady)
    else:
        import torch
        net = _torch_model(model_name, cache)
        xt, yt = torch.tensor(_to_nchw(xs)), torch.tensor(ys.astype(np.int64))
        if attack == "pgd":
            if framework == "torchattacks":
                import torchattacks
                atk = torchattacks.PGD(net, eps=PGD["eps"], alpha=PGD["step"],
                                       steps=PGD["steps"], random_start=False)
                call = lambda xb, yb: atk(xb, yb)
            elif framework == "foolbox":
                import foolbox as fb
                fmodel = fb.PyTorchModel(net, bounds=(0, 1))
                atk = fb.attacks.LinfPGD(abs_stepsize=PGD["step"], steps=PGD["steps"],
                                         random_start=False)
                call = lambda xb, yb: atk(fmodel, xb, yb, epsilons=PGD["eps"])[1]
            elif framework == "art":
                from art.attacks.evasion import ProjectedGradientDescent
                from art.estimators.classification import PyTorchClassifier
                clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(),
                                        input_shape=tuple(xt.shape[1:]), nb_classes=10,
                                        clip_values=(0.0, 1.0))
                atk = ProjectedGradientDescent(clf, norm=np.inf, eps=PGD["eps"],
                                               eps_step=PGD["step"], max_iter=PGD["steps"],
                                               num_random_init=0, batch_size=batch,
                                               verbose=False)
                call = lambda xb, yb: torch.tensor(atk.generate(xb.numpy(), y=yb.numpy()))
            else:
                raise ValueError(framework)
            advs = []

            def go():
                advs.clear()
                for i in range(0, n, batch):
                    advs.append(call(xt[i:i + batch], yt[i:i + batch]))

            first, steady = _time_calls(go, repeats)
            with torch.no_grad():
                preds = torch.cat([net(a).argmax(1) for a in advs])
            out["robust_accuracy"] = float((preds == yt).float().mean())
            out.update(compile_s=max(first - steady, 0.0), seconds=steady)
        else:
            out.update(_scipy_lbfgs(net, xs, ys, repeats))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["images_per_s"] = n / out["seconds"]
    return out


def _scipy_lbfgs(net, xs, ys, repeats) -> dict:
    """scipy L-BFGS-B per example on the PyTorch model, cleverhans-style c search."""
    import torch
    from scipy.optimize import fmin_l_bfgs_b

    def attack_one(x, y):
        target = (y + 1) % 10
        x0 = x.reshape(-1).astype(np.float64)
        shape = (1, *_to_nchw(x[None]).shape[1:])
        tgt = torch.tensor([target])

        def f(v, c):
            xv = torch.tensor(v.reshape(x.shape)[None].transpose(0, 3, 1, 2).copy(),
                              dtype=torch.float32, requires_grad=True)
            loss = c * torch.nn.functional.cross_entropy(net(xv.reshape(shape)), tgt,
                                                         reduction="sum")
            loss.backward()
            g = xv.grad.numpy().transpose(0, 2, 3, 1).reshape(-1).astype(np.float64)
            r = v - x0
            return float(loss) + float(r @ r), g + 2 * r

        lower, upper, c, best = 0.0, None, LBFGS["initial_const"], None
        for _ in range(LBFGS["search_steps"]):
            v, _, _ = fmin_l_bfgs_b(f, x0, args=(c,), bounds=[(0.0, 1.0)] * x0.size,
                                    maxiter=LBFGS["max_iterations"])
            with torch.no_grad():
                xv = torch.tensor(v.reshape(x.shape)[None].transpose(0, 3, 1, 2).copy(),
                                  dtype=torch.float32)
                ok = int(net(xv).argmax(1)) == target
            if ok:
                d = float(np.linalg.norm(v - x0))
                best = d if best is None else min(best, d)
                upper = c
                c = (lower + upper) / 2
            else:
                lower = c
                c = c * LBFGS["growth"] if upper is None else (lower + upper) / 2
        return best

    dists = []

    def go():
        dists.clear()
        dists.extend(attack_one(x, int(y)) for x, y in zip(xs, ys, strict=True))

    first, steady = _time_calls(go, max(repeats - 1, 0)) if repeats > 1 else (None, None)
    if steady is None:
        t0 = time.perf_counter()
        go()
        steady = time.perf_counter() - t0
    ok = [d for d in dists if d is not None]
    return {"success_rate": len(ok) / len(dists), "mean_l2": float(np.mean(ok)) if ok else None,
            "compile_s": 0.0, "seconds": steady}


# ----------------------------------------------------------------------------- driver

PLAN = [
    ("advjax", "lenet5", "pgd"), ("torchattacks", "lenet5", "pgd"), ("foolbox", "lenet5", "pgd"),
    ("art", "lenet5", "pgd"),
    ("advjax", "lenet5adv", "pgd"), ("torchattacks", "lenet5adv", "pgd"),
    ("foolbox", "lenet5adv", "pgd"), ("art", "lenet5adv", "pgd"),
    ("advjax", "mlp", "pgd"), ("torchattacks", "mlp", "pgd"), ("foolbox", "mlp", "pgd"),
    ("art", "mlp", "pgd"),
    ("advjax", "mlp", "lbfgs"), ("scipy", "mlp", "lbfgs"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="images per PGD measurement")
    parser.add_argument("--n-lbfgs", type=int, default=64, help="images per L-BFGS measurement")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs=3, metavar=("FRAMEWORK", "MODEL", "ATTACK"))
    parser.add_argument("--frameworks", nargs="*", default=None,
                        help="subset of advjax torchattacks foolbox art scipy")
    parser.add_argument("--cache", default="benchmarks/results/mlp_fc100.npz")
    parser.add_argument("--out", default="benchmarks/results/attacks.json")
    args = parser.parse_args()
    cache = Path(args.cache)
    if args.only:
        fw, model, attack = args.only
        n = args.n if attack == "pgd" else args.n_lbfgs
        print(json.dumps(measure(fw, model, attack, n, args.batch, args.repeats, cache)))
        return
    _mlp_jax(cache)  # train once, shared by every subprocess
    rows = []
    for fw, model, attack in PLAN:
        if args.frameworks and fw not in args.frameworks:
            continue
        cmd = [sys.executable, __file__, "--only", fw, model, attack, "--n", str(args.n),
               "--n-lbfgs", str(args.n_lbfgs), "--batch", str(args.batch), "--repeats",
               str(args.repeats), "--cache", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{fw}/{model}/{attack} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    peak = measure_matmul_roofline()
    for row in rows:
        if "gflop" in row:
            row["gflops_per_s"] = row["gflop"] / row["seconds"]
            row["roofline_fraction"] = row["gflops_per_s"] / peak
        ref = next((r for r in rows if r["framework"] == "advjax" and r["model"] == row["model"]
                    and r["attack"] == row["attack"]), None)
        if ref is not None:
            row["advjax_speedup"] = row["seconds"] / ref["seconds"] * ref["n"] / row["n"]
    import jax
    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "jax": jax.__version__, "matmul_fp32_gflops": peak, "settings": {
                  "pgd": PGD, "lbfgs": LBFGS, "n": args.n, "n_lbfgs": args.n_lbfgs,
                  "batch": args.batch}, "rows": rows}
    try:
        import torch
        record["torch"] = torch.__version__
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out)
    hdr = f"{'framework':14s}{'model':8s}{'attack':7s}{'img/s':>10s}{'compile s':>10s}" \
          f"{'rob.acc/L2':>11s}{'RSS MB':>8s}{'GFLOP/s':>9s}{'roof':>6s}{'advjax x':>9s}"
    print(hdr)
    for r in rows:
        strength = r.get("robust_accuracy", r.get("mean_l2"))
        print(f"{r['framework']:14s}{r['model']:8s}{r['attack']:7s}{r['images_per_s']:10.1f}"
              f"{r['compile_s']:10.2f}{(strength if strength is not None else float('nan')):11.4f}"
              f"{r['peak_rss_mb']:8.0f}{r.get('gflops_per_s', float('nan')):9.1f}"
              f"{r.get('roofline_fraction', float('nan')):6.2f}"
              f"{r.get('advjax_speedup', float('nan')):9.2f}")
    print(f"fp32 matmul roofline here: {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
