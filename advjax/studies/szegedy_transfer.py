"""Szegedy et al. Tables 2–4: transfer of adversarial examples across models and training sets.

Table 2 (cross-model): every Table-1 model's L-BFGS adversarial examples (made on training images)
are fed to every other model; the entries are error rates, with Gaussian-noise control rows
(stddev 0.1 and 0.3, clipped to the box). Tables 3–4 (cross-training-set): FC100-100-10 and
FC123-456-10 trained on P1, FC100-100-10' trained on the disjoint P2; examples are made on test
images; rows add the examples amplified to an RMS of 0.1 (papers.md §1.5: the stated intent of the
amplification) and Gaussian noise of stddev 0.06 and 0.1.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from advjax import data as data_lib
from advjax import metrics
from advjax.metrics import plots, stats
from advjax.models import SZEGEDY_WEIGHT_DECAY
from advjax.studies import common
from advjax.studies.szegedy_table1 import Config as Table1Config
from advjax.studies.szegedy_table1 import attack_set

TABLE2_MODELS = ("FC10(1e-4)", "FC10(1e-2)", "FC10(1)", "FC100-100-10", "FC200-200-10",
                 "AE400-10")
TABLE3_MODELS = (("FC100-100-10", "P1"), ("FC123-456-10", "P1"), ("FC100-100-10'", "P2"))
PUBLISHED_TABLE4 = {  # papers.md §1.5 Table 4 (rows: examples made for; columns: models)
    "FC100-100-10": (1.0, 0.262, 0.059), "FC123-456-10": (0.0625, 1.0, 0.051),
    "FC100-100-10'": (0.082, 0.082, 1.0), "gaussian 0.06": (0.022, 0.026, 0.024),
    "FC100-100-10 amplified 0.1": (1.0, 0.98, 0.43),
    "FC123-456-10 amplified 0.1": (0.96, 1.0, 0.22),
    "FC100-100-10' amplified 0.1": (0.27, 0.50, 1.0), "gaussian 0.1": (0.026, 0.028, 0.027),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Transfer settings.

    Attributes:
      dataset: data set (``mnist_local`` under ADVJAX_DATA_DIR, or ``mnist`` from TFDS).
      data_dir: data folder; ``None`` for ``ADVJAX_DATA_DIR`` / TFDS's default.
      table2_models: Table-2 models (cross-model transfer).
      epochs: training epochs of each model (Adam).
      ae_epochs: autoencoder pretraining epochs of AE400-10.
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      attack_examples: images the examples are made from (training images for Table 2, test
        images for Table 4).
      search_steps: bisection steps of the per-example L-BFGS constant c.
      max_iterations: L-BFGS iterations per value of c.
      gaussian_table2: stddevs of the Gaussian-noise control rows of Table 2.
      gaussian_table4: stddevs of the Gaussian-noise control rows of Table 4.
      amplify_rms: RMS the examples are amplified to in Table 4's "amplified" rows.
      seed: seed of initialisation, data order, targets, noise and bootstrap resampling.
    """

    dataset: str = "mnist_local"
    data_dir: str | None = None
    table2_models: tuple[str, ...] = TABLE2_MODELS
    epochs: int = 15
    ae_epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    attack_examples: int = 100
    search_steps: int = 6
    max_iterations: int = 60
    gaussian_table2: tuple[float, ...] = (0.1, 0.3)
    gaussian_table4: tuple[float, ...] = (0.06, 0.1)
    amplify_rms: float = 0.1
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("epochs", "ae_epochs", "batch_size", "learning_rate",
                            "attack_examples", "search_steps", "max_iterations", "amplify_rms",
                            "gaussian_table2", "gaussian_table4"),
            nonnegative=("seed",), choices={"table2_models": list(SZEGEDY_WEIGHT_DECAY)})


CONFIGS = {
    "quick": Config(),
    "paper": Config(dataset="mnist", epochs=100, ae_epochs=50, batch_size=128,
                    attack_examples=10000, search_steps=9, max_iterations=100),
}


def inputs(config: Config) -> list:
    return [common.dataset_input(config.dataset, config.data_dir)]


def _train(name, train_set, eval_set, config, seed, ckpt, run):
    state, _ = run.stage(f"train {name} ({ckpt.parent.name})", lambda: common.train_szegedy(
        name, train_set, eval_set, seed=seed, epochs=config.epochs, ae_epochs=config.ae_epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate, checkpoint_dir=ckpt,
        progress=run.progress), cache=False)
    return common.logits_fn_of(state)


