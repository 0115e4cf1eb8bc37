"""Figures of the metrics: accuracy-vs-distortion curves with the ARA shaded, transfer heatmaps,
robust-accuracy curves, distortion histograms, per-layer bound bars and image grids (adversarial
examples beside their originals).

matplotlib is imported inside the functions and drives the Agg canvas directly (no ``pyplot``
global state, no display needed). Figures are written as PNG atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from advjax._checks import check_rank, check_shape
from advjax.io import atomic_write_bytes
from advjax.metrics.ara import _as_distortions, _check_num_classes, accuracy_vs_distortion, ara


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure_png(fig, path: str | os.PathLike) -> Path:
    """Renders a matplotlib ``Figure`` to PNG bytes and writes them to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_accuracy_vs_distortion(
    distortions,
    correct,
    num_classes: int,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    xlabel: str = "RMSE of allowed attack",
) -> Path:
    """Accuracy versus attack size, the ARA shaded above the naive line ``1/K`` (papers.md §2.10).

    Args:
      distortions: ``(n,)`` minimal RMSE distortions of one classifier, or a mapping
        ``{name: (distortions, correct) or AraResult}`` to draw several classifiers on one
        figure (then ``correct`` must be ``None``).
      correct: ``(n,)`` bool clean correctness (``None`` for all correct).
      num_classes: ``K``; the dashed line is the naive accuracy ``1/K``.
      path: the PNG file to write.
      title: optional figure title.
      xlabel: label of the attack-size axis.

    Returns:
      The path written. The legend gives each curve's exact and Riemann ARA.
    """
    _check_num_classes(num_classes)
    if isinstance(distortions, Mapping):
        if correct is not None:
            raise ValueError("`correct` must be None when `distortions` is a mapping of curves.")
        curves = {str(k): v for k, v in distortions.items()}
        if not curves:
            raise ValueError("`distortions` must hold at least one curve.")
    else:
        curves = {"": (distortions, correct)}
    # An AraResult already carries its masked distortions.
    curves = {name: ((v.distortions, None) if hasattr(v, "distortions") else v)
              for name, v in curves.items()}
    prepared = {name: _as_distortions(d, c) for name, (d, c) in curves.items()}
    d_max = max(float(d.max()) for d in prepared.values())
    x_max = d_max * 1.05 if d_max > 0 else 1.0
    grid = np.linspace(0.0, x_max, 1001)
    naive = 1.0 / num_classes

    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, d) in enumerate(prepared.items()):
        acc = accuracy_vs_distortion(d, None, grid)
        color = f"C{i}"
        exact = ara(d, None, num_classes, method="exact")
        riemann = ara(d, None, num_classes, method="riemann")
        label = f"{name + ': ' if name else ''}ARA {exact:.4g} (Riemann {riemann:.4g})"
        ax.step(grid, acc, where="post", color=color, label=label)
        ax.fill_between(grid, naive, acc, where=acc > naive, step="post", color=color, alpha=0.25)
    ax.axhline(naive, color="k", linestyle="--", linewidth=1, label=f"naive 1/K = {naive:.3g}")
    ax.set_xlim(0.0, x_max)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return save_figure_png(fig, path)


