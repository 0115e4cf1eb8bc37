"""Woods, Chen & Teuscher 2019, Algorithm 1: the RMSE-normalised L2 attack used for adversarial
training, the ARA and adversarial explanations (papers.md §2.7, §2.9-§2.11), for ONE example."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks.result import AttackResult

Array = jax.Array

CRITERIA = ("l2", "l2_min", "btr")
WOODS_LOSSES = ("ce", "margin")


def step_sizes(eps: Array, steps: int, eps_overshoot: float = 1.0) -> Array:
    """Linear ramp-down step sizes of Algorithm 1: ``ss_i = S (T - i) / (T (T + 1) / 2)``.

    Args:
      eps: RMSE budget (scalar, >= 0).
      steps: ``T``.
      eps_overshoot: multiplier; the total path is ``S = eps * eps_overshoot``.

    Returns:
      ``(T,)`` step sizes (RMSE units) with ``sum = S`` exactly (up to rounding).
    """
    i = jnp.arange(steps, dtype=jnp.result_type(eps, jnp.float32))
    total = jnp.asarray(eps) * eps_overshoot
    return total * (steps - i) / (steps * (steps + 1) / 2.0)


def woods_l2(
    logits_fn: Callable[[Array], Array],
    *,
    steps: int = 7,
    criterion: str = "l2",
    loss: str = "ce",
    momentum: float = 0.0,
    eps_overshoot: float = 1.0,
    track_best: bool | None = None,
    encourage: bool = False,
    sanity_check: bool = False,
    half_half: bool = False,
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    clip: bool = False,
) -> Callable[..., AttackResult]:
    """Algorithm 1 of Woods et al. 2019 (papers.md §2.9), exactly as the reference code.

    With ``delta_0 = 0``, ``S = eps * eps_overshoot`` and ``t`` the class followed (the true
    ``label``, or ``target`` when ``encourage``), for ``i = 0 .. T-1`` (plus, with track-best, one
    extra evaluation-only pass at ``delta_T``):
      * ``g = grad_delta CE(f(x + delta), t)`` (negated when ``encourage``: descent towards ``t``;
        with ``loss="margin"`` the margin ``max_{j != t} z_j - z_t`` replaces ``CE``);
      * ``cond`` = "boundary not reached": ``"l2"``: ``RMSE(delta) < eps``; ``"l2_min"``:
        ``argmax f(x + delta) == label`` (``!= target`` when ``encourage``); ``"btr"``:
        ``softmax(f(x + delta))[label] > 1/K`` (``<= 1/K`` for ``target`` when ``encourage``);
      * ``dir = cond * g + (1 - cond) * (-delta)``, ``dir /= 1e-8 + RMSE(dir)``;
      * momentum ``mu > 0``: ``m = mu m + (1 - mu) dir; dir = m`` (not renormalised);
      * ``dir *= affected``; ``delta += ss_i dir`` with ``ss_i`` from :func:`step_sizes`.
    Track-best: at every evaluation where ``cond = 0``, the ``delta`` of smallest RMSE so far is
    stored; the stored ``delta`` is returned, or ``0`` (the clean ``x``) if none was found.
    Without track-best the final ``delta_T`` is returned.

    RMSE is ``||delta||_2 / sqrt(x.size)``; ``eps`` is in RMSE units. The reference applies no box:
    by default (``clip=False``) ``x + delta`` may leave ``[lo, hi]`` (the box then only
    validates ``x``); ``clip=True`` clips the returned point (not the iterates).

    Args:
      logits_fn: per-example ``x -> logits (K,)``; may use batch statistics under
        ``jax.vmap(..., axis_name=...)`` (the attack adds no collectives of its own).
      steps: ``T``.
      criterion: ``"l2"`` (adversarial training), ``"l2_min"`` (minimal misclassifying
        perturbation: ARA / L2-min training) or ``"btr"`` ("better than random": p(label) <= 1/K).
      loss: ``"ce"`` (the reference) or ``"margin"``. With CE the gradient vanishes when the
        softmax saturates (``p(t) = 1`` in float32), the ``1e-8`` of the normalisation then
        dominates and the attack stops moving (``aux["stalled"]``); the margin's gradient does not
        vanish, so the margin variant keeps moving on such examples.
      momentum: ``mu`` in ``[0, 1)`` (ARA: 0.9 with 450 steps and eps 20).
      eps_overshoot: step-budget multiplier (explanations: 5).
      track_best: keep the smallest-RMSE boundary crossing (default: ``True`` for ``"l2_min"`` and
        ``"btr"``, ``False`` for ``"l2"``).
      encourage: descend CE towards ``target`` (adversarial explanations ``g_explain+``,
        papers.md §2.11); ``target`` defaults to ``label``. Success is ``argmax == target`` and
        the explanation is returned even when the clean prediction already is ``target``.
        (The reference forbids ``encourage`` with ``"l2_min"``; here the criteria are mirrored
        towards the target as written above.)
      sanity_check: ``ensure_proper_minimization`` of the reference. Under ``jit`` it is the flag
        ``aux["boundary_by_half"]``; with this option an eager (concrete) call also raises a
        ``ValueError`` when the boundary was not crossed within the first ``floor(T/2)`` steps.
      half_half: draw ``affected ~ Bernoulli(1/2)`` from ``key`` ("half-half" of §2.7).
      reset_misclassified: report already-misclassified examples with ``x_adv = x`` (the
        library convention). ``False`` returns the perturbed point for every example, as the
        reference adversarial training does.
      lo, hi: the box of the clean ``x``.
      clip: clip the returned point to ``[lo, hi]`` (default False, as the reference).

    Returns:
      ``attack(x, label, *, eps, target=None, affected=True, key=None) -> AttackResult``:
      ``eps >= 0`` RMSE budget, ``target`` (only with ``encourage``), ``affected`` a bool / 0-1
      scalar (unaffected examples are left clean), ``key`` (only with ``half_half``). ``aux``:
      ``boundary_by_half`` (bool: crossed within the first ``floor(T/2)`` steps), ``crossed``
      (bool: crossed at some evaluation), ``cross_step`` (int32: first evaluation index at which
      the boundary was crossed, ``-1`` if never; index ``T`` is the extra evaluation),
      ``best_rmse`` (RMSE of the returned ``delta`` before any reset; ``inf`` with track-best
      when nothing was found), ``best_step`` (int32: evaluation index of the returned ``delta``),
      ``path`` (RMSE length of the path actually travelled, ``sum_i ss_i RMSE(dir_i)``, at most
      ``eps * eps_overshoot``) and ``stalled`` (bool: never crossed and travelled less than half
      of the allowed path: the gradient vanished, e.g. a saturated softmax).
    """
    _checks.check_positive_int(steps, "steps")
    _checks.check_choice(criterion, "criterion", CRITERIA)
    _checks.check_choice(loss, "loss", WOODS_LOSSES)
    momentum = _boundary.check_nonneg_float(momentum, "momentum")
    if momentum >= 1:
        raise ValueError(f"`momentum` must lie in [0, 1); got {momentum}.")
    eps_overshoot = _boundary.check_positive_float(eps_overshoot, "eps_overshoot")
    if track_best is None:
        track_best = criterion in ("l2_min", "btr")
    track_best = bool(track_best)
    encourage = bool(encourage)
    lo, hi = _boundary.check_box_setting(lo, hi)
    do_clip = bool(clip) and lo is not None
    half = steps // 2
    sign = -1.0 if encourage else 1.0
    objective_loss = losses.ce_loss if loss == "ce" else losses.margin_loss
    # Both losses grow as ``x + delta`` leaves the followed class, so they share ``sign``.

    def search(logits_fn, ex: _boundary.Example):
        x, label, eps, k = ex.x, ex.label, ex.budget, ex.num_classes
        follow = ex.target if encourage else label
        aff = jnp.asarray(ex.extra["affected"]).astype(x.dtype)
        if half_half:
            aff = aff * jax.random.bernoulli(ex.key, 0.5).astype(x.dtype)
        ss = step_sizes(eps, steps, eps_overshoot).astype(x.dtype)

        def boundary_not_reached(delta, logits):
            if criterion == "l2":
                return projections.rmse(delta) < eps
            if criterion == "l2_min":
                on_class = jnp.argmax(logits) == follow
                return ~on_class if encourage else on_class
            p = jax.nn.softmax(logits)[follow]
            return (p <= 1.0 / k) if encourage else (p > 1.0 / k)

        def evaluate(delta):
            def objective(d):
                logits = logits_fn(x + d)
                return objective_loss(logits, follow), logits

            (_, logits), g = jax.value_and_grad(objective, has_aux=True)(delta)
            return boundary_not_reached(delta, logits), sign * g

        def track(i, cond, delta, best, best_r, best_i, cross):
            r = projections.rmse(delta)
            crossed = ~cond
            take = crossed & (r < best_r)
            best = jnp.where(take, delta, best)
            best_r = jnp.where(take, r, best_r)
            best_i = jnp.where(take, i, best_i)
            cross = jnp.where(crossed & (cross < 0), i, cross)
            return best, best_r, best_i, cross

        def body(i, carry):
            delta, mom, best, best_r, best_i, cross, path = carry
            cond, g = evaluate(delta)
            best, best_r, best_i, cross = track(i, cond, delta, best, best_r, best_i, cross)
            c = cond.astype(x.dtype)
            direction = projections.normalize_rmse(c * g + (1.0 - c) * (-delta))
            if momentum > 0:
                mom = momentum * mom + (1.0 - momentum) * direction
                direction = mom
            step = ss[i] * direction * aff
            delta = delta + step
            return delta, mom, best, best_r, best_i, cross, path + projections.rmse(step)

        zeros = jnp.zeros_like(x)
        init = (zeros, zeros, zeros, jnp.full((), jnp.inf, x.dtype),
                jnp.full((), -1, jnp.int32), jnp.full((), -1, jnp.int32),
                jnp.zeros((), x.dtype))
        delta, _, best, best_r, best_i, cross, path = jax.lax.fori_loop(0, steps, body, init)
        if track_best:
            # The extra evaluation-only pass: a forward pass, no gradient.
            cond = boundary_not_reached(delta, logits_fn(x + delta))
            best, best_r, best_i, cross = track(steps, cond, delta, best, best_r, best_i, cross)
            out = best
        else:
            out = delta
            best_r = projections.rmse(delta)
            best_i = jnp.asarray(steps, jnp.int32)
        by_half = (cross >= 0) & (cross <= half)
        stalled = (cross < 0) & (path < 0.5 * eps * eps_overshoot) & (aff > 0)
        aux = {"boundary_by_half": by_half, "crossed": cross >= 0,
               "cross_step": cross, "best_rmse": best_r, "best_step": best_i,
               "path": path, "stalled": stalled}
        if sanity_check and _checks.is_concrete(by_half) and not bool(by_half):
            raise ValueError(
                "woods_l2 sanity check: the boundary was not crossed within the first "
                f"floor(steps/2)={half} steps, so the remaining steps did not minimise the "
                "perturbation; increase `eps` or `steps`.")
        return x + out, aux

    inner = _boundary.per_example(
        search, logits_fn, lo=lo, hi=hi, budget="eps",
        target="optional" if encourage else "none", default_target=lambda ex: ex.label,
        target_may_equal_label=True, needs_key=bool(half_half),
        reset_misclassified=bool(reset_misclassified) and not encourage, clip=do_clip,
        extras={"affected": _boundary.Extra(default=True)})

    def attack(x: Array, label: Array, *, eps: Array, target: Array | None = None,
               affected: Array | bool = True, key: Array | None = None) -> AttackResult:
        if target is not None and not encourage:
            raise ValueError("`target` is only used with encourage=True (explanations); the "
                             "untargeted attack follows `label`.")
        return inner(x, label, eps=eps, target=target, affected=affected, key=key)

    return attack
