"""Clean accuracy and robust accuracy under an attack of bounded size."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import (
    check_finite,
    check_floating,
    check_labels,
    check_nonnegative,
    check_positive_int,
    check_rank,
    check_shape,
)
from advjax.parallel import stream

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def _check_batch(xs, labels, logits_fn: LogitsFn | None = None) -> None:
    """Validates a batch; with ``logits_fn`` also the label range ``[0, K)`` (``K`` read from the
    output shape of ``logits_fn`` on one example, no computation)."""
    if np.ndim(xs) < 1 or np.shape(xs)[0] < 1:
        raise ValueError(f"`xs` must be a non-empty batch (N, ...); got shape {np.shape(xs)}.")
    check_floating(xs, "xs")
    check_finite(xs, "xs")
    check_shape(labels, "labels", (np.shape(xs)[0],))
    k = None
    if logits_fn is not None:
        one = jax.ShapeDtypeStruct(np.shape(xs)[1:], jnp.result_type(xs))
        out = jax.eval_shape(logits_fn, one)
        if len(out.shape) != 1:
            raise ValueError("`logits_fn` must map one example (no batch axis) to logits (K,); "
                             f"got {out.shape} for an input of shape {one.shape}.")
        k = int(out.shape[0])
    check_labels(labels, "labels", k)


def _valid_rows(res) -> Array:
    """``aux["valid_input"]`` of an attack result (True when the attack reports none)."""
    aux = getattr(res, "aux", None) or {}
    return jnp.asarray(aux.get("valid_input", True), bool)


def correct_predictions(logits_fn: LogitsFn, xs: Array, labels: Array, *,
                        batch_size: int = 256) -> np.ndarray:
    """Per-example correctness ``argmax logits_fn(x) == label``.

    Runs through :func:`advjax.parallel.stream` (fixed-size chunks of ``jax.vmap``, one
    compilation, sharded over the devices when there are several, results on host).

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (no batch axis).
      xs: ``(N, ...)`` float inputs.
      labels: ``(N,)`` int labels in ``[0, K)``.
      batch_size: examples evaluated together (the chunk size).

    Returns:
      ``(N,)`` bool numpy array.
    """
    _check_batch(xs, labels, logits_fn)
    check_positive_int(batch_size, "batch_size")

    def one(x, y):
        return jnp.argmax(logits_fn(x), axis=-1) == y

    return np.asarray(stream(one, _host_or_device(xs), _host_or_device(labels),
                             chunk_size=batch_size), bool)


def accuracy(logits_fn: LogitsFn, xs: Array, labels: Array, *, batch_size: int = 256) -> float:
    """Fraction of examples classified correctly.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      xs: ``(N, ...)`` float inputs (e.g. images in ``[0, 1]``, NHWC).
      labels: ``(N,)`` int labels in ``[0, K)`` (checked; ``K`` from ``logits_fn``).
      batch_size: examples per vectorised chunk.

    Returns:
      Accuracy in ``[0, 1]`` as a Python float.
    """
    correct = np.asarray(correct_predictions(logits_fn, xs, labels, batch_size=batch_size))
    return float(np.count_nonzero(correct)) / correct.shape[0]


def robust_accuracy_curve(
    attack_fn: Callable,
    xs: Array,
    labels: Array,
    eps_grid,
    *,
    key: Array,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust accuracy of a classifier under an attack of each size in ``eps_grid``.

    The example ``b`` counts as robust at size ``ε`` when its clean prediction is right and the
    attack with budget ``ε`` does not succeed (``clean_correct and not success``). The attack is
    batched with ``jax.vmap`` over the grid and over examples (per-example ``eps``) and run
    through :func:`advjax.parallel.stream` (fixed-size chunks, sharded over the devices when there
    are several); example ``b`` gets the key ``fold_in(key, b)`` for every ``ε`` (common random
    numbers), so results do not depend on ``batch_size`` nor on the device count, and a monotone
    attack gives a non-increasing curve. The grid is rounded to the dtype of ``xs`` (the budget's
    dtype inside the attack).

    Results with invalid input (``aux["valid_input"]`` False: an image outside the attack's box,
    a label out of range) are refused with a ``ValueError`` giving their number: such a row is
    neither robust nor broken.

    Args:
      attack_fn: per-example ``attack(x, label, *, eps, key) -> AttackResult`` (any
        ``advjax.attacks`` constructor's output taking a per-example ``eps``).
      xs: ``(N, ...)`` float inputs.
      labels: ``(N,)`` int labels.
      eps_grid: ``(G,)`` non-negative attack sizes, in the attack's units.
      key: a PRNG key.
      batch_size: examples attacked together (each with all ``G`` sizes).

    Returns:
      ``(eps, acc)``: ``(G,)`` float64 sizes and ``(G,)`` float64 robust accuracies in ``[0, 1]``.
    """
    _check_batch(xs, labels)
    check_rank(eps_grid, "eps_grid", 1)
    eps = np.asarray(eps_grid, dtype=np.float64)
    if eps.size == 0:
        raise ValueError("`eps_grid` must hold at least one attack size; got shape (0,).")
    check_nonnegative(eps, "eps_grid")
    check_positive_int(batch_size, "batch_size")
    robust, invalid = _robust_rows(attack_fn, xs, labels, eps, key=key, batch_size=batch_size)
    n = robust.shape[0]
    n_invalid = np.count_nonzero(invalid.any(axis=1))
    if n_invalid:
        raise ValueError(f"{int(n_invalid)} of {n} example(s) had invalid input for the attack "
                         "(aux['valid_input'] False: image outside the attack's box [lo, hi] or "
                         "label out of range); refusing to count them as robust or broken.")
    return eps, np.count_nonzero(robust, axis=0).astype(np.float64) / n


def _host_or_device(a):
    """``a`` as it is when it is a ``jax.Array`` (kept where it lives), else as numpy."""
    return a if isinstance(a, jax.Array) else np.asarray(a)


def _robust_rows(attack_fn: Callable, xs, labels, eps: np.ndarray, *, key: Array,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example robustness at every size: ``(N, G)`` bool ``robust`` and ``invalid`` (numpy).

    Example ``b`` is attacked with the key ``fold_in(key, b)`` (typed or raw ``uint32`` key) at
    every size of ``eps``, rounded to the dtype of ``xs``.
    """
    xs, labels = _host_or_device(xs), _host_or_device(labels)
    eps_j = jnp.asarray(eps, dtype=jax.dtypes.canonicalize_dtype(xs.dtype))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(xs.shape[0]))

    def robust_one(x, y, k):
        def at(e):
            res = attack_fn(x, y, eps=e, key=k)
            robust = jnp.logical_and(res.clean_correct, jnp.logical_not(res.success))
            return robust, ~_valid_rows(res)

        return jax.vmap(at)(eps_j)  # (G,), (G,)

    robust, invalid = stream(robust_one, xs, labels, keys, chunk_size=batch_size)
    return np.asarray(robust, bool), np.asarray(invalid, bool)
