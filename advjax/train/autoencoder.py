"""AE400-10 training (papers.md §1.5): sparse-autoencoder pretraining, then a softmax on frozen
codes.

Stage 1 trains the autoencoder ``x → code = sigmoid(encoder(x)) → decode(code)`` with the loss of
:class:`~advjax.train.SparseAutoencoderConfig`::

    mean_{b,i} (x_{b,i} - x̂_{b,i})²  +  beta · Σ_j KL(ρ ‖ ρ̂_j)  +  λ·(Σw²_enc/k_enc + Σw²_dec/k_dec)
    KL(ρ ‖ ρ̂) = ρ ln(ρ/ρ̂) + (1-ρ) ln((1-ρ)/(1-ρ̂)),   ρ̂_j = mean_b code_{b,j}

Stage 2 trains only the classifier on the frozen code ("this layer was not fine-tuned"): the
optimiser from :func:`freeze_except` zeroes the updates of every other parameter sub-tree.

The module must provide ``encode(x) -> code in (0, 1)`` and ``decode(code) -> x̂`` methods
(``advjax.models.AutoencoderClassifier``; parameter sub-trees ``encoder``, ``decoder``,
``classifier``). The sparsity target and weight are not given in the paper; the defaults
(ρ = 0.05, beta = 0.1) are common choices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from advjax.train.config import SparseAutoencoderConfig
from advjax.train.losses import weight_decay_penalty
from advjax.train.state import TrainState
from advjax.train.step import LossFn, make_train_step

Array = jax.Array


def kl_sparsity(rho: float, rho_hat: Array) -> Array:
    """``Σ_j KL(ρ ‖ ρ̂_j)`` between Bernoulli(ρ) and Bernoulli(ρ̂_j) (nats); ρ̂ clipped to (0, 1)."""
    rho_hat = jnp.clip(rho_hat, 1e-6, 1.0 - 1e-6)
    return jnp.sum(rho * jnp.log(rho / rho_hat)
                   + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat)))


def sparse_autoencoder_loss(config: SparseAutoencoderConfig = SparseAutoencoderConfig()) -> LossFn:
    """Loss function (``make_train_step`` signature) of sparse-autoencoder pretraining.

    Metrics: ``mse`` (reconstruction), ``sparsity`` (the KL sum), ``mean_activation`` (mean code),
    ``weight_decay``.
    """

    def loss_fn(params, state: TrainState, batch: dict, key: Array):
        del key
        variables = {"params": params}
        x = batch["image"]
        code = state.apply_fn(variables, x, method="encode")
        recon = state.apply_fn(variables, code, method="decode")
        mse = jnp.mean(jnp.square(recon.reshape(x.shape) - x))
        rho_hat = jnp.mean(code, axis=0)
        sparsity = kl_sparsity(config.rho, rho_hat)
        loss = mse + config.beta * sparsity
        decay = jnp.zeros((), jnp.float32)
        if config.weight_decay > 0:
            decay = weight_decay_penalty({k: params[k] for k in ("encoder", "decoder")},
                                         config.weight_decay)
            loss = loss + decay
        return loss, {"metrics": {"mse": mse, "sparsity": sparsity,
                                  "mean_activation": jnp.mean(code), "weight_decay": decay},
                      "updates": {}}

    return loss_fn


def autoencoder_train_step(config: SparseAutoencoderConfig = SparseAutoencoderConfig()
                           ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Un-jitted ``step(state, batch) -> (state, metrics)`` of sparse-autoencoder pretraining
    (labels are ignored); pass it to :func:`advjax.train.fit` as ``step_fn``."""
    return make_train_step(sparse_autoencoder_loss(config))


def freeze_except(optimizer: optax.GradientTransformation,
                  trainable: Sequence[str]) -> optax.GradientTransformation:
    """``optimizer`` on the top-level parameter sub-trees named in ``trainable``; zero updates for
    all others (``optax.multi_transform`` with ``optax.set_to_zero``).

    Args:
      optimizer: the optimiser of the trainable parameters.
      trainable: names of top-level parameter sub-trees to train (e.g. ``("classifier",)``).
    """
    trainable = tuple(trainable)
    if not trainable:
        raise ValueError("`trainable` must name at least one parameter sub-tree.")

    def labels(params):
        unknown = [t for t in trainable if t not in params]
        if unknown:
            raise ValueError(f"`trainable` names {unknown} not in the parameters {list(params)}.")
        return {k: jax.tree.map(lambda _, k=k: "train" if k in trainable else "freeze", v)
                for k, v in params.items()}

    return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def classifier_state(pretrained: TrainState, optimizer: optax.GradientTransformation, *,
                     trainable: Sequence[str] = ("classifier",)) -> TrainState:
    """Stage 2 of AE400-10: a fresh train state where only ``trainable`` sub-trees learn.

    Args:
      pretrained: the state after autoencoder pretraining.
      optimizer: optimiser of the trainable sub-trees (wrapped by :func:`freeze_except`).
      trainable: top-level parameter sub-trees to train (the softmax ``classifier``).

    Returns:
      The state at step 0 with the pretrained parameters and a new optimiser state.
    """
    tx = freeze_except(optimizer, trainable)
    return pretrained.replace(step=jnp.zeros_like(pretrained.step), tx=tx,
                              opt_state=tx.init(pretrained.params))
