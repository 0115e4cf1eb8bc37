"""Minimum budget per example: bisection on ``eps`` around any fixed-budget attack, and the
robust-accuracy-vs-eps curve read off the per-example minima (one compiled call, no loop over eps).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks
from advjax.attacks import _boundary
from advjax.attacks.result import AttackResult

Array = jax.Array


def min_eps(attack: Callable[..., AttackResult], *, eps_max: float, steps: int = 12
            ) -> Callable[..., tuple[Array, AttackResult]]:
    """Smallest budget at which ``attack`` succeeds, per example, by bisection.

    The bracket starts at ``[0, eps_max]``; each of the ``steps`` bisection steps runs the attack
    once at the midpoint (same ``key`` every time) and keeps the half where the success switches.
    The result ``eps_min`` is the smallest budget at which the attack DID succeed among those run
    (``eps_max`` and the midpoints; a certified upper bound of the true minimal distortion, within
    ``eps_max / 2**steps`` of the smallest budget at which this attack succeeds when its success is
    monotone in ``eps``). A success at a midpoint is kept even when the attack fails at
    ``eps_max`` (attacks whose success is not monotone in ``eps``, e.g. a step size tied to
    ``eps``). ``inf`` only when no run succeeded; 0 for an example already misclassified.

    Args:
      attack: per-example ``attack(x, label, *, eps, key, ...) -> AttackResult``.
      eps_max: upper end of the search (input units of the attack's norm), > 0.
      steps: bisection steps (tolerance ``eps_max / 2**steps``).

    Returns:
      ``search(x, label, *, key, **kw) -> (eps_min, result)``: ``eps_min`` in the attack's float
      dtype; ``result`` is the attack's result at ``eps_min`` (its ``x_adv`` is the adversarial
      found there), or its result at ``eps_max`` when ``eps_min`` is ``inf``.
    """
    eps_max = _boundary.check_positive_float(eps_max, "eps_max")
    _checks.check_positive_int(steps, "steps")

    def search(x: Array, label: Array, *, key: Array | None = None, **kw) -> tuple[Array,
                                                                                  AttackResult]:
        top = attack(x, label, eps=jnp.asarray(eps_max, jnp.result_type(float)), key=key, **kw)
        zero = jnp.zeros((), jnp.result_type(float))

        def body(_, carry):
            a, b, best, found = carry
            mid = 0.5 * (a + b)
            r = attack(x, label, eps=mid, key=key, **kw)
            ok = r.success
            best = jax.tree.map(lambda new, old: jnp.where(ok, new, old), r, best)
            # b only moves down, to a budget that succeeded: it is the smallest success so far.
            return jnp.where(ok, a, mid), jnp.where(ok, mid, b), best, found | ok

        a, b, best, found = jax.lax.fori_loop(
            0, steps, body, (zero, zero + eps_max, top, jnp.asarray(top.success, bool)))
        already = ~top.clean_correct & top.success
        eps_min = jnp.where(found, b, jnp.inf)
        eps_min = jnp.where(already, 0.0, eps_min)
        if "valid_input" in top.aux:
            eps_min = jnp.where(top.aux["valid_input"], eps_min, jnp.nan)
        del a
        return eps_min, best

    return search


def accuracy_vs_eps(eps_min, eps_grid) -> np.ndarray:
    """Robust accuracy at every budget of ``eps_grid`` from per-example minimal budgets.

    ``acc(e) = mean(eps_min > e)``: an example counts as broken at ``e`` when the attack
    succeeded at some budget ``<= e`` (its point is inside every larger ball). NaN entries
    (invalid examples) are excluded from the mean.

    The comparison happens in the dtype of ``eps_min`` (the budget's own dtype, the one the attack
    ran in): the grid is rounded to it first, as the attack itself rounds a budget it is given. An
    example broken at exactly ``float32(0.3)`` is therefore broken at the grid point ``0.3`` (in
    float64 ``float32(0.3) > 0.3`` would count it robust there).

    Args:
      eps_min: ``(N,)`` from :func:`min_eps` (``inf`` = never broken, 0 = misclassified); a
        non-floating array is read as float64.
      eps_grid: ``(M,)`` budgets.

    Returns:
      ``(M,)`` float64 robust accuracies in ``[0, 1]``.
    """
    eps_min = np.asarray(eps_min)
    if not jnp.issubdtype(eps_min.dtype, jnp.floating):
        eps_min = eps_min.astype(np.float64)
    with np.errstate(over="ignore"):  # a budget beyond the dtype's range is inf in it
        grid = np.asarray(eps_grid, np.float64).reshape(-1).astype(eps_min.dtype)
    valid = ~np.isnan(eps_min)
    if not valid.any():
        raise ValueError("`eps_min` holds no valid (non-NaN) example.")
    e = eps_min[valid]
    # ``inf`` (never broken) stays robust even at a budget that overflows the dtype to inf.
    robust = (e[None, :] > grid[:, None]) | np.isposinf(e)[None, :]
    return robust.mean(axis=1, dtype=np.float64)
