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
from advjax.metrics import plots, stats
from advjax.models import WOODS2019_CHECKPOINTS, MnistCNN, linen_logits_fn, load_woods2019
from advjax.studies import common


@dataclasses.dataclass(frozen=True)
class Config:
    """Table 5 settings.

    Attributes:
      dataset: data set (``mnist_local`` under ADVJAX_DATA_DIR, or ``mnist`` from TFDS).
      data_dir: data folder; ``None`` for ``ADVJAX_DATA_DIR`` / TFDS's default.
      epochs: training epochs of the MNIST networks (Adam).
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      lower_bound_points: test points at which the local Jacobian norm (lower bound) is taken.
      refine_steps: gradient-ascent steps refining the lower bound.
      certify_examples: test images given certified radii and attacked by DeepFool, CW-L2 and
        L-BFGS.
      checkpoints: also analyse the released CIFAR-10 ResNet-44s when the data folder holds them.
      cifar_points: CIFAR-10 test images for the ResNet-44 lower bounds.
      cw_steps: optimiser steps of each CW-L2 run.
      search_steps: binary-search steps over the penalty c of CW-L2 and L-BFGS.
      quantization_step: the input's quantisation step (1/255 for 8-bit images): a certified
        radius below it certifies no other image the data could hold, and is called vacuous.
      seed: seed of initialisation, data order and bootstrap resampling.
    """

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
    quantization_step: float = 1 / 255
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("epochs", "batch_size", "learning_rate", "lower_bound_points",
                            "certify_examples", "cw_steps", "search_steps", "quantization_step"),
            nonnegative=("refine_steps", "cifar_points", "seed"))


CONFIGS = {"quick": Config(),
           "paper": Config(dataset="mnist", epochs=20, lower_bound_points=512,
                           refine_steps=50, certify_examples=2000, cifar_points=64,
                           cw_steps=1000, search_steps=9)}


def inputs(config: Config) -> list:
    items = [common.dataset_input(config.dataset, config.data_dir)]
    if config.checkpoints:
        items += [common.dataset_input("cifar10_head", config.data_dir, required=False),
                  common.woods_checkpoints_input(config.data_dir, WOODS2019_CHECKPOINTS,
                                                 required=False)]
    return items


