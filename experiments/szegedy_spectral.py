"""Szegedy et al. §4.3 / Table 5: upper Lipschitz bounds of every layer, and lower bounds beside.

For networks trained here (the MNIST CNN, FC100-100-10) and the four released CIFAR-10 ResNet-44
checkpoints (when the data folder holds them), the per-layer spectral-norm bounds found by walking
the model's jaxpr (dense layers by SVD, convolutions by the exact operator norm, pooling,
normalisation, residual sums) are listed Table-5 style with the sound network bound, next to the
largest local Jacobian norm found at test points (a lower bound; refined by gradient ascent).
Certified L2 radii from the bound are compared, per example, with the smallest adversarial
distortion found by DeepFool, Carlini-Wagner L2 and L-BFGS (the best of the three): a radius above
that distortion would be a violation of the bound.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from advjax import attacks, lipschitz
from advjax import data as data_lib
from advjax.models import WOODS2019_CHECKPOINTS, MnistCNN, linen_logits_fn, load_woods2019
from experiments import common


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_local"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    lower_bound_points: int = 32
    refine_steps: int = 10
    certify_examples: int = 64
    checkpoints: bool = True
    cifar_points: int = 4
    cw_steps: int = 100
    search_steps: int = 4
    seed: int = 0


CONFIGS = {"quick": Config(),
           "paper": Config(dataset="mnist", epochs=20, lower_bound_points=512,
                           refine_steps=50, certify_examples=2000, cifar_points=64,
                           cw_steps=1000, search_steps=9)}


def _analyse(name, fn, xs, ys, config, run, certify: bool):
    report = lipschitz.layer_bounds(fn, jnp.asarray(xs[0]))
    lower = float(lipschitz.local_lower_bound(fn, jnp.asarray(xs[: config.lower_bound_points]),
                                              refine_steps=config.refine_steps))
    run.section(f"{name}: per-layer upper bounds")
    run.text(lipschitz.table5(report))
    out = {"total": float(report.total), "product": report.product, "lower": lower,
           "unfolded": float(report.unfolded_total), "layers": len(report.rows)}
    if certify:
        n = config.certify_examples
        logits = jax.vmap(fn)(jnp.asarray(xs[:n]))
        radii = np.asarray(jax.vmap(lipschitz.certified_radius, (0, 0, None))(
            logits, jnp.asarray(ys[:n]), report.total))
        # per example: the smallest distortion any of the three attacks found (inf: none found)
        best = np.full(len(radii), np.inf)
        for attack in (attacks.deepfool(fn),
                       attacks.cw_l2(fn, steps=config.cw_steps, search_steps=config.search_steps),
                       attacks.lbfgs(fn, search_steps=config.search_steps)):
            res = common.run_attack(attack, xs[:n], ys[:n])
            ok = np.asarray(res.success) & np.asarray(res.clean_correct)
            best = np.where(ok, np.minimum(best, np.asarray(res.l2)), best)
        found = np.isfinite(best)
        out.update(mean_radius=float(np.mean(radii)),
                   mean_best_attack_l2=float(np.mean(best[found])) if found.any() else None,
                   min_gap=float(np.min(best[found] - radii[found])) if found.any() else None,
                   violations=int(np.sum(best[found] < radii[found] - 1e-6)))
    return out


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    xs, ys = common.load_split(config.dataset, "test", config.data_dir)
    results = {}
    for i, (name, module) in enumerate([("MnistCNN", MnistCNN()),
                                        ("FC100-100-10", None)]):
        if module is None:
            state, _ = common.train_szegedy(name, train_set, None, seed=config.seed + i,
                                            epochs=config.epochs, batch_size=config.batch_size,
                                            learning_rate=config.learning_rate,
                                            checkpoint_dir=run.checkpoint_dir / name)
        else:
            state, _ = common.train_classifier(module, train_set, None, seed=config.seed + i,
                                               epochs=config.epochs,
                                               batch_size=config.batch_size,
                                               learning_rate=config.learning_rate,
                                               checkpoint_dir=run.checkpoint_dir / name)
        results[name] = _analyse(name, common.logits_fn_of(state), xs, ys, config, run, True)
    if config.checkpoints:
        try:
            folder = data_lib.resolve_data_dir(config.data_dir) / "woods2019-resnet44"
        except FileNotFoundError:
            folder = None
        if folder is not None and folder.is_dir():
            cx, cy = common.load_split("cifar10_head", "test", config.data_dir,
                                       limit=config.cifar_points)
            for fname in WOODS2019_CHECKPOINTS:
                module, variables = load_woods2019(Path(folder) / fname)
                fn = linen_logits_fn(module, variables, train=False)
                results[fname] = _analyse(fname, fn, cx, cy,
                                          dataclasses.replace(config, refine_steps=0), run,
                                          False)
    run.section("Summary", "Upper bound: sound network bound from the graph walk, per-channel "
                "scalings (BatchNorm) folded into the next linear map; unfolded: the same walk "
                "with every scaling its own factor (the previous bound); product: Szegedy's "
                "∏ L_k; lower: largest Jacobian spectral norm found. Per example, the certified "
                "radius must not exceed the smallest distortion found by DeepFool, CW-L2 and "
                "L-BFGS (violations: examples where it does).")
    run.table(["Network", "layers", "∏ L_k", "unfolded bound", "upper bound", "lower bound",
               "upper/lower", "mean certified radius", "mean best attack L2",
               "min (attack − radius)", "violations"],
              [[n, r["layers"], r["product"], r["unfolded"], r["total"], r["lower"],
                r["total"] / r["lower"], r.get("mean_radius", "—"),
                r.get("mean_best_attack_l2", "—"), r.get("min_gap", "—"),
                r.get("violations", "—")] for n, r in results.items()])
    robust = [results[k]["total"] for k in ("resnet44-all.pt", "resnet44-robust.pt",
                                            "resnet44-adv-train.pt") if k in results]
    text = ("Every upper bound is above the lower bound found (soundness), and no adversarial "
            "example lies inside a certified radius. As the paper notes, the bounds are loose "
            "(large ratios to the lower bound) and large bounds do not imply adversarial "
            "examples; small bounds would exclude them.")
    if robust and "resnet44-standard.pt" in results:
        std = results["resnet44-standard.pt"]["total"]
        below = [k for k in ("resnet44-adv-train.pt", "resnet44-all.pt", "resnet44-robust.pt")
                 if k in results and results[k]["total"] < std]
        above = [k for k in ("resnet44-adv-train.pt", "resnet44-all.pt", "resnet44-robust.pt")
                 if k in results and results[k]["total"] >= std]
        text += (f" Against the standard ResNet-44 (bound {std:.3g}): "
                 + (f"{', '.join(below)} bound lower" if below else "no robust net bounds lower")
                 + (f"; {', '.join(above)} do not" if above else "") + ".")
    run.section("Findings", text)
    return {"networks": results,
            "sound": all(r["total"] >= r["lower"] * (1 - 1e-4) for r in results.values())}
