"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial
examples with a fast adaptive boundary attack"), for ONE example: L-infinity, L2 and L1,
untargeted and targeted (top-k classes), with restarts.

Each step linearises the decision boundary to the chosen class at the current point ``x1``,
projects both ``x1`` and the clean ``x`` onto that hyperplane intersected with the box (exactly,
:func:`project_hyperplane_box`), moves to a convex combination of the two projections
(extrapolated by ``eta``, biased towards the clean point by at most ``alpha_max``), and after every
success steps back towards ``x`` by the factor ``beta``. It returns the smallest adversarial
perturbation it found.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, passes, projections
from advjax.attacks.result import AttackResult

Array = jax.Array

_BIG = 1e10


def project_hyperplane_box(p: Array, w: Array, b: Array, lo: float | None, hi: float | None,
                           norm: str) -> Array:
    """The smallest ``d`` (in ``norm``) with ``w . (p + d) = b`` and ``lo <= p + d <= hi``.

    Exact: with ``c = b - w . p`` each coordinate moves towards ``sign(c w_i)`` by
    ``min(tau |w_i|, u_i)`` (L2) or ``min(tau, u_i)`` (L-infinity), ``u_i`` the room left in the
    box; ``G(tau) = |w . d|`` is piecewise linear and non-decreasing in ``tau``, with breakpoints
    ``b_i`` (``u_i / |w_i|`` or ``u_i``). The breakpoints are sorted, ``G`` is evaluated at every
    one of them (cumulative sums), and ``G(tau) = |c|`` is solved on the piece that contains the
    root: no bracket, so a coordinate of tiny weight (a huge breakpoint) cannot leave the step
    short of the hyperplane (the former 40-step bisection on ``[0, max breakpoint]`` stopped
    5-10 % short in that case). ``O(n log n)``. When the hyperplane does not meet the box the
    result is the box corner that gets closest (every coordinate at its bound).

    Args:
      p: the point, flat ``(n,)``.
      w, b: the hyperplane ``w . z = b`` (``w`` flat ``(n,)``, ``b`` scalar).
      lo, hi: the box (``None``: no box).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (a fractional knapsack, see
        :func:`_l1_hyperplane_step`).

    Returns:
      ``d``, flat ``(n,)``.
    """
    c = b - jnp.dot(w, p)
    s = jnp.where(c >= 0, 1.0, -1.0).astype(p.dtype)
    up = s * w > 0
    if lo is None:
        room = jnp.full_like(p, _BIG)
    else:
        room = jnp.maximum(jnp.where(up, hi - p, p - lo), 0.0)
    aw = jnp.abs(w)
    if norm == "l1":
        return _l1_hyperplane_step(s, w, aw, room, jnp.abs(c))
    if norm == "l2":
        weight = aw * aw
        brk = jnp.where(aw > 0, room / jnp.where(aw > 0, aw, 1.0), 0.0)
    else:
        weight = aw
        brk = jnp.where(aw > 0, room, 0.0)
    target = jnp.abs(c)
    order = jnp.argsort(brk)
    bs, ws = brk[order], weight[order]
    total = jnp.sum(ws)
    sat_cum = jnp.cumsum(ws * bs)                  # sum_{i <= j} w_i b_i
    # sum_{i > j} w_i as a suffix sum (``total - cumsum`` would cancel: rounding noise times a
    # huge breakpoint is a huge error in G).
    rest_cum = jnp.concatenate([jnp.cumsum(ws[::-1])[::-1][1:], jnp.zeros((1,), ws.dtype)])
    reach_at = sat_cum + bs * rest_cum             # G(b_(j)), non-decreasing in j
    m = jnp.sum(reach_at < target)                 # breakpoints saturated at the root
    n = bs.shape[0]
    sat = jnp.where(m > 0, sat_cum[jnp.maximum(m - 1, 0)], 0.0)
    rest = jnp.where(m > 0, rest_cum[jnp.maximum(m - 1, 0)], total)
    below = jnp.where(m > 0, bs[jnp.maximum(m - 1, 0)], 0.0)
    above = bs[jnp.minimum(m, n - 1)]
    # On the piece [b_(m), b_(m+1)]: G(tau) = sat + tau * rest. Clipped to the piece (rounding);
    # m == n (the hyperplane misses the box): tau = the largest breakpoint, the box corner.
    tau = jnp.clip((target - sat) / jnp.maximum(rest, 1e-30), below, above)
    tau = jnp.where(m >= n, bs[n - 1], tau)
    step = jnp.minimum(tau, brk)
    d = s * jnp.sign(w) * (step * aw if norm == "l2" else step)
    return jnp.where(target > 0, d, 0.0)


