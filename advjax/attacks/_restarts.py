"""Keeping the best point: the preference rule and the restarts loop shared by pgd and apgd."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax.attacks._boundary import example_keys

Array = jax.Array


def better(success_new: Array, loss_new: Array, success_old: Array, loss_old: Array) -> Array:
    """Lexicographic preference used to keep the best point: a success beats a failure, then the
    larger loss wins (bool scalar)."""
    return (success_new & ~success_old) | ((success_new == success_old) & (loss_new > loss_old))


RULES = ("best", "first_success")


def best_of_runs(run: Callable, keys: Array, x: Array, extra_init: tuple = (),
                 rule: str = "best", accumulate: tuple[int, ...] = ()):
    """Runs ``run(key) -> (point, success, loss, *extra)`` once per key (a ``lax.scan``) and keeps
    the best run.

    ``rule="best"``: the best run by :func:`better` (success first, then the larger loss).
    ``rule="first_success"`` (AutoAttack's restarts): ``run(key, active)`` is called with
    ``active = False`` once a run has succeeded (it then does no work), and the first successful
    run wins; when none succeeds the last run's point is reported. ``accumulate``: positions in
    the output tuple summed over the runs instead of taken from the winner (query counts).

    Args:
      run: one run from one key; ``point`` has the shape of ``x``, ``success`` bool, ``loss``
        a float scalar, ``extra`` any arrays reported with the winning run.
      keys: ``(R,)`` keys (any leading-axis array; one run per row).
      x: the starting point reported if no run beats "failure at loss -inf".
      extra_init: initial values of ``extra``.

    Returns:
      ``(point, success, loss, *extra)`` of the best run.
    """
    init = (x, jnp.zeros((), bool), jnp.full((), -jnp.inf, x.dtype), *extra_init)

    if rule not in RULES:
        raise ValueError(f"`rule` must be one of {list(RULES)}; got {rule!r}.")

    def body(carry, run_key):
        if rule == "first_success":
            out = run(run_key, ~carry[1])
            take = ~carry[1]
        else:
            out = run(run_key)
            take = better(out[1], out[2], carry[1], carry[2])
        return tuple(old + new if i in accumulate else jnp.where(take, new, old)
                     for i, (new, old) in enumerate(zip(out, carry, strict=True))), None

    best, _ = jax.lax.scan(body, init, keys)
    return best


def run_keys(key: Array | None, runs: int) -> Array:
    """Per-run keys of PGD and the public APGD: run 0 uses ``key`` itself (the single run's key,
    as before restarts existed), run ``r >= 1`` uses ``fold_in(key, r)``
    (:func:`advjax.attacks._boundary.example_keys`). Run ``r``'s key does not depend on the
    number of runs (``restarts=R`` repeats the single run as its run 0, hence never does
    worse). A typed key stays typed with its own implementation (``fold_in`` keeps
    ``impl``); a raw ``uint32[2]`` key stays raw. ``key=None`` (a deterministic run) gives
    placeholders."""
    if key is None:
        return jnp.zeros((runs,), jnp.uint32)
    keys = example_keys(key, runs)
    return keys.at[0].set(key)
