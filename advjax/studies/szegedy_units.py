"""Szegedy et al. §3: units of φ(x) vs random directions — which images maximise each?

Train the MNIST CNN, take φ(x) = the activations of its last feature layer on held-out test images
I, and for natural-basis directions e_i and random unit directions v ~ N(0, I)/‖·‖ show the top-k
images ``argmax_{x ∈ I} ⟨φ(x), v⟩`` (papers.md §1.2). The paper's claim is qualitative: random
directions look as "semantically coherent" as single units. We add a measurable version of it:
the label purity of the top-k images (fraction sharing the majority label), averaged over
directions, for units vs random directions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from advjax.metrics import plots, stats
from advjax.models import MnistCNN, activation
from advjax.studies import common

EQUIVALENCE_MARGIN = 0.15  # purity difference (fraction of top-k images) counted as "about equal"


@dataclasses.dataclass(frozen=True)
class Config:
    """Units-vs-random-directions settings.

    Attributes:
      dataset: data set (``mnist_local`` under ADVJAX_DATA_DIR, or ``mnist`` from TFDS).
      data_dir: data folder; ``None`` for ``ADVJAX_DATA_DIR`` / TFDS's default.
      epochs: training epochs of the CNN (Adam).
      batch_size: training batch size.
      learning_rate: Adam learning rate.
      top_k: images shown and scored per direction.
      directions_shown: directions drawn in each figure.
      directions_measured: directions whose label purity is measured (units and random each).
      seed: seed of initialisation, data order, random directions and bootstrap resampling.
    """

    dataset: str = "mnist_local"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    top_k: int = 8
    directions_shown: int = 6
    directions_measured: int = 64
    seed: int = 0

    def __post_init__(self):
        common.check_config(
            self, positive=("epochs", "batch_size", "learning_rate", "top_k", "directions_shown",
                            "directions_measured"),
            nonnegative=("seed",))


CONFIGS = {"quick": Config(), "paper": Config(dataset="mnist", epochs=20, top_k=10)}


def features(state, xs: np.ndarray, chunk: int = 500) -> np.ndarray:
    """φ(x): the activated output of the CNN's hidden dense layer ``Dense_0``, ``(N, units)``."""
    module = MnistCNN()
    act = activation(module.activation)

    @jax.jit
    def phi(x):
        _, inter = state.apply_fn({"params": state.params}, x, capture_intermediates=(
            lambda mdl, name: mdl.name == "Dense_0" and name == "__call__"), mutable=[
            "intermediates"])
        return act(inter["intermediates"]["Dense_0"]["__call__"][0])

    return np.concatenate([np.asarray(phi(jnp.asarray(xs[i:i + chunk])))
                           for i in range(0, len(xs), chunk)])


def top_k(phi: np.ndarray, directions: np.ndarray, k: int) -> np.ndarray:
    """Indices ``(D, k)`` of the k images with the largest ``⟨φ(x), v⟩`` for each direction."""
    scores = phi @ directions.T
    return np.argsort(-scores, axis=0)[:k].T


def purities(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(D,)`` label purity of each direction's top-k images (share of the majority label)."""
    return np.array([np.bincount(labels[row]).max() / len(row) for row in idx], np.float64)


def purity(labels: np.ndarray, idx: np.ndarray) -> float:
    return float(np.mean(purities(labels, idx)))


def inputs(config: Config) -> list:
    return [common.dataset_input(config.dataset, config.data_dir)]


def findings(m: dict) -> list[stats.Claim]:
    """The §3 claim from purity intervals (pure: numbers in, verdicts out).

    Args:
      m: ``purity_natural_ci``, ``purity_random_ci`` (bootstrap interval dicts over directions)
        and ``purity_difference`` (interval dict of random − natural) and ``chance``.
    """
    d = common.interval(m["purity_difference"])
    return [stats.Claim(
        "random directions of φ(x) are about as semantically coherent as single units "
        f"(top-k label purities within ±{EQUIVALENCE_MARGIN})",
        stats.equivalence_verdict(d, EQUIVALENCE_MARGIN),
        f"purity {common.interval(m['purity_random_ci'])} for random directions vs "
        f"{common.interval(m['purity_natural_ci'])} for units (chance {m['chance']:.2f}); "
        f"difference {d}")]


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    xs, ys = common.load_split(config.dataset, "test", config.data_dir)
    state, _ = run.stage("train MnistCNN", lambda: common.train_classifier(
        MnistCNN(), train_set, (xs, ys), seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        checkpoint_dir=run.checkpoint_dir / "cnn", progress=run.progress), cache=False)
    phi = features(state, xs)
    units = phi.shape[1]
    rng = np.random.default_rng(config.seed)
    active = np.argsort(-phi.var(axis=0))  # most variable units first (dead units are blank)
    natural = np.eye(units)[active[: config.directions_measured]]
    random = rng.standard_normal((config.directions_measured, units))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    idx_n, idx_r = top_k(phi, natural, config.top_k), top_k(phi, random, config.top_k)
    shown = config.directions_shown
    plots.plot_image_rows(xs[idx_n[:shown]], [f"unit {u}" for u in active[:shown]],
                          run.figure_path("natural_basis.png"),
                          title="Top images for natural-basis directions e_i")
    plots.plot_image_rows(xs[idx_r[:shown]], [f"random {i}" for i in range(shown)],
                          run.figure_path("random_directions.png"),
                          title="Top images for random directions v")
    per_n, per_r = purities(ys, idx_n), purities(ys, idx_r)
    p_n, p_r = float(per_n.mean()), float(per_r.mean())
    ci_n = stats.bootstrap(per_n, seed=config.seed)
    ci_r = stats.bootstrap(per_r, seed=config.seed + 1)
    chance = float(np.max(np.bincount(ys)) / len(ys))
    acc = common.rate_ci(common.correct(common.logits_fn_of(state), xs, ys))
    run.section("Units vs random directions",
                f"φ = activations of the {units}-unit feature layer on {len(xs)} held-out "
                f"images (test accuracy {acc}); top-{config.top_k} images per direction. "
                "Brackets: 95% bootstrap intervals over directions.")
    run.figure("natural_basis.png", "natural basis")
    run.figure("random_directions.png", "random directions")
    run.table(["directions", "count", f"top-{config.top_k} label purity"],
              [["natural basis (most variable units)", config.directions_measured, str(ci_n)],
               ["random unit vectors", config.directions_measured, str(ci_r)],
               ["chance (largest class share)", "", chance]])
    result = {"purity_natural": p_n, "purity_random": p_r, "chance": chance,
              "purity_natural_ci": common.ci_dict(ci_n),
              "purity_random_ci": common.ci_dict(ci_r),
              "purity_difference": common.ci_dict(stats.difference(ci_r, ci_n)),
              "test_accuracy": acc.estimate, "test_accuracy_ci": common.ci_dict(acc)}
    claims = findings(result)
    run.section("Findings", "\n".join(f"- {c.sentence()}" for c in claims) + "\n\nThe "
                "paper's claim is qualitative and made for larger networks.")
    result["claims"] = [c.to_dict() for c in claims]
    return result