def _l1_hyperplane_step(s: Array, w: Array, aw: Array, room: Array, target: Array) -> Array:
    """The L1-smallest move reaching ``|w . d| = target`` in the box (the official FAB
    ``projection_l1``): a fractional knapsack. Coordinate ``i`` buys ``|w_i|`` of progress per
    unit of L1 norm, up to its room ``u_i``, so the coordinates are filled in decreasing
    ``|w_i|`` until ``target`` is reached (the last one partially); when the whole box is not
    enough every coordinate goes to its bound."""
    order = jnp.argsort(-aw)
    ws, us = aw[order], room[order]
    reach = jnp.cumsum(ws * us)
    m = jnp.sum(reach < target)                    # coordinates filled completely
    n = ws.shape[0]
    before = jnp.where(m > 0, reach[jnp.maximum(m - 1, 0)], 0.0)
    part = jnp.clip((target - before) / jnp.maximum(ws[jnp.minimum(m, n - 1)], 1e-30), 0.0,
                    us[jnp.minimum(m, n - 1)])
    rank = jnp.arange(n)
    step_sorted = jnp.where(rank < m, us, jnp.where(rank == m, part, 0.0))
    step = jnp.zeros_like(step_sorted).at[order].set(step_sorted)
    step = jnp.where(aw > 0, step, 0.0)
    return jnp.where(target > 0, s * jnp.sign(w) * step, 0.0)


def _size(v: Array, norm: str) -> Array:
    return projections.norm_of(v, norm)


