"""Validation at public boundaries.

Shape and dtype checks are static and always run (also under ``jit``/``vmap``). Value checks
(ranges, NaN, label ranges) need concrete arrays; they run when the argument is concrete and are
skipped for tracers, where results carry explicit flags instead. Every error names the argument and
what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (numpy / committed jax array), False for a tracer."""
    return not isinstance(x, jax.core.Tracer)


def check_rank(x, name: str, ranks: int | Sequence[int]) -> None:
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    ndim = np.ndim(x)
    if ndim not in ranks:
        raise ValueError(
                f"`{name}` must have rank {' or '.join(map(str, ranks))}; got shape {np.shape(x)}.")


def check_shape(x, name: str, shape: Sequence[int | None]) -> None:
    actual = np.shape(x)
    mismatch = any(e is not None and a != e for a, e in zip(actual, shape, strict=False))
    if len(actual) != len(shape) or mismatch:
        expected = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"`{name}` must have shape {expected}; got {actual}.")


def check_floating(x, name: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {dtype}.")


def check_integer(x, name: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"`{name}` must be an integer array; got dtype {dtype}.")


def check_finite(x, name: str) -> None:
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        n_bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
        raise ValueError(
            f"`{name}` contains {n_bad} NaN or infinite value(s); expected finite values.")


def check_in_range(x, name: str, lo: float, hi: float, *, atol: float = 1e-6) -> None:
    """Checks ``lo <= x <= hi`` (tolerance ``atol``) for concrete ``x``; NaN is reported too."""
    check_finite(x, name)
    if is_concrete(x) and np.size(x):
        arr = np.asarray(x)
        xmin, xmax = float(arr.min()), float(arr.max())
        if xmin < lo - atol or xmax > hi + atol:
            raise ValueError(
                    f"`{name}` must lie in [{lo}, {hi}]; got values in [{xmin:.6g}, {xmax:.6g}].")


def check_nonnegative(x, name: str) -> None:
    check_finite(x, name)
    if is_concrete(x) and np.size(x) and float(np.min(np.asarray(x))) < 0:
        raise ValueError(f"`{name}` must be >= 0; got minimum {float(np.min(np.asarray(x))):.6g}.")


def check_labels(labels, name: str, num_classes: int | None) -> None:
    """Integer labels in ``[0, num_classes)`` (range checked when concrete and known)."""
    check_integer(labels, name)
    if num_classes is not None and is_concrete(labels) and np.size(labels):
        arr = np.asarray(labels)
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(
                f"`{name}` must lie in [0, {num_classes}); "
                f"got values in [{arr.min()}, {arr.max()}].")


def check_box(lo: float, hi: float) -> None:
    if not float(lo) < float(hi):
        raise ValueError(f"box must satisfy `lo` < `hi`; got lo={lo}, hi={hi}.")


def check_positive_int(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


def check_choice(value, name: str, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")