def _analyse(name, fn, xs, ys, config, run, certify: bool):
    report = lipschitz.layer_bounds(fn, jnp.asarray(xs[0]))
    lower = float(lipschitz.local_lower_bound(fn, jnp.asarray(xs[: config.lower_bound_points]),
                                              refine_steps=config.refine_steps))
    out = {"total": float(report.total), "product": report.product, "lower": lower,
           "unfolded": float(report.unfolded_total), "layers": len(report.rows),
           "table5": lipschitz.table5(report),
           "layer_names": [row.name for row in report.rows],
           "layer_bounds": [float(row.bound) for row in report.rows]}
    if not certify:
        out["certificate"] = common.certificate_remarks([], config.quantization_step,
                                                        float(report.total), lower)
    else:
        n = config.certify_examples
        logits = jax.vmap(fn)(jnp.asarray(xs[:n]))
        radii = np.asarray(jax.vmap(lipschitz.certified_radius, (0, 0, None))(
            logits, jnp.asarray(ys[:n]), report.total))
        # per example: the smallest distortion any of the three attacks found (inf: none found)
        best = np.full(len(radii), np.inf)
        any_success = np.zeros(len(radii), bool)
        clean = None
        for label, attack in (
                ("deepfool", attacks.deepfool(fn)),
                ("cw_l2", attacks.cw_l2(fn, steps=config.cw_steps,
                                        search_steps=config.search_steps)),
                ("lbfgs", attacks.lbfgs(fn, search_steps=config.search_steps))):
            res = common.run_attack(attack, xs[:n], ys[:n], desc=f"{label} {name}",
                                    progress=run.progress)
            clean = np.asarray(res.clean_correct)
            ok = np.asarray(res.success) & clean
            any_success |= ok
            best = np.where(ok, np.minimum(best, np.asarray(res.l2)), best)
        found = np.isfinite(best)
        out["certificate"] = common.certificate_remarks(
            radii[clean], config.quantization_step, float(report.total), lower)
        out.update(mean_radius=float(np.mean(radii)),
                   mean_best_attack_l2=float(np.mean(best[found])) if found.any() else None,
                   min_gap=float(np.min(best[found] - radii[found])) if found.any() else None,
                   violations=int(np.sum(best[found] < radii[found] - 1e-6)),
                   mean_radius_ci=common.ci_dict(common.mean_ci(radii, config.seed)),
                   mean_best_attack_l2_ci=common.ci_dict(
                       common.mean_ci(best[found], config.seed)),
                   attack_failure=stats.attack_failure(any_success[clean]))
    return out


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    xs, ys = common.load_split(config.dataset, "test", config.data_dir)
    results = {}
    for i, (name, module) in enumerate([("MnistCNN", MnistCNN()),
                                        ("FC100-100-10", None)]):
        if module is None:
            train_fn = lambda i=i, name=name: common.train_szegedy(
                name, train_set, None, seed=config.seed + i, epochs=config.epochs,
                batch_size=config.batch_size, learning_rate=config.learning_rate,
                checkpoint_dir=run.checkpoint_dir / name, progress=run.progress)
        else:
            train_fn = lambda i=i, name=name, module=module: common.train_classifier(
                module, train_set, None, seed=config.seed + i, epochs=config.epochs,
                batch_size=config.batch_size, learning_rate=config.learning_rate,
                checkpoint_dir=run.checkpoint_dir / name, progress=run.progress)
        state, _ = run.stage(f"train {name}", train_fn, cache=False)
        fn = common.logits_fn_of(state)
        results[name] = run.stage(f"bounds {name}", lambda fn=fn, name=name: _analyse(
            name, fn, xs, ys, config, run, True))
        _report_layers(run, name, results[name])
    if config.checkpoints:
        folder = common.woods_checkpoint_folder(config.data_dir)
        if folder is not None:
            cx, cy = common.load_split("cifar10_head", "test", config.data_dir,
                                       limit=config.cifar_points)
            for fname in WOODS2019_CHECKPOINTS:
                module, variables = load_woods2019(Path(folder) / fname)
                fn = linen_logits_fn(module, variables, train=False)
                results[fname] = run.stage(f"bounds {fname}", lambda fn=fn, fname=fname:
                                           _analyse(fname, fn, cx, cy, dataclasses.replace(
                                               config, refine_steps=0), run, False))
                _report_layers(run, fname, results[fname])
    run.section("Summary", "Upper bound: sound network bound from the graph walk, per-channel "
                "scalings (BatchNorm) folded into the next linear map; unfolded: the same walk "
                "with every scaling its own factor (the previous bound); product: Szegedy's "
                "∏ L_k; lower: largest Jacobian spectral norm found. Per example, the certified "
                "radius must not exceed the smallest distortion found by DeepFool, CW-L2 and "
                "L-BFGS (violations: examples where it does). Radii are also given in "
                f"quantisation steps of the input ({config.quantization_step:.4g}); a radius "
                "below one step is vacuous. A bound more than "
                f"{common.LOOSE_BOUND_RATIO:.0e} times the lower bound is called "
                "astronomically loose.")
    run.table(["Network", "layers", "∏ L_k", "unfolded bound", "upper bound", "lower bound",
               "upper/lower", "mean certified radius", "(quantisation steps)",
               "vacuous radii", "mean best attack L2", "min (attack − radius)", "violations"],
              [[n, r["layers"], r["product"], r["unfolded"], r["total"], r["lower"],
                r["total"] / r["lower"], r.get("mean_radius", "—"),
                r["certificate"]["mean_radius_steps"] if "mean_radius" in r else "—",
                r["certificate"]["vacuous_fraction"] if "mean_radius" in r else "—",
                r.get("mean_best_attack_l2", "—"), r.get("min_gap", "—"),
                r.get("violations", "—")] for n, r in results.items()])
    claims = findings(results)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nAs the "
                "paper notes, the bounds are loose (large ratios to the lower bound) and large "
                "bounds do not imply adversarial examples; small bounds would exclude them. "
                "Bounds are exact computations on fixed weights, so their comparisons carry no "
                "sampling interval.")
    for r in results.values():
        r.pop("table5", None)
        r.pop("layer_names", None)
    return {"networks": results, "claims": [c.to_dict() for c in claims],
            "sound": all(r["total"] >= r["lower"] * (1 - 1e-4) for r in results.values())}


