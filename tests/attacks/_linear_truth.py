"""Closed-form truths of linear models shared by the L1 tests."""

from __future__ import annotations

import numpy as np


def min_l1_distance(w, x, m) -> float:
    """The minimal L1 distance from ``x`` (margin ``m = w . x + c > 0``) to the boundary
    ``w . z + c = 0`` inside the box [0, 1]: a fractional knapsack, the coordinates by decreasing
    ``|w|``, each moved up to its room in the box (``inf`` when the box runs out first)."""
    room = np.where(w > 0, x, 1 - x)
    d = 0.0
    for i in np.argsort(-np.abs(w)):
        take = min(room[i], m / abs(w[i]))
        d += take
        m -= take * abs(w[i])
        if m <= 0:
            return d
    return np.inf
