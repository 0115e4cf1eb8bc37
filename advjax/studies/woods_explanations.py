"""Woods et al. adversarial explanations of the released CIFAR-10 ResNet-44 checkpoints.

For the four example images of the paper's repository (CIFAR-10 test indices 2, 5, 8, 9: ship,
frog, cat, automobile), each network explains its decision with ``g_explain+`` (papers.md §2.11:
Algorithm 1 descending the cross-entropy of the target within an RMSE budget ρ = 0.1, path 5ρ, 35
steps): towards the true class and towards the most confident wrong class, plus every class for
one image. Grids are saved as PNG with the confidences in the captions, and the "explanation
strength" (target log-probability gained per unit RMSE) is compared across networks: explanations
of robust networks move further toward the target per unit RMSE, and look like the target class.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from advjax import explain
from advjax.metrics import stats
from advjax.models import WOODS2019_CHECKPOINTS, linen_logits_fn, load_woods2019
from advjax.studies import common

ROBUST = ("resnet44-all.pt", "resnet44-robust.pt")
STANDARD = "resnet44-standard.pt"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@dataclasses.dataclass(frozen=True)
class Config:
    """Explanation settings.

    Attributes:
      data_dir: data folder holding ``cifar10-test-head/`` and ``woods2019-resnet44/``; ``None``
        for ``ADVJAX_DATA_DIR``.
      indices: CIFAR-10 test indices explained.
      checkpoints: released checkpoint files explained.
      rho: RMSE budget ρ of ``g_explain+``.
      steps: Algorithm-1 steps per explanation.
      eps_overshoot: path length in units of ρ.
      all_classes_index: the test index explained toward every class.
      dataset: CIFAR-10 data set (``cifar10_head`` under ADVJAX_DATA_DIR, or ``cifar10``).
    """

    data_dir: str | None = None
    indices: tuple[int, ...] = (2, 5, 8, 9)
    checkpoints: tuple[str, ...] = tuple(WOODS2019_CHECKPOINTS)
    rho: float = 0.1
    steps: int = 35
    eps_overshoot: float = 5.0
    all_classes_index: int = 8
    dataset: str = "cifar10_head"

    def __post_init__(self):
        common.check_config(
            self, positive=("rho", "steps", "eps_overshoot"),
            nonnegative=("indices", "all_classes_index"),
            choices={"checkpoints": list(WOODS2019_CHECKPOINTS)})


CONFIGS = {"quick": Config(), "paper": Config(dataset="cifar10")}


def _explain_batch(fn, xs, ys, targets, settings):
    """Explanations of every image for ``targets`` (numpy pytree with leading axes (N, M))."""
    batch = jax.jit(jax.vmap(functools.partial(explain.explain_classes, fn, targets=targets,
                                               **settings)))
    return jax.tree.map(np.asarray, batch(jnp.asarray(xs), jnp.asarray(ys)))


def inputs(config: Config) -> list:
    return [common.dataset_input(config.dataset, config.data_dir),
            common.woods_checkpoints_input(config.data_dir, config.checkpoints)]


def findings(m: dict) -> list[stats.Claim]:
    """The explanation-strength claims from paired intervals over images (pure).

    Args:
      m: ``{"real_gain": ci or None, "second_gain": ci or None, "images": n}``: paired
        bootstrap intervals of (robust mean − standard) strength toward the true class, and of
        (standard − robust mean) strength toward the runner-up class.
    """
    claims = []
    for key, statement in (
            ("real_gain", "toward the true class the robust networks gain more target "
                          "log-probability per unit RMSE than the standard network"),
            ("second_gain", "toward the runner-up class the standard network moves further per "
                            "unit RMSE (a tiny, noise-like perturbation flips it)")):
        if m.get(key) is None:
            claims.append(stats.blocked(statement, "the standard and a robust checkpoint are "
                                                   "both needed"))
            continue
        d = common.interval(m[key])
        claims.append(stats.Claim(statement, stats.direction_verdict(d),
                                  f"paired difference {d} nats/RMSE over {d.n} images"))
    return claims


def run(config: Config, run) -> dict:
    folder = common.woods_checkpoint_folder(config.data_dir)
    n = max(config.indices) + 1
    xs_all, ys_all = common.load_split(config.dataset, "test", config.data_dir, limit=n)
    xs, ys = xs_all[list(config.indices)], ys_all[list(config.indices)]
    settings = dict(rho=config.rho, steps=config.steps, eps_overshoot=config.eps_overshoot)
    one = list(config.indices).index(config.all_classes_index) \
        if config.all_classes_index in config.indices else 0
    rows, captions, row_labels, table, out = [], [], [], [], {}
    all_rows, all_caps, per_image = [], [], {}
    for fname in config.checkpoints:
        module, variables = load_woods2019(Path(folder) / fname)
        fn = linen_logits_fn(module, variables, train=False)

        def explain_all(fn=fn):
            real = _explain_batch(fn, xs, ys, "real", settings)
            second = _explain_batch(fn, xs, ys, "second", settings)
            every = jax.tree.map(lambda a: a[0], _explain_batch(
                fn, xs[one:one + 1], ys[one:one + 1], "all", settings))
            return real, second, every

        real, second, every = run.stage(f"explain {fname}", explain_all)
        real, second = (jax.tree.map(lambda a: a[:, 0], e) for e in (real, second))
        per_image[fname] = (np.asarray(real.strength, np.float64),
                            np.asarray(second.strength, np.float64))
        rows.append(second.image)
        captions.append([explain.confidence_caption(
            second.probs_before[i], second.probs_after[i], int(second.target[i]),
            CIFAR10_CLASSES) for i in range(len(xs))])
        row_labels.append(fname.removeprefix("resnet44-").removesuffix(".pt"))
        all_rows.append(every.image)
        all_caps.append([explain.confidence_caption(every.probs_before[c], every.probs_after[c],
                                                    c, CIFAR10_CLASSES) for c in range(10)])
        p_after = second.probs_after[np.arange(len(xs)), second.target]
        out[fname] = {
            "strength_second": float(np.mean(second.strength)),
            "strength_real": float(np.mean(real.strength)),
            "strength_all": float(np.mean(every.strength)),
            "prob_after_second": float(np.mean(p_after)),
            "rmse": float(np.mean(second.rmse)),
            "clean_correct": int(np.sum(np.argmax(real.probs_before, -1) == ys)),
        }
        r = out[fname]
        table.append([fname, r["clean_correct"], r["strength_second"], r["prob_after_second"],
                      r["strength_all"], r["rmse"]])
    explain.explanation_grid(xs, np.stack(rows), captions, run.figure_path("second_class.png"),
                             image_captions=[CIFAR10_CLASSES[int(y)] for y in ys],
                             row_labels=row_labels,
                             title=f"Explanations toward the runner-up class, rho = {config.rho}")
    explain.explanation_grid(np.repeat(xs[one:one + 1], 10, 0), np.stack(all_rows), all_caps,
                             run.figure_path("all_classes.png"),
                             image_captions=[f"→ {c}" for c in CIFAR10_CLASSES],
                             row_labels=row_labels, title="Explanations toward every class")
    run.section("Explanation strength",
                f"Images {list(config.indices)} of `{config.dataset}`; ρ = {config.rho}, "
                f"{config.steps} steps, path {config.eps_overshoot}ρ. Strength = target "
                "log-probability gained per unit RMSE.")
    run.table(["Network", "clean correct (of 4)", "strength → runner-up",
               "p(runner-up) after", "strength, all classes", "RMSE"], table)
    run.figure("second_class.png", "Explanations toward the runner-up class")
    run.figure("all_classes.png", "Explanations of one image toward every class")
    result = {"networks": out, "images": len(xs), "real_gain": None, "second_gain": None}
    robust = [per_image[k] for k in ROBUST if k in per_image]
    if STANDARD in per_image and robust:
        std_real, std_second = per_image[STANDARD]
        rob_real = np.mean([r[0] for r in robust], axis=0)
        rob_second = np.mean([r[1] for r in robust], axis=0)
        result["real_gain"] = common.ci_dict(stats.paired_difference(rob_real, std_real, seed=0))
        result["second_gain"] = common.ci_dict(stats.paired_difference(std_second, rob_second,
                                                                       seed=0))
    claims = findings(result)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nWith "
                f"{len(xs)} images the intervals are wide; see the grids for whether the robust "
                "networks' explanations look like the target class.")
    result["claims"] = [c.to_dict() for c in claims]
    return result
