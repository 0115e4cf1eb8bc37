"""Accuracy-Robustness Area (ARA) of Woods, Chen & Teuscher (2019), and the curve it integrates.

The ARA is the area between a classifier's "accuracy versus allowed attack size" curve and the naive
classifier's accuracy ``1/K``, counting only where the curve is above that line (papers.md §2.10)::

    ARA = ∫_0^∞ max(0, A(ε) − 1/K) dε,    A(ε) = (1/n) #{b : correct_b and d_b > ε}

where ``d_b`` is the minimal RMSE distortion that changes the decision on example ``b`` (0 for
examples already misclassified). The official code evaluates this integral with a right Riemann sum
over 1000 histogram bins on ``[0, max_b d_b]`` (``method="riemann"``); ``method="exact"`` integrates
the empirical survival function exactly (it is piecewise constant, so the integral is a finite sum).
Because the Riemann sum uses the value at the right end of every bin and ``A`` is non-increasing,
``riemann <= exact`` always.

These are host-side (numpy, float64) reductions over per-example distortions, as in the official
code; the distortions themselves come from a jitted, vmapped attack (:func:`attack_ara`).
"""

from __future__ import annotations

import numpy as np

from advjax._checks import (
    check_choice,
    check_nonnegative,
    check_positive_int,
    check_rank,
    check_shape,
)

ARA_METHODS = ("riemann", "exact")


def _as_distortions(distortions, correct) -> np.ndarray:
    """Validated float64 distortions with examples not ``correct`` set to 0."""
    check_rank(distortions, "distortions", 1)
    d = np.asarray(distortions)
    if not np.issubdtype(d.dtype, np.floating) and not np.issubdtype(d.dtype, np.integer):
        raise TypeError(f"`distortions` must be a real-valued array; got dtype {d.dtype}.")
    d = d.astype(np.float64)
    if d.size == 0:
        raise ValueError("`distortions` must hold at least one example; got shape (0,).")
    if np.isnan(d).any():
        raise ValueError(f"`distortions` contains {int(np.isnan(d).sum())} NaN value(s): attack "
                         "results with invalid input (aux['valid_input'] False) have NaN "
                         "distortions; drop those rows (and say how many) before the ARA.")
    check_nonnegative(d, "distortions")
    if correct is None:
        return d
    check_shape(correct, "correct", (d.shape[0],))
    c = np.asarray(correct)
    if c.dtype != np.bool_:
        if not np.issubdtype(c.dtype, np.number) or not np.all((c == 0) | (c == 1)):
            raise ValueError("`correct` must be boolean (or 0/1) per example; got dtype "
                             f"{c.dtype} with values outside {{0, 1}}.")
        c = c.astype(bool)
    return np.where(c, d, 0.0)


def _check_num_classes(num_classes) -> None:
    check_positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")


def ara(
    distortions,
    correct=None,
    num_classes: int = 10,
    *,
    method: str = "riemann",
    bins: int = 1000,
) -> float:
    """Accuracy-Robustness Area of per-example minimal distortions (papers.md §2.10).

    Args:
      distortions: ``(n,)`` non-negative floats, the minimal RMSE distortion (``L2 / sqrt(d)`` of
        ``x_adv - x``, pixels in ``[0, 1]``) that changes the decision on each example; 0 for
        examples that are already misclassified.
      correct: ``(n,)`` bool (or 0/1), the clean decision is right; examples with ``False`` count
        with distortion 0 whatever ``distortions`` says. ``None``: all ``True``.
      num_classes: ``K >= 2``; the naive classifier's accuracy is ``1/K``.
      method: ``"riemann"``: the official code's right Riemann sum: ``bins`` equal bins on
        ``[0, max d]`` (torch ``histc`` binning, the maximum falls in the last bin),
        ``A_j = 1 − (#d in bins 0..j)/n`` and ``ARA = gap · Σ_j max(0, A_j − 1/K)``.
        ``"exact"``: ``∫_0^∞ max(0, P_b[d_b > ε] − 1/K) dε`` of the empirical survival function.
      bins: number of bins of the Riemann sum (1000 in the official code).

    Returns:
      The ARA as a Python float, in units of accuracy × RMSE; in ``[0, (1 − 1/K) · max d]``.
    """
    d = _as_distortions(distortions, correct)
    _check_num_classes(num_classes)
    check_choice(method, "method", ARA_METHODS)
    check_positive_int(bins, "bins")
    naive = 1.0 / num_classes
    n = d.shape[0]
    if method == "exact":
        s = np.sort(d)
        widths = np.diff(s, prepend=0.0)  # [d_(i-1), d_(i)) with d_(0) = 0
        levels = (n - np.arange(n)) / n  # P[d > ε] on that interval
        return float(np.sum(widths * np.maximum(0.0, levels - naive)))
    d_max = float(d.max())
    if d_max == 0.0:
        return 0.0
    idx = np.floor(d * (bins / d_max)).astype(np.int64)
    idx = np.clip(idx, 0, bins - 1)
    hist = np.bincount(idx, minlength=bins)
    gap = d_max / bins
    acc = 1.0 - np.cumsum(hist) / n
    return float(gap * np.sum(np.maximum(0.0, acc - naive)))


def accuracy_vs_distortion(distortions, correct, grid) -> np.ndarray:
    """Robust accuracy at each attack size of ``grid``, from minimal distortions.

    An example counts as robust at size ``ε`` when it is correctly classified and its minimal
    distortion is larger than ``ε`` (an attack of size exactly ``d`` succeeds), so the curve is the
    empirical survival function ``A(ε) = (1/n) #{b : correct_b and d_b > ε}`` integrated by
    :func:`ara`. ``A(0)`` is the clean accuracy.

    Args:
      distortions: ``(n,)`` non-negative minimal distortions (any unit; RMSE for the ARA).
      correct: ``(n,)`` bool clean correctness, or ``None`` for all correct.
      grid: ``(G,)`` non-negative attack sizes ``ε`` in the units of ``distortions``.

    Returns:
      ``(G,)`` float64 accuracies in ``[0, 1]``, non-increasing along an increasing grid.
    """
    d = _as_distortions(distortions, correct)
    check_rank(grid, "grid", 1)
    g = np.asarray(grid, dtype=np.float64)
    check_nonnegative(g, "grid")
    # #{d_b <= ε} is searchsorted(..., side="right"); the robust examples are the others.
    robust = d.shape[0] - np.searchsorted(np.sort(d), g, side="right")
    return robust / d.shape[0]
