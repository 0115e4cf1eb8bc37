"""Figures of the metrics: accuracy-vs-distortion curves with the ARA shaded, transfer heatmaps.

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
