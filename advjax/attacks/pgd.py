"""Projected gradient descent (Madry et al. 2018) in L-infinity or L2, with restarts."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _common
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


def better(success_new: Array, loss_new: Array, success_old: Array, loss_old: Array) -> Array:
    """Lexicographic preference used to keep the best point: a success beats a failure, then the
    larger loss wins."""
    return (success_new & ~success_old) | ((success_new == success_old) & (loss_new > loss_old))


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
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """Projected gradient ascent on the attack loss within an ``eps`` ball, for ONE example.

    Each run starts at ``x`` (or, with ``random_start``, at a point uniform in the ``norm`` ball of
    radius ``eps`` around ``x``, clipped to the box) and repeats ``steps`` times
    ``x <- P(x + alpha_i * d(grad))`` with ``d = sign`` (L-infinity) or ``g / ||g||_2`` (L2) and
    ``P`` the exact Euclidean projection onto the ball intersected with the box
    (:func:`advjax.attacks._common.project`: a clip for L-infinity; for L2 a bisection on the KKT
    multiplier, which is exact, unlike the common "L2-rescale then clip"). Every iterate (the
    start included) is scored and the best one kept: a success beats a failure, then the larger
    loss wins. Restarts (new random starts) keep the best over runs by the same rule.

    **Arguments:**
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
        ``z_t - max_{j != t} z_j``), see :func:`advjax.attacks._common.attack_loss`.
      schedule: step-size schedule ``"constant"``, ``"cosine"`` or ``"step"``.
      reset_misclassified: report already-misclassified examples unperturbed (``x_adv = x``, the
        library convention). ``False`` attacks every example (adversarial training, Madry et al.).
      lo, hi: the box; ``lo = hi = None`` disables it.

    **Returns:**
      ``attack(x, label, *, eps, key=None, target=None) -> AttackResult``: ``x`` one example in
      the box, ``label`` the true class, ``eps >= 0`` the radius (input units, per example under
      ``vmap``), ``key`` a PRNG key (required when ``random_start``), ``target`` (targeted only).
      ``aux["loss"]`` holds the attack loss at ``x_adv``.
    """
    _checks.check_choice(norm, "norm", _common.NORMS)
    _checks.check_choice(loss, "loss", ("ce", "margin"))
    _checks.check_choice(schedule, "schedule", SCHEDULES)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(restarts, "restarts")
    lo, hi = _common.check_box_setting(lo, hi)
    if step_size is not None and rel_step_size is not None:
        raise ValueError("give at most one of `step_size` and `rel_step_size`; got both.")
    if step_size is not None:
        step_size = _common.check_positive_float(step_size, "step_size")
    if rel_step_size is not None:
        rel_step_size = _common.check_positive_float(rel_step_size, "rel_step_size")
    elif step_size is None:
        rel_step_size = 2.5 / steps
    if restarts > 1 and not random_start:
        raise ValueError(f"`restarts`={restarts} needs `random_start=True` (deterministic runs "
                         "would repeat).")
    targeted = bool(targeted)
    random_start = bool(random_start)
    reset_misclassified = bool(reset_misclassified)

    def attack(x: Array, label: Array, *, eps: Array, key: Array | None = None,
               target: Array | None = None) -> AttackResult:
        x, label, k = _common.check_inputs(logits_fn, x, label, lo, hi)
        target = _common.check_target(target, targeted, k)
        eps = _common.check_eps(eps).astype(x.dtype)
        if random_start:
            key = _common.check_key(key)
        alpha0 = (eps * rel_step_size if rel_step_size is not None
                  else jnp.asarray(step_size, x.dtype))

        def evaluate(z):
            def objective(z):
                logits = logits_fn(z)
                return _common.attack_loss(loss, logits, label, target), logits

            value, logits, g = _common.grad_and_aux(objective, z)
            success = (jnp.argmax(logits) == target) if targeted else (jnp.argmax(logits) != label)
            return value, success, g

        def run(run_key):
            if random_start:
                start = x + _common.sample_ball(run_key, x.shape, eps, norm, x.dtype)
                start = _common.project(start, x, eps, norm, lo, hi)
            else:
                start = x

            def body(i, carry):
                z, best_z, best_s, best_l = carry
                value, success, g = evaluate(z)
                take = better(success, value, best_s, best_l)
                best_z = jnp.where(take, z, best_z)
                best_s = jnp.where(take, success, best_s)
                best_l = jnp.where(take, value, best_l)
                alpha = step_schedule(alpha0, i, steps, schedule)
                z = z + alpha * _common.steepest_direction(g, norm)
                z = _common.project(z, x, eps, norm, lo, hi)
                return z, best_z, best_s, best_l

            init = (start, start, jnp.zeros((), bool), jnp.full((), -jnp.inf, x.dtype))
            z, best_z, best_s, best_l = jax.lax.fori_loop(0, steps, body, init)
            # The last iterate is only scored: a forward pass, no gradient.
            logits = logits_fn(z)
            value = _common.attack_loss(loss, logits, label, target)
            success = (jnp.argmax(logits) == target) if targeted else (jnp.argmax(logits) != label)
            take = better(success, value, best_s, best_l)
            return (jnp.where(take, z, best_z), jnp.where(take, success, best_s),
                    jnp.where(take, value, best_l))

        if random_start:
            # One run uses `key` itself; run r of several uses split(key, restarts)[r].
            keys = key[None] if restarts == 1 else jax.random.split(key, restarts)
        else:
            keys = jnp.zeros((restarts,), jnp.uint32)

        def scan_body(carry, run_key):
            bz, bs, bl = carry
            z, s, v = run(run_key)
            take = better(s, v, bs, bl)
            return (jnp.where(take, z, bz), jnp.where(take, s, bs), jnp.where(take, v, bl)), None

        init = (x, jnp.zeros((), bool), jnp.full((), -jnp.inf, x.dtype))
        (x_adv, _, best_loss), _ = jax.lax.scan(scan_body, init, keys)
        valid = _common.input_flag(x, label, k, eps=eps, target=target)
        return _common.finish_result(logits_fn, x, x_adv, label, target=target,
                                     aux={"loss": best_loss, "valid_input": valid},
                                     reset_misclassified=reset_misclassified)

    return attack

