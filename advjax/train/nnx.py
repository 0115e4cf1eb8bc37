"""Training Flax NNX models with the pure steps of :mod:`advjax.train` (split / merge).

An NNX model is turned into a :class:`~advjax.train.TrainState` whose ``apply_fn`` is the
linen-style pure apply of :func:`advjax.models.nnx_apply_fn` and whose ``params`` /
``batch_stats`` are the model's ``nnx.Param`` / ``nnx.BatchStat`` arrays as plain dicts. Every
step, transform and loop of the package then runs unchanged: :func:`~advjax.train.train_step`
with PGD or Woods adversarial training and the Woods regulariser, :func:`~advjax.train.fit`
(checkpoints, exact resumption), :func:`~advjax.train.evaluate`,
:func:`~advjax.train.example_logits_fn`. :func:`update_nnx_model` writes the trained arrays back
into the NNX model::

    model = MyNNXModel(rngs=nnx.Rngs(0))
    state = create_nnx_train_state(model, jax.random.key(1), optax.adam(1e-3))
    state, _ = fit(state, (xs, ys), key=jax.random.key(2), epochs=5, config=TrainConfig(
        adversarial=PGDAdversarialConfig(norm="linf", eps=0.1, steps=7)))
    update_nnx_model(model, state)      # model now holds the trained weights

Randomness inside the model (``nnx.Dropout`` in training mode) would need a fresh key per step,
which the steps do not pass to ``apply_fn``; such models are rejected.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from advjax.models.nnx_adapters import nnx_apply_fn
from advjax.models.nnx_convert import set_nnx_variables
from advjax.train.psi import psi_controller_init
from advjax.train.state import TrainState, _raw_key, empty_pool

Array = jax.Array


def _bn_axis_name(model: nnx.Module) -> str | None:
    names = {m.axis_name for _, m in nnx.iter_modules(model)
             if isinstance(m, nnx.BatchNorm) and m.axis_name is not None}
    if len(names) > 1:
        raise ValueError(f"the model's BatchNorm layers use several axis names {sorted(names)}; "
                         "pass `bn_axis_name`.")
    return names.pop() if names else None


def create_nnx_train_state(
    model: nnx.Module,
    key: Array,
    optimizer: optax.GradientTransformation,
    *,
    bn_axis_name: str | None = None,
    pool_size: int | None = None,
    sample_input: Array | None = None,
) -> TrainState:
    """A :class:`~advjax.train.TrainState` training the current weights of an NNX model.

    Args:
      model: an ``nnx.Module`` mapping a batch ``(B, ...)`` to logits ``(B, K)`` (e.g. an
        :class:`~advjax.models.NNXMnistCNN` or your own). It is not modified; its training / eval
        mode attributes are set by each step (training mode for the training forward pass,
        eval mode for evaluation and, unless ``train_mode`` is set, for attacks).
      key: a ``jax.random`` key (typed or raw): the state key (the randomness of step ``t`` is
        ``fold_in(key, t)``). Unlike :func:`~advjax.train.create_train_state` no initialisation
        happens here: the model was initialised by its constructor.
      optimizer: an optax ``GradientTransformation``.
      bn_axis_name: the ``axis_name`` of the model's BatchNorm layers (default: read from them).
        With it, training-mode passes run per example under ``jax.vmap(..., axis_name=...)``.
      pool_size: allocate an empty adversarial pool of this many examples (for
        :class:`~advjax.train.PoolConfig` training); needs ``sample_input``.
      sample_input: a batch ``(B, ...)`` giving the example shape and dtype of the pool.

    Returns:
      The state at step 0, ``train_kwarg=True`` (``apply_fn`` takes ``train``).

    Raises:
      ValueError: for a model with ``nnx.Dropout`` (see the module docstring) or a pool without
        ``sample_input``.
      TypeError: for a non-NNX ``model`` or an ``optimizer`` without ``init`` / ``update``.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be a flax.nnx.Module; got {type(model).__name__}.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError("`optimizer` must be an optax GradientTransformation (init/update).")
    if any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_modules(model)):
        raise ValueError("`model` contains nnx.Dropout: training steps do not pass a fresh key "
                         "per step to the model, so dropout masks would repeat; remove Dropout.")
    apply_fn, variables = nnx_apply_fn(model)
    if bn_axis_name is None:
        bn_axis_name = _bn_axis_name(model)
    batch_stats = variables.get("batch_stats", {})
    if not batch_stats:
        bn_axis_name = None
    pool = None
    if pool_size is not None:
        if sample_input is None:
            raise ValueError("`sample_input` is needed to allocate a pool (`pool_size` given).")
        pool = empty_pool(pool_size, tuple(sample_input.shape[1:]), sample_input.dtype)
    return TrainState.create(apply_fn=apply_fn, params=variables["params"], tx=optimizer,
                             batch_stats=batch_stats, key=_raw_key(key),
                             psi=psi_controller_init(), pool=pool, bn_axis_name=bn_axis_name,
                             train_kwarg=True)


def update_nnx_model(model: nnx.Module, state: TrainState) -> nnx.Module:
    """Writes the state's parameters and batch statistics into ``model`` (in place); returns it.

    Args:
      model: the NNX model the state was created from (or one with the same structure).
      state: a state from :func:`create_nnx_train_state`, e.g. after :func:`~advjax.train.fit`.

    Returns:
      ``model``, holding ``state.params`` and ``state.batch_stats``.
    """
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return set_nnx_variables(model, variables)
