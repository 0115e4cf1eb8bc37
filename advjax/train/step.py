"""Pure training and evaluation steps, built from a loss function and composable transforms.

* A *loss function* is ``loss_fn(params, state, batch, key) -> (loss, aux)`` with
  ``aux = {"metrics": {name: scalar}, "updates": {state field: new value}}`` (e.g. new
  ``batch_stats``, new ``psi``). :func:`classification_loss` is the base.
* A *loss transform* maps a loss function to a new one: :func:`with_weight_decay` (Szegedy,
  papers.md §1.1) and :func:`with_lipschitz_regularizer` (Woods, §2.5–§2.6).
* A *batch transform* ``(state, batch, key) -> (state, batch, metrics)`` runs before the loss:
  :mod:`advjax.train.adversarial`.

:func:`make_train_step` composes them into ``step(state, batch) -> (state, metrics)``;
:func:`train_step` does the same from a static :class:`~advjax.train.TrainConfig` and is jitted.
The randomness of step ``t`` is ``fold_in(state.key, t)``: a step is a pure function of the state
and the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax._checks import check_rank
from advjax.train.adversarial import BatchTransform, adversarial_training, pool_training
from advjax.train.config import LipschitzConfig, TrainConfig
from advjax.train.losses import accuracy, cross_entropy, weight_decay_penalty
from advjax.train.psi import psi as psi_value
from advjax.train.psi import psi_controller_update
from advjax.train.regularizer import input_gradient_penalty
from advjax.train.state import TrainState, apply_model

Array = jax.Array
LossFn = Callable[[Any, TrainState, dict, Array], tuple[Array, dict]]
LossTransform = Callable[[LossFn], LossFn]


def as_batch(batch: Any) -> dict:
    """A batch ``{"image": (B, ...), "label": (B,)}`` from a dict or an ``(images, labels)``."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"`batch` must have keys 'image' and 'label'; got {sorted(batch)}.")
        out = dict(batch)
    elif isinstance(batch, Sequence) and len(batch) == 2:
        out = {"image": batch[0], "label": batch[1]}
    else:
        raise TypeError("`batch` must be a dict with 'image'/'label' or an (images, labels) pair.")
    check_rank(out["label"], "batch['label']", 1)
    if out["image"].shape[0] != out["label"].shape[0]:
        raise ValueError(f"`batch['image']` has {out['image'].shape[0]} examples but "
                         f"`batch['label']` has {out['label'].shape[0]}.")
    return out


def classification_loss(params: Any, state: TrainState, batch: dict,
                        key: Array) -> tuple[Array, dict]:
    """Mean cross-entropy of the model in training mode; the base loss function.

    Returns ``(ce, aux)`` with metrics ``ce`` and ``accuracy`` and, for models with batch
    statistics, the updated ``batch_stats``.
    """
    del key
    logits, batch_stats = apply_model(state, params, batch["image"], train=True)
    ce = cross_entropy(logits, batch["label"], batch.get("weight"))
    updates = {"batch_stats": batch_stats} if state.batch_stats else {}
    return ce, {"metrics": {"ce": ce, "accuracy": accuracy(logits, batch["label"])},
                "updates": updates}


def _merge(aux: dict, metrics: Mapping[str, Array], updates: Mapping[str, Any] = ()) -> dict:
    return {"metrics": {**aux["metrics"], **dict(metrics)},
            "updates": {**aux["updates"], **dict(updates)}}


def with_weight_decay(lambdas: float | Sequence[float] | Mapping[str, float]) -> LossTransform:
    """Loss transform adding Szegedy's per-layer ``λ_k·Σw²/k`` (:func:`weight_decay_penalty`)."""

    def transform(loss_fn: LossFn) -> LossFn:
        def new_loss(params, state, batch, key):
            loss, aux = loss_fn(params, state, batch, key)
            penalty = weight_decay_penalty(params, lambdas)
            return loss + penalty, _merge(aux, {"weight_decay": penalty})

        return new_loss

    return transform