def _make_sets(models, xs, ys, config, seed, run, table):
    """L-BFGS examples of every model (one cached stage each), their mean RMS and failures."""
    sets, distortion, failures = {}, {}, {}
    lb = dataclasses.replace(Table1Config(), search_steps=config.search_steps,
                             max_iterations=config.max_iterations)
    for i, (name, fn) in enumerate(models.items()):
        res = run.stage(f"lbfgs {table} {name}",
                        lambda fn=fn, i=i: attack_set(fn, xs, ys, lb, seed + i))
        sets[name] = (np.asarray(res.x_adv), ys)
        distortion[name] = metrics.distortion_stats(res).mean_rmse
        ok = np.asarray(res.clean_correct, bool)
        failures[name] = stats.attack_failure(np.asarray(res.success, bool)[ok],
                                              np.asarray(res.rmse)[ok])
    return sets, distortion, failures


def _gaussian(xs, ys, stds, key):
    return {f"gaussian {s:g}": (np.asarray(metrics.gaussian_noise_set(
        xs, s, key=jax.random.fold_in(key, i))), ys) for i, s in enumerate(stds)}


def _errors(models, sets) -> tuple[np.ndarray, list, list]:
    """Per-example errors ``(rows, cols, N)`` of every column model on every row set."""
    rows, cols = list(sets), list(models)
    err = np.stack([np.stack([~common.correct(models[c], *sets[r]) for c in cols])
                    for r in rows])
    return err, rows, cols


def _cells(err: np.ndarray) -> list[list[str]]:
    return [[str(stats.wilson(e)) for e in row] for row in err]


def findings(m: dict) -> list[stats.Claim]:
    """Tables 2 and 4 claims from their summary intervals (pure: numbers in, verdicts out).

    Args:
      m: ``{"table2_claim": {...}, "table4_claim": {...}}``, each with ``transfer`` and
        ``noise`` (Wilson interval dicts of the pooled error rates), ``difference`` (paired
        bootstrap interval dict over images, or ``None``) and ``failures`` (``{model: why}`` of
        failed attacks).
    """
    claims = []
    for key, statement in (
            ("table2_claim", "adversarial examples transfer across models (Table 2): their mean "
                             "off-diagonal error exceeds that of Gaussian noise of stddev 0.1, "
                             "a larger distortion"),
            ("table4_claim", "adversarial examples transfer across disjoint training sets "
                             "(Table 4): FC100-100-10's examples fool FC100-100-10' (trained on "
                             "P2) more often than Gaussian noise of stddev 0.1")):
        c = m.get(key)
        if c is None:
            continue
        failed = "; ".join(f"{n}: {w}" for n, w in c["failures"].items() if w)
        diff = c.get("difference")
        evidence = (f"error {common.interval(c['transfer'])} vs "
                    f"{common.interval(c['noise'])} for the noise")
        if diff is None:
            claims.append(stats.blocked(statement, failed or "no usable attack", evidence))
            continue
        d = common.interval(diff)
        evidence += f" (paired difference {d} over {d.n} images)"
        if failed:
            evidence += f"; rows of failed attacks excluded ({failed})"
        claims.append(stats.Claim(statement, stats.direction_verdict(d), evidence))
    return claims


