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

from advjax.models import MnistCNN, activation
from advjax.studies import common


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist_local"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    top_k: int = 8
    directions_shown: int = 6
    directions_measured: int = 64
    seed: int = 0


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


def purity(labels: np.ndarray, idx: np.ndarray) -> float:
    return float(np.mean([np.bincount(labels[row]).max() / len(row) for row in idx]))


def run(config: Config, run) -> dict:
    train_set = common.load_split(config.dataset, "train", config.data_dir)
    xs, ys = common.load_split(config.dataset, "test", config.data_dir)
    state, _ = common.train_classifier(
        MnistCNN(), train_set, (xs, ys), seed=config.seed, epochs=config.epochs,
        batch_size=config.batch_size, learning_rate=config.learning_rate,
        checkpoint_dir=run.checkpoint_dir / "cnn")
    phi = features(state, xs)
    units = phi.shape[1]
    rng = np.random.default_rng(config.seed)
    active = np.argsort(-phi.var(axis=0))  # most variable units first (dead units are blank)
    natural = np.eye(units)[active[: config.directions_measured]]
    random = rng.standard_normal((config.directions_measured, units))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    idx_n, idx_r = top_k(phi, natural, config.top_k), top_k(phi, random, config.top_k)
    shown = config.directions_shown
    common.image_rows_png(xs[idx_n[:shown]], [f"unit {u}" for u in active[:shown]],
                          run.figure_path("natural_basis.png"),
                          title="Top images for natural-basis directions e_i")
    common.image_rows_png(xs[idx_r[:shown]], [f"random {i}" for i in range(shown)],
                          run.figure_path("random_directions.png"),
                          title="Top images for random directions v")
    p_n, p_r = purity(ys, idx_n), purity(ys, idx_r)
    chance = float(np.max(np.bincount(ys)) / len(ys))
    run.section("Units vs random directions",
                f"φ = activations of the {units}-unit feature layer on {len(xs)} held-out "
                f"images; top-{config.top_k} images per direction.")
    run.figure("natural_basis.png", "natural basis")
    run.figure("random_directions.png", "random directions")
    run.table(["directions", "count", f"top-{config.top_k} label purity"],
              [["natural basis (most variable units)", config.directions_measured, p_n],
               ["random unit vectors", config.directions_measured, p_r],
               ["chance (largest class share)", "", chance]])
    run.section("Findings", (
        f"Top images of random directions are about as label-coherent as those of single units "
        f"(purity {p_r:.2f} vs {p_n:.2f}, chance {chance:.2f}), supporting the paper's claim that "
        "the natural basis is no better than a random basis for inspecting φ(x)."
        if abs(p_r - p_n) < 0.15 else
        f"Purity differs between units ({p_n:.2f}) and random directions ({p_r:.2f}) by more "
        "than 0.15 here; the paper's claim is qualitative and made for larger networks."))
    return {"purity_natural": p_n, "purity_random": p_r, "chance": chance,
            "test_accuracy": 1.0 - common.error_rate(common.logits_fn_of(state), xs, ys)}
