"""Adapters from models to per-example ``logits_fn(x) -> logits`` (no batch dimension).

Attacks and bounds take a ``logits_fn`` of ONE example. These adapters wrap batched Flax models:
the example gets a batch axis of 1, the model runs, the batch axis is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating-point leaf cast to ``dtype`` (integer leaves unchanged)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        tree)


def linen_logits_fn(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    compute_dtype: Any = None,
    **apply_kwargs: Any,
) -> LogitsFn:
    """Per-example ``logits_fn`` of a Flax linen module in inference mode.

    Args:
      module: a linen module whose ``__call__`` maps a batch ``(B, ...)`` to logits ``(B, K)``.
      variables: its variables (``{"params": ..., "batch_stats": ...}``).
      compute_dtype: optional mixed precision, e.g. ``jnp.bfloat16`` on GPU/TPU: the variables
        are cast once and every call runs the model in this dtype; the input and its gradient
        stay in the caller's dtype (the cast is differentiable) and the logits are returned as
        float32, so attacks keep their iterates and step sizes in full precision.
      **apply_kwargs: static keyword arguments of ``module.apply`` (e.g. ``train=False``).

    Returns:
      ``logits_fn(x)`` mapping one example ``x`` (the model's input shape without the batch axis)
      to logits ``(K,)``. It is pure and composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.
    """
    if compute_dtype is not None:
        variables = cast_floating(variables, compute_dtype)

    def logits_fn(x: Array) -> Array:
        if compute_dtype is None:
            return module.apply(variables, x[None], **apply_kwargs)[0]
        out = module.apply(variables, x[None].astype(compute_dtype), **apply_kwargs)[0]
        return out.astype(jnp.float32)

    return logits_fn


def linen_logits_fn_batch_stats(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    axis_name: str,
    **apply_kwargs: Any,
) -> LogitsFn:
    """Per-example ``logits_fn`` of a module with BatchNorm in TRAINING mode under ``jax.vmap``.

    The module's BatchNorm layers must be built with ``axis_name=axis_name``; call the returned
    function inside ``jax.vmap(..., axis_name=axis_name)`` so batch statistics are taken over the
    vmapped axis (the batch). Updated running statistics are discarded (attacks do not train).
    """

    def logits_fn(x: Array) -> Array:
        out, _ = module.apply(variables, x[None], mutable=["batch_stats"], **apply_kwargs)
        return out[0]

    return logits_fn


def batched(logits_fn: LogitsFn) -> LogitsFn:
    """The batch version ``(B, ...) -> (B, K)`` of a per-example ``logits_fn``."""
    return jax.vmap(logits_fn)


def predict(logits_fn: LogitsFn, xs: Array, *, batch_size: int = 1024) -> Array:
    """Predicted labels ``(N,)`` int32 for inputs ``xs`` ``(N, ...)``, ``batch_size`` at a time.

    Uses :func:`advjax.parallel.stream`: every chunk has the same shape (one compilation, the last
    chunk padded) and is sharded over the devices when there are several.
    """
    from advjax.parallel import stream

    preds = stream(lambda x: jnp.argmax(logits_fn(x)), xs, chunk_size=batch_size)
    return jnp.asarray(preds, jnp.int32)
