"""Image grids of explanations with their confidences, written as PNG (matplotlib Agg, lazy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from advjax.metrics.plots import _new_figure, save_figure_png


def confidence_caption(
    probs_before,
    probs_after,
    target: int,
    class_names: Sequence[str] | None = None,
) -> str:
    """``"cat: 0.412 → 0.957"``: the target's confidence before and after the explanation.

    Args:
      probs_before: ``(K,)`` clean softmax confidences.
      probs_after: ``(K,)`` confidences of the explanation image.
      target: the explained class.
      class_names: optional ``K`` names (default: the class index).
    """
    t = int(target)
    name = class_names[t] if class_names is not None else str(t)
    before, after = float(np.asarray(probs_before)[t]), float(np.asarray(probs_after)[t])
    return f"{name}: {before:.3f} → {after:.3f}"


def _as_image(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    img = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0], "gray"
    if img.ndim == 2:
        return img, "gray"
    return img, None


def explanation_grid(
    images,
    explanations,
    captions,
    path: str | os.PathLike,
    *,
    image_captions: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 1.6,
) -> Path:
    """A PNG grid: the clean images on the first row, one row of explanations per set below.

    Args:
      images: ``(N, H, W, C)`` clean images in ``[0, 1]`` (C = 1 or 3).
      explanations: ``(N, H, W, C)`` explanation images, or ``(R, N, H, W, C)`` for ``R`` rows
        (e.g. one per network or per target); displayed clamped to ``[0, 1]``.
      captions: ``N`` strings (one row) or ``R`` sequences of ``N`` strings: the caption under
        each explanation (e.g. from :func:`confidence_caption`).
      path: the PNG file to write (atomically).
      image_captions: optional ``N`` captions of the clean images (e.g. label and confidence).
      row_labels: optional ``R`` labels of the explanation rows (e.g. network names).
      title: optional figure title.
      cell_inches: size of one cell.

    Returns:
      The path written.
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] not in (1, 3):
        raise ValueError(f"`images` must have shape (N, H, W, 1 or 3); got {imgs.shape}.")
    expl = np.asarray(explanations)
    if expl.ndim == 4:
        expl = expl[None]
        captions = [list(captions)]
    if expl.ndim != 5 or expl.shape[1:] != imgs.shape:
        raise ValueError(f"`explanations` must have shape {imgs.shape} or (R, *{imgs.shape}); "
                         f"got {np.asarray(explanations).shape}.")
    r, n = expl.shape[:2]
    captions = [list(row) for row in captions]
    if len(captions) != r or any(len(row) != n for row in captions):
        raise ValueError(f"`captions` must hold {r} row(s) of {n} strings; got "
                         f"{[len(row) for row in captions]}.")
    if image_captions is not None and len(image_captions) != n:
        raise ValueError(f"`image_captions` must hold {n} strings; got {len(image_captions)}.")
    if row_labels is not None and len(row_labels) != r:
        raise ValueError(f"`row_labels` must hold {r} strings; got {len(row_labels)}.")

    fig = _new_figure((cell_inches * n + (1.2 if row_labels else 0.2), cell_inches * (r + 1) + 0.4))
    grid = fig.add_gridspec(r + 1, n, hspace=0.45, wspace=0.08)
    for row in range(r + 1):
        for col in range(n):
            ax = fig.add_subplot(grid[row, col])
            img = imgs[col] if row == 0 else expl[row - 1, col]
            data, cmap = _as_image(img)
            ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            text = (image_captions[col] if image_captions is not None else "") if row == 0 \
                else captions[row - 1][col]
            ax.set_xlabel(text, fontsize=7)
            if col == 0:
                label = "input" if row == 0 else (row_labels[row - 1] if row_labels else "")
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure_png(fig, path)
