"""Image by image: advjax's PGD and torchattacks' PGD on the same weights and images.

The speed tables compare robust accuracy, a count. This script looks at the images: PGD-k
(L-inf, no random start, the CNN suite's settings) run by advjax and by torchattacks on the
plain-Flax LeNet5 and its PyTorch twin, for several k. It reports how many pixels of the two
adversarial points differ, which images one framework breaks and the other does not, the margin
``z_y - max_{j != y} z_j`` of each framework's point under BOTH models (so a success is checked by
the other framework's forward pass), and how far the two input gradients at the clean images
differ, with the pixels where their signs differ.

Usage (needs ADVJAX_DATA_DIR and the bench extra):
  python benchmarks/pgd_agreement.py --n 1024 --steps 1 2 5 40
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

sys.path.insert(0, str(Path(__file__).parent))
import attacks as suite  # noqa: E402  (the CNN suite's models, data and settings)


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(N,)`` ``z_y - max_{j != y} z_j`` of ``(N, K)`` logits: < 0 means misclassified."""
    true = logits[np.arange(len(labels)), labels]
    other = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(1)
    return true - other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="MNIST test images")
    ap.add_argument("--batch", type=int, default=256, help="torchattacks' batch")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 40])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    import torch
    import torchattacks

    module, variables, apply = suite._cnn_jax("flaxlenet", False, 0)
    xs, ys = suite._cnn_data("flaxlenet", args.n, False)
    net = suite._torch_cnn("flaxlenet", variables, module, "cpu")
    xt, yt = torch.tensor(suite._to_nchw(xs)), torch.tensor(ys.astype(np.int64))
    keys = jax.random.split(jax.random.key(0), args.n)

    def torch_logits(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([net(torch.tensor(suite._to_nchw(z[i:i + args.batch])))
                              for i in range(0, len(z), args.batch)]).numpy()

    rows = []
    for steps in args.steps:
        cfg = dict(suite.PGD, steps=steps)
        run = suite.advjax_cnn_attack(lambda x: apply(x[None])[0], "pgd", cfg)
        res = run(jnp.asarray(xs), jnp.asarray(ys), keys)
        x_jax = np.asarray(res.x_adv)
        atk = torchattacks.PGD(net, eps=cfg["eps"], alpha=cfg["step"], steps=steps,
                               random_start=False)
        x_torch = torch.cat([atk(xt[i:i + args.batch], yt[i:i + args.batch])
                             for i in range(0, args.n, args.batch)]).numpy().transpose(0, 2, 3, 1)
        differ = (np.abs(x_jax - x_torch) > 1e-6).reshape(args.n, -1).mean(1)
        m = {f"{point}_under_{model}": margins(logits(z), ys)
             for point, z in (("advjax_point", x_jax), ("torch_point", x_torch))
             for model, logits in (("jax", lambda z: np.asarray(apply(jnp.asarray(z)))),
                                   ("torch", torch_logits))}
        jax_broken = np.asarray(res.success)
        torch_broken = m["torch_point_under_torch"] < 0
        only = np.nonzero(jax_broken != torch_broken)[0]
        rows.append(dict(
            steps=steps, robust_advjax=int((~jax_broken).sum()),
            robust_torchattacks=int((~torch_broken).sum()),
            pixels_differing_median=float(np.median(differ)),
            pixels_differing_max=float(differ.max()),
            images_with_any_difference=int((differ > 0).sum()),
            advjax_success_confirmed_by_torch=bool(
                np.all(m["advjax_point_under_torch"][jax_broken] < 0)),
            disagreeing_images={int(i): {k: float(v[i]) for k, v in m.items()} for i in only}))
        print(json.dumps(rows[-1]), flush=True)

    def ce_sum(x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(x), y).sum()

    n = min(args.n, args.batch)
    g_jax = np.asarray(jax.grad(ce_sum)(jnp.asarray(xs[:n]), jnp.asarray(ys[:n])))
    x0 = xt[:n].clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(net(x0), yt[:n], reduction="sum").backward()
    g_torch = x0.grad.numpy().transpose(0, 2, 3, 1)
    flip = np.sign(g_jax) != np.sign(g_torch)
    grad = dict(images=n,
                max_abs_diff_over_max_abs=float(np.abs(g_jax - g_torch).max()
                                                / np.abs(g_torch).max()),
                sign_differs_fraction=float(flip.mean()),
                median_abs_grad_where_sign_differs=float(np.median(np.abs(g_torch[flip]))
                                                         if flip.any() else 0.0),
                median_abs_grad=float(np.median(np.abs(g_torch))))
    print(json.dumps(grad))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(machine=platform.platform(), cores=os.cpu_count(), jax=jax.__version__,
                    torch=torch.__version__, torchattacks=torchattacks.__version__,
                    date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), n=args.n,
                    pgd=suite.PGD)
        args.out.write_text(json.dumps(dict(meta=meta, rows=rows, gradient=grad), indent=1))


if __name__ == "__main__":
    main()
