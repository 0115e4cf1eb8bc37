"""Box-constrained limited-memory BFGS for ONE problem, in pure JAX (vmappable, jittable).

The solver minimises a smooth ``fun(x)`` subject to ``lower <= x <= upper`` elementwise. It is the
projected quasi-Newton method of Bertsekas (1982, "Projected Newton methods for optimization
problems with simple constraints") with an L-BFGS model (Nocedal & Wright 2006, Alg. 7.4/7.5), the
role ``scipy.optimize.minimize(method="L-BFGS-B")`` plays in the reference implementations of the
Szegedy attack (papers.md §1.3, Appendix A):

1. The eps-active set: coordinates within ``eps_k = min(eps_active, ||x - P(x - g)||)`` of a bound
   whose gradient points out of the box. They move along the scaled steepest-descent direction
   ``-gamma * g`` (the projection then puts them on the bound); the remaining (free) coordinates
   move along ``-H_F g_F``, the two-loop recursion restricted to the free coordinates (pairs whose
   restricted curvature ``s_F . y_F`` is not positive are skipped, so ``H_F`` stays positive
   definite).
2. A projected backtracking Armijo line search along ``x(t) = P(x + t d)``:
   ``f(x(t)) <= f(x) + armijo * g . (x(t) - x)``; the first trial is ``t = 1`` (``1 / ||d||`` on the
   first iteration), then ``t *= shrink``. Each trial evaluates ``value_and_grad`` once, so the
   accepted point's gradient is never recomputed (one forward + backward pass per iteration when
   the unit step is accepted, the usual case).
3. The curvature pair ``(s, y)`` enters a ring buffer of ``history`` pairs when
   ``s . y > eps * y . y``.
4. Stopping: projected-gradient infinity norm ``<= pgtol``, or relative decrease
   ``(f_k - f_{k+1}) <= ftol * max(|f_k|, |f_{k+1}|, 1)`` (scipy's ``factr`` test), or a line search
   that fails from a steepest-descent start, or ``max_iterations``.

All loops are ``jax.lax.while_loop`` / ``fori_loop`` with static sizes; early stopping is the loop
predicate, which ``jax.vmap`` turns into a per-example mask. No host synchronisation happens inside.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks

Array = jax.Array

__all__ = ["LbfgsbResult", "minimize_box"]


@flax.struct.dataclass
class LbfgsbResult:
    """Outcome of :func:`minimize_box` (a pytree; batched results have a leading axis).

    Attributes:
      x: the minimiser found, same shape and dtype as ``x0``, inside ``[lower, upper]``.
      value: ``fun(x)``, scalar.
      grad: ``grad fun(x)``, same shape as ``x``.
      projected_grad_norm: ``max |P(x - g) - x|`` (infinity norm of the projected gradient); zero at
        a first-order stationary point of the box-constrained problem.
      iterations: number of iterations run (int32; a failed line search that restarts from
        steepest descent counts as one).
      evaluations: number of ``value_and_grad`` evaluations, the initial one included (int32).
      converged: True when a tolerance test (``pgtol`` or ``ftol``) stopped the run; False when it
        stopped on ``max_iterations`` or a failed line search.
    """

    x: Array
    value: Array
    grad: Array
    projected_grad_norm: Array
    iterations: Array
    evaluations: Array
    converged: Array


class _State(flax.struct.PyTreeNode):
    x: Array
    f: Array
    g: Array
    s_hist: Array  # (m, n) ring buffer of steps
    y_hist: Array  # (m, n) ring buffer of gradient changes
    used: Array  # (m,) bool: slot holds a pair
    head: Array  # next slot to write
    gamma: Array  # initial inverse-Hessian scaling s.y / y.y of the newest pair
    it: Array
    nfev: Array
    done: Array
    converged: Array


def _two_loop(q: Array, s_hist: Array, y_hist: Array, rho: Array, head: Array, gamma: Array):
    """``H q`` by the L-BFGS two-loop recursion over a ring buffer (``rho = 0`` disables a slot)."""
    m = s_hist.shape[0]

    def first(j, carry):
        q, alpha = carry
        idx = (head - 1 - j) % m  # newest to oldest
        a = rho[idx] * jnp.dot(s_hist[idx], q)
        return q - a * y_hist[idx], alpha.at[idx].set(a)

    q, alpha = jax.lax.fori_loop(0, m, first, (q, jnp.zeros((m,), q.dtype)))
    r = gamma * q

    def second(j, r):
        idx = (head + j) % m  # oldest to newest (unused slots have rho = 0)
        b = rho[idx] * jnp.dot(y_hist[idx], r)
        return r + s_hist[idx] * (alpha[idx] - b)

    return jax.lax.fori_loop(0, m, second, r)


def minimize_box(
    fun: Callable[[Array], Array],
    x0: Array,
    lower: float | Array = -jnp.inf,
    upper: float | Array = jnp.inf,
    *,
    max_iterations: int = 100,
    history: int = 10,
    pgtol: float = 1e-5,
    ftol: float | None = None,
    max_linesearch: int = 30,
    armijo: float = 1e-4,
    shrink: float = 0.5,
    eps_active: float = 1e-3,
) -> LbfgsbResult:
    """Minimises ``fun(x)`` subject to ``lower <= x <= upper`` by projected L-BFGS (one problem).

    Args:
      fun: smooth scalar objective of an array shaped like ``x0``; differentiated with
        ``jax.value_and_grad``.
      x0: starting point, any shape, floating dtype; projected onto the box first.
      lower, upper: bounds, scalars or arrays broadcastable to ``x0`` (``-inf`` / ``inf`` for none);
        ``lower <= upper`` elementwise.
      max_iterations: static maximum number of iterations (each accepted step is one).
      history: static number ``m`` of curvature pairs kept (L-BFGS memory).
      pgtol: stop when ``max |P(x - g) - x| <= pgtol``.
      ftol: stop when the relative decrease ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol``;
        default ``max(1e7 * 2.2e-16, eps(dtype))`` (scipy's ``factr = 1e7`` in float64). Pass
        ``0.0`` to rely on ``pgtol`` and ``max_iterations`` only.
      max_linesearch: static maximum number of backtracking trials per iteration.
      armijo: sufficient-decrease constant in ``(0, 1)``.
      shrink: backtracking factor in ``(0, 1)``.
      eps_active: largest distance to a bound at which a coordinate whose gradient points out of the
        box is treated as active (Bertsekas' epsilon), in the units of ``x``.

    Returns:
      An :class:`LbfgsbResult`. Compose with ``jax.jit`` and ``jax.vmap`` (over ``x0``, bounds and
      anything ``fun`` closes over through ``vmap`` arguments).
    """
    _checks.check_floating(x0, "x0")
    _checks.check_positive_int(max_iterations, "max_iterations")
    _checks.check_positive_int(history, "history")
    _checks.check_positive_int(max_linesearch, "max_linesearch")
    if not 0.0 < armijo < 1.0:
        raise ValueError(f"`armijo` must lie in (0, 1); got {armijo!r}.")
    if not 0.0 < shrink < 1.0:
        raise ValueError(f"`shrink` must lie in (0, 1); got {shrink!r}.")
    if not pgtol >= 0.0:
        raise ValueError(f"`pgtol` must be >= 0; got {pgtol!r}.")
    if not eps_active >= 0.0:
        raise ValueError(f"`eps_active` must be >= 0; got {eps_active!r}.")
    _checks.check_finite(x0, "x0")

    x0 = jnp.asarray(x0)
    shape, dtype = x0.shape, x0.dtype
    n = int(np.prod(shape)) if shape else 1
    lo = jnp.broadcast_to(jnp.asarray(lower, dtype), shape).reshape(n)
    hi = jnp.broadcast_to(jnp.asarray(upper, dtype), shape).reshape(n)
    if _checks.is_concrete(lo) and _checks.is_concrete(hi) and bool(jnp.any(lo > hi)):
        raise ValueError("`lower` must be <= `upper` elementwise.")
    eps = float(jnp.finfo(dtype).eps)
    if ftol is None:
        ftol = max(1e7 * 2.220446049250313e-16, eps)
    if not ftol >= 0.0:
        raise ValueError(f"`ftol` must be >= 0; got {ftol!r}.")
    m = history

    def vg(v):
        f, g = jax.value_and_grad(lambda u: fun(u.reshape(shape)))(v)
        return f.astype(dtype), g.reshape(n).astype(dtype)

    def proj(v):
        return jnp.clip(v, lo, hi)

    def pg_inf(x, g):
        return jnp.max(jnp.abs(proj(x - g) - x))

    x = proj(x0.reshape(n))
    f, g = vg(x)
    zero_i = jnp.zeros((), jnp.int32)
    state = _State(
        x=x, f=f, g=g,
        s_hist=jnp.zeros((m, n), dtype), y_hist=jnp.zeros((m, n), dtype),
        used=jnp.zeros((m,), bool), head=zero_i, gamma=jnp.ones((), dtype),
        it=zero_i, nfev=jnp.ones((), jnp.int32),
        done=pg_inf(x, g) <= pgtol, converged=pg_inf(x, g) <= pgtol,
    )

    def cond(st: _State):
        return (~st.done) & (st.it < max_iterations)

    def body(st: _State) -> _State:
        x, f, g = st.x, st.f, st.g
        # Bertsekas' eps-active set: near a bound with the gradient pointing out of the box.
        pgrad = proj(x - g) - x
        eps_k = jnp.minimum(jnp.asarray(eps_active, dtype), jnp.sqrt(jnp.sum(pgrad * pgrad)))
        active = ((x <= lo + eps_k) & (g > 0)) | ((x >= hi - eps_k) & (g < 0))
        free = (~active).astype(dtype)
        has_hist = jnp.any(st.used)
        gamma = jnp.where(has_hist, st.gamma, jnp.ones((), dtype))
        # Two-loop recursion restricted to the free coordinates.
        s_f = st.s_hist * free
        y_f = st.y_hist * free
        sy_f = jnp.sum(s_f * y_f, axis=1)
        ok = st.used & (sy_f > eps * jnp.sum(y_f * y_f, axis=1)) & (sy_f > 0)
        rho = jnp.where(ok, 1.0 / jnp.where(ok, sy_f, 1.0), 0.0).astype(dtype)
        d_free = -_two_loop(g * free, s_f, y_f, rho, st.head, gamma) * free
        d = d_free - gamma * g * (1.0 - free)
        gd = jnp.dot(g, d)
        bad = ~(gd < 0) | ~jnp.all(jnp.isfinite(d))
        d = jnp.where(bad, -gamma * g, d)
        # First step (or a restart) without curvature information: unit length along d.
        dnorm = jnp.sqrt(jnp.sum(d * d))
        t0 = jnp.where(has_hist & ~bad, jnp.ones((), dtype),
                       jnp.minimum(1.0, 1.0 / jnp.maximum(dnorm, eps)).astype(dtype))

        def ls_cond(c):
            _, _, _, _, accepted, k = c
            return (~accepted) & (k < max_linesearch)

        def ls_body(c):
            t, _, _, _, _, k = c
            xt = proj(x + t * d)
            ft, gt = vg(xt)
            decrease = jnp.dot(g, xt - x)
            accepted = (jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt)) & (decrease < 0)
                        & (ft <= f + armijo * decrease))
            t_next = jnp.where(accepted, t, t * shrink)
            return t_next, xt, ft, gt, accepted, k + 1

        # Under vmap the loop body also runs for finished problems (their results are discarded);
        # marking their line search as done keeps it from running trials for nothing.
        init = (t0, x, f, g, ~cond(st), zero_i)
        _, xt, ft, gt, accepted, n_ls = jax.lax.while_loop(ls_cond, ls_body, init)

        # Accept the step, or keep x and drop the history (stop when already without history).
        x_new = jnp.where(accepted, xt, x)
        f_new = jnp.where(accepted, ft, f)
        g_new = jnp.where(accepted, gt, g)
        s = x_new - x
        y = g_new - g
        sy = jnp.dot(s, y)
        yy = jnp.dot(y, y)
        store = accepted & (sy > eps * yy) & (sy > 0)
        # Row updates (no full-buffer select): the slot keeps its pair when nothing is stored.
        s_hist = st.s_hist.at[st.head].set(jnp.where(store, s, st.s_hist[st.head]))
        y_hist = st.y_hist.at[st.head].set(jnp.where(store, y, st.y_hist[st.head]))
        used = jnp.where(store, st.used.at[st.head].set(True), st.used)
        used = jnp.where(accepted, used, jnp.zeros_like(used))
        head = jnp.where(store, (st.head + 1) % m, st.head)
        gamma_new = jnp.where(store, sy / jnp.where(store, yy, 1.0), st.gamma).astype(dtype)

        pg_ok = pg_inf(x_new, g_new) <= pgtol
        scale = jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        f_ok = accepted & ((f - f_new) <= ftol * scale)
        stalled = ~accepted & ~has_hist
        converged = pg_ok | f_ok
        return _State(
            x=x_new, f=f_new, g=g_new, s_hist=s_hist, y_hist=y_hist, used=used, head=head,
            gamma=gamma_new, it=st.it + 1, nfev=st.nfev + n_ls,
            done=converged | stalled, converged=converged,
        )

    state = jax.lax.while_loop(cond, body, state)
    return LbfgsbResult(
        x=state.x.reshape(shape),
        value=state.f,
        grad=state.g.reshape(shape),
        projected_grad_norm=pg_inf(state.x, state.g),
        iterations=state.it,
        evaluations=state.nfev,
        converged=state.converged,
    )
