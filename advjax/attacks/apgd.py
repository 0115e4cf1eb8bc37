"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), for ONE example, in pure JAX."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks._restarts import best_of_runs, better, run_keys
from advjax.attacks.result import AttackResult

Array = jax.Array


def checkpoints(steps: int) -> np.ndarray:
    """APGD checkpoints ``w_j = ceil(p_j * steps)`` (Croce & Hein 2020, §3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; the
    checkpoints are the distinct ``w_j`` in ``(0, steps)``, increasing.
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # Round away float noise first (0.41 + 0.16 must give ceil(57.0) = 57, not 58).
    w = sorted({int(math.ceil(round(q * steps, 9))) for q in p[1:]})
    w = [v for v in w if 0 < v < steps]
    return np.asarray(w, np.int64)


def apgd(
    logits_fn: Callable[[Array], Array],
    *,
    loss: str = "ce",
    norm: str = "linf",
    steps: int = 100,
    n_restarts: int = 1,
    rho: float = 0.75,
    alpha: float = 0.75,
    targeted: bool = False,
    projection: str = "exact",
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """APGD: PGD with momentum and a budget-aware step-size schedule, no step size to tune.

    One run (``N = steps`` iterations, ``P`` = projection onto the ball ∩ box, ``f`` the loss):
      * ``x^(0)``: a uniform random point of the ``norm`` ball (radius ``eps``) around ``x``,
        projected; ``eta = 2 eps``; ``x^(1) = P(x^(0) + eta d(grad f(x^(0))))`` with
        ``d = sign`` (L-infinity) or ``g / ||g||_2`` (L2).
      * For ``k >= 1``: ``z = P(x^(k) + eta d(grad f(x^(k))))``,
        ``x^(k+1) = P(x^(k) + alpha (z - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))`` (momentum
        ``alpha = 0.75``); ``x_max`` / ``f_max`` track the best loss seen.
      * At each checkpoint ``w_j`` (:func:`checkpoints`) the step is halved and the iterate reset to
        ``x_max`` when (1) fewer than ``rho (w_j - w_{j-1})`` of the steps since the previous
        checkpoint increased ``f``, or (2) ``eta`` was not halved at the previous checkpoint and
        ``f_max`` has not grown since then.
    Every iterate is scored; the point returned is the best by "success first, then loss" over all
    iterates and all ``n_restarts`` runs (a ``lax.scan``; each run draws a new random start).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      loss: ``"ce"`` (targeted: ``-CE(target)``) or ``"dlr"`` (Eq. 6 / targeted Eq. 7: needs
        ``K >= 3`` / ``K >= 4``).
      norm: ``"linf"`` or ``"l2"``.
      steps: iterations per run ``N`` (``lax.fori_loop``).
      n_restarts: runs from independent random starts.
      rho: checkpoint condition (1) threshold, in ``(0, 1]``.
      alpha: momentum weight of the new step, in ``(0, 1]`` (0.75 in the paper).
      targeted: take ``target=``; success when it is predicted.
      projection: L2 projection onto ball ∩ box, ``"exact"`` or ``"clip"`` (rescale then clip),
        see :func:`advjax.attacks.pgd.pgd`.
      reset_misclassified: report already-misclassified examples unperturbed (default).
      lo, hi: the box; ``lo = hi = None`` disables it.

    Returns:
      ``attack(x, label, *, eps, key, target=None) -> AttackResult``; ``key`` (required) draws
      the random starts. ``aux["loss"]`` is the loss at ``x_adv``, ``aux["eta"]`` the final step
      size of the run that produced ``x_adv``.
    """
    _checks.check_choice(loss, "loss", ("ce", "dlr"))
    _checks.check_choice(norm, "norm", projections.NORMS)
    _checks.check_choice(projection, "projection", projections.L2_PROJECTIONS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(n_restarts, "n_restarts")
    rho = _boundary.check_positive_float(rho, "rho")
    alpha = _boundary.check_positive_float(alpha, "alpha")
    if rho > 1 or alpha > 1:
        raise ValueError(f"`rho` and `alpha` must lie in (0, 1]; got rho={rho}, alpha={alpha}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    targeted = bool(targeted)
    ckpt = checkpoints(steps)
    is_ckpt = np.zeros(steps + 1, bool)
    is_ckpt[ckpt] = True
    # Period length since the previous checkpoint (first period starts at 0).
    period = np.zeros(steps + 1, np.float32)
    prev = 0
    for w in ckpt:
        period[w] = w - prev
        prev = w
    is_ckpt_j = jnp.asarray(is_ckpt)
    period_j = jnp.asarray(period)

    def search(logits_fn, ex: _boundary.Example):
        x, label, target, eps = ex.x, ex.label, ex.target, ex.budget

        def evaluate(z):
            def objective(z):
                logits = logits_fn(z)
                return losses.attack_loss(loss, logits, label, target), logits

            (value, logits), g = jax.value_and_grad(objective, has_aux=True)(z)
            pred = jnp.argmax(logits)
            success = (pred == target) if targeted else (pred != label)
            return value, success, g

        def proj(z):
            return projections.project(z, x, eps, norm, lo, hi, l2_method=projection)

        def step_dir(g):
            return projections.steepest_direction(g, norm)

        def run(run_key):
            x0 = proj(x + projections.sample_ball(run_key, x.shape, eps, norm, x.dtype))
            f0, s0, g0 = evaluate(x0)
            eta = 2.0 * eps
            x1 = proj(x0 + eta * step_dir(g0))
            f1, s1, g1 = evaluate(x1)
            # Best loss so far (x_max) and best "success then loss" point (x_best).
            take1 = f1 > f0
            state = dict(
                x=x1, x_prev=x0, f=f1, g=g1, eta=eta,
                x_max=jnp.where(take1, x1, x0), f_max=jnp.maximum(f0, f1),
                g_max=jnp.where(take1, g1, g0),
                x_best=jnp.where(better(s1, f1, s0, f0), x1, x0),
                s_best=s0 | s1, f_best=jnp.where(better(s1, f1, s0, f0), f1, f0),
                n_inc=(f1 > f0).astype(x.dtype),
                f_max_ckpt=f0, reduced_ckpt=jnp.ones((), bool),
            )

            def body(k_iter, st):
                z = proj(st["x"] + st["eta"] * step_dir(st["g"]))
                x_cur = st["x"]
                x_new = proj(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - st["x_prev"]))
                f_new, s_new, g_new = evaluate(x_new)
                n_inc = st["n_inc"] + (f_new > st["f"]).astype(x.dtype)
                up = f_new > st["f_max"]
                x_max = jnp.where(up, x_new, st["x_max"])
                g_max = jnp.where(up, g_new, st["g_max"])
                f_max = jnp.where(up, f_new, st["f_max"])
                take = better(s_new, f_new, st["s_best"], st["f_best"])
                x_best = jnp.where(take, x_new, st["x_best"])
                f_best = jnp.where(take, f_new, st["f_best"])
                s_best = st["s_best"] | s_new
                # Checkpoint at iteration index k_iter + 1 (the iterate just produced).
                j = k_iter + 1
                at_ckpt = is_ckpt_j[j]
                cond1 = n_inc < rho * period_j[j]
                cond2 = (~st["reduced_ckpt"]) & (st["f_max_ckpt"] >= f_max)
                halve = at_ckpt & (cond1 | cond2)
                eta = jnp.where(halve, 0.5 * st["eta"], st["eta"])
                x_next = jnp.where(halve, x_max, x_new)
                g_next = jnp.where(halve, g_max, g_new)
                f_next = jnp.where(halve, f_max, f_new)
                # As in Algorithm 1 (and the reference code), x^(k) stays the momentum anchor even
                # when x^(k+1) is reset to x_max.
                x_prev = x_cur
                return dict(
                    x=x_next, x_prev=x_prev, f=f_next, g=g_next, eta=eta,
                    x_max=x_max, f_max=f_max, g_max=g_max,
                    x_best=x_best, s_best=s_best, f_best=f_best,
                    n_inc=jnp.where(at_ckpt, 0.0, n_inc).astype(x.dtype),
                    f_max_ckpt=jnp.where(at_ckpt, f_max, st["f_max_ckpt"]),
                    reduced_ckpt=jnp.where(at_ckpt, halve, st["reduced_ckpt"]),
                )

            st = jax.lax.fori_loop(1, steps, lambda i, s: body(i, s), state)
            return st["x_best"], st["s_best"], st["f_best"], st["eta"]

        x_adv, _, best_loss, eta = best_of_runs(run, run_keys(ex.key, n_restarts), x,
                                                (2.0 * eps,))
        return x_adv, {"loss": best_loss, "eta": eta}

    def attack(x: Array, label: Array, *, eps: Array, key: Array | None = None,
               target: Array | None = None) -> AttackResult:
        need = 4 if targeted else 3
        if loss == "dlr" and (k := _boundary.num_classes(logits_fn, x)) < need:
            raise ValueError(f"loss='dlr' needs at least {need} classes; `logits_fn` gives {k}.")
        return inner(x, label, eps=eps, key=key, target=target)

    inner = _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps",
                                  target="required" if targeted else "none", needs_key=True,
                                  reset_misclassified=bool(reset_misclassified))
    return attack
