"""FMN, fast minimum-norm adversarial attacks (Pintor et al. 2021, "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Bounds", Algorithm 1), L0 / L1 / L2 / L-infinity, for ONE example.

Gradient steps on the logit difference inside an ``eps`` ball whose radius adapts: it shrinks by
``(1 - gamma)`` (and to the smallest adversarial norm found) while the iterate is adversarial,
grows by ``(1 + gamma)`` when it is not (before any adversarial point: to the current norm plus
the linearised distance to the boundary ``|loss| / ||grad||_dual``); the step ``alpha`` and
``gamma`` follow cosine annealing. The smallest adversarial point seen is returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks.result import AttackResult, is_success, keep_smallest_success

Array = jax.Array

FMN_NORMS = ("l0", "l1", "l2", "linf")
# The dual norm of each norm (the linearised distance to the boundary).
DUAL = {"l1": "linf", "l2": "l2", "linf": "l1"}


def cosine_schedule(i: Array, steps: int, start: float, end: float) -> Array:
    """``end + (start - end) (1 + cos(pi i / steps)) / 2``: ``start`` at ``i = 0``, decreasing
    towards ``end`` (FMN's ``alpha`` and ``gamma``, DDN's step)."""
    cosine = (1.0 + jnp.cos(math.pi * i / steps)) / 2.0
    return end + (start - end) * cosine


def project_l0(delta: Array, k: Array) -> Array:
    """Keeps the ``k`` entries of ``delta`` of largest magnitude (ties at the ``k``-th kept as
    well), zeroes the others: the Euclidean projection onto the L0 ball of radius ``k``."""
    flat = jnp.abs(delta).reshape(-1)
    n = flat.shape[0]
    k = jnp.clip(k, 0, n).astype(jnp.int32)
    thr = jnp.sort(flat)[jnp.clip(n - k, 0, n - 1)]
    keep = (jnp.abs(delta) >= thr) & (k > 0)
    return jnp.where(keep, delta, 0.0)


def project_ball(delta: Array, eps: Array, norm: str) -> Array:
    """``delta`` projected onto the ``norm`` ball of radius ``eps`` (no box; FMN clips to the
    box afterwards, as the paper's Algorithm 1)."""
    if norm == "l0":
        return project_l0(delta, eps)
    if norm == "linf":
        return projections.project_linf(delta, eps)
    if norm == "l2":
        return projections.project_l2(delta, eps)
    zero = jnp.zeros_like(delta)
    return projections.project_l1_box(delta, zero, eps, None, None)


def logit_difference(logits: Array, label: Array, target: Array | None) -> Array:
    """FMN's loss, to be minimised: untargeted ``z_y - max_{j != y} z_j``; targeted
    ``max_{j != t} z_j - z_t``. Negative exactly when the point is adversarial (up to ties)."""
    if target is None:
        return -losses.margin_loss(logits, label)
    return -losses.targeted_margin_loss(logits, target)


def fmn_search(logits_fn: Callable[[Array], Array], x: Array, label: Array,
               target: Array | None, *, norm: str, steps: int, alpha_init: float,
               alpha_final: float, gamma_init: float, gamma_final: float,
               lo: float | None, hi: float | None) -> tuple[Array, Array, Array]:
    """One FMN run on ONE example.

    Returns:
      ``(x_best, size_best, found)``: the smallest adversarial point seen (``x`` if none), its
      ``norm`` (``inf`` if none) and whether one was found.
    """
    dual = DUAL.get(norm)
    if lo is None:
        worst = jnp.asarray(jnp.inf, x.dtype)
    else:
        worst = projections.norm_of(jnp.maximum(x - lo, hi - x), norm)

    def loss_fn(delta):
        logits = logits_fn(x + delta)
        return logit_difference(logits, label, target), logits

    vg = jax.value_and_grad(loss_fn, has_aux=True)

    def body(i, st):
        delta, eps, best, best_size, found = st
        alpha = cosine_schedule(i, steps, alpha_init, alpha_final)
        gamma = cosine_schedule(i, steps, gamma_init, gamma_final)
        size = projections.norm_of(delta, norm)
        (loss, logits), g = vg(delta)
        adv, best, best_size = keep_smallest_success(logits, label, target, x + delta, size,
                                                     best, best_size)
        found = found | adv
        if norm == "l0":
            eps = jnp.where(adv, jnp.minimum(jnp.minimum(eps - 1, jnp.floor(eps * (1 - gamma))),
                                             best_size),
                            jnp.maximum(eps + 1, jnp.floor(eps * (1 + gamma))))
            eps = jnp.maximum(eps, 0.0)
        else:
            # Before the first adversarial point: the linearised distance to the boundary, times
            # (1 + gamma) (see OVERSHOOT in the docstring of ``fmn``).
            to_boundary = jnp.abs(loss) / jnp.maximum(projections.norm_of(g, dual), 1e-12)
            eps = jnp.where(adv, jnp.minimum(eps * (1 - gamma), best_size),
                            jnp.where(found, eps * (1 + gamma),
                                      (size + to_boundary) * (1 + gamma)))
        eps = jnp.minimum(eps, worst)
        # Descent on the logit difference along the L2-normalised gradient.
        step = projections.normalize_l2(g)
        delta = project_ball(delta - alpha * step, eps, norm)
        delta = projections.clip_box(x + delta, lo, hi) - x
        return delta, eps, best, best_size, found

    eps0 = jnp.asarray(1.0 if norm == "l0" else jnp.inf, x.dtype)
    init = (jnp.zeros_like(x), eps0, x, jnp.asarray(jnp.inf, x.dtype), jnp.zeros((), bool))
    _, _, best, best_size, found = jax.lax.fori_loop(0, steps, body, init)
    return best, best_size, found


def fmn(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "l2",
    steps: int = 100,
    alpha_init: float | None = None,
    alpha_final: float | None = None,
    gamma_init: float = 0.05,
    gamma_final: float = 0.001,
    targeted: bool = False,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """FMN: the smallest adversarial perturbation in L0, L1, L2 or L-infinity.

    One run of ``steps`` iterations from ``delta = 0`` (Pintor et al. 2021, Algorithm 1):
      * ``alpha_i`` and ``gamma_i`` decay from their initial to their final values by cosine
        annealing (:func:`cosine_schedule`);
      * loss ``L = z_y - max_{j != y} z_j`` (targeted: ``max_{j != t} z_j - z_t``);
        adversarial iff ``L < 0``; the smallest adversarial ``||delta||`` so far is kept;
      * ``eps``: adversarial: ``min(eps (1 - gamma), best norm)``; not adversarial:
        ``eps (1 + gamma)`` once an adversarial point has been seen, before that
        ``(||delta|| + |L| / ||grad L||_dual) (1 + gamma)`` (L0: integer updates ``eps -+ 1`` or
        ``floor(eps (1 -+ gamma))``, from ``eps = 1``); capped at the norm of the farthest
        point of the box;
      * ``delta <- proj_eps(delta - alpha grad / ||grad||_2)``, then ``x + delta`` clipped
        to the box.

    One deviation from the paper and its reference code (OVERSHOOT): before the first
    adversarial point they set ``eps`` to the linearised distance ``||delta|| + |L| /
    ||grad L||_dual`` exactly; on a (locally) linear model the projected step then lands ON the
    boundary, where the prediction is a float-rounding tie, and ``eps`` stays there: on a
    4-class linear model 1 example in 6 was never broken in 300 steps. The factor
    ``(1 + gamma)`` (FMN's own growth step) crosses the boundary; the search then shrinks ``eps``
    as in the paper.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      norm: ``"l0"``, ``"l1"``, ``"l2"`` or ``"linf"``.
      steps: iterations (100 to 1000 in the paper).
      alpha_init, alpha_final: step size schedule (input units; defaults ``alpha_init = 1``,
        ``alpha_final = alpha_init / 100``, as the reference implementation).
      gamma_init, gamma_final: ``eps`` step schedule (0.05 -> 0.001).
      targeted: take ``target=``; success when it is predicted.
      lo, hi: the box (``None`` for both: no box).

    Returns:
      ``attack(x, label, *, target=None) -> AttackResult`` (deterministic, no key):
      ``x_adv`` the smallest adversarial point found (``x`` if none), ``success`` whether
      one was found; ``aux["distance"]`` its ``norm`` distance to ``x`` (``inf`` if none,
      0 for an already misclassified example; L2 / L-infinity also in ``result.l2`` /
      ``result.linf``).
    """
    _checks.check_choice(norm, "norm", FMN_NORMS)
    _checks.check_positive_int(steps, "steps")
    alpha_init = 1.0 if alpha_init is None else alpha_init
    alpha_init = _boundary.check_positive_float(alpha_init, "alpha_init")
    alpha_final = (alpha_init / 100 if alpha_final is None
                   else _boundary.check_positive_float(alpha_final, "alpha_final"))
    gamma_init = _boundary.check_positive_float(gamma_init, "gamma_init")
    gamma_final = _boundary.check_positive_float(gamma_final, "gamma_final")
    if gamma_init >= 1 or gamma_final >= 1:
        raise ValueError(f"`gamma_init` and `gamma_final` must lie in (0, 1); got {gamma_init}, "
                         f"{gamma_final}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    targeted = bool(targeted)

    def search(logits_fn, ex: _boundary.Example):
        best, size, _ = fmn_search(logits_fn, ex.x, ex.label, ex.target, norm=norm,
                                   steps=steps, alpha_init=alpha_init,
                                   alpha_final=alpha_final, gamma_init=gamma_init,
                                   gamma_final=gamma_final, lo=lo, hi=hi)
        already = is_success(ex.clean_logits, ex.label, ex.target if targeted else None)
        return best, {"distance": jnp.where(already, 0.0, size)}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi,
                                 target="required" if targeted else "none",
                                 nan_aux=("distance",), distance_aux=("distance",))
