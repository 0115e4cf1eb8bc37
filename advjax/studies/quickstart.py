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
from advjax.metrics import plots, stats
from advjax.models import SZEGEDY_WEIGHT_DECAY, szegedy_model
from advjax.studies import common


@dataclasses.dataclass(frozen=True)
class Config:
    """Quickstart settings.

    Attributes:
      dataset: data set name for ``advjax.data.load`` (``digits`` is embedded and offline).
      data_dir: data folder (``ADVJAX_DATA_DIR`` / TFDS folder); ``None`` for the default.
      model: Szegedy model name (e.g. ``FC100-100-10``), trained with the paper's weight decay.
      epochs: training epochs (Adam).
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      attack_examples: number of test images attacked (the first ones of the test split).
      lbfgs_search_steps: bisection steps of the per-example L-BFGS constant c.
      lbfgs_iterations: L-BFGS iterations per value of c.
      pgd_eps: L2 radii of the PGD-40 robust-accuracy curve (pixels in [0, 1]).
      quantization_step: the input's quantisation step (1/255 for 8-bit images): a certified
        radius below it certifies no other image the data could hold, and is called vacuous.
      seed: seed of initialisation, data order, attack targets and bootstrap resampling.
    """

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
    quantization_step: float = 1 / 255
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("epochs", "batch_size", "learning_rate", "attack_examples",
                            "lbfgs_search_steps", "lbfgs_iterations", "quantization_step"),
            nonnegative=("pgd_eps", "seed"),
            choices={"model": [m for m in SZEGEDY_WEIGHT_DECAY if m != "AE400-10"]})


CONFIGS = {
    "quick": Config(),
    "paper": Config(dataset="mnist", epochs=60, batch_size=128, learning_rate=1e-3,
                    attack_examples=10000, lbfgs_search_steps=9, lbfgs_iterations=100,
                    pgd_eps=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0)),
}


def inputs(config: Config) -> list:
    return [common.dataset_input(config.dataset, config.data_dir)]


