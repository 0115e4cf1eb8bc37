"""Pieces shared by the evaluation attacks (APGD-T, FAB, Square, the ensemble): the result with the
invalid-input contract, the top-k target classes and validation of the call arguments.

Every search here is written for ONE example as ``search(x, label, eps, key) -> (x_adv, success,
extras)`` and the public constructors wrap it with validation and :func:`finish`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses
from advjax.attacks.result import AttackResult, make_result

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def top_targets(clean_logits: Array, label: Array, n_targets: int) -> Array:
    """The ``n_targets`` most likely classes other than the top one, most likely first.

    As in the official AutoAttack: the classes ranked 2nd, 3rd, ... by the clean logits (the clean
    top class is ``label`` for a correctly classified example).

    Args:
      clean_logits: ``(K,)``.
      label: the true class (unused for the ranking; kept for a misclassified example, whose 2nd
        class may be the label: a target equal to the label gives a loss of 0 and no success).
      n_targets: ``1 <= n_targets <= K - 1`` (static).

    Returns:
      ``(n_targets,)`` int32 class indices.
    """
    del label
    order = jnp.argsort(-clean_logits)
    return order[1:1 + n_targets].astype(jnp.int32)


def check_call(logits_fn: LogitsFn, x, label, eps, key, lo, hi):
    """Eager validation (errors naming the argument) + the under-``jit`` validity flag.

    Returns:
      ``(x, label, eps, key, num_classes, valid)``.
    """
    _checks.check_floating(x, "x")
    if jnp.ndim(x) < 1:
        raise ValueError("`x` must be one example with rank >= 1 (no batch axis); got a scalar.")
    x = jnp.asarray(x)
    k = _boundary.num_classes(logits_fn, x)
    _checks.check_labels(label, "label", k)
    label = _boundary._check_class(label, "label")
    eps = _boundary._check_budget(eps, "eps").astype(x.dtype)
    if lo is not None:
        _checks.check_in_range(x, "x", lo, hi)
    else:
        _checks.check_finite(x, "x")
    key = _boundary.check_key(key, x=x)
    # the same checks as a per-example flag (the boundary's predicates), for jit / vmap
    valid = (_checks.finite_ok(x) & _checks.labels_ok(label, k) & jnp.isfinite(eps)
             & (eps >= 0))
    if lo is not None:
        valid = valid & _checks.in_range_ok(x, lo, hi)
    return x, label, eps, key, k, valid


def finish(logits_fn: LogitsFn, x: Array, x_adv: Array, label: Array, valid: Array, *,
           norm: str | None = None, eps: Array | None = None,
           aux: Mapping[str, Array] | None = None) -> AttackResult:
    """:func:`make_result` plus the invalid-input contract and (optionally) the budget.

    * An invalid example (``valid`` False) gets ``x_adv = x``, ``success = False``, NaN
      distortions and ``aux["valid_input"] = False``.
    * With ``norm`` and ``eps``: a point outside the ``norm`` ball of radius ``eps`` (a
      minimum-norm search that went further) is not a success: ``x_adv`` is reset to ``x``.
    """
    clean_logits = logits_fn(x)
    x_safe = jnp.where(valid, x_adv, x)
    if norm is not None:
        delta = (x_safe - x).reshape(-1)
        size = jnp.max(jnp.abs(delta)) if norm == "linf" else jnp.sqrt(jnp.sum(delta * delta))
        # Rounding slack: clipping to x +- eps in floating point can leave |x_adv - x| a few ulps
        # of |x| above eps.
        ulp = jnp.finfo(x.dtype).eps * (1.0 + jnp.max(jnp.abs(x)))
        slack = 4 * ulp * (1.0 if norm == "linf" else jnp.sqrt(jnp.asarray(x.size, x.dtype)))
        x_safe = jnp.where(size <= eps * (1 + 1e-6) + slack, x_safe, x)
    res = make_result(logits_fn, x, x_safe, label, clean_logits=clean_logits,
                      aux={**dict(aux or {}), "valid_input": valid})
    nan = jnp.asarray(jnp.nan, res.l2.dtype)
    return res.replace(
        success=res.success & valid,
        l2=jnp.where(valid, res.l2, nan),
        linf=jnp.where(valid, res.linf, nan),
        rmse=jnp.where(valid, res.rmse, nan),
    )


def margin(logits: Array, label: Array) -> Array:
    """``z_label - max_{j != label} z_j`` (<= 0 iff misclassified)."""
    return -losses.margin_loss(logits, label)
