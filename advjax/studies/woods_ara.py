"""Woods et al.: robustness from training changes, measured by Attack ARA and BTR ARA.

Part 1 (trained here, MNIST by default): the same small CNN trained with equal epochs and data
order by (a) plain cross-entropy, (b) Woods adversarial training (Algorithm 1, L2, RMSE 0.01,
7 steps, papers.md §2.7), (c) the Lipschitz-inspired regulariser with adaptive ψ (§2.5–2.6), and
(d) the regulariser with the half-Huber ReLU (§2.8). Part 2 (when the data folder holds them): the
four released CIFAR-10 ResNet-44 checkpoints on the CIFAR-10 test head. For each network: clean
accuracy, mean input-gradient norm, Attack ARA and BTR ARA (§2.10: Algorithm 1 with track-best,
minimal RMSE per example, area of accuracy above 1/K).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from advjax import data as data_lib
from advjax import metrics, train
from advjax.metrics import plots, stats
from advjax.models import WOODS2019_CHECKPOINTS, MnistCNN, linen_logits_fn, load_woods2019
from advjax.studies import common

logger = logging.getLogger(__name__)

RANKING = (("resnet44-standard.pt",), ("resnet44-adv-train.pt",),
           ("resnet44-all.pt", "resnet44-robust.pt"))  # published Attack-ARA order, low to high

VARIANTS = ("plain", "adversarial", "lipschitz", "lipschitz+hhrelu")


@dataclasses.dataclass(frozen=True)
class Config:
    """ARA settings.

    Attributes:
      dataset: data set of Part 1 (``mnist_local`` under ADVJAX_DATA_DIR, or ``mnist``).
      data_dir: data folder; ``None`` for ``ADVJAX_DATA_DIR`` / TFDS's default.
      variants: Part-1 training variants (plain, adversarial, lipschitz, lipschitz+hhrelu).
      features: convolution widths of the small CNN.
      dense: width of its hidden dense layer.
      epochs: training epochs of each variant (Adam).
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      ara_examples: Part-1 test images of the ARA.
      ara_steps: Algorithm-1 steps of the ARA attacks.
      ara_eps: path length of the ARA attacks (RMSE).
      ara_momentum: momentum of the ARA attacks.
      checkpoints: also measure the released CIFAR-10 ResNet-44s (Part 2) when present.
      cifar_dataset: data set of Part 2 (``cifar10_head`` under ADVJAX_DATA_DIR, or ``cifar10``).
      cifar_examples: Part-2 test images.
      seed: seed of initialisation, data order and bootstrap resampling.
    """

    dataset: str = "mnist_local"
    data_dir: str | None = None
    variants: tuple[str, ...] = VARIANTS
    features: tuple[int, ...] = (16, 32)
    dense: int = 64
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 1e-3
    ara_examples: int = 100
    ara_steps: int = 100
    ara_eps: float = 20.0
    ara_momentum: float = 0.0
    checkpoints: bool = True
    cifar_dataset: str = "cifar10_head"
    cifar_examples: int = 24
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("features", "dense", "epochs", "batch_size", "learning_rate",
                            "ara_examples", "ara_steps", "ara_eps", "cifar_examples"),
            nonnegative=("ara_momentum", "seed"), choices={"variants": VARIANTS})


CONFIGS = {
    "quick": Config(),
    "paper": Config(epochs=30, ara_examples=1000, ara_steps=450, ara_momentum=0.9,
                    cifar_dataset="cifar10", cifar_examples=1000),
}


def _train_config(variant: str, input_size: int) -> train.TrainConfig:
    """Step config of a variant; ψ scaled to the input size (`train.woods_psi_config`)."""
    if variant == "plain":
        return train.TrainConfig()
    if variant == "adversarial":
        return train.TrainConfig(adversarial=train.WoodsAdversarialConfig.l2())
    if variant.startswith("lipschitz"):
        return train.TrainConfig(
            lipschitz=train.LipschitzConfig(psi=train.woods_psi_config(input_size)))
    raise ValueError(f"unknown variant {variant!r}")


def inputs(config: Config) -> list:
    items = [common.dataset_input(config.dataset, config.data_dir)]
    if config.checkpoints:
        items += [common.dataset_input(config.cifar_dataset, config.data_dir, required=False),
                  common.woods_checkpoints_input(config.data_dir, WOODS2019_CHECKPOINTS,
                                                 required=False)]
    return items


def _grad_norm(logits_fn, xs, ys) -> float:
    g = jax.vmap(jax.grad(lambda x, y: -jax.nn.log_softmax(logits_fn(x))[y]))(
        jnp.asarray(xs), jnp.asarray(ys))
    return float(jnp.mean(jnp.sqrt(jnp.sum(g.reshape(len(xs), -1) ** 2, -1))))


def _measure(logits_fn, xs, ys, num_classes, config) -> dict:
    """Attack and BTR ARA with their per-example distortions (a cached stage's result)."""
    settings = dict(num_classes=num_classes, steps=config.ara_steps, eps=config.ara_eps,
                    momentum=config.ara_momentum, chunk_size=64)
    attack = metrics.attack_ara(logits_fn, xs, ys, **settings)
    btr = metrics.btr_ara(logits_fn, xs, ys, **settings)
    correct = np.asarray(attack.correct, bool)
    return {"accuracy": float(attack.clean_accuracy), "grad_norm": _grad_norm(logits_fn, xs, ys),
            "attack_ara": float(attack.ara), "btr_ara": float(btr.ara),
            "attack_ara_exact": float(attack.ara_exact),
            "sanity": float(np.mean(attack.sanity)), "failed": int(np.sum(attack.failed)),
            "failure": stats.attack_failure(~np.asarray(attack.failed, bool)[correct]),
            "correct": correct, "attack_d": np.asarray(attack.distortions, np.float64),
            "btr_d": np.asarray(btr.distortions, np.float64)}


def _ara_fn(num_classes: int):
    return lambda d, c: metrics.ara(d, c, num_classes)


def _intervals(r: dict, k: int, seed: int) -> dict:
    """Wilson interval of the accuracy and bootstrap intervals of both ARAs (over images)."""
    return {"accuracy_ci": common.ci_dict(common.rate_ci(r["correct"])),
            "attack_ara_ci": common.ci_dict(stats.bootstrap(
                r["attack_d"], r["correct"], statistic=_ara_fn(k), seed=seed)),
            "btr_ara_ci": common.ci_dict(stats.bootstrap(
                r["btr_d"], r["correct"], statistic=_ara_fn(k), seed=seed))}


def _paired_ara(a: dict, b: dict, k: int, seed: int) -> dict:
    """Paired bootstrap interval of Attack ARA(a) − ARA(b) on the same images."""
    return common.ci_dict(stats.paired_difference((a["attack_d"], a["correct"]),
                                                  (b["attack_d"], b["correct"]),
                                                  statistic=_ara_fn(k), seed=seed))


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("correct", "attack_d", "btr_d")}


