"""DDN, decoupled direction and norm (Rony et al. 2019, "Decoupling Direction and Norm for
Efficient Gradient-Based L2 Adversarial Attacks and Defenses", Algorithm 1), for ONE example.

A gradient step on the cross-entropy fixes the direction of the perturbation; its L2 norm is a
separate variable ``eps`` that shrinks by ``(1 - gamma)`` while the point is adversarial and
grows by ``(1 + gamma)`` while it is not. The smallest adversarial point seen is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks.fmn import cosine_schedule
from advjax.attacks.result import AttackResult, is_success, keep_smallest_success

Array = jax.Array

# The step size decays from 1 to this value by cosine annealing (the paper's setting).
STEP_FINAL = 0.01


def ddn_search(logits_fn: Callable[[Array], Array], x: Array, label: Array,
               target: Array | None, key: Array, *, steps: int, gamma: float,
               init_norm: float, levels: int | None, lo: float | None,
               hi: float | None) -> tuple[Array, Array, Array]:
    """One DDN run on ONE example.

    Returns:
      ``(x_best, l2_best, found)``: the smallest adversarial point seen (``x`` if none), its L2
      distance to ``x`` (``inf`` if none) and whether one was found.
    """
    if lo is None:
        worst = jnp.asarray(jnp.inf, x.dtype)
    else:
        worst = projections.l2_norm(jnp.maximum(x - lo, hi - x))

    def loss_fn(delta):
        logits = logits_fn(x + delta)
        # Ascend the CE of the label (untargeted) or descend the CE of the target.
        ce = losses.ce_loss(logits, label if target is None else target)
        return (ce if target is None else -ce), logits

    vg = jax.value_and_grad(loss_fn, has_aux=True)

    def body(i, st):
        delta, eps, best, best_l2, found = st
        size = projections.l2_norm(delta)
        (_, logits), g = vg(delta)
        adv, best, best_l2 = keep_smallest_success(logits, label, target, x + delta, size,
                                                   best, best_l2)
        found = found | adv
        # Direction: a normalised gradient step (a random direction where the gradient vanishes).
        g_norm = projections.l2_norm(g)
        g = jnp.where(g_norm > 0, g / jnp.maximum(g_norm, 1e-30),
                      projections.normalize_l2(
                          jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)))
        delta = delta + cosine_schedule(i, steps, 1.0, STEP_FINAL) * g
        # Norm: decoupled, multiplicative.
        eps = jnp.minimum(eps * jnp.where(adv, 1.0 - gamma, 1.0 + gamma), worst)
        delta = delta * (eps / jnp.maximum(projections.l2_norm(delta), 1e-30))
        z = x + delta
        if levels is not None:
            z = lo + jnp.round((z - lo) / (hi - lo) * (levels - 1)) / (levels - 1) * (hi - lo)
        delta = projections.clip_box(z, lo, hi) - x
        return delta, eps, best, best_l2, found

    init = (jnp.zeros_like(x), jnp.asarray(init_norm, x.dtype), x,
            jnp.asarray(jnp.inf, x.dtype), jnp.zeros((), bool))
    _, _, best, best_l2, found = jax.lax.fori_loop(0, steps, body, init)
    return best, best_l2, found


def ddn(
    logits_fn: Callable[[Array], Array],
    *,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    levels: int | None = None,
    targeted: bool = False,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """DDN: the smallest L2 adversarial perturbation (Rony et al. 2019, Algorithm 1).

    From ``delta = 0`` and ``eps = init_norm``, for ``k = 0 .. steps - 1``:
      * the point ``x + delta`` is scored; the smallest adversarial ``||delta||_2`` so far is
        kept;
      * ``delta <- delta + alpha_k g / ||g||_2`` with ``g`` the gradient of the cross-entropy
        (targeted: of minus the CE of the target) and ``alpha_k`` cosine-annealed from 1 to
        0.01 (:func:`advjax.attacks.fmn.cosine_schedule`);
      * ``eps <- eps (1 - gamma)`` if the point was adversarial, else ``eps (1 + gamma)``
        (capped at the L2 norm of the farthest point of the box);
      * ``delta <- eps delta / ||delta||_2``, then ``x + delta`` quantised to ``levels``
        values (optional) and clipped to the box.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      steps: iterations (100 in the paper's untargeted setting, up to 1000).
      gamma: the norm's multiplicative step, in ``(0, 1)`` (0.05).
      init_norm: the initial ``eps`` (input units; 1).
      levels: quantisation of ``x + delta`` to ``levels`` values on ``[lo, hi]`` (256 for 8-bit
        images, the paper's setting) or ``None`` (default: none).
      targeted: take ``target=``; success when it is predicted.
      lo, hi: the box (``levels`` needs one).

    Returns:
      ``attack(x, label, *, key=None, target=None) -> AttackResult``: ``x_adv`` the smallest
      adversarial point found (``x`` if none), ``success`` whether one was found;
      ``result.l2`` and ``aux["distance"]`` its L2 distance to ``x`` (``aux``: ``inf`` if none,
      0 for an already misclassified example). ``key`` (optional) draws the random direction
      used where the gradient vanishes (default ``jax.random.key(0)``).
    """
    _checks.check_positive_int(steps, "steps")
    gamma = _boundary.check_positive_float(gamma, "gamma")
    if gamma >= 1:
        raise ValueError(f"`gamma` must lie in (0, 1); got {gamma}.")
    init_norm = _boundary.check_positive_float(init_norm, "init_norm")
    lo, hi = _boundary.check_box_setting(lo, hi)
    if levels is not None:
        _checks.check_positive_int(levels, "levels")
        if levels < 2 or lo is None:
            raise ValueError(f"`levels` must be >= 2 and needs a box; got levels={levels}, "
                             f"lo={lo}, hi={hi}.")
    targeted = bool(targeted)

    def search(logits_fn, ex: _boundary.Example):
        key = jax.random.key(0) if ex.key is None else ex.key
        best, l2, _ = ddn_search(logits_fn, ex.x, ex.label, ex.target, key, steps=steps,
                                 gamma=gamma, init_norm=init_norm, levels=levels, lo=lo, hi=hi)
        already = is_success(ex.clean_logits, ex.label, ex.target if targeted else None)
        return best, {"distance": jnp.where(already, 0.0, l2)}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi,
                                 target="required" if targeted else "none",
                                 nan_aux=("distance",), distance_aux=("distance",))
