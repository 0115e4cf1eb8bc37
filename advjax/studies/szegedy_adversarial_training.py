"""Szegedy et al. §4.2: adversarial training with a continuously refreshed pool of examples.

FC100-100-10 (sigmoid, the paper's weight decay) trained twice with the same data order and
epochs: with weight decay alone, and with weight decay plus a pool of adversarial examples, a
random subset of which is replaced every step by newly generated ones and which is mixed into every
batch (papers.md §1.5; an input-level pool — the paper's per-layer pools are not implemented). The
pool's examples come from L2 PGD on the current model. Reported: test error, robust accuracy under
L2 PGD at several radii, and the average minimum L-BFGS distortion on test images.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from advjax import attacks, metrics, train
from advjax.metrics import plots, stats
from advjax.models import SZEGEDY_WEIGHT_DECAY
from advjax.studies import common
from advjax.studies.szegedy_table1 import Config as Table1Config
from advjax.studies.szegedy_table1 import attack_set

BASE, POOL = "weight decay", "weight decay + adversarial pool"


@dataclasses.dataclass(frozen=True)
class Config:
    """Adversarial-pool training settings.

    Attributes:
      dataset: data set (``mnist_local`` under ADVJAX_DATA_DIR, or ``mnist`` from TFDS).
      data_dir: data folder; ``None`` for ``ADVJAX_DATA_DIR`` / TFDS's default.
      model: Szegedy model name trained both ways.
      epochs: training epochs of each variant (Adam).
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      pool_size: adversarial examples kept in the pool.
      pool_refresh: pool entries replaced by new examples every step.
      pool_mix: pool examples mixed into every batch.
      pool_eps: L2 radius of the PGD that makes the pool's examples.
      pool_steps: PGD steps per pool example.
      eval_examples: test images of the robust-accuracy evaluation.
      eval_eps: L2 radii of the PGD-40 evaluation.
      search_steps: bisection steps of the per-example L-BFGS constant c.
      max_iterations: L-BFGS iterations per value of c.
      seed: seed of initialisation, data order, attacks and bootstrap resampling.
    """

    dataset: str = "mnist_local"
    data_dir: str | None = None
    model: str = "FC100-100-10"
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    pool_size: int = 1024
    pool_refresh: int = 16
    pool_mix: int = 32
    pool_eps: float = 1.5
    pool_steps: int = 10
    eval_examples: int = 300
    eval_eps: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    search_steps: int = 6
    max_iterations: int = 60
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("epochs", "batch_size", "learning_rate", "pool_size", "pool_refresh",
                            "pool_mix", "pool_eps", "pool_steps", "eval_examples", "search_steps",
                            "max_iterations"),
            nonnegative=("eval_eps", "seed"),
            choices={"model": list(SZEGEDY_WEIGHT_DECAY)})


CONFIGS = {
    "quick": Config(),
    "paper": Config(dataset="mnist", epochs=100, batch_size=128, pool_size=10000,
                    pool_refresh=64, pool_mix=64, eval_examples=10000, search_steps=9,
                    max_iterations=100),
}


def inputs(config: Config) -> list:
    return [common.dataset_input(config.dataset, config.data_dir)]


def findings(m: dict) -> list[stats.Claim]:
    """The §4.2 claims from paired intervals (pure: numbers in, verdicts out).

    Args:
      m: ``{"variants": {name: {"test_error_ci": ci, ...}}, "test_error_reduction": ci,
        "robust_accuracy_gain": ci, "distortion_gain": ci or None, "failures": {name: why}}``.
    """
    base, adv = m["variants"][BASE], m["variants"][POOL]
    claims = []
    d = common.interval(m["test_error_reduction"])
    claims.append(stats.Claim(
        "training with the adversarial pool lowers the test error (paper: below 1.2% vs 1.6%)",
        stats.direction_verdict(d),
        f"test error {common.interval(base['test_error_ci'])} with weight decay alone, "
        f"{common.interval(adv['test_error_ci'])} with the pool; paired reduction {d} on "
        f"{d.n} test images"))
    d = common.interval(m["robust_accuracy_gain"])
    claims.append(stats.Claim(
        "the pool raises robust accuracy under L2 PGD (mean over the radii)",
        stats.direction_verdict(d), f"paired gain {d} on {d.n} test images"))
    statement = "the pool raises the average minimum L-BFGS distortion"
    failed = "; ".join(f"{n}: {w}" for n, w in m["failures"].items() if w)
    if failed or m.get("distortion_gain") is None:
        claims.append(stats.blocked(statement, failed or "no image fooled by both"))
    else:
        d = common.interval(m["distortion_gain"])
        claims.append(stats.Claim(statement, stats.direction_verdict(d),
                                  f"paired gain in RMS {d} on {d.n} images"))
    return claims


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    test_set = common.load_split(config.dataset, "test", config.data_dir)
    pool = train.PoolConfig(size=config.pool_size, refresh=config.pool_refresh,
                            mix=config.pool_mix, attack=train.PGDAdversarialConfig(
                                norm="l2", eps=config.pool_eps, steps=config.pool_steps))
    variants = {BASE: None, POOL: pool}
    xs, ys = test_set[0][: config.eval_examples], test_set[1][: config.eval_examples]
    keys = common.example_keys(config.seed + 7, len(xs))
    lb = dataclasses.replace(Table1Config(), search_steps=config.search_steps,
                             max_iterations=config.max_iterations)
    rows, out, per, failures, figures = [], {}, {}, {}, []
    for name, pool_config in variants.items():
        state, _ = run.stage(f"train {name}", lambda pool_config=pool_config, name=name:
                             common.train_szegedy(
            config.model, train_set, test_set, seed=config.seed, epochs=config.epochs,
            batch_size=config.batch_size, learning_rate=config.learning_rate,
            checkpoint_dir=run.checkpoint_dir / name.replace(" ", "_"),
            extra=train.TrainConfig(pool=pool_config), progress=run.progress), cache=False)
        fn = common.logits_fn_of(state)
        test_ok = common.correct(fn, *test_set)
        pgd = attacks.pgd(fn, norm="l2", steps=40)
        robust = np.stack([run.stage(
            f"pgd {name} eps={eps:g}", lambda eps=eps, pgd=pgd: ~np.asarray(common.run_attack(
                pgd, xs, ys, key=keys, eps=eps, desc=f"pgd eps={eps:g}",
                progress=run.progress).success)) for eps in config.eval_eps])
        res = run.stage(f"lbfgs {name}", lambda fn=fn: attack_set(fn, xs[:100], ys[:100], lb,
                                                                  config.seed + 9))
        dist = metrics.distortion_stats(res)
        ok = np.asarray(res.clean_correct, bool)
        success = np.asarray(res.success, bool)
        rmse = np.where(success & ok, np.asarray(res.rmse, np.float64), np.nan)
        failures[name] = stats.attack_failure(success[ok], rmse[ok])
        per[name] = {"test_error": (~test_ok).astype(np.float64),
                     "robust": robust.mean(0).astype(np.float64), "rmse": rmse}
        found = np.flatnonzero(np.isfinite(rmse))
        shown = (found if found.size else np.arange(len(rmse)))[:8]
        figure = f"lbfgs_examples_{name.replace(' + ', '_').replace(' ', '_')}.png"
        plots.plot_adversarial_examples(xs[shown], np.asarray(res.x_adv)[shown],
                                        run.figure_path(figure),
                                        title=f"L-BFGS minimum-distortion examples: {name}")
        figures.append((figure, f"{name}: originals, L-BFGS adversarial examples and the "
                        "amplified difference"))
        err_ci, rmse_ci = common.rate_ci(~test_ok), common.mean_ci(rmse, seed=config.seed)
        robust_ci = [common.rate_ci(r) for r in robust]
        rows.append([name, str(err_ci), *[str(c) for c in robust_ci], str(rmse_ci)])
        out[name] = {"test_error": err_ci.estimate, "test_error_ci": common.ci_dict(err_ci),
                     "robust_accuracy": [c.estimate for c in robust_ci],
                     "robust_accuracy_ci": [common.ci_dict(c) for c in robust_ci],
                     "av_min_distortion": dist.mean_rmse,
                     "av_min_distortion_ci": common.ci_dict(rmse_ci)}
    run.section("Weight decay alone vs adversarial pool",
                f"{config.model} on `{config.dataset}`, {config.epochs} epochs each; robust "
                f"accuracy under L2 PGD-40 on {len(xs)} test images. Brackets: 95% intervals "
                "(Wilson for rates, seeded bootstrap over images for the mean distortion).")
    run.table(["Training", "Test error", *[f"PGD acc. eps={e:g}" for e in config.eval_eps],
               "Av. min. L-BFGS distortion"], rows)
    plots.plot_distortion_histogram({n: p["rmse"] for n, p in per.items()},
                                    run.figure_path("lbfgs_distortion.png"),
                                    title="L-BFGS minimum distortion by training")
    figures.append(("lbfgs_distortion.png", "Histograms of the minimum RMS distortion found"))
    for figure, caption in figures:
        run.figure(figure, caption)
    b, a = per[BASE], per[POOL]
    both = np.isfinite(a["rmse"]) & np.isfinite(b["rmse"])
    result = {
        "variants": out, "failures": failures,
        "test_error_reduction": common.ci_dict(stats.paired_difference(
            b["test_error"], a["test_error"], seed=config.seed)),
        "robust_accuracy_gain": common.ci_dict(stats.paired_difference(
            a["robust"], b["robust"], seed=config.seed)),
        "distortion_gain": common.ci_dict(stats.paired_difference(
            a["rmse"][both], b["rmse"][both], seed=config.seed)) if both.any() else None}
    claims = findings(result)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nThe paper "
                "trains on the full 60,000 MNIST training images; the quick config trains on "
                "8,000 images for few epochs, so only the direction of the changes is "
                "comparable.")
    result["claims"] = [c.to_dict() for c in claims]
    return result