def _report_layers(run, name: str, result: dict) -> None:
    run.section(f"{name}: per-layer upper bounds")
    run.text(result["table5"])
    figure = f"layer_bounds_{Path(name).stem}.png"
    plots.plot_layer_bounds({name: result["layer_bounds"]}, result["layer_names"],
                            run.figure_path(figure), title=f"{name}: per-layer upper bounds "
                            f"(network bound {result['total']:.4g})")
    run.figure(figure, f"{name}: per-layer upper Lipschitz bounds (log scale)")
    if result["certificate"]["remark"]:
        run.text(f"**Remark.** {result['certificate']['remark']}")


def findings(results: dict) -> list[stats.Claim]:
    """Soundness, certificates and the robust-vs-standard ordering from a table of networks.

    Args:
      results: ``{network: {"total", "lower", and for certified ones "violations",
        "mean_radius_ci", "mean_best_attack_l2_ci", "attack_failure"}}``.
    """
    claims = []
    unsound = [n for n, r in results.items() if r["total"] < r["lower"] * (1 - 1e-4)]
    claims.append(stats.Claim(
        "every upper bound lies above the largest local Jacobian norm found (soundness)",
        stats.NOT_REPRODUCED if unsound else stats.REPRODUCED,
        "; ".join(f"{n}: {r['total']:.4g} ≥ {r['lower']:.4g}" for n, r in results.items())
        + (f"; violated by {unsound}" if unsound else "")))
    certified = {n: r for n, r in results.items() if "violations" in r}
    if certified:
        statement = ("no adversarial example (best of DeepFool, CW-L2, L-BFGS) lies inside a "
                     "certified L2 radius")
        evidence = "; ".join(
            f"{n}: {r['violations']} violations, mean radius "
            f"{common.interval(r['mean_radius_ci'])}, mean best attack L2 "
            f"{common.interval(r['mean_best_attack_l2_ci'])}"
            + (f" ({r['certificate']['remark']})" if (r.get("certificate") or {}).get("remark")
               else "") for n, r in certified.items())
        failed = "; ".join(f"{n}: {r['attack_failure']}" for n, r in certified.items()
                           if r.get("attack_failure"))
        if failed:
            claims.append(stats.blocked(statement, failed, evidence))
        else:
            bad = sum(r["violations"] for r in certified.values())
            claims.append(stats.Claim(statement, stats.NOT_REPRODUCED if bad else
                                      stats.REPRODUCED, evidence))
    robust = {k: results[k]["total"] for k in ("resnet44-adv-train.pt", "resnet44-all.pt",
                                                "resnet44-robust.pt") if k in results}
    if robust and "resnet44-standard.pt" in results:
        std = results["resnet44-standard.pt"]["total"]
        below = [k for k, v in robust.items() if v < std]
        above = [k for k, v in robust.items() if v >= std]
        claims.append(stats.Claim(
            "the robust ResNet-44s have lower Lipschitz upper bounds than the standard one",
            stats.REPRODUCED if not above else stats.NOT_REPRODUCED,
            ", ".join(f"{k}: {v:.4g}" for k, v in robust.items()) + f" vs standard {std:.4g}"
            + (f"; below the standard: {', '.join(below)}" if below else "")
            + (f"; not below: {', '.join(above)}" if above else "")))
    return claims