def with_lipschitz_regularizer(config: LipschitzConfig = LipschitzConfig()) -> LossTransform:
    """Loss transform adding the Woods regulariser ``L_adv = ψ·mean(|∂s/∂x|^z)`` (papers.md §2.5).

    The wrapped loss must report the batch's mean cross-entropy as ``aux["metrics"]["ce"]``. The
    ψ integrator (``state.psi``) is first updated with that loss (§2.6; unless ``config.fixed_psi``
    is set), then ``L_adv`` is computed on the batch's inputs with the model in training mode,
    differentiating through the input gradient (double backprop). Metrics: ``l_adv``, ``psi``,
    ``input_grad_penalty`` (``mean |G|^z`` without ψ).
    """

    def transform(loss_fn: LossFn) -> LossFn:
        def new_loss(params, state, batch, key):
            loss, aux = loss_fn(params, state, batch, jax.random.fold_in(key, 0))
            updates = {}
            if config.fixed_psi is None:
                psi_state = psi_controller_update(state.psi, aux["metrics"]["ce"], config.psi)
                weight = psi_value(psi_state, config.psi)
                updates["psi"] = psi_state
            else:
                weight = jnp.asarray(config.fixed_psi, jnp.float32)

            def logits_fn(x):
                return apply_model(state, params, x, train=True)[0]

            penalty, _ = input_gradient_penalty(logits_fn, batch["image"], batch["label"],
                                                jax.random.fold_in(key, 1), zeta=config.zeta,
                                                z=config.z)
            l_adv = weight * penalty
            return loss + l_adv, _merge(aux, {"l_adv": l_adv, "psi": weight,
                                              "input_grad_penalty": penalty}, updates)

        return new_loss

    return transform


