"""AutoAttack ``version="rand"`` on a randomised defence: advjax vs the official code, same weights.

The defence: advertorch's PGD-trained LeNet5 with Gaussian input noise of standard deviation
``--sigma`` (0.1) added at every forward pass, on the first N MNIST test images, L-infinity
``--eps`` (0.3). Both frameworks run the rand version (APGD-CE and APGD-DLR with EOT over 20
draws). Reported for each: clean accuracy (one noisy draw), robust accuracy after each stage, and
for the points returned as adversarial the share of ``--draws`` fresh noise draws (seeded, the
same for both) that misclassify them, its mean and minimum. An evaluation that stops at an
iterate one lucky draw misclassifies reports a higher robust accuracy and points that most
draws classify correctly.

Usage (needs ADVJAX_DATA_DIR, torch and the official AutoAttack installed):
  python benchmarks/rand_eot.py --n 32 --out benchmarks/results/rand_eot_lenet5adv.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

import advjax  # noqa: F401  (first: its XLA:CPU option must precede JAX's first backend)

sys.path.insert(0, str(Path(__file__).parent))
from autoattack_parity import _flax_model, _mnist, _torch_net_and_data  # noqa: E402


def misclassified_share(xs: np.ndarray, ys: np.ndarray, sigma: float, draws: int) -> np.ndarray:
    """``(N,)`` share of ``draws`` seeded noise draws under which the noisy model errs at ``xs``
    (the same draws for every framework: numpy seed 123, the plain LeNet5 forward in JAX)."""
    import jax
    import jax.numpy as jnp

    from advjax.models import linen_logits_fn

    module, variables = _flax_model("lenet5adv")
    fn = jax.jit(jax.vmap(linen_logits_fn(module, variables)))
    rng = np.random.default_rng(123)
    wrong = np.zeros(len(xs))
    for _ in range(draws):
        noisy = xs + sigma * rng.standard_normal(xs.shape).astype(np.float32)
        wrong += np.asarray(jnp.argmax(fn(jnp.asarray(noisy)), -1)) != ys
    return wrong / draws


def run_advjax(n: int, eps: float, sigma: float) -> dict:
    import jax

    from advjax.attacks.evaluate import evaluate
    from advjax.models import linen_logits_fn

    module, variables = _flax_model("lenet5adv")
    plain = linen_logits_fn(module, variables)

    def noisy(x, key):
        return plain(x + sigma * jax.random.normal(key, x.shape, x.dtype))

    xs, ys = _mnist(n)
    t0 = time.perf_counter()
    ev = evaluate(noisy, xs, ys, eps=eps, norm="linf", version="rand", key=jax.random.key(0))
    return dict(framework="advjax", clean=ev.clean_accuracy,
                robust={s: ev.robust_accuracy[s] for s in ev.stages},
                wall_seconds=time.perf_counter() - t0, broken=(ev.broken_by >= 0).tolist(),
                x_adv=np.asarray(ev.x_adv))


def run_official(n: int, eps: float, sigma: float) -> dict:
    import torch
    from autoattack import AutoAttack

    net, x, y = _torch_net_and_data("lenet5adv", n)

    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(z + sigma * torch.randn_like(z))

    model = Noisy(net).eval()
    aa = AutoAttack(model, norm="Linf", eps=eps, version="rand", device="cpu", seed=0)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(buf):
        x_adv = aa.run_standard_evaluation(x, y, bs=256)
    log = buf.getvalue()
    robust = {name.lower(): float(acc) / 100 for name, acc in
              re.findall(r"robust accuracy after ([A-Z-]+): ([\d.]+)%", log)}
    clean = float(re.search(r"initial accuracy: ([\d.]+)%", log).group(1)) / 100
    x_adv = x_adv.permute(0, 2, 3, 1).numpy()
    broken = np.any(x_adv != x.permute(0, 2, 3, 1).numpy(), axis=(1, 2, 3))
    return dict(framework="official", clean=clean, robust=robust,
                wall_seconds=time.perf_counter() - t0, broken=broken.tolist(), x_adv=x_adv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--frameworks", nargs="+", default=["advjax", "official"],
                    choices=["advjax", "official"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    _, ys = _mnist(args.n)
    rows = []
    for fw in args.frameworks:
        row = {"advjax": run_advjax, "official": run_official}[fw](args.n, args.eps, args.sigma)
        broken = np.asarray(row["broken"], bool)
        share = misclassified_share(row.pop("x_adv")[broken], ys[broken], args.sigma,
                                    args.draws) if broken.any() else np.zeros(0)
        row.update(n_returned=int(broken.sum()),
                   misclassified_share_mean=float(share.mean()) if share.size else None,
                   misclassified_share_min=float(share.min()) if share.size else None)
        rows.append(row)
        print(f"{fw:9s} clean {row['clean']:.3f} "
              + " ".join(f"{s} {a:.3f}" for s, a in row["robust"].items())
              + f"  returned {row['n_returned']}, misclassified by "
              f"{row['misclassified_share_mean']} of {args.draws} draws (mean; min "
              f"{row['misclassified_share_min']})", flush=True)
    if args.out:
        import jax
        record = dict(command=" ".join(["python", *sys.argv]), settings=vars(args) | {
            "out": str(args.out)}, date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            machine=dict(platform=platform.platform(), python=platform.python_version()),
            versions=dict(jax=jax.__version__), rows=rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
