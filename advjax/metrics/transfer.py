"""Cross-model transfer of adversarial examples (Szegedy et al. 2013, §4.2, Tables 2 and 4).

``transfer_matrix`` gives the error each model (column) makes on the examples made for each model
(row). The control rows of the paper are built with :func:`gaussian_noise_set` (noise of a given
standard deviation added to the clean images, then clipped to the box) and :func:`amplify`
(adversarial perturbations rescaled to a per-pixel RMS of 0.1; papers.md §1.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import (
    check_box,
    check_finite,
    check_floating,
    check_nonnegative,
    check_shape,
    is_concrete,
)
from advjax.metrics.accuracy import correct_predictions

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def transfer_matrix(
    models: Mapping[str, LogitsFn],
    adversarial_sets: Mapping[str, tuple[Array, Array]],
    *,
    batch_size: int = 256,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Error rate of every model on every set of (adversarial) examples.

    Args:
      models: ``{name: logits_fn}``, per-example ``logits_fn(x) -> (K,)``; the columns.
      adversarial_sets: ``{name: (x_adv, labels)}`` or ``{name: (x_adv, labels, valid)}`` with
        ``x_adv`` ``(N_i, ...)`` float, ``labels`` ``(N_i,)`` int, the TRUE labels of the clean
        examples, and ``valid`` ``(N_i,)`` bool, the attack's ``aux["valid_input"]``: rows whose
        input the attack refused (it returned the clean image) are left out of that set's
        denominator instead of being counted as non-transferring examples; the rows (sets made for
        one model, Gaussian-noise controls, amplified sets, ...).
      batch_size: examples per vectorised chunk.

    Returns:
      ``(matrix, row_names, col_names)``: ``matrix[i, j]`` is the fraction of the valid examples
      of set ``i`` that model ``j`` misclassifies (``argmax logits != label``), float64 in
      ``[0, 1]``, shape ``(len(adversarial_sets), len(models))``; names in the mappings' order.

    Raises:
      ValueError: a set whose ``valid`` mask is not ``(N_i,)`` bool or keeps no example.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("`models` must be a non-empty mapping {name: logits_fn}.")
    if not isinstance(adversarial_sets, Mapping) or not adversarial_sets:
        raise ValueError("`adversarial_sets` must be a non-empty mapping {name: (x_adv, labels)}.")
    for name, fn in models.items():
        if not callable(fn):
            raise TypeError(f"`models[{name!r}]` must be a callable logits_fn; got {type(fn)}.")
    kept = {}
    for name, entry in adversarial_sets.items():
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(f"`adversarial_sets[{name!r}]` must be (x_adv, labels) or "
                             "(x_adv, labels, valid).")
        kept[name] = _valid_mask(entry, f"adversarial_sets[{name!r}]")
    rows, cols = list(adversarial_sets), list(models)
    matrix = np.zeros((len(rows), len(cols)), dtype=np.float64)
    for i, row in enumerate(rows):
        x_adv, labels = adversarial_sets[row][:2]
        if kept[row] is not None:
            check_shape(labels, f"adversarial_sets[{row!r}] labels", (kept[row].shape[0],))
            x_adv, labels = np.asarray(x_adv)[kept[row]], np.asarray(labels)[kept[row]]
        for j, col in enumerate(cols):
            correct = np.asarray(correct_predictions(models[col], x_adv, labels,
                                                     batch_size=batch_size))
            matrix[i, j] = np.count_nonzero(~correct) / correct.shape[0]
    return matrix, rows, cols


def _valid_mask(entry: tuple, where: str) -> np.ndarray | None:
    """The rows of one set to count: its ``valid`` mask (``None``: every row)."""
    if len(entry) == 2:
        return None
    n = np.shape(entry[0])[0] if np.ndim(entry[0]) else 0
    valid = np.asarray(entry[2])
    if valid.dtype != np.bool_ or valid.shape != (n,):
        raise ValueError(f"`{where}` valid mask must be bool of shape ({n},) (one flag per "
                         f"example of x_adv); got {valid.dtype} {valid.shape}.")
    if not valid.any():
        raise ValueError(f"`{where}`: every example is flagged invalid (valid all False); "
                         "no error rate can be given for this set.")
    return valid


def gaussian_noise_set(
    xs: Array,
    stddev: float,
    *,
    key: Array,
    clip: bool = True,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Array:
    """Clean examples plus i.i.d. Gaussian noise: the control rows of Tables 2 and 4.

    Example ``b`` gets noise from ``fold_in(key, b)`` (independent of batch size and order of
    evaluation). Following the reproduction of Szegedy et al. the noisy images are clipped to the
    box (papers.md §1.5); the RMS of the applied perturbation is then slightly below ``stddev``.

    Args:
      xs: ``(N, ...)`` float clean inputs in ``[lo, hi]``.
      stddev: standard deviation of the noise per element (RMS units, e.g. 0.1 or 0.3).
      key: a PRNG key.
      clip: clip the result to ``[lo, hi]``.
      lo, hi: the box.

    Returns:
      ``(N, ...)`` noisy inputs, same dtype as ``xs``.
    """
    check_floating(xs, "xs")
    check_finite(xs, "xs")
    if np.ndim(xs) < 1:
        raise ValueError(f"`xs` must be a batch (N, ...); got shape {np.shape(xs)}.")
    check_nonnegative(np.asarray(stddev, dtype=np.float64), "stddev")
    check_box(lo, hi)
    xs = jnp.asarray(xs)

    @jax.jit
    def run(xs):
        def one(i, x):
            noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            y = x + jnp.asarray(stddev, x.dtype) * noise
            return jnp.clip(y, lo, hi) if clip else y

        return jax.vmap(one)(jnp.arange(xs.shape[0]), xs)

    return run(xs)


def rms_of(v: Array) -> Array:
    """Root-mean-square over all elements of ONE example: ``L2 / sqrt(v.size)``."""
    return jnp.sqrt(jnp.mean(jnp.square(v)))


def amplify(x: Array, x_adv: Array, rms: float = 0.1) -> Array:
    """The perturbation ``x_adv − x`` of ONE example rescaled to a per-pixel RMS of ``rms``.

    ``x + rms · (x_adv − x) / RMS(x_adv − x)``: the stated intent of Szegedy et al. Table 4
    ("magnifies the distortion ... from stddev 0.06 to 0.1"); the formula as printed divides by the
    L2 norm, which would give an RMS of ``0.1/sqrt(n)`` (papers.md §1.5). The result is not clipped
    (clipping would change the RMS). A zero perturbation is returned unchanged. Batch with
    ``jax.vmap`` (or :func:`amplify_set`).

    Args:
      x: clean example, any shape, float.
      x_adv: adversarial example, same shape.
      rms: the RMS of the returned perturbation (>= 0).

    Returns:
      The amplified example, same shape and dtype as ``x``.
    """
    check_floating(x, "x")
    check_shape(x_adv, "x_adv", np.shape(x))
    if is_concrete(rms):
        check_nonnegative(np.asarray(rms, dtype=np.float64), "rms")
    x = jnp.asarray(x)
    delta = jnp.asarray(x_adv, x.dtype) - x
    r = rms_of(delta)
    safe = jnp.where(r > 0, r, 1.0)
    return jnp.where(r > 0, x + (jnp.asarray(rms, x.dtype) / safe) * delta, x)


def amplify_set(xs: Array, xs_adv: Array, rms: float = 0.1) -> Array:
    """:func:`amplify` applied to every example of a batch ``(N, ...)`` (``jax.vmap``)."""
    check_shape(xs_adv, "xs_adv", np.shape(xs))
    if np.ndim(xs) < 1:
        raise ValueError(f"`xs` must be a batch (N, ...); got shape {np.shape(xs)}.")
    return jax.vmap(lambda a, b: amplify(a, b, rms))(jnp.asarray(xs), jnp.asarray(xs_adv))
