"""Adapters from Flax NNX modules to per-example ``logits_fn`` and to linen-style pure apply.

An NNX module is a mutable Python object; attacks, bounds and training steps need pure functions.
Both adapters split the module once into a graph definition (static structure, including the
train / eval mode attributes) and its state (arrays), and merge a fresh copy inside every call:

- :func:`nnx_logits_fn`: ``logits_fn(x)`` of ONE example, in eval mode by default, for
  ``advjax.attacks``, ``advjax.lipschitz`` and ``advjax.parallel``;
- :func:`nnx_apply_fn`: ``apply_fn(variables, x, *, train, mutable)`` with the calling convention
  of ``linen.Module.apply`` and ``{"params", "batch_stats"}`` variables as plain dicts, so the
  linen-based training steps of :mod:`advjax.train` run NNX models unchanged.

Both take a snapshot: later changes to the module's variables are not seen (build a new function
after training). The module passed in is never modified: mutations made during a call (BatchNorm
running statistics in training mode, Dropout's RNG counter) happen on fresh Variables of the merged
copy and are discarded, except the batch statistics that :func:`nnx_apply_fn` returns when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from advjax.models.adapters import cast_floating

Array = jax.Array
LogitsFn = Callable[[Array], Array]
ApplyFn = Callable[..., Any]


def _check_module(module: Any) -> None:
    if not isinstance(module, nnx.Module):
        raise TypeError(f"`module` must be a flax.nnx.Module; got {type(module).__name__}. "
                        "For linen modules use advjax.models.linen_logits_fn.")


def with_mode(module: nnx.Module, *, train: bool) -> nnx.Module:
    """A copy of ``module`` (sharing its arrays) in training or evaluation mode.

    Evaluation mode sets ``use_running_average=True`` (BatchNorm) and ``deterministic=True``
    (Dropout) on every submodule that has these attributes (``nnx.Module.eval``); training mode sets
    them to False (``nnx.Module.train``). ``module`` itself is unchanged.

    Args:
      module: any ``flax.nnx.Module``.
      train: the mode of the copy.

    Returns:
      The copy; its arrays are the same ``jax.Array`` objects as ``module``'s.
    """
    _check_module(module)
    copy = nnx.merge(*nnx.split(module))
    if train:
        copy.train()
    else:
        copy.eval()
    return copy


def nnx_logits_fn(
    module: nnx.Module,
    *,
    train: bool = False,
    compute_dtype: Any = None,
    **call_kwargs: Any,
) -> LogitsFn:
    """Per-example ``logits_fn`` of a Flax NNX module (contract), in eval mode by default.

    The module is split once (``nnx.split``) into its graph definition and state; each call merges
    a fresh copy, so the function is pure: it composes with ``jax.jit``, ``jax.vmap``, ``jax.grad``
    and ``advjax.parallel.shard_attack``, and :func:`advjax.lipschitz.layer_bounds` reads the
    parameter values it closes over. Later changes to ``module`` (e.g. more training) are NOT seen:
    build a new ``logits_fn`` after training.

    Args:
      module: an ``nnx.Module`` whose ``__call__`` maps a batch ``(B, ...)`` to logits ``(B, K)``.
      train: False (default): BatchNorm uses its running averages and Dropout is off. True:
        training mode; BatchNorm then takes batch statistics, which for one example are only
        meaningful when its BatchNorm layers were built with ``axis_name=`` and the function runs
        under ``jax.vmap(..., axis_name=...)``; running-statistic updates are discarded.
        Dropout in training mode draws from the module's ``Rngs`` as they are now: the same
        masks on every call.
      compute_dtype: optional mixed precision (e.g. ``jnp.bfloat16``): floating state is cast once,
        the input is cast on entry (differentiably) and the logits are returned as float32.
      **call_kwargs: static keyword arguments of the module's ``__call__``.

    Returns:
      ``logits_fn(x)`` mapping one example ``x`` (the model's input shape without the batch axis)
      to logits ``(K,)``.
    """
    _check_module(module)
    graphdef, state = nnx.split(with_mode(module, train=train))
    state = _snapshot(state)
    if compute_dtype is not None:
        state = cast_floating(state, compute_dtype)

    def logits_fn(x: Array) -> Array:
        # fresh Variables in the caller's trace, so training-mode updates are legal and discarded
        model = nnx.merge(graphdef, _snapshot(state))
        if compute_dtype is None:
            return model(x[None], **call_kwargs)[0]
        out = model(x[None].astype(compute_dtype), **call_kwargs)[0]
        return out.astype(jnp.float32)

    return logits_fn


def _snapshot(state: Any) -> Any:
    """A copy of an ``nnx.State`` with new Variable objects holding the same arrays.

    ``nnx.split`` returns the module's own Variable objects: without this copy, assigning to a
    variable of the module later (``module.fc.bias[...] = ...``) would change what an already-built
    function computes, and jit caches would make that depend on when it was compiled.
    """
    return jax.tree.map(lambda a: a, state)


def _pure(state: Any) -> dict:
    return nnx.to_pure_dict(state)


def _fill(template: Any, pure: Mapping[str, Any]) -> Any:
    """A new ``nnx.State`` shaped like ``template`` holding the arrays of the dict ``pure``."""
    state = jax.tree.map(lambda a: a, template)  # a fresh State: the template is never mutated
    nnx.replace_by_pure_dict(state, pure)
    return state


def nnx_variables(module: nnx.Module) -> dict[str, dict]:
    """The NNX module's parameters and batch statistics as linen-layout plain dicts.

    Args:
      module: any ``nnx.Module``.

    Returns:
      ``{"params": {...}}`` plus ``"batch_stats"`` when the module has ``nnx.BatchStat`` variables
      (BatchNorm ``mean`` / ``var``); nested dicts keyed by attribute names, leaves ``jax.Array``.
      For the zoo twins (:mod:`advjax.models.nnx_zoo`) these are exactly the variables of the
      corresponding linen module.
    """
    _check_module(module)
    _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    out = {"params": _pure(params)}
    stats = _pure(stats)
    if stats:
        out["batch_stats"] = stats
    return out


def nnx_apply_fn(module: nnx.Module) -> tuple[ApplyFn, dict[str, dict]]:
    """A linen-style pure ``apply_fn`` of an NNX module and its current variables.

    Args:
      module: an ``nnx.Module`` mapping a batch ``(B, ...)`` to logits ``(B, K)``. State other
        than ``nnx.Param`` and ``nnx.BatchStat`` (e.g. ``Rngs``) is frozen into ``apply_fn``.

    Returns:
      ``(apply_fn, variables)``: ``variables`` as :func:`nnx_variables`; ``apply_fn(variables, x,
      *, train=False, mutable=False)`` returns the logits, or ``(logits, {"batch_stats": new})``
      when ``mutable`` is truthy (the running statistics after the call: updated in training mode,
      unchanged in eval mode), exactly as ``linen.Module.apply``. ``train`` selects the mode as in
      :func:`with_mode`. ``module`` is not modified.
    """
    _check_module(module)
    graphdefs, templates = {}, None
    for mode in (False, True):
        graphdef, params, stats, rest = nnx.split(with_mode(module, train=mode),
                                                  nnx.Param, nnx.BatchStat, ...)
        graphdefs[mode] = graphdef
        if templates is None:
            templates = (params, stats, rest)
    params_t, stats_t, rest = templates
    rest = _snapshot(rest)

    def apply_fn(variables: Mapping[str, Any], x: Array, *, train: bool = False,
                 mutable: Any = False) -> Any:
        params = _fill(params_t, variables["params"])
        stats = _fill(stats_t, variables.get("batch_stats", {}))
        model = nnx.merge(graphdefs[bool(train)], params, stats, _snapshot(rest))
        out = model(x)
        if mutable:
            return out, {"batch_stats": _pure(nnx.state(model, nnx.BatchStat))}
        return out

    return apply_fn, nnx_variables(module)
