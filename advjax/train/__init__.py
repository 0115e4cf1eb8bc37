"""Training: state, pure steps, composable robust-training transforms, loop and checkpoints.

* State: :class:`TrainState` (params, optimiser, ``batch_stats``, key, ψ integrator, pool),
  :func:`create_train_state`.
* Losses: :func:`cross_entropy`, Szegedy's per-layer :func:`weight_decay_penalty` (papers.md §1.1).
* Steps: :func:`train_step` (jitted, static :class:`TrainConfig`), :func:`eval_step`,
  :func:`evaluate`, and the composable pieces :func:`make_train_step`, :func:`classification_loss`,
  loss transforms :func:`with_weight_decay`, :func:`with_lipschitz_regularizer` and batch transforms
  :func:`adversarial_examples`, :func:`adversarial_training`, :func:`adversarial_pool`.
* Woods regulariser (papers.md §2.5–§2.6): :func:`input_gradient_penalty`, :func:`tandem_choice`,
  :func:`psi_controller_init`, :func:`psi_controller_update`, :func:`psi`.
* Loop: :func:`fit` (progress bar, evaluation, atomic metrics JSON, Orbax checkpoints that
  resume exactly), data-parallel on 1 device, D devices or P processes.
* Data parallelism (:mod:`advjax.train.distributed`): :func:`shard_train_step` (batch sharded over
  the ``"batch"`` mesh axis, state replicated or :func:`fsdp_sharding`), :func:`replicate`,
  :func:`place`, :func:`process_rows`, :func:`global_batch`.
* Presets: :func:`szegedy_config`, :func:`woods_config`, :func:`woods_optimizer`,
  :func:`woods_psi_config`.
* Flax NNX models: :func:`create_nnx_train_state` (every step and loop above runs them),
  :func:`update_nnx_model`.
* AE400-10 (papers.md §1.5): :func:`autoencoder_train_step`, :func:`freeze_except`,
  :func:`classifier_state`.
"""

from advjax.parallel import DATA_LAYOUTS
from advjax.train.adversarial import (
    adversarial_examples,
    adversarial_pool,
    adversarial_training,
    pgd_attack_factory,
    pool_training,
    woods_attack_factory,
)
from advjax.train.autoencoder import (
    autoencoder_train_step,
    classifier_state,
    freeze_except,
    kl_sparsity,
    sparse_autoencoder_loss,
)
from advjax.train.checkpoint import checkpoint_manager, restore_checkpoint, save_checkpoint
from advjax.train.config import (
    LipschitzConfig,
    PGDAdversarialConfig,
    PoolConfig,
    PsiConfig,
    SparseAutoencoderConfig,
    TrainConfig,
    WoodsAdversarialConfig,
)
from advjax.train.distributed import (
    fsdp_sharding,
    global_batch,
    place,
    process_rows,
    replicate,
    replicated_sharding,
    shard_train_step,
)
from advjax.train.loop import epoch_permutation, fit
from advjax.train.losses import accuracy, cross_entropy, kernel_layers, weight_decay_penalty
from advjax.train.nnx import create_nnx_train_state, update_nnx_model
from advjax.train.presets import (
    WOODS_VARIANTS,
    szegedy_config,
    woods_config,
    woods_learning_rate,
    woods_optimizer,
    woods_psi_config,
)
from advjax.train.psi import PsiState, psi, psi_controller_init, psi_controller_update
from advjax.train.regularizer import input_gradient_penalty, selected_outputs, tandem_choice
from advjax.train.state import (
    Pool,
    TrainState,
    apply_model,
    create_train_state,
    empty_pool,
    example_logits_fn,
)
from advjax.train.step import (
    as_batch,
    build_train_step,
    classification_loss,
    eval_step,
    evaluate,
    make_train_step,
    train_step,
    with_lipschitz_regularizer,
    with_weight_decay,
)

__all__ = [
        "DATA_LAYOUTS",
        "LipschitzConfig",
        "PGDAdversarialConfig",
        "Pool",
        "PoolConfig",
        "PsiConfig",
        "PsiState",
        "SparseAutoencoderConfig",
        "TrainConfig",
        "TrainState",
        "WOODS_VARIANTS",
        "WoodsAdversarialConfig",
        "accuracy",
        "adversarial_examples",
        "adversarial_pool",
        "adversarial_training",
        "apply_model",
        "as_batch",
        "autoencoder_train_step",
        "build_train_step",
        "checkpoint_manager",
        "classification_loss",
        "classifier_state",
        "create_nnx_train_state",
        "create_train_state",
        "cross_entropy",
        "empty_pool",
        "epoch_permutation",
        "eval_step",
        "evaluate",
        "example_logits_fn",
        "fit",
        "freeze_except",
        "fsdp_sharding",
        "global_batch",
        "input_gradient_penalty",
        "kernel_layers",
        "kl_sparsity",
        "make_train_step",
        "pgd_attack_factory",
        "place",
        "pool_training",
        "process_rows",
        "psi",
        "psi_controller_init",
        "psi_controller_update",
        "replicate",
        "replicated_sharding",
        "restore_checkpoint",
        "save_checkpoint",
        "selected_outputs",
        "shard_train_step",
        "sparse_autoencoder_loss",
        "tandem_choice",
        "train_step",
        "update_nnx_model",
        "szegedy_config",
        "weight_decay_penalty",
        "with_lipschitz_regularizer",
        "with_weight_decay",
        "woods_attack_factory",
        "woods_config",
        "woods_learning_rate",
        "woods_optimizer",
        "woods_psi_config",
]
