"""Projected gradient descent (Madry et al. 2018) in L-infinity or L2, with restarts."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks._restarts import best_of_runs, better, run_keys
from advjax.attacks.result import AttackResult

Array = jax.Array

SCHEDULES = ("constant", "cosine", "step")


def step_schedule(base: Array, i: Array, steps: int, schedule: str) -> Array:
    """Step size at step ``i`` (0-based) of ``steps``.

    ``"constant"``: ``base``; ``"cosine"``: ``base * (1 + cos(pi i / steps)) / 2``; ``"step"``:
    ``base`` halved at 50% and again at 75% of the steps.
    """
    i = jnp.asarray(i, base.dtype)
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + jnp.cos(math.pi * i / steps))
    if schedule == "step":
        factor = jnp.where(i >= 0.5 * steps, 0.5, 1.0) * jnp.where(i >= 0.75 * steps, 0.5, 1.0)
        return base * factor
    raise ValueError(f"`schedule` must be one of {list(SCHEDULES)}; got {schedule!r}.")


__all__ = ["SCHEDULES", "better", "pgd", "step_schedule"]  # `better`: kept for importers


def pgd(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    rel_step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    schedule: str = "constant",
    projection: str = "exact",
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """Projected gradient ascent on the attack loss within an ``eps`` ball, for ONE example.

    Each run starts at ``x`` (or, with ``random_start``, at a point uniform in the ``norm`` ball of
    radius ``eps`` around ``x``, clipped to the box) and repeats ``steps`` times
    ``x <- P(x + alpha_i * d(grad))`` with ``d = sign`` (L-infinity) or ``g / ||g||_2`` (L2) and
    ``P`` the exact Euclidean projection onto the ball intersected with the box
    (:func:`advjax.attacks.projections.project`: a clip for L-infinity; for L2 the exact
    sort-based solve of :func:`~advjax.attacks.projections.project_l2_box`, or with
    ``projection="clip"`` the common "L2-rescale then clip"). Every iterate (the
    start included) is scored and the best one kept: a success beats a failure, then the larger
    loss wins. Restarts (new random starts) keep the best over runs by the same rule.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      norm: ``"linf"`` or ``"l2"``.
      steps: gradient steps per run (``lax.fori_loop``).
      step_size: absolute step ``alpha`` (input units). Exclusive with ``rel_step_size``.
      rel_step_size: step as a multiple of each example's ``eps``. Default when neither is
        given: ``2.5 / steps`` (Madry et al.'s ``2.5 eps / steps``).
      random_start: start from a uniform point in the ball (needs ``key``).
      restarts: number of runs (> 1 needs ``random_start``); runs are a ``lax.scan``.
      targeted: take ``target=`` and succeed when it is predicted.
      loss: ``"ce"`` (cross-entropy) or ``"margin"`` (``max_{j != y} z_j - z_y``; targeted:
        ``z_t - max_{j != t} z_j``), see :func:`advjax.attacks.losses.attack_loss`.
      schedule: step-size schedule ``"constant"``, ``"cosine"`` or ``"step"``.
      projection: L2 projection onto ball ∩ box: ``"exact"`` (default) or ``"clip"``
        (rescale onto the ball, then clip; cheaper, not the nearest point). Ignored for L-inf.
      reset_misclassified: report already-misclassified examples unperturbed (``x_adv = x``, the
        library convention). ``False`` attacks every example (adversarial training, Madry et al.).
      lo, hi: the box; ``lo = hi = None`` disables it.

    Returns:
      ``attack(x, label, *, eps, key=None, target=None) -> AttackResult``: ``x`` one example in
      the box, ``label`` the true class, ``eps >= 0`` the radius (input units, per example under
      ``vmap``), ``key`` a PRNG key (required when ``random_start``), ``target`` (targeted only).
      ``aux["loss"]`` holds the attack loss at ``x_adv``.
    """
    _checks.check_choice(norm, "norm", projections.NORMS)
    _checks.check_choice(loss, "loss", ("ce", "margin"))
    _checks.check_choice(schedule, "schedule", SCHEDULES)
    _checks.check_choice(projection, "projection", projections.L2_PROJECTIONS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(restarts, "restarts")
    lo, hi = _boundary.check_box_setting(lo, hi)
    if step_size is not None and rel_step_size is not None:
        raise ValueError("give at most one of `step_size` and `rel_step_size`; got both.")
    if step_size is not None:
        step_size = _boundary.check_positive_float(step_size, "step_size")
    if rel_step_size is not None:
        rel_step_size = _boundary.check_positive_float(rel_step_size, "rel_step_size")
    elif step_size is None:
        rel_step_size = 2.5 / steps
    if restarts > 1 and not random_start:
        raise ValueError(f"`restarts`={restarts} needs `random_start=True` (deterministic runs "
                         "would repeat).")
    random_start = bool(random_start)

    def search(logits_fn, ex: _boundary.Example):
        x, label, target, eps = ex.x, ex.label, ex.target, ex.budget
        alpha0 = (eps * rel_step_size if rel_step_size is not None
                  else jnp.asarray(step_size, x.dtype))

        def proj(z):
            return projections.project(z, x, eps, norm, lo, hi, l2_method=projection)

        def score(logits):
            value = losses.attack_loss(loss, logits, label, target)
            pred = jnp.argmax(logits)
            return value, (pred == target) if targeted else (pred != label)

        def evaluate(z):
            def objective(z):
                logits = logits_fn(z)
                return losses.attack_loss(loss, logits, label, target), logits

            (_, logits), g = jax.value_and_grad(objective, has_aux=True)(z)
            return *score(logits), g

        def run(run_key):
            start = x
            if random_start:
                start = proj(x + projections.sample_ball(run_key, x.shape, eps, norm, x.dtype))

            def body(i, carry):
                z, best_z, best_s, best_l = carry
                value, success, g = evaluate(z)
                take = better(success, value, best_s, best_l)
                best_z = jnp.where(take, z, best_z)
                best_s = jnp.where(take, success, best_s)
                best_l = jnp.where(take, value, best_l)
                alpha = step_schedule(alpha0, i, steps, schedule)
                z = proj(z + alpha * projections.steepest_direction(g, norm))
                return z, best_z, best_s, best_l

            init = (start, start, jnp.zeros((), bool), jnp.full((), -jnp.inf, x.dtype))
            z, best_z, best_s, best_l = jax.lax.fori_loop(0, steps, body, init)
            # The last iterate is only scored: a forward pass, no gradient.
            value, success = score(logits_fn(z))
            take = better(success, value, best_s, best_l)
            return (jnp.where(take, z, best_z), jnp.where(take, success, best_s),
                    jnp.where(take, value, best_l))

        # Run 0 uses `key` itself, run r >= 1 fold_in(key, r) (_restarts.run_keys).
        keys = run_keys(ex.key if random_start else None, restarts)
        x_adv, _, best_loss = best_of_runs(run, keys, x)
        return x_adv, {"loss": best_loss}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                 target="required" if targeted else "none",
                                 needs_key=random_start,
                                 reset_misclassified=bool(reset_misclassified))
