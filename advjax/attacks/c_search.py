"""Per-example search over the penalty constant ``c`` (geometric growth, then bisection).

The Szegedy attack (papers.md §1.3) and Carlini-Wagner L2 both minimise ``||r||^2 + c * loss`` and
search ``c``: too small a ``c`` does not reach the goal, too large a ``c`` overshoots it with more
distortion than needed. The convention followed is the cleverhans one (papers.md Appendix A), with
``c`` on the loss term and the search for the MINIMUM successful ``c``:

* start at ``c = initial_const`` with the bracket ``lower = 0``, ``upper = inf``;
* after a success: ``upper = min(upper, c)`` and ``c = (lower + upper) / 2``;
* after a failure: ``lower = max(lower, c)``; ``c *= growth`` while no success has been seen
  (``upper = inf``), else ``c = (lower + upper) / 2``;
* keep the successful candidate of smallest distortion over all steps.

``search_steps`` counts every inner solve (growth steps included), as cleverhans'
``binary_search_steps`` does. Everything is a ``lax.fori_loop`` over per-example state, so the
search composes with ``jax.vmap`` (each example has its own bracket and its own ``c``).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks

Array = jax.Array

__all__ = ["CSearchResult", "c_search"]


@flax.struct.dataclass
class CSearchResult:
    """Outcome of :func:`c_search` for ONE example (a pytree).

    Attributes:
      x_best: the successful candidate of smallest distortion; ``fallback`` when none succeeded.
      success: bool, some ``c`` succeeded.
      distortion: distortion of ``x_best`` (``inf`` when none succeeded).
      const: the ``c`` that produced ``x_best``; when none succeeded, the last ``c`` tried.
      num_successes: number of search steps whose inner solve succeeded (int32).
      lower: final lower end of the bracket (largest failing ``c``; 0 if none failed).
      upper: final upper end (smallest successful ``c``; ``inf`` if none succeeded).
      work: sum over the solves of the optional 4th output of ``solve`` (e.g. iterations run;
        int32, 0 when ``solve`` returns three values).
    """

    x_best: Array
    success: Array
    distortion: Array
    const: Array
    num_successes: Array
    lower: Array
    upper: Array
    work: Array


def check_const(value, name: str = "initial_const") -> None:
    """Validates a penalty constant: finite and > 0 (value checked when concrete)."""
    _checks.check_finite(value, name)
    if _checks.is_concrete(value) and np.size(value) and bool(np.any(np.asarray(value) <= 0)):
        raise ValueError(f"`{name}` must be > 0; got {value!r}.")


def c_search(
    solve: Callable[[Array], tuple[Array, Array, Array]],
    initial_const: float | Array,
    fallback: Array,
    *,
    search_steps: int,
    growth: float = 10.0,
    max_const: float = 1e10,
) -> CSearchResult:
    """Geometric-then-bisection search of the smallest successful ``c`` for ONE example.

    Args:
      solve: ``solve(c) -> (candidate, success, distortion[, work])``: the inner solve at the
        constant ``c`` (scalar float array); ``candidate`` has the shape and dtype of ``fallback``,
        ``success`` is a bool scalar, ``distortion`` a non-negative float scalar (the quantity the
        search minimises, e.g. the L2 norm of the perturbation).
      initial_const: first ``c`` (scalar > 0; per example under ``vmap``).
      fallback: returned as ``x_best`` when no ``c`` succeeds (e.g. the clean example).
      search_steps: static number of inner solves (growth and bisection steps together).
      growth: factor applied to ``c`` after a failure while no success has been seen (> 1).
      max_const: ``c`` never exceeds this value.

    Returns:
      A :class:`CSearchResult`.
    """
    _checks.check_positive_int(search_steps, "search_steps")
    if not float(growth) > 1.0:
        raise ValueError(f"`growth` must be > 1; got {growth!r}.")
    if not float(max_const) > 0.0:
        raise ValueError(f"`max_const` must be > 0; got {max_const!r}.")
    if jnp.ndim(initial_const) != 0:
        raise ValueError(f"`initial_const` must be a scalar for one example; got shape "
                         f"{jnp.shape(initial_const)} (batch with jax.vmap).")
    check_const(initial_const)
    fallback = jnp.asarray(fallback)
    dtype = jnp.result_type(float)
    c0 = jnp.minimum(jnp.asarray(initial_const, dtype), max_const)
    inf = jnp.asarray(jnp.inf, dtype)
    init = CSearchResult(
        x_best=fallback, success=jnp.zeros((), bool), distortion=inf, const=c0,
        num_successes=jnp.zeros((), jnp.int32), lower=jnp.zeros((), dtype), upper=inf,
        work=jnp.zeros((), jnp.int32),
    )

    def step(_, carry):
        state, c = carry
        out = solve(c)
        candidate, ok, dist = out[:3]
        work = state.work + (jnp.asarray(out[3], jnp.int32) if len(out) > 3 else 0)
        ok = jnp.asarray(ok, bool)
        dist = jnp.asarray(dist, dtype)
        better = ok & (dist < state.distortion)
        upper = jnp.where(ok, jnp.minimum(state.upper, c), state.upper)
        lower = jnp.where(ok, state.lower, jnp.maximum(state.lower, c))
        c_next = jnp.where(jnp.isinf(upper), c * growth, 0.5 * (lower + upper))
        c_next = jnp.minimum(c_next, max_const)
        new = CSearchResult(
            x_best=jnp.where(better, candidate.astype(fallback.dtype), state.x_best),
            success=state.success | ok,
            distortion=jnp.where(better, dist, state.distortion),
            const=jnp.where(better | ~(state.success | ok), c, state.const),
            num_successes=state.num_successes + ok.astype(jnp.int32),
            lower=lower, upper=upper, work=work,
        )
        return new, c_next

    result, _ = jax.lax.fori_loop(0, search_steps, step, (init, c0))
    return result
