"""Keeping the best point: the preference rule and the restarts loop shared by pgd and apgd."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def better(success_new: Array, loss_new: Array, success_old: Array, loss_old: Array) -> Array:
    """Lexicographic preference used to keep the best point: a success beats a failure, then the
    larger loss wins (bool scalar)."""
    return (success_new & ~success_old) | ((success_new == success_old) & (loss_new > loss_old))


def best_of_runs(run: Callable, keys: Array, x: Array, extra_init: tuple = ()):
    """Runs ``run(key) -> (point, success, loss, *extra)`` once per key (a ``lax.scan``) and keeps
    the best run by :func:`better`.

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

    def body(carry, run_key):
        out = run(run_key)
        take = better(out[1], out[2], carry[1], carry[2])
        return tuple(jnp.where(take, new, old) for new, old in zip(out, carry, strict=True)), None

    best, _ = jax.lax.scan(body, init, keys)
    return best


def run_keys(key: Array | None, restarts: int) -> Array:
    """One key per run: ``key`` itself for one run, ``split(key, restarts)`` for several; zeros
    (placeholders for a deterministic run) when ``key`` is None."""
    if key is None:
        return jnp.zeros((restarts,), jnp.uint32)
    return key[None] if restarts == 1 else jax.random.split(key, restarts)
