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

from advjax import data as data_lib
from advjax import explain
from advjax.models import WOODS2019_CHECKPOINTS, linen_logits_fn, load_woods2019
from advjax.studies import common

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: str | None = None
    indices: tuple[int, ...] = (2, 5, 8, 9)
    checkpoints: tuple[str, ...] = tuple(WOODS2019_CHECKPOINTS)
    rho: float = 0.1
    steps: int = 35
    eps_overshoot: float = 5.0
    all_classes_index: int = 8
    dataset: str = "cifar10_head"


CONFIGS = {"quick": Config(), "paper": Config(dataset="cifar10")}


def _explain_batch(fn, xs, ys, targets, settings):
    """Explanations of every image for ``targets`` (numpy pytree with leading axes (N, M))."""
    batch = jax.jit(jax.vmap(functools.partial(explain.explain_classes, fn, targets=targets,
                                               **settings)))
    return jax.tree.map(np.asarray, batch(jnp.asarray(xs), jnp.asarray(ys)))


def run(config: Config, run) -> dict:
    folder = data_lib.resolve_data_dir(config.data_dir) / "woods2019-resnet44"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: the released checkpoints are needed")
    n = max(config.indices) + 1
    xs_all, ys_all = common.load_split(config.dataset, "test", config.data_dir, limit=n)
    xs, ys = xs_all[list(config.indices)], ys_all[list(config.indices)]
    settings = dict(rho=config.rho, steps=config.steps, eps_overshoot=config.eps_overshoot)
    one = list(config.indices).index(config.all_classes_index) \
        if config.all_classes_index in config.indices else 0
    rows, captions, row_labels, table, out = [], [], [], [], {}
    all_rows, all_caps = [], []
    for fname in config.checkpoints:
        module, variables = load_woods2019(Path(folder) / fname)
        fn = linen_logits_fn(module, variables, train=False)
        real = _explain_batch(fn, xs, ys, "real", settings)
        second = _explain_batch(fn, xs, ys, "second", settings)
        every = jax.tree.map(lambda a: a[0], _explain_batch(fn, xs[one:one + 1],
                                                            ys[one:one + 1], "all", settings))
        real, second = (jax.tree.map(lambda a: a[:, 0], e) for e in (real, second))
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
    std = out.get("resnet44-standard.pt")
    robust = [v for k, v in out.items() if k in ("resnet44-all.pt", "resnet44-robust.pt")]
    finding = ""
    if std is not None and robust:
        real_r = float(np.mean([v["strength_real"] for v in robust]))
        second_r = float(np.mean([v["strength_second"] for v in robust]))
        finding = (
            f"Toward the true class the robust networks gain {real_r:.2f} nats of target "
            f"log-probability per unit RMSE against {std['strength_real']:.3f} for the standard "
            "network, which is already saturated (p ≈ 1) and barely moves. Toward the runner-up "
            f"class the standard network moves {std['strength_second']:.1f} nats/RMSE against "
            f"{second_r:.1f}: a tiny, noise-like perturbation flips it — an adversarial example, "
            "not an explanation — while the robust networks need a visible, class-shaped change "
            "(see the grids), which is what makes their explanations informative.")
    run.section("Findings", finding)
    return {"networks": out}
