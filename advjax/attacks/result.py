"""The result of one attack, and the pieces every attack shares (box, distortions, success)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
LogitsFn = Callable[[Array], Array]


@flax.struct.dataclass
class AttackResult:
    """Outcome of an attack on ONE example (batched results have a leading batch axis everywhere).

    Attributes:
      x_adv: adversarial input, same shape as the clean ``x``, inside the box ``[lo, hi]``.
      success: bool; untargeted: ``argmax logits(x_adv) != label``; targeted: ``== target``.
      l2: L2 norm of ``x_adv - x`` (input units).
      linf: L-infinity norm of ``x_adv - x``.
      rmse: root-mean-square of ``x_adv - x`` = ``l2 / sqrt(x.size)`` (Szegedy's "distortion",
        Woods' RMSE).
      logits: ``logits_fn(x_adv)``, shape ``(num_classes,)``.
      clean_correct: bool; the clean ``x`` was classified as ``label`` (False means the example was
        already misclassified: it is reported, not attacked, and ``x_adv == x``).
      aux: attack-specific scalars (e.g. the chosen ``c`` of ``lbfgs``, the sanity flag of
        ``woods_l2``); a dict of arrays.
    """

    x_adv: Array
    success: Array
    l2: Array
    linf: Array
    rmse: Array
    logits: Array
    clean_correct: Array
    aux: Mapping[str, Array] = flax.struct.field(default_factory=dict)


def distortions(x: Array, x_adv: Array) -> tuple[Array, Array, Array]:
    """``(l2, linf, rmse)`` of ``x_adv - x`` over all elements of one example."""
    delta = (x_adv - x).reshape(-1)
    l2 = jnp.sqrt(jnp.sum(delta * delta))
    linf = jnp.max(jnp.abs(delta))
    rmse = l2 / jnp.sqrt(jnp.asarray(delta.size, dtype=delta.dtype))
    return l2, linf, rmse


def is_success(logits: Array, label: Array, target: Array | None = None) -> Array:
    """Untargeted: predicted class differs from ``label``; targeted: equals ``target``."""
    pred = jnp.argmax(logits, axis=-1)
    if target is None:
        return pred != label
    return pred == target


def make_result(
    logits_fn: LogitsFn,
    x: Array,
    x_adv: Array,
    label: Array,
    *,
    target: Array | None = None,
    clean_logits: Array | None = None,
    aux: Mapping[str, Array] | None = None,
) -> AttackResult:
    """Builds an :class:`AttackResult`; examples already misclassified keep ``x_adv = x``.

    For an untargeted attack an example whose clean prediction is already wrong is a success at
    zero distortion. For a targeted attack, an example already predicted as ``target`` is too.
    """
    if clean_logits is None:
        clean_logits = logits_fn(x)
    clean_pred = jnp.argmax(clean_logits, axis=-1)
    clean_correct = clean_pred == label
    already = ~clean_correct if target is None else clean_pred == target
    x_adv = jnp.where(already, x, x_adv)
    logits = logits_fn(x_adv)
    l2, linf, rmse = distortions(x, x_adv)
    return AttackResult(
        x_adv=x_adv,
        success=is_success(logits, label, target),
        l2=l2,
        linf=linf,
        rmse=rmse,
        logits=logits,
        clean_correct=clean_correct,
        aux=dict(aux or {}),
    )


def clip_to_box(x: Array, lo: float, hi: float) -> Array:
    return jnp.clip(x, lo, hi)
