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
                        batch_size: int = 256) -> Array:
    """Per-example correctness ``argmax logits_fn(x) == label``.

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (no batch axis).
      xs: ``(N, ...)`` float inputs.
      labels: ``(N,)`` int labels in ``[0, K)``.
      batch_size: examples evaluated together (``jax.lax.map`` over chunks of ``jax.vmap``).

    Returns:
      ``(N,)`` bool.
    """
    _check_batch(xs, labels, logits_fn)
    check_positive_int(batch_size, "batch_size")
    labels = jnp.asarray(labels)

    @jax.jit
    def run(xs, labels):
        def one(args):
            x, y = args
            return jnp.argmax(logits_fn(x), axis=-1) == y

        return jax.lax.map(one, (xs, labels), batch_size=min(batch_size, xs.shape[0]))

    return run(jnp.asarray(xs), labels)


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
    batched with ``jax.vmap`` over the grid and over examples (per-example ``eps``); example ``b``
    gets the key ``fold_in(key, b)`` for every ``ε`` (common random numbers), so results do not
    depend on ``batch_size`` and a monotone attack gives a non-increasing curve.

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
    xs = jnp.asarray(xs)
    labels = jnp.asarray(labels)
    eps_j = jnp.asarray(eps, dtype=xs.dtype)
    n = xs.shape[0]

    def robust_one(x, y, k):
        def at(e):
            res = attack_fn(x, y, eps=e, key=k)
            robust = jnp.logical_and(res.clean_correct, jnp.logical_not(res.success))
            return robust, ~_valid_rows(res)

        return jax.vmap(at)(eps_j)  # (G,), (G,)

    @jax.jit
    def run(xs, labels):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
        robust, invalid = jax.lax.map(lambda a: robust_one(*a), (xs, labels, keys),
                                      batch_size=min(batch_size, n))
        return (jnp.sum(robust.astype(jnp.int32), axis=0),
                jnp.sum(jnp.any(invalid, axis=1).astype(jnp.int32)))

    counts, n_invalid = run(xs, labels)
    if int(n_invalid):
        raise ValueError(f"{int(n_invalid)} of {n} example(s) had invalid input for the attack "
                         "(aux['valid_input'] False: image outside the attack's box [lo, hi] or "
                         "label out of range); refusing to count them as robust or broken.")
    return eps, np.asarray(counts, dtype=np.float64) / n