def _claim(err_rows: list[np.ndarray], noise_rows: list[np.ndarray], failures, seed) -> dict:
    """Paired comparison of per-image mean errors of the usable adversarial cells vs noise.

    Cells share their images, so the pooled error rates get bootstrap intervals over images (a
    Wilson interval over all cells would count one image's correlated outcomes as independent).
    """
    noise = np.mean(noise_rows, axis=0)
    out = {"failures": failures, "noise": common.ci_dict(stats.bootstrap(noise, seed=seed)),
           "difference": None, "transfer": common.ci_dict(stats.wilson(0, 0))}
    if err_rows:
        transfer = np.mean(err_rows, axis=0)
        out["transfer"] = common.ci_dict(stats.bootstrap(transfer, seed=seed))
        out["difference"] = common.ci_dict(stats.paired_difference(transfer, noise, seed=seed))
    return out


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    test_set = common.load_split(config.dataset, "test", config.data_dir)
    key = jax.random.key(config.seed)

    # Table 2: cross-model generalisation, examples made on training images.
    models = {name: _train(name, train_set, test_set, config, config.seed + i,
                           run.checkpoint_dir / "table2" / name, run)
              for i, name in enumerate(config.table2_models)}
    xs, ys = train_set[0][: config.attack_examples], train_set[1][: config.attack_examples]
    sets, dist, fail2 = _make_sets(models, xs, ys, config, config.seed + 100, run, "table2")
    sets.update(_gaussian(xs, ys, config.gaussian_table2, jax.random.fold_in(key, 2)))
    err2, rows2, cols2 = _errors(models, sets)
    m2 = err2.mean(-1)
    run.section("Table 2: cross-model generalisation",
                "Error rate [95% Wilson interval] of each column model on the examples made for "
                "each row model; last column: mean RMS distortion of the row's examples.")
    table2 = [[r, *cells, dist.get(r, float(r.split()[-1]) if r.startswith("gaussian")
               else None)] for r, cells in zip(rows2, _cells(err2), strict=True)]
    run.table(["Examples for ↓ / model →", *cols2, "Av. distortion"], table2)
    plots.plot_transfer_matrix(m2, rows2, cols2, run.figure_path("table2.png"))
    run.figure("table2.png", "Cross-model transfer (error rates)")
    plots.plot_image_rows(np.stack([xs[:8], *(sets[r][0][:8] for r in rows2)]),
                          ["original", *rows2], run.figure_path("table2_examples.png"),
                          title="Training images and the Table-2 examples made from them")
    run.figure("table2_examples.png", "Originals (top), each model's L-BFGS examples and the "
               "Gaussian-noise controls of Table 2")
    usable = [r for r in rows2 if r in models and not fail2[r]]
    off = [err2[rows2.index(r), j] for r in usable for j, c in enumerate(cols2) if c != r]
    noise_row = f"gaussian {config.gaussian_table2[0]:g}"
    gauss = [err2[i, j] for i, r in enumerate(rows2) if r == noise_row
             for j in range(len(cols2))]
    claim2 = _claim(off, gauss, fail2, config.seed) if gauss and len(cols2) > 1 else None

    # Tables 3–4: cross-training-set generalisation on the disjoint halves P1 / P2.
    p1, p2 = data_lib.szegedy_p1_p2(*train_set, key=jax.random.fold_in(key, 3))
    halves = {"P1": p1, "P2": p2}
    models34, errors3 = {}, []
    for i, (name, half) in enumerate(TABLE3_MODELS):
        fn = _train(name, tuple(halves[half]), test_set, config, config.seed + 10 + i,
                    run.checkpoint_dir / "table3" / name, run)
        models34[name] = fn
        errors3.append([name, half, common.error_rate(fn, *p1), common.error_rate(fn, *p2),
                        str(common.rate_ci(~common.correct(fn, *test_set)))])
    txs, tys = test_set[0][: config.attack_examples], test_set[1][: config.attack_examples]
    sets4, dist4, fail4 = _make_sets(models34, txs, tys, config, config.seed + 200, run,
                                     "table4")
    sets4.update(_gaussian(txs, tys, config.gaussian_table4[:1], jax.random.fold_in(key, 4)))
    for name in models34:
        sets4[f"{name} amplified {config.amplify_rms:g}"] = (
            np.asarray(metrics.amplify_set(txs, sets4[name][0], config.amplify_rms)), tys)
    sets4.update(_gaussian(txs, tys, config.gaussian_table4[1:], jax.random.fold_in(key, 5)))
    err4, rows4, cols4 = _errors(models34, sets4)
    m4 = err4.mean(-1)
    for row in errors3:
        row.append(dist4[row[0]])
    run.section("Table 3: models trained on disjoint halves")
    run.table(["Model", "trained on", "Err on P1", "Err on P2", "Err on test [95% CI]",
               "Av. distortion"], errors3)
    run.section("Table 4: cross-training-set generalisation",
                "Error rates [95% Wilson intervals]; in brackets after them the paper's value "
                "where papers.md gives one.")
    table4 = []
    for r, cells in zip(rows4, _cells(err4), strict=True):
        pub = PUBLISHED_TABLE4.get(r)
        table4.append([r, *[v + (f" ({pub[j]:.3f})" if pub else "")
                            for j, v in enumerate(cells)]])
    run.table(["Examples ↓ / model →", *cols4], table4)
    claim4 = None
    src, dst, noise4 = "FC100-100-10", "FC100-100-10'", f"gaussian {config.gaussian_table4[-1]:g}"
    if src in rows4 and dst in cols4 and noise4 in rows4:
        j = cols4.index(dst)
        adv = [] if fail4[src] else [err4[rows4.index(src), j]]
        claim4 = _claim(adv, [err4[rows4.index(noise4), j]], {src: fail4[src]}, config.seed)

    result = {"table2": {"rows": rows2, "cols": cols2, "matrix": m2},
              "table2_distortion": dist,
              "table3": errors3,
              "table4": {"rows": rows4, "cols": cols4, "matrix": m4},
              "mean_offdiagonal_transfer": float(np.mean(off)) if off else float("nan"),
              "mean_gaussian_0.1_error": float(np.mean(gauss)) if gauss else float("nan"),
              "table2_claim": claim2, "table4_claim": claim4}
    claims = findings(result)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nOur "
                "models are trained briefly on 8,000 images, so absolute numbers differ from "
                "the paper's.")
    result["claims"] = [c.to_dict() for c in claims]
    return result