def findings(m: dict) -> list[stats.Claim]:
    """Woods et al.'s ARA claims from paired intervals (pure: numbers in, verdicts out).

    Args:
      m: ``{"variants": {name: {"attack_ara_ci", "failure", ...}}, "vs_plain": {name: ci},
        "checkpoints": {...}, "ranking": [{"low", "high", "difference": ci}]}``.
    """
    claims = []
    variants = m["variants"]
    plain = variants.get("plain")
    for name, diff in m.get("vs_plain", {}).items():
        r = variants[name]
        statement = f"{name} training raises the Attack ARA over plain training"
        evidence = (f"Attack ARA {common.interval(r['attack_ara_ci'])} vs plain "
                    f"{common.interval(plain['attack_ara_ci'])}")
        blockers = "; ".join(f"{n}: {variants[n]['failure']}" for n in ("plain", name)
                             if variants[n]["failure"])
        if blockers:
            claims.append(stats.blocked(statement, blockers, evidence))
            continue
        d = common.interval(diff)
        claims.append(stats.Claim(statement, stats.direction_verdict(d),
                                  f"{evidence}; paired difference {d} on {d.n} images"))
    ranking = m.get("ranking") or []
    if ranking:
        statement = ("the released checkpoints rank standard < adversarially trained < "
                     "robust additions by Attack ARA, as published")
        ckpts = m["checkpoints"]
        evidence = ", ".join(f"{n}: {common.interval(r['attack_ara_ci'])}"
                             for n, r in ckpts.items())
        blockers = "; ".join(f"{n}: {r['failure']}" for n, r in ckpts.items() if r["failure"])
        if blockers:
            claims.append(stats.blocked(statement, blockers, evidence))
        else:
            steps = [stats.direction_verdict(common.interval(s["difference"])) for s in ranking]
            verdict = (stats.NOT_REPRODUCED if stats.NOT_REPRODUCED in steps else
                       stats.REPRODUCED if all(v == stats.REPRODUCED for v in steps)
                       else stats.INCONCLUSIVE)
            evidence += "; paired differences " + ", ".join(
                f"{s['high']} − {s['low']}: {common.interval(s['difference'])}" for s in ranking)
            claims.append(stats.Claim(statement, verdict, evidence))
    return claims


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    test_set = common.load_split(config.dataset, "test", config.data_dir)
    k = data_lib.num_classes(config.dataset)
    xs, ys = test_set[0][: config.ara_examples], test_set[1][: config.ara_examples]
    results, full = {}, {}
    for variant in config.variants:
        module = MnistCNN(features=config.features, dense=config.dense,
                          activation="hhrelu" if variant.endswith("hhrelu") else "relu")
        state, _ = run.stage(f"train {variant}", lambda module=module, variant=variant:
                             common.train_classifier(
            module, train_set, test_set, seed=config.seed, epochs=config.epochs,
            batch_size=config.batch_size, learning_rate=config.learning_rate,
            config=_train_config(variant, int(np.prod(train_set[0].shape[1:]))),
            checkpoint_dir=run.checkpoint_dir / variant, progress=run.progress), cache=False)
        fn = common.logits_fn_of(state)
        full[variant] = run.stage(f"ara {variant}", lambda fn=fn: _measure(fn, xs, ys, k,
                                                                           config))
        test_ci = common.rate_ci(common.correct(fn, *test_set))
        results[variant] = {**_public(full[variant]), **_intervals(full[variant], k, config.seed),
                            "test_accuracy": test_ci.estimate,
                            "test_accuracy_ci": common.ci_dict(test_ci)}
        if variant.startswith("lipschitz"):
            results[variant]["psi"] = float(train.psi(state.psi))
    run.section("Part 1: training changes",
                f"Small CNN on `{config.dataset}`, {config.epochs} epochs each; ARA on "
                f"{len(xs)} test images with {config.ara_steps} Algorithm-1 steps "
                f"(path {config.ara_eps} RMSE, momentum {config.ara_momentum}).")
    header = ["Network", "Test acc. [95% CI]", "Mean ‖∇x CE‖", "Attack ARA [95% CI]",
              "BTR ARA [95% CI]", "Sanity"]
    iv = lambda r, key: str(common.interval(r[key]))
    run.table(header, [[n, iv(r, "test_accuracy_ci"), r["grad_norm"], iv(r, "attack_ara_ci"),
                        iv(r, "btr_ara_ci"), r["sanity"]] for n, r in results.items()])
    plots.plot_accuracy_vs_distortion(
        {n: (c["attack_d"], c["correct"]) for n, c in full.items()}, None, k,
        run.figure_path("ara_part1.png"))
    run.figure("ara_part1.png", "Accuracy vs RMSE of the attack; ARA is the area above 1/K")

    ckpt_results, ckpt_full, ranking = {}, {}, []
    folder = common.woods_checkpoint_folder(config.data_dir) if config.checkpoints else None
    if config.checkpoints and folder is None:
        logger.warning("imported checkpoints skipped: no %s folder in the data folder",
                       common.WOODS_CHECKPOINT_FOLDER)
    if folder is not None:
        cx, cy = common.load_split(config.cifar_dataset, "test", config.data_dir,
                                   limit=config.cifar_examples)
        for fname, published in WOODS2019_CHECKPOINTS.items():
            module, variables = load_woods2019(Path(folder) / fname)
            fn = linen_logits_fn(module, variables, train=False)
            ckpt_full[fname] = run.stage(f"ara {fname}", lambda fn=fn: _measure(
                fn, cx, cy, 10, config))
            r = {**_public(ckpt_full[fname]), **_intervals(ckpt_full[fname], 10, config.seed),
                 "published": published}
            ckpt_results[fname] = r
        for lower, higher in zip(RANKING[:-1], RANKING[1:], strict=True):
            lo = max(lower, key=lambda n: ckpt_results[n]["attack_ara"])
            hi = min(higher, key=lambda n: ckpt_results[n]["attack_ara"])
            ranking.append({"low": lo, "high": hi, "difference": _paired_ara(
                ckpt_full[hi], ckpt_full[lo], 10, config.seed)})
        run.section("Part 2: the released ResNet-44 checkpoints",
                    f"{len(cy)} images of `{config.cifar_dataset}`; published values (1000 random "
                    "test images, 450 steps, momentum 0.9) in brackets.")
        run.table(["Checkpoint", "Accuracy", "Attack ARA", "BTR ARA", "Mean ‖∇x CE‖"],
                  [[n, f"{iv(r, 'accuracy_ci')} ({r['published']['test_acc']})",
                    f"{iv(r, 'attack_ara_ci')} ({r['published']['attack_ara']})",
                    f"{iv(r, 'btr_ara_ci')} ({r['published']['btr_ara']})", r["grad_norm"]]
                   for n, r in ckpt_results.items()])
        plots.plot_accuracy_vs_distortion(
            {n: (c["attack_d"], c["correct"]) for n, c in ckpt_full.items()}, None, 10,
            run.figure_path("ara_resnet44.png"))
        run.figure("ara_resnet44.png", "Released checkpoints: accuracy vs RMSE")

    vs_plain = {n: _paired_ara(full[n], full["plain"], k, config.seed)
                for n in results if n != "plain" and "plain" in results}
    result = {"variants": results, "checkpoints": ckpt_results, "vs_plain": vs_plain,
              "ranking": ranking}
    claims = findings(result)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nIntervals: "
                "95%, Wilson for accuracies, seeded bootstrap over images for ARAs (paired "
                "when two networks are compared on the same images). The quick config uses fewer "
                "attack steps than the paper's 450, so ARAs need not match the published "
                "values.")
    result["claims"] = [c.to_dict() for c in claims]
    return result
