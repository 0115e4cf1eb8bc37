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


def keep_smallest_success(logits: Array, label: Array, target: Array | None, x_new: Array,
                          size: Array, best: Array, best_size: Array) -> tuple[Array, Array, Array]:
    """One step of a minimal-norm search's bookkeeping: ``(success, best, best_size)``.

    ``success`` is :func:`is_success` on finite ``logits`` (non-finite logits never succeed);
    ``best`` / ``best_size`` become ``x_new`` / ``size`` when it succeeds at a smaller size.
    """
    success = is_success(logits, label, target) & jnp.all(jnp.isfinite(logits))
    smaller = success & (size < best_size)
    return (success, jnp.where(smaller, x_new, best), jnp.where(smaller, size, best_size))


def make_result(
    logits_fn: LogitsFn,
    x: Array,
    x_adv: Array,
    label: Array,
    *,
    target: Array | None = None,
    clean_logits: Array | None = None,
    aux: Mapping[str, Array] | None = None,
    valid: Array | None = None,
    reset_misclassified: bool = True,
    success: Array | None = None,
) -> AttackResult:
    """Builds an :class:`AttackResult` for ONE example: the only result builder of the attacks.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      x: the clean example; x_adv: the attack's point (same shape).
      label: true class (int scalar); target: the target class of a targeted attack, else None.
      clean_logits: ``logits_fn(x)`` when already computed.
      aux: attack-specific arrays, copied into ``result.aux``.
      valid: bool scalar, the inputs passed validation (``None``: valid). Where False the example
        is reported as NOT attacked: ``x_adv = x``, ``success = False``, ``l2 = linf = rmse = NaN``
        and ``clean_correct = False``, so no metric can count it as a success or as robust.
        ``aux["valid_input"]`` is set to this flag.
      reset_misclassified: when True (the library convention) an example whose clean prediction is
        already wrong (targeted: already ``target``) is returned unperturbed (``x_adv = x``); it
        is a success at zero distortion. False keeps the attack's point for every example
        (adversarial training, explanations).
      success: the search's own success decision (bool scalar; e.g. verified over several draws
        of a randomised model) used instead of the argmax rule; still refused where the example
        is invalid or the logits at ``x_adv`` are not finite.

    Non-finite logits are never a success (the argmax of a NaN vector is 0, which would count as
    a misclassification for every label but 0): a non-finite logit vector at ``x_adv`` gives
    ``success=False``, and non-finite clean logits give ``clean_correct=False`` (the boundary
    also flags them, ``aux["input_errors"]``).

    Returns:
      The :class:`AttackResult`; success is ``argmax logits(x_adv) != label`` (targeted:
      ``== target``) and the example is valid.
    """
    if clean_logits is None:
        clean_logits = logits_fn(x)
    clean_pred = jnp.argmax(clean_logits, axis=-1)
    clean_finite = jnp.all(jnp.isfinite(clean_logits), axis=-1)
    clean_correct = (clean_pred == label) & clean_finite
    if reset_misclassified:
        already = ~clean_correct if target is None else clean_pred == target
        x_adv = jnp.where(already, x, x_adv)
    aux = dict(aux or {})
    if valid is not None:
        valid = jnp.asarray(valid, bool)
        x_adv = jnp.where(valid, x_adv, x)
        aux["valid_input"] = valid
    logits = logits_fn(x_adv)
    l2, linf, rmse = distortions(x, x_adv)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    success = (is_success(logits, label, target) if success is None
               else jnp.asarray(success, bool)) & finite
    if valid is not None:
        nan = jnp.asarray(jnp.nan, l2.dtype)
        l2, linf, rmse = (jnp.where(valid, v, nan) for v in (l2, linf, rmse))
        success = success & valid
        clean_correct = clean_correct & valid
    return AttackResult(
        x_adv=x_adv,
        success=success,
        l2=l2,
        linf=linf,
        rmse=rmse,
        logits=logits,
        clean_correct=clean_correct,
        aux=aux,
    )