def make_train_step(
    loss_fn: LossFn = classification_loss,
    batch_transforms: Sequence[BatchTransform] = (),
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Composes batch transforms and a loss function into a pure training step.

    Args:
      loss_fn: ``loss_fn(params, state, batch, key) -> (loss, aux)``, already wrapped by any
        loss transforms.
      batch_transforms: applied in order before the loss, each with its own key.

    Returns:
      ``step(state, batch) -> (state, metrics)``: one optimiser update (``state.step`` + 1);
      metrics are scalars: ``loss`` (total), ``grad_norm``, ``nonfinite`` (1.0 when the loss or a
      gradient is NaN/inf, else 0.0) and those of the transforms and loss.
      Not jitted: wrap it with ``jax.jit``.
    """
    transforms = tuple(batch_transforms)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        batch = as_batch(batch)
        key = jax.random.fold_in(state.key, state.step)
        metrics: dict[str, Array] = {}
        for i, transform in enumerate(transforms):
            state, batch, extra = transform(state, batch, jax.random.fold_in(key, 1000 + i))
            metrics.update(extra)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, state, batch, jax.random.fold_in(key, 0))
        state = state.apply_gradients(grads=grads)
        if aux["updates"]:
            state = state.replace(**aux["updates"])
        metrics.update(aux["metrics"])
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        # A result flag that survives jit: 1 when the loss or a gradient is NaN / infinite.
        metrics["nonfinite"] = (~jnp.isfinite(loss) | ~jnp.isfinite(metrics["grad_norm"])).astype(
                jnp.float32)
        return state, metrics

    return step


def build_train_step(config: TrainConfig = TrainConfig(), *,
                     loss_fn: LossFn = classification_loss) -> Callable:
    """The un-jitted ``step(state, batch)`` of a :class:`TrainConfig`.

    Pipeline: adversarial batch (``config.adversarial``) → pool mixing (``config.pool``) → loss
    ``loss_fn`` → weight decay → Lipschitz regulariser.
    """
    transforms = []
    if config.adversarial is not None:
        transforms.append(adversarial_training(config.adversarial))
    if config.pool is not None:
        transforms.append(pool_training(config.pool))
    loss = loss_fn
    if config.weight_decay is not None:
        loss = with_weight_decay(config.weight_decay)(loss)
    if config.lipschitz is not None:
        loss = with_lipschitz_regularizer(config.lipschitz)(loss)
    return make_train_step(loss, transforms)


@functools.partial(jax.jit, static_argnames="config")
def train_step(state: TrainState, batch: Any,
               config: TrainConfig = TrainConfig()) -> tuple[TrainState, dict]:
    """One jitted training step of ``config`` (static) on ``batch``.

    Args:
      state: the train state.
      batch: ``{"image": (B, ...) float in [0, 1], "label": (B,) int}`` or ``(images, labels)``.
      config: a hashable :class:`TrainConfig` (recompiles per distinct config).

    Returns:
      ``(new_state, metrics)`` (see :func:`make_train_step`).
    """
    return build_train_step(config)(state, batch)


def _eval_step(state: TrainState, batch: Any) -> dict:
    batch = as_batch(batch)
    logits, _ = apply_model(state, state.params, batch["image"], train=False)
    labels = batch["label"]
    weight = batch.get("weight")
    weight = jnp.ones(labels.shape, jnp.float32) if weight is None else weight.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(weight * ce), "correct": jnp.sum(weight * correct),
            "count": jnp.sum(weight)}


eval_step = jax.jit(_eval_step)
eval_step.__doc__ = """Jitted evaluation of one batch in inference mode.

Args:
  state: the train state.
  batch: ``{"image", "label"}`` and optionally ``"weight" (B,)`` (0 for padding), or a pair.

Returns:
  Sums over the batch: ``loss_sum`` (cross-entropy, nats), ``correct`` and ``count`` (weighted), so
  that batches aggregate exactly; accuracy = ``correct / count``.
"""


@functools.lru_cache(maxsize=16)
def _sharded_eval_step(mesh):
    from advjax.parallel import batch_sharding
    from advjax.train.distributed import replicated_sharding

    rep = replicated_sharding(mesh)
    # The state keeps its own shardings (replicated, or e.g. fsdp_sharding).
    return jax.jit(_eval_step, in_shardings=(None, batch_sharding(mesh)), out_shardings=rep)


def evaluate(state: TrainState, images: Any, labels: Any, *, batch_size: int = 512,
             mesh: Any = None) -> dict:
    """Accuracy and mean cross-entropy over a data set, in batches (the last one zero-padded).

    Args:
      state: the train state (inference mode is used); with ``mesh``, placed on it (replicated
        by :func:`advjax.train.replicate`, or sharded), as :func:`advjax.train.fit` returns it.
      images: ``(N, ...)`` inputs (with several processes: the whole set on every process).
      labels: ``(N,)`` int labels.
      batch_size: evaluation batch size (with ``mesh``: rounded up to a multiple of its size).
      mesh: a ``"batch"`` mesh to shard each batch over (None: plain ``jit`` on the state's
        devices; multi-process runs must pass the mesh).

    Returns:
      ``{"accuracy": float, "loss": float, "count": int}``.
    """
    if mesh is None:
        images = jnp.asarray(images)
        labels = jnp.asarray(labels, jnp.int32)
    else:
        images = np.asarray(images)
        labels = np.asarray(labels, np.int32)
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("`images` is empty.")
    bs = min(batch_size, n)
    if mesh is not None:
        from advjax.parallel import BATCH_AXIS
        from advjax.train.distributed import global_batch, process_rows

        n_dev = mesh.shape[BATCH_AXIS]
        bs = -(-bs // n_dev) * n_dev
        lo, hi = process_rows(mesh, bs)
        step = _sharded_eval_step(mesh)
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for start in range(0, n, bs):
        xb, yb = images[start:start + bs], labels[start:start + bs]
        m = xb.shape[0]
        if mesh is None:
            weight = jnp.ones((bs,), jnp.float32)
            if m < bs:
                pad = bs - m
                xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
                yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
                weight = weight.at[m:].set(0.0)
            out = eval_step(state, {"image": xb, "label": yb, "weight": weight})
        else:
            weight = (np.arange(bs) < m).astype(np.float32)
            if m < bs:
                pad = bs - m
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
                yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
            local = {"image": xb[lo:hi], "label": yb[lo:hi], "weight": weight[lo:hi]}
            out = step(state, global_batch(local, mesh, bs))
        out = jax.device_get(out)
        for k in totals:
            totals[k] += float(out[k])
    return {"accuracy": totals["correct"] / totals["count"],
            "loss": totals["loss_sum"] / totals["count"], "count": n}
