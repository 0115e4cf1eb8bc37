"""A plain-Python transliteration of the official AutoAttack APGD run
(``autoattack/autopgd_base.py``, ``APGDAttack.attack_single_run``, L-infinity), for one example:
the independent truth of the ``schedule="official"`` options of ``apgd_run``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def apgd_official(loss, grad, x, eps, start, steps, rho=0.75):
    """Returns ``(x_best, loss_best, step_size, log)``; ``log`` counts checkpoints that halved by
    condition 1 (oscillation), by condition 2 alone (no improvement since an unreduced check),
    and kept the step."""
    n_iter_2 = max(int(0.22 * steps), 1)
    n_iter_min = max(int(0.06 * steps), 1)
    size_decr = max(int(0.03 * steps), 1)
    x_adv = jnp.clip(start, 0.0, 1.0)
    x_best = x_adv
    g = grad(x_adv)
    g_best = g
    loss_best = float(loss(x_adv))
    step = 2.0 * eps
    x_old = x_adv
    k, counter3 = n_iter_2, 0
    loss_steps = np.zeros(steps)
    loss_best_last, reduced_last = loss_best, True
    log = {"cond1": 0, "cond2_only": 0, "kept": 0}
    for i in range(steps):
        grad2 = x_adv - x_old
        x_old = x_adv
        a = 0.75 if i > 0 else 1.0
        x1 = jnp.clip(jnp.minimum(jnp.maximum(x_adv + step * jnp.sign(g), x - eps), x + eps),
                      0.0, 1.0)
        x1 = jnp.clip(jnp.minimum(jnp.maximum(x_adv + (x1 - x_adv) * a + grad2 * (1 - a),
                                              x - eps), x + eps), 0.0, 1.0)
        x_adv = x1
        f = float(loss(x_adv))
        g = grad(x_adv)
        loss_steps[i] = f
        if f > loss_best:
            x_best, g_best, loss_best = x_adv, g, f
        counter3 += 1
        if counter3 == k:
            # check_oscillation: loss_steps[j - c] > loss_steps[j - c - 1] (index -1 wraps to the
            # last row, still 0 at the first checkpoint, as in the official code).
            t = sum(float(loss_steps[i - c] > loss_steps[i - c - 1]) for c in range(k))
            osc = t <= k * rho
            no_impr = (not reduced_last) and (loss_best_last >= loss_best)
            log["cond1" if osc else "cond2_only" if no_impr else "kept"] += 1
            osc = osc or no_impr
            reduced_last, loss_best_last = osc, loss_best
            if osc:
                step /= 2.0
                x_adv, g = x_best, g_best
            k = max(k - size_decr, n_iter_min)
            counter3 = 0
    return x_best, loss_best, step, log