def fab_search(logits_fn: Callable[[Array], Array], x: Array, label: Array, key: Array, *,
               norm: str, steps: int, lo: float | None, hi: float | None,
               target: Array | None = None, random_start: bool | Array = False,
               start_radius: Array | float = 0.0, alpha_max: float = 0.1, eta: float = 1.05,
               beta: float = 0.9, stop_below: Array | float = -1.0,
               active: Array | bool = True) -> tuple[Array, Array, Array]:
    """One FAB run on ONE example.

    Args:
      target: ``None`` (untargeted: the class whose linearised boundary is closest) or a class.
      random_start: start at a random point at distance ``start_radius / 2`` (restarts).
      stop_below: stop once a perturbation of size ``<= stop_below`` is found (fixed-budget use;
        negative: run every step).
      active: when False no step is taken.

    Returns:
      ``(x_best, size_best, passes)``: the smallest adversarial point found (``x`` and ``inf``
      if none) and the model passes spent (:mod:`advjax.attacks.passes`), per step taken: the
      linearisation (targeted: the gradient of ``z_target - z_label``, 1 forward + 1 backward;
      untargeted: the ``K``-row Jacobian, 1 forward + ``K`` backward) and the forward pass that
      checks the new point.
    """
    shape = x.shape
    x0 = x.reshape(-1)
    k = _boundary.num_classes(logits_fn, x)

    def flat_logits(z):
        return logits_fn(z.reshape(shape))

    if random_start is not False:
        # The official FAB restart: a point of the unit sphere / cube surface (sample_surface).
        t = projections.sample_surface(key, x0.shape, 1.0, norm, x0.dtype)
        x1 = jnp.where(random_start, projections.clip_box(x0 + 0.5 * start_radius * t, lo, hi), x0)
    else:
        x1 = x0

    def linearise(z):
        if target is not None:
            def diff(v):
                zz = flat_logits(v)
                return zz[target] - zz[label]
            df, dg = jax.value_and_grad(diff)(z)
            return df, dg
        # One forward pass and K vector-Jacobian products (what jax.jacrev computes, with the
        # logits of that same forward pass reused; the official FAB: one forward, K backward).
        logits, vjp = jax.vjp(flat_logits, z)
        jac = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(k, dtype=logits.dtype))   # (K, n)
        df_all = logits - logits[label]
        dg_all = jac - jac[label]
        dual = {"linf": lambda: jnp.sum(jnp.abs(dg_all), axis=1),
                "l2": lambda: jnp.sqrt(jnp.sum(dg_all * dg_all, axis=1)),
                "l1": lambda: jnp.max(jnp.abs(dg_all), axis=1)}[norm]()
        ratio = jnp.abs(df_all) / (1e-12 + dual)
        ratio = jnp.where(jnp.arange(k) == label, jnp.inf, ratio)
        j = jnp.argmin(ratio)
        return df_all[j], dg_all[j]

    active = jnp.asarray(active, bool)
    inf = jnp.asarray(jnp.inf, x0.dtype)
    # Already misclassified at the start: that start counts (as in the official code's first check
    # after the first step it would be found anyway).
    st = dict(i=jnp.zeros((), jnp.int32), x1=x1, best=x0, size=inf, passes=passes.zero())
    per_step = (passes.value_and_grad() if target is not None else passes.jacobian(k)) \
        + passes.count(forward=1)

    def cond(st):
        return (st["i"] < steps) & active & ~(st["size"] <= stop_below)

    def body(st):
        x1 = st["x1"]
        df, w = linearise(x1)
        b = jnp.dot(w, x1) - df
        d1 = project_hyperplane_box(x1, w, b, lo, hi, norm)
        d2 = project_hyperplane_box(x0, w, b, lo, hi, norm)
        a1 = jnp.maximum(_size(d1, norm), 1e-8)
        a2 = jnp.maximum(_size(d2, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
        x_new = projections.clip_box((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha,
                                     lo, hi)
        adv = jnp.argmax(flat_logits(x_new)) != label
        t = _size(x_new - x0, norm)
        improve = adv & (t < st["size"])
        return dict(i=st["i"] + 1,
                    x1=jnp.where(adv, x0 + (x_new - x0) * beta, x_new),
                    best=jnp.where(improve, x_new, st["best"]),
                    size=jnp.where(improve, t, st["size"]), passes=st["passes"] + per_step)

    st = jax.lax.while_loop(cond, body, st)
    return st["best"].reshape(shape), st["size"], st["passes"]


def fab_multi_search(logits_fn: Callable[[Array], Array], x: Array, label: Array, key: Array, *,
                     norm: str, steps: int, lo: float | None, hi: float | None,
                     targeted: bool, n_targets: int, n_restarts: int,
                     stop_below: Array | float = -1.0, start_radius: Array | float | None = None,
                     active: Array | bool = True, **kw) -> tuple[Array, Array, Array]:
    """FAB over restarts (and, targeted, over the top ``n_targets`` classes): the smallest
    adversarial point found. Restart 0 starts at ``x``, later restarts at a random point at
    distance ``start_radius / 2`` (default: half the best size found so far, or ``stop_below``).
    With ``stop_below >= 0`` a run stops, and later runs are skipped, once a point of size
    ``<= stop_below`` is found (AutoAttack's fixed-budget use).

    Returns:
      ``(x_best, size_best, passes)``; ``passes`` (:mod:`advjax.attacks.passes`) sums the runs
      made, plus the clean forward pass that ranks the targets (targeted)."""
    targets = (losses.top_targets(logits_fn(x), n_targets) if targeted
               else jnp.zeros((1,), jnp.int32))
    n_t = n_targets if targeted else 1
    active = jnp.asarray(active, bool)

    def run(carry, j):
        # Run j: target j // n_restarts, restart j % n_restarts (in that order), one compiled
        # body for all of them.
        best, size, spent = carry
        ti, r = j // n_restarts, j % n_restarts
        radius = start_radius
        if radius is None:
            radius = jnp.where(jnp.isfinite(size), size,
                               jnp.where(jnp.asarray(stop_below) > 0, stop_below, 0.0))
        run_key = _boundary.example_keys(jax.random.fold_in(key, ti), n_restarts)[r]
        z, t, used = fab_search(logits_fn, x, label, run_key, norm=norm, steps=steps, lo=lo, hi=hi,
                          target=targets[ti] if targeted else None,
                          random_start=(r > 0) if n_restarts > 1 else False,
                          start_radius=radius, stop_below=stop_below,
                          active=active & ~(size <= stop_below), **kw)
        take = t < size
        return (jnp.where(take, z, best), jnp.where(take, t, size), spent + used), None

    init = (x, jnp.asarray(jnp.inf, x.dtype),
            passes.gated(active, passes.count(forward=1)) if targeted else passes.zero())
    (best, size, spent), _ = jax.lax.scan(run, init, jnp.arange(n_t * n_restarts))
    return best, size, spent


def fab(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "linf",
    steps: int = 100,
    n_restarts: int = 1,
    targeted: bool = False,
    n_targets: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """FAB: minimum-norm adversarial examples; also a fixed-budget attack (success within ``eps``).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      steps: iterations per run (100 in AutoAttack).
      n_restarts: runs per target (restart 0 from ``x``, later ones from random points).
      targeted: attack the classes ranked 2nd .. ``n_targets + 1``-th by the clean logits (FAB-T;
        one gradient per step) instead of the closest linearised boundary (a full Jacobian per
        step).
      n_targets: ``1 <= n_targets <= K - 1`` (9 in AutoAttack).
      alpha_max, eta, beta: the paper's bias towards ``x`` (0.1), extrapolation (1.05) and
        backward step (0.9).
      lo, hi: the box.

    Returns:
      ``attack(x, label, *, key, eps=None) -> AttackResult``. Without ``eps``: ``x_adv`` is the
      smallest adversarial point found, ``success`` whether one was found. With ``eps`` (fixed
      budget): success only within ``eps`` (otherwise ``x_adv = x``), and the search stops once
      such a point is found. ``aux["size"]`` is the ``norm`` of the smallest perturbation found
      (``inf`` if none, 0 if already misclassified).
    """
    _checks.check_choice(norm, "norm", projections.BALL_NORMS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(n_restarts, "n_restarts")
    _checks.check_positive_int(n_targets, "n_targets")
    alpha_max = _boundary.check_nonneg_float(alpha_max, "alpha_max")
    eta = _boundary.check_positive_float(eta, "eta")
    beta = _boundary.check_positive_float(beta, "beta")
    if alpha_max > 1 or beta > 1:
        raise ValueError(f"`alpha_max` and `beta` must lie in [0, 1]; got {alpha_max}, {beta}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    targeted = bool(targeted)

    def check_classes(k):
        if targeted and n_targets > k - 1:
            raise ValueError(f"`n_targets` must be <= K - 1 = {k - 1}; got {n_targets}.")

    def search(logits_fn, ex: _boundary.Example):
        budget = ex.budget is not None
        x_adv, size, spent = fab_multi_search(
            logits_fn, ex.x, ex.label, ex.key, norm=norm, steps=steps, lo=lo, hi=hi,
            targeted=targeted, n_targets=n_targets, n_restarts=n_restarts,
            stop_below=ex.budget if budget else -1.0, alpha_max=alpha_max, eta=eta, beta=beta)
        clean_wrong = jnp.argmax(ex.clean_logits) != ex.label
        return x_adv, {"size": jnp.where(clean_wrong, 0.0, size), "passes": spent}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps",
                                 budget_required=False, budget_norm=norm, needs_key=True,
                                 check_classes=check_classes, nan_aux=("size",))
