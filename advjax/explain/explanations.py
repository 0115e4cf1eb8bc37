"""Adversarial explanations ``g_explain+`` of Woods, Chen & Teuscher (2019), papers.md §2.11.

An explanation of class ``t`` for an image ``x`` is Algorithm 1 run "backwards": gradient DESCENT on
the cross-entropy towards ``t`` (``encourage=True``) with the L2/RMSE boundary at ``ρ`` and a path
budget of ``5ρ`` over 35 steps. Large, decaying steps spend the budget on the target class and step
back whenever RMSE(δ) ≥ ρ, so the result sits near the RMSE = ρ sphere. On robust networks the
change is semantic (the image looks more like the class); on standard networks it is noise-like.

The attack itself is ``advjax.attacks.woods_l2`` (criterion ``"l2"``, ``encourage=True``); this
module chooses the targets, records the confidences and measures the explanation's strength.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import check_choice, check_positive_int, is_concrete

Array = jax.Array
LogitsFn = Callable[[Array], Array]

TARGET_MODES = ("real", "second", "all")


@flax.struct.dataclass
class Explanation:
    """An adversarial explanation of ONE image for ONE target class (batched: leading axes).

    Attributes:
      image: ``x + δ`` (shape of ``x``), the explanation image; inside ``[0, 1]`` when built with
        ``clip=True`` (as the reference saves it).
      target: int, the class explained.
      probs_before: ``(K,)`` softmax confidences of the clean ``x``.
      probs_after: ``(K,)`` softmax confidences of ``image``.
      rmse: RMSE of ``image − x`` (``L2 / sqrt(x.size)``), close to ``ρ``.
      logprob_gain: ``log p_after[t] − log p_before[t]`` (nats).
      prob_gain: ``p_after[t] − p_before[t]``.
      strength: ``logprob_gain / rmse``: nats of target log-probability gained per unit RMSE
        (0 when ``rmse`` is 0); see :func:`explanation_strength`.
      sanity: bool, the RMSE boundary ``ρ`` was reached within the first half of the steps
        (``ensure_proper_minimization`` of the reference; ``aux["boundary_by_half"]``).
    """

    image: Array
    target: Array
    probs_before: Array
    probs_after: Array
    rmse: Array
    logprob_gain: Array
    prob_gain: Array
    strength: Array
    sanity: Array


def explanation_strength(
    probs_before: Array,
    probs_after: Array,
    target: Array,
    rmse: Array,
    *,
    kind: str = "logprob",
) -> Array:
    """Movement towards the target class per unit of perturbation (RMSE).

    Args:
      probs_before: ``(..., K)`` clean softmax confidences.
      probs_after: ``(..., K)`` confidences of the explanation.
      target: ``(...)`` int target classes.
      rmse: ``(...)`` RMSE of the explanation's perturbation (pixels in ``[0, 1]``).
      kind: ``"logprob"``: ``(log p_after[t] − log p_before[t]) / rmse`` in nats per RMSE;
        ``"prob"``: ``(p_after[t] − p_before[t]) / rmse``.

    Returns:
      ``(...)`` strengths; 0 where ``rmse`` is 0. Comparable across networks at the same ``ρ``:
      the larger, the further the same budget moves the network towards the class.
    """
    check_choice(kind, "kind", ("logprob", "prob"))
    t = jnp.asarray(target)[..., None]
    pb = jnp.take_along_axis(jnp.asarray(probs_before), t, axis=-1)[..., 0]
    pa = jnp.take_along_axis(jnp.asarray(probs_after), t, axis=-1)[..., 0]
    tiny = jnp.finfo(pa.dtype).tiny
    gain = (jnp.log(jnp.maximum(pa, tiny)) - jnp.log(jnp.maximum(pb, tiny))
            if kind == "logprob" else pa - pb)
    rmse = jnp.asarray(rmse)
    return jnp.where(rmse > 0, gain / jnp.where(rmse > 0, rmse, 1.0), 0.0)


def explain(
    logits_fn: LogitsFn,
    x: Array,
    target: Array,
    *,
    rho: float = 0.1,
    steps: int = 35,
    eps_overshoot: float = 5.0,
    momentum: float = 0.0,
    clip: bool = True,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Explanation:
    """The adversarial explanation ``g_explain+`` of ``x`` for class ``target`` (papers.md §2.11).

    Runs ``woods_l2(logits_fn, criterion="l2", encourage=True, steps=steps,
    eps_overshoot=eps_overshoot, momentum=momentum)`` with ``eps = rho`` and ``target``. The
    reference's sanity check (boundary reached within the first half of the steps) is reported as
    the flag ``sanity`` instead of an error, so saturated cases (a network already certain of the
    target, whose gradient vanishes) still return. Pure and per example:
    ``jax.jit(jax.vmap(...))`` over images and/or targets works.

    Args:
      logits_fn: per-example ``x -> logits (K,)`` of a network in inference mode.
      x: ``(H, W, C)`` float image in ``[lo, hi]``.
      target: int scalar in ``[0, K)``, the class to explain.
      rho: RMSE radius ρ of the explanation (0.1 in the reference; 0.075 for the paper's
        COCO figure).
      steps: T (35).
      eps_overshoot: path budget multiplier, ``S = 5ρ`` (``> 1`` selects ``g_explain``).
      momentum: momentum μ (0 in the reference).
      clip: clip the returned image to ``[lo, hi]`` (the reference saves it clamped); the
        confidences and RMSE are those of the returned image.
      lo, hi: the image box.

    Returns:
      An :class:`Explanation`.
    """
    from advjax.attacks import woods_l2

    check_positive_int(steps, "steps")
    if is_concrete(rho) and not float(rho) > 0:
        raise ValueError(f"`rho` must be > 0 (an RMSE radius); got {rho}.")
    attack = woods_l2(logits_fn, steps=steps, criterion="l2", momentum=momentum,
                      eps_overshoot=eps_overshoot, track_best=False, encourage=True,
                      sanity_check=False, lo=lo, hi=hi, clip=clip)
    x = jnp.asarray(x)
    target = jnp.asarray(target)
    res = attack(x, target, eps=jnp.asarray(rho, x.dtype), target=target)
    probs_before = jax.nn.softmax(logits_fn(x).astype(jnp.float32))
    probs_after = jax.nn.softmax(res.logits.astype(jnp.float32))
    strength = explanation_strength(probs_before, probs_after, target, res.rmse)
    pb, pa = probs_before[target], probs_after[target]
    tiny = jnp.finfo(jnp.float32).tiny
    return Explanation(
        image=res.x_adv,
        target=target.astype(jnp.int32),
        probs_before=probs_before,
        probs_after=probs_after,
        rmse=res.rmse,
        logprob_gain=jnp.log(jnp.maximum(pa, tiny)) - jnp.log(jnp.maximum(pb, tiny)),
        prob_gain=pa - pb,
        strength=strength,
        sanity=jnp.asarray(res.aux.get("boundary_by_half", True), bool),
    )


def explanation_targets(logits: Array, label: Array, targets: str | Sequence[int] = "real"
                        ) -> Array:
    """The classes to explain for one image.

    Args:
      logits: ``(K,)`` clean logits.
      label: int true label.
      targets: ``"real"`` (the true class), ``"second"`` (the most confident wrong class), ``"all"``
        (every class ``0..K-1``) or an explicit sequence of classes.

    Returns:
      ``(M,)`` int32 targets.
    """
    k = logits.shape[-1]
    if isinstance(targets, str):
        check_choice(targets, "targets", TARGET_MODES)
        if targets == "real":
            return jnp.reshape(jnp.asarray(label, jnp.int32), (1,))
        if targets == "second":
            masked = jnp.where(jnp.arange(k) == label, -jnp.inf, logits)
            return jnp.reshape(jnp.argmax(masked).astype(jnp.int32), (1,))
        return jnp.arange(k, dtype=jnp.int32)
    arr = np.asarray(targets)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`targets` must be 'real', 'second', 'all' or a non-empty sequence of "
                         f"class indices; got {targets!r}.")
    if arr.min() < 0 or arr.max() >= k:
        raise ValueError(f"`targets` must lie in [0, {k}); got {arr.tolist()}.")
    return jnp.asarray(arr, jnp.int32)


def explain_classes(
    logits_fn: LogitsFn,
    x: Array,
    label: Array,
    targets: str | Sequence[int] = "real",
    **explain_settings,
) -> Explanation:
    """Explanations of one image for several classes (the reference's ``_real``, ``_second`` and
    per-class outputs), vectorised with ``jax.vmap`` over the targets.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      x: ``(H, W, C)`` float image in ``[0, 1]``.
      label: int true label.
      targets: ``"real"``, ``"second"``, ``"all"`` or a sequence of classes
        (see :func:`explanation_targets`).
      **explain_settings: ``rho``, ``steps``, ``eps_overshoot``, ``momentum``, ``clip`` of
        :func:`explain`.

    Returns:
      An :class:`Explanation` with a leading axis ``M`` (one per target).
    """
    x = jnp.asarray(x)
    ts = explanation_targets(logits_fn(x), jnp.asarray(label), targets)
    return jax.vmap(lambda t: explain(logits_fn, x, t, **explain_settings))(ts)
