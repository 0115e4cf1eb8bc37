"""Validation at public boundaries: host checks and their jittable predicates, side by side.

Shape and dtype checks are static and always run (also under ``jit``/``vmap``). Value checks
(ranges, NaN, label ranges) need concrete arrays; the host check ``check_NAME`` runs when the
argument is concrete (and raises a ``ValueError`` naming the argument and what was expected) and is
skipped for tracers. Each value check has a jittable predicate ``NAME_ok`` next to it returning a
bool array (``True`` = valid) with the same meaning, which is what traced code (attacks under
``jit(vmap)``) turns into explicit per-example flags. Attacks, metrics, data and training all
validate through this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds values (numpy / committed jax array), False for a tracer."""
    return not isinstance(x, jax.core.Tracer)


# Tolerance for "inside the box" of inputs: float32 images rescaled to [0, 1] may overshoot by a few
# ulps; anything beyond 1e-6 is data in the wrong units (e.g. [0, 255]) or out-of-box input.
BOX_ATOL = 1e-6


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


def finite_ok(x) -> jax.Array:
    """Jittable predicate of :func:`check_finite`: every element of ``x`` is finite (bool)."""
    return jnp.all(jnp.isfinite(x))


def check_finite(x, name: str) -> None:
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        n_bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
        raise ValueError(
            f"`{name}` contains {n_bad} NaN or infinite value(s); expected finite values.")


def in_range_ok(x, lo: float, hi: float, *, atol: float = BOX_ATOL) -> jax.Array:
    """Jittable predicate of :func:`check_in_range`: finite and ``lo - atol <= x <= hi + atol``."""
    return finite_ok(x) & jnp.all(x >= lo - atol) & jnp.all(x <= hi + atol)


def check_in_range(x, name: str, lo: float, hi: float, *, atol: float = BOX_ATOL) -> None:
    """Checks ``lo <= x <= hi`` (tolerance ``atol``) for concrete ``x``; NaN is reported too."""
    check_finite(x, name)
    if is_concrete(x) and np.size(x):
        arr = np.asarray(x)
        xmin, xmax = float(arr.min()), float(arr.max())
        if xmin < lo - atol or xmax > hi + atol:
            raise ValueError(
                    f"`{name}` must lie in [{lo}, {hi}]; got values in [{xmin:.6g}, {xmax:.6g}].")


def nonnegative_ok(x) -> jax.Array:
    """Jittable predicate of :func:`check_nonnegative`: finite and ``>= 0`` everywhere."""
    return finite_ok(x) & jnp.all(x >= 0)


def check_nonnegative(x, name: str) -> None:
    check_finite(x, name)
    if is_concrete(x) and np.size(x) and float(np.min(np.asarray(x))) < 0:
        raise ValueError(f"`{name}` must be >= 0; got minimum {float(np.min(np.asarray(x))):.6g}.")


def labels_ok(labels, num_classes: int) -> jax.Array:
    """Jittable predicate of :func:`check_labels`: elementwise ``0 <= labels < num_classes``."""
    labels = jnp.asarray(labels)
    return (labels >= 0) & (labels < num_classes)


def check_labels(labels, name: str, num_classes: int | None) -> None:
    """Integer labels in ``[0, num_classes)`` (range checked when concrete and known)."""
    check_integer(labels, name)
    if num_classes is not None and is_concrete(labels) and np.size(labels):
        arr = np.asarray(labels)
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(
                f"`{name}` must lie in [0, {num_classes}); "
                f"got values in [{arr.min()}, {arr.max()}].")


def positive_ok(x) -> jax.Array:
    """Jittable predicate of :func:`check_positive`: finite and ``> 0`` everywhere."""
    return finite_ok(x) & jnp.all(x > 0)


def check_positive(x, name: str) -> None:
    """Finite and ``> 0`` (checked when concrete)."""
    check_finite(x, name)
    if is_concrete(x) and np.size(x) and bool(np.any(np.asarray(x) <= 0)):
        raise ValueError(f"`{name}` must be > 0; got minimum {float(np.min(np.asarray(x))):.6g}.")


def check_box(lo: float, hi: float) -> None:
    if not float(lo) < float(hi):
        raise ValueError(f"box must satisfy `lo` < `hi`; got lo={lo}, hi={hi}.")


def check_positive_int(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")


def check_choice(value, name: str, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")