def plot_transfer_matrix(
    matrix,
    row_names: Sequence[str],
    col_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Heatmap of a transfer matrix (error of each column model on each row's examples).

    Args:
      matrix: ``(R, C)`` error rates in ``[0, 1]`` (as returned by ``transfer_matrix``).
      row_names: ``R`` row labels (the sets of examples).
      col_names: ``C`` column labels (the models).
      path: the PNG file to write.
      title: optional title.

    Returns:
      The path written. Every cell is annotated with its error in percent.
    """
    check_rank(matrix, "matrix", 2)
    m = np.asarray(matrix, dtype=np.float64)
    check_shape(row_names, "row_names", (m.shape[0],))
    check_shape(col_names, "col_names", (m.shape[1],))
    fig = _new_figure((1.2 + 1.1 * m.shape[1], 0.8 + 0.5 * m.shape[0]))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(m.shape[1]), labels=list(col_names), rotation=30, ha="right")
    ax.set_yticks(range(m.shape[0]), labels=list(row_names))
    ax.set_xlabel("model evaluated")
    ax.set_ylabel("examples")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{100 * m[i, j]:.1f}%", ha="center", va="center",
                    color="w" if m[i, j] < 0.6 else "k", fontsize="small")
    fig.colorbar(im, ax=ax, label="error")
    if title:
        ax.set_title(title)
    return save_figure_png(fig, path)


def plot_robust_accuracy_curve(
    eps,
    accuracy,
    path: str | os.PathLike,
    *,
    ci: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
    xlabel: str = "L2 radius ε",
) -> Path:
    """Robust accuracy versus attack radius, with its 95% interval as a band.

    Args:
      eps: ``(m,)`` radii (input units), increasing.
      accuracy: ``(m,)`` robust accuracies in ``[0, 1]``.
      path: the PNG file to write.
      ci: optional ``m`` pairs ``(low, high)``: the interval of each accuracy.
      title: optional title.
      xlabel: label of the radius axis.

    Returns:
      The path written.
    """
    check_rank(eps, "eps", 1)
    e = np.asarray(eps, np.float64)
    a = np.asarray(accuracy, np.float64)
    check_shape(a, "accuracy", e.shape)
    fig = _new_figure((5.0, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    if ci is not None:
        band = np.asarray(ci, np.float64)
        check_shape(band, "ci", (e.shape[0], 2))
        ax.fill_between(e, band[:, 0], band[:, 1], color="C0", alpha=0.25, label="95% interval")
    ax.plot(e, a, "o-", color="C0", label="robust accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return save_figure_png(fig, path)


def plot_distortion_histogram(
    distortions: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    bins: int = 20,
    title: str | None = None,
    xlabel: str = "minimum distortion (RMS)",
) -> Path:
    """Histograms of the minimum distortions found, one outlined histogram per model.

    Args:
      distortions: ``{name: (n,) distortions}``; non-finite values (images not fooled) are left
        out and counted in the legend.
      path: the PNG file to write.
      bins: number of bins shared by every histogram (over the finite values' range).
      title: optional title.
      xlabel: label of the distortion axis.

    Returns:
      The path written.
    """
    if not distortions:
        raise ValueError("`distortions` must hold at least one model's distortions.")
    values = {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in distortions.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    hi = float(finite.max()) if finite.size else 1.0
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
    fig = _new_figure((5.5, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, v) in enumerate(values.items()):
        ok = v[np.isfinite(v)]
        label = f"{name} (n={ok.size}" + (f", {v.size - ok.size} not found)" if ok.size < v.size
                                          else ")")
        ax.hist(ok, bins=edges, histtype="step", linewidth=1.5, color=f"C{i}", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return save_figure_png(fig, path)


def plot_layer_bounds(
    bounds: Mapping[str, Sequence[float]],
    layer_names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Per-layer upper Lipschitz bounds as bars on a log scale, one group of bars per network.

    Args:
      bounds: ``{network: (L,) per-layer bounds}`` (all networks with ``L`` layers, or a
        mapping of one network).
      layer_names: ``L`` layer labels.
      path: the PNG file to write.
      title: optional title.

    Returns:
      The path written. Bounds are positive; a bar's height is its bound (log axis).
    """
    if not bounds:
        raise ValueError("`bounds` must hold at least one network's layer bounds.")
    groups = {str(k): np.asarray(v, np.float64) for k, v in bounds.items()}
    n_layers = len(layer_names)
    for name, b in groups.items():
        check_shape(b, f"bounds[{name!r}]", (n_layers,))
    fig = _new_figure((1.5 + 0.7 * n_layers * len(groups) ** 0.5, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(groups)
    x = np.arange(n_layers)
    for i, (name, b) in enumerate(groups.items()):
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, b, width=width, color=f"C{i}",
               label=name)
    ax.set_yscale("log")
    ax.set_xticks(x, labels=list(layer_names), rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("upper Lipschitz bound (L2)")
    if title:
        ax.set_title(title)
    if len(groups) > 1 or next(iter(groups)):
        ax.legend(fontsize="small")
    return save_figure_png(fig, path)


def plot_image_rows(rows, row_labels: Sequence[str], path: str | os.PathLike,
                    title: str | None = None) -> Path:
    """A PNG grid of images ``rows`` ``(R, N, H, W, C)`` in ``[0, 1]``, one labelled row each."""
    rows = np.clip(np.asarray(rows, np.float32), 0.0, 1.0)
    check_rank(rows, "rows", 5)
    r, n = rows.shape[:2]
    check_shape(row_labels, "row_labels", (r,))
    fig = _new_figure((1.1 * n + 1.6, 1.1 * r + 0.4))
    axes = fig.subplots(r, n, squeeze=False)
    for i in range(r):
        for j in range(n):
            ax = axes[i, j]
            img = rows[i, j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure_png(fig, path)


def plot_adversarial_examples(originals, adversarials, path: str | os.PathLike, *,
                              title: str | None = None,
                              labels: Sequence[str] = ("original", "adversarial",
                                                       "difference")) -> Path:
    """Adversarial examples beside their originals, and the (amplified) difference below.

    Args:
      originals: ``(N, H, W, C)`` images in ``[0, 1]``.
      adversarials: ``(N, H, W, C)`` their adversarial examples.
      path: the PNG file to write.
      title: optional title.
      labels: the three row labels.

    Returns:
      The path written. The difference row shows ``0.5 + d / (2 max |d|)`` per image (grey is
      no change), so that small perturbations are visible.
    """
    x = np.asarray(originals, np.float32)
    check_rank(x, "originals", 4)
    adv = np.asarray(adversarials, np.float32)
    check_shape(adv, "adversarials", x.shape)
    d = adv - x
    scale = np.abs(d).reshape(len(d), -1).max(axis=1).reshape(-1, 1, 1, 1)
    diff = 0.5 + d / (2.0 * np.where(scale > 0, scale, 1.0))
    return plot_image_rows(np.stack([x, adv, diff]), list(labels), path, title=title)
