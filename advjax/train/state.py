"""The train state (params, optimiser, batch statistics, key, robust state) and forward passes.

The state extends ``flax.training.train_state.TrainState`` (flax ``examples/mnist`` habit) with:

* ``batch_stats``: BatchNorm running statistics (``{}`` for models without them);
* ``key``: raw ``uint32[2]`` key data; the randomness of step ``t`` is ``fold_in(key, t)``, so a
  resumed run draws the same numbers as an uninterrupted one;
* ``psi``: the ψ integrator of the Woods regulariser (papers.md §2.6);
* ``pool``: Szegedy's adversarial pool (papers.md §1.5), or None;
* static ``bn_axis_name``: when the model's BatchNorm layers were built with ``axis_name``, the
  training-mode forward pass runs per example under ``jax.vmap(..., axis_name=bn_axis_name)`` so
  that batch statistics are the statistics of the vmapped batch (this also makes per-example attacks
  in training mode see batch statistics, papers.md §2.7);
* static ``train_kwarg``: whether the module's ``__call__`` takes ``train``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from advjax._checks import check_rank
from advjax.lowering import MODES, lower_convs
from advjax.train.psi import PsiState, psi_controller_init

Array = jax.Array


@flax.struct.dataclass
class Pool:
    """An input-level pool of adversarial examples (papers.md §1.5).

    Attributes:
      x: ``(P, *example_shape)`` float, the pool's inputs.
      y: ``(P,)`` int32, their (true) labels.
      valid: ``(P,)`` bool, which slots have been filled.
    """

    x: Array
    y: Array
    valid: Array


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` plus batch statistics, a key, the ψ integrator, an adversarial pool."""

    batch_stats: Any = flax.struct.field(default_factory=dict)
    key: Array = None
    psi: PsiState = None
    pool: Pool | None = None
    bn_axis_name: str | None = flax.struct.field(pytree_node=False, default=None)
    train_kwarg: bool = flax.struct.field(pytree_node=False, default=False)


def _raw_key(key: Array) -> Array:
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(
                f"`key` must be a jax.random key or raw uint32[2] key data; got dtype {key.dtype} "
                f"and shape {key.shape}.")
    return key


