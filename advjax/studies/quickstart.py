"""Quickstart: train a Szegedy network, measure clean accuracy, minimum distortion and bounds.

The main job of the README. On the offline digits (real handwritten digits, 8×8) it trains
FC100-100-10 (sigmoid, Szegedy weight decay), reports clean train/test error, runs Szegedy's
box-constrained L-BFGS minimum-distortion search on test images (random wrong targets), the PGD
robust-accuracy curve, and the network's spectral-norm Lipschitz bound with certified radii.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from advjax import attacks, lipschitz, metrics, train
from advjax.models import SZEGEDY_WEIGHT_DECAY, szegedy_model
from advjax.studies import common


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "FC100-100-10"
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    attack_examples: int = 200
    lbfgs_search_steps: int = 6
    lbfgs_iterations: int = 60
    pgd_eps: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    seed: int = 0


CONFIGS = {
    "quick": Config(),
    "paper": Config(dataset="mnist", epochs=60, batch_size=128, learning_rate=1e-3,
                    attack_examples=10000, lbfgs_search_steps=9, lbfgs_iterations=100,
                    pgd_eps=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0)),
}


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    test_set = common.load_split(config.dataset, "test", config.data_dir)
    module = szegedy_model(config.model)
    tconf = train.TrainConfig(weight_decay=SZEGEDY_WEIGHT_DECAY[config.model])
    state, history = common.train_classifier(
        module, train_set, test_set, seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate, config=tconf,
        checkpoint_dir=run.checkpoint_dir)
    logits_fn = common.logits_fn_of(state)
    train_err = common.error_rate(logits_fn, *train_set)
    test_err = common.error_rate(logits_fn, *test_set)

    xs, ys = test_set[0][: config.attack_examples], test_set[1][: config.attack_examples]
    keys = common.example_keys(config.seed + 1, len(xs))
    lbfgs = attacks.lbfgs(logits_fn, search_steps=config.lbfgs_search_steps,
                          max_iterations=config.lbfgs_iterations)
    res = common.run_attack(lbfgs, xs, ys, key=keys, desc="lbfgs")
    stats = metrics.distortion_stats(res)

    curve_eps = np.asarray(config.pgd_eps, np.float32)
    pgd = attacks.pgd(logits_fn, norm="l2", steps=40)
    pgd_acc = []
    for eps in curve_eps:
        r = common.run_attack(pgd, xs, ys, key=keys, eps=float(eps), desc="pgd")
        pgd_acc.append(float(np.mean(~np.asarray(r.success))))

    report = lipschitz.layer_bounds(logits_fn, jnp.asarray(xs[0]))
    logits = jax.vmap(logits_fn)(jnp.asarray(xs))
    radii = np.asarray(jax.vmap(lipschitz.certified_radius, (0, 0, None))(
        logits, jnp.asarray(ys), report.total))
    l2_found = np.asarray(res.l2)
    ok = np.asarray(res.success) & np.asarray(res.clean_correct)
    violated = int(np.sum(l2_found[ok] < radii[ok] - 1e-6))

    run.section("Clean error", f"Model {config.model} on `{config.dataset}` "
                f"({len(train_set[1])} train / {len(test_set[1])} test images).")
    run.table(["model", "train error", "test error"],
              [[config.model, train_err, test_err]])
    run.section("Minimum distortion (Szegedy box-constrained L-BFGS, random wrong target)")
    run.table(["examples", "success rate", "av. min. distortion (RMS)", "median RMS",
               "mean L2"],
              [[len(xs), stats.success_rate, stats.mean_rmse, stats.median_rmse,
                float(np.mean(l2_found[np.asarray(res.success)]))]])
    run.section("PGD-40 (L2) robust accuracy")
    run.table(["eps (L2)", *[f"{e:g}" for e in curve_eps]],
              [["accuracy", *pgd_acc]])
    run.section("Lipschitz bounds (spectral norms, jaxpr walk)")
    run.text(report.to_markdown())
    run.text(f"Network bound L = {float(report.total):.4g}; mean certified L2 radius "
             f"{float(np.mean(radii)):.4g}; the L-BFGS examples never fall inside a certified "
             f"radius (violations: {violated}).")
    return {
        "model": config.model,
        "dataset": config.dataset,
        "train_error": train_err,
        "test_error": test_err,
        "clean_accuracy": 1.0 - test_err,
        "lbfgs_success_rate": stats.success_rate,
        "lbfgs_mean_rmse": stats.mean_rmse,
        "pgd_l2_eps": curve_eps.tolist(),
        "pgd_l2_accuracy": pgd_acc,
        "lipschitz_bound": float(report.total),
        "mean_certified_radius": float(np.mean(radii)),
        "certificate_violations": violated,
        "history": [{"epoch": h["epoch"], "eval": h.get("eval")} for h in history],
    }