def findings(m: dict) -> list[stats.Claim]:
    """The paper's claims checked on a quickstart metrics table (pure: numbers in, verdicts out).

    Args:
      m: ``metrics.json`` of a run: ``lbfgs_success`` and ``lbfgs_mean_rmse`` interval dicts,
        ``lbfgs_attacked``, ``lbfgs_failure`` (why the attack's results are unusable, or ``""``),
        ``certificate_violations``, ``mean_certified_radius`` and optionally ``certificate``
        (:func:`advjax.studies.common.certificate_remarks`, whose remark joins the evidence).
    """
    claims = []
    statement = ("adversarial examples exist for (almost) every correctly classified image "
                 "(L-BFGS success above 90%; Szegedy et al. §4.1)")
    success, rmse = (common.interval(m[k]) for k in ("lbfgs_success", "lbfgs_mean_rmse"))
    evidence = (f"L-BFGS success {success} of {m['lbfgs_attacked']} attacked images, mean RMS "
                f"distortion {rmse}")
    if m["lbfgs_failure"]:
        claims.append(stats.blocked(statement, m["lbfgs_failure"], evidence))
    else:
        claims.append(stats.Claim(statement, stats.threshold_verdict(success, 0.9), evidence))
    statement = ("no adversarial example lies inside the radius certified by the spectral-norm "
                 "Lipschitz bound (§4.3)")
    evidence = (f"{m['certificate_violations']} violations; mean certified L2 radius "
                f"{m['mean_certified_radius']:.4g}")
    remark = (m.get("certificate") or {}).get("remark")
    if remark:  # a vacuous radius or a loose bound makes "no violation" say little
        evidence += f". {remark}"
    if m["lbfgs_failure"]:
        claims.append(stats.blocked(statement, m["lbfgs_failure"], evidence))
    else:
        claims.append(stats.Claim(statement, stats.REPRODUCED if m["certificate_violations"] == 0
                                  else stats.NOT_REPRODUCED, evidence))
    return claims


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    test_set = common.load_split(config.dataset, "test", config.data_dir)
    module = szegedy_model(config.model)
    tconf = train.TrainConfig(weight_decay=SZEGEDY_WEIGHT_DECAY[config.model])
    state, history = run.stage("train " + config.model, lambda: common.train_classifier(
        module, train_set, test_set, seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate, config=tconf,
        checkpoint_dir=run.checkpoint_dir, progress=run.progress), cache=False)
    logits_fn = common.logits_fn_of(state)
    train_ok = common.correct(logits_fn, *train_set)
    test_ok = common.correct(logits_fn, *test_set)
    train_err = float(np.mean(~train_ok))
    test_err = float(np.mean(~test_ok))
    test_acc_ci = common.rate_ci(test_ok)

    xs, ys = test_set[0][: config.attack_examples], test_set[1][: config.attack_examples]
    keys = common.example_keys(config.seed + 1, len(xs))
    lbfgs = attacks.lbfgs(logits_fn, search_steps=config.lbfgs_search_steps,
                          max_iterations=config.lbfgs_iterations)
    res = run.stage("lbfgs", lambda: common.run_attack(lbfgs, xs, ys, key=keys, desc="lbfgs",
                                                       progress=run.progress))
    dstats = metrics.distortion_stats(res)
    attacked = np.asarray(res.clean_correct, bool)
    success = np.asarray(res.success, bool)
    rmse = np.asarray(res.rmse)
    found = success & attacked
    success_ci = common.rate_ci(success[attacked])
    rmse_ci = common.mean_ci(rmse[found], seed=config.seed)
    failure = stats.attack_failure(success[attacked], rmse[attacked])

    curve_eps = np.asarray(config.pgd_eps, np.float32)
    pgd = attacks.pgd(logits_fn, norm="l2", steps=40)
    _, pgd_acc = run.stage("pgd curve", lambda: metrics.robust_accuracy_curve(
        pgd, xs, ys, curve_eps, key=jax.random.key(config.seed + 1)))
    pgd_ci = [stats.wilson(int(round(a * len(xs))), len(xs)) for a in pgd_acc]

    report = run.stage("lipschitz bound", lambda: lipschitz.layer_bounds(
        logits_fn, jnp.asarray(xs[0])), cache=False)
    logits = jax.vmap(logits_fn)(jnp.asarray(xs))
    radii = np.asarray(jax.vmap(lipschitz.certified_radius, (0, 0, None))(
        logits, jnp.asarray(ys), report.total))
    l2_found = np.asarray(res.l2)
    violated = int(np.sum(l2_found[found] < radii[found] - 1e-6))
    lower = float(lipschitz.local_lower_bound(logits_fn, jnp.asarray(xs)))
    certificate = common.certificate_remarks(radii[attacked], config.quantization_step,
                                             float(report.total), lower)

    plots.plot_robust_accuracy_curve(
        curve_eps, pgd_acc, run.figure_path("robust_accuracy.png"),
        ci=[(c.low, c.high) for c in pgd_ci], title=f"PGD-40 (L2), {config.model}")
    shown = (np.flatnonzero(found) if found.any() else np.arange(len(xs)))[:8]
    plots.plot_adversarial_examples(
        xs[shown], np.asarray(res.x_adv)[shown], run.figure_path("lbfgs_examples.png"),
        title="L-BFGS minimum-distortion examples (random wrong target)")
    plots.plot_distortion_histogram(
        {config.model: np.where(found, rmse, np.nan)[attacked]},
        run.figure_path("lbfgs_distortion.png"), title="L-BFGS minimum distortion")

    run.section("Clean error", f"Model {config.model} on `{config.dataset}` "
                f"({len(train_set[1])} train / {len(test_set[1])} test images). Brackets: 95% "
                "Wilson intervals (rates) and seeded bootstrap intervals over examples (means).")
    run.table(["model", "train error", "test error", "test accuracy [95% CI]"],
              [[config.model, train_err, test_err, str(test_acc_ci)]])
    run.section("Minimum distortion (Szegedy box-constrained L-BFGS, random wrong target)")
    run.table(["examples", "attacked (clean-correct)", "success rate [95% CI]",
               "av. min. distortion (RMS) [95% CI]", "median RMS", "mean L2"],
              [[len(xs), int(attacked.sum()), str(success_ci), str(rmse_ci), dstats.median_rmse,
                float(np.mean(l2_found[found])) if found.any() else float("nan")]])
    run.figure("lbfgs_examples.png", "Originals, their L-BFGS adversarial examples and the "
               "amplified difference")
    run.figure("lbfgs_distortion.png", "Histogram of the minimum RMS distortion found")
    run.section("PGD-40 (L2) robust accuracy")
    run.table(["eps (L2)", "robust accuracy [95% CI]"],
              [[f"{e:g}", str(c)] for e, c in zip(curve_eps, pgd_ci, strict=True)])
    run.figure("robust_accuracy.png", "Robust accuracy versus L2 radius (95% Wilson band)")
    run.section("Lipschitz bounds (spectral norms, jaxpr walk)")
    run.text(report.to_markdown())
    run.text(f"Network bound L = {float(report.total):.4g}; mean certified L2 radius "
             f"{float(np.mean(radii)):.4g} ({certificate['mean_radius_steps']:.3g} "
             f"quantisation steps of {config.quantization_step:.4g} on the correctly "
             f"classified images); largest local Jacobian norm found {lower:.4g} (bound / "
             f"local: {certificate['bound_to_lower']:.3g}); L-BFGS examples inside a certified "
             f"radius: {violated}.")
    if certificate["remark"]:
        run.text(certificate["remark"])
    out = {
        "model": config.model,
        "dataset": config.dataset,
        "train_error": train_err,
        "test_error": test_err,
        "clean_accuracy": 1.0 - test_err,
        "clean_accuracy_ci": common.ci_dict(test_acc_ci),
        "lbfgs_attacked": int(attacked.sum()),
        "lbfgs_success_rate": dstats.success_rate,
        "lbfgs_success": common.ci_dict(success_ci),
        "lbfgs_mean_rmse": common.ci_dict(rmse_ci),
        "lbfgs_failure": failure,
        "pgd_l2_eps": curve_eps.tolist(),
        "pgd_l2_accuracy": [float(a) for a in pgd_acc],
        "pgd_l2_accuracy_ci": [common.ci_dict(c) for c in pgd_ci],
        "lipschitz_bound": float(report.total),
        "mean_certified_radius": float(np.mean(radii)),
        "lipschitz_lower_bound": lower,
        "certificate": certificate,
        "certificate_violations": violated,
        "history": [{"epoch": h["epoch"], "eval": h.get("eval")} for h in history],
    }
    claims = findings(out)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims))
    out["claims"] = [c.to_dict() for c in claims]
    return out