def _accepts_train(module: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False


def create_train_state(
    module: nn.Module,
    key: Array,
    sample_input: Array,
    optimizer: optax.GradientTransformation,
    *,
    bn_axis_name: str | None = None,
    pool_size: int | None = None,
    conv_lowering: str = "native",
) -> TrainState:
    """Initialises a model and its optimiser into a :class:`TrainState`.

    Args:
      module: a linen module mapping a batch ``(B, ...)`` to logits ``(B, K)``; ``train`` is passed
        to ``__call__`` when it accepts one (``False`` at initialisation).
      key: a ``jax.random`` key (typed or raw); split into the initialisation key and the state key.
      sample_input: a batch ``(B, ...)`` with the model's input shape (values are not used beyond
        shape inference; ``B = 1`` is enough).
      optimizer: an optax ``GradientTransformation``.
      bn_axis_name: the ``axis_name`` the module's BatchNorm layers were built with (None: the
        module's ``bn_axis_name`` / ``axis_name`` attribute if it has one, else plain batch BN).
      pool_size: when given, an empty adversarial pool of this many examples is allocated (needed
        by :class:`~advjax.train.PoolConfig` training).
      conv_lowering: ``"native"`` (default: XLA's kernels), ``"auto"`` (convolutions as matrix
        products and a fast max-pool gradient on CPU backends only), or ``"gemm"`` (always);
        see :func:`advjax.lowering.lower_convs`. Applies to every forward pass of the state's
        model: training loss, adversarial-example generation, evaluation.

    Returns:
      The state at step 0 with ψ integrator ``I = 0``.
    """
    check_rank(sample_input, "sample_input", range(1, 8))
    if conv_lowering not in MODES:
        raise ValueError(f"`conv_lowering` must be one of {MODES}; got {conv_lowering!r}.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError("`optimizer` must be an optax GradientTransformation (init/update).")
    init_key, state_key = jax.random.split(_raw_key(key))
    train_kwarg = _accepts_train(module)
    kwargs = {"train": False} if train_kwarg else {}
    variables = module.init(init_key, jnp.asarray(sample_input), **kwargs)
    variables = dict(variables)
    params = variables.pop("params")
    batch_stats = variables.pop("batch_stats", {})
    if bn_axis_name is None:
        bn_axis_name = getattr(module, "bn_axis_name", None) or getattr(module, "axis_name", None)
        if not isinstance(bn_axis_name, str) or not batch_stats:
            bn_axis_name = None
    pool = None
    if pool_size is not None:
        pool = empty_pool(pool_size, jnp.shape(sample_input)[1:], jnp.result_type(sample_input))
    return TrainState.create(
            apply_fn=lower_convs(module.apply, mode=conv_lowering),
            params=params,
            tx=optimizer,
            batch_stats=batch_stats,
            key=state_key,
            psi=psi_controller_init(),
            pool=pool,
            bn_axis_name=bn_axis_name,
            train_kwarg=train_kwarg,
    )


def empty_pool(size: int, example_shape: tuple[int, ...], dtype=jnp.float32) -> Pool:
    """An empty :class:`Pool` of ``size`` examples of shape ``example_shape``."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive integer; got {size!r}.")
    return Pool(x=jnp.zeros((size, *example_shape), dtype), y=jnp.zeros((size,), jnp.int32),
                valid=jnp.zeros((size,), bool))


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
    variables = {"params": params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def apply_model(state: TrainState, params: Any, x: Array, *, train: bool) -> tuple[Array, Any]:
    """Batched forward pass of the state's model with the given parameters.

    In training mode with batch statistics, the new running statistics are returned; with
    ``state.bn_axis_name`` the pass is ``jax.vmap`` over examples with that axis name, which gives
    the same batch statistics as a batched pass. In eval mode the batch statistics are returned
    unchanged.

    Args:
      state: the train state (model, batch statistics, static settings).
      params: the parameters to use (differentiable).
      x: ``(B, ...)`` inputs.
      train: training mode (batch statistics) or inference mode (running averages).

    Returns:
      ``(logits (B, K), batch_stats)``.
    """
    variables = _variables(state, params)
    kwargs = {"train": train} if state.train_kwarg else {}
    if not (train and state.batch_stats):
        return state.apply_fn(variables, x, **kwargs), state.batch_stats
    if state.bn_axis_name is None:
        logits, updates = state.apply_fn(variables, x, mutable=["batch_stats"], **kwargs)
        return logits, updates["batch_stats"]

    def one(xi):
        out, upd = state.apply_fn(variables, xi[None], mutable=["batch_stats"], **kwargs)
        return out[0], upd["batch_stats"]

    logits, stats = jax.vmap(one, axis_name=state.bn_axis_name)(x)
    return logits, jax.tree.map(lambda a: a[0], stats)


def example_logits_fn(state: TrainState, params: Any | None = None, *,
                      train: bool = False) -> tuple[Callable[[Array], Array], str | None]:
    """Per-example ``logits_fn(x) -> (K,)`` of the state's model, and the vmap axis name it needs.

    In training mode with batch statistics and ``state.bn_axis_name`` set, the function must run
    under ``jax.vmap(..., axis_name=axis)`` (the returned name): its BatchNorm layers use the
    statistics of the vmapped batch and the running-statistics updates are discarded. A model with
    batch statistics but no ``bn_axis_name`` cannot take batch statistics per example; it is then
    evaluated in inference mode (running statistics). Returns ``(logits_fn, axis)`` where ``axis``
    is None when no collective is needed.
    """
    params = state.params if params is None else params
    variables = _variables(state, params)
    kwargs = {"train": train} if state.train_kwarg else {}
    if train and state.batch_stats and state.bn_axis_name is not None:
        def logits_fn(x):
            out, _ = state.apply_fn(variables, x[None], mutable=["batch_stats"], **kwargs)
            return out[0]

        return logits_fn, state.bn_axis_name
    if state.batch_stats and state.train_kwarg:
        kwargs = {"train": False}

    def logits_fn(x):
        return state.apply_fn(variables, x[None], **kwargs)[0]

    return logits_fn, None


def tree_replace(state: TrainState, updates: Mapping[str, Any]) -> TrainState:
    """``state.replace(**updates)`` ignoring an empty mapping."""
    return state.replace(**dict(updates)) if updates else state
