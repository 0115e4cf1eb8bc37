"""Orbax checkpoints of a :class:`~advjax.train.TrainState` plus JSON metadata.

A checkpoint at step ``t`` holds the whole state pytree (params, optimiser state, batch statistics,
key, ψ integrator, pool) and a JSON ``meta`` dict (the loop's metric history and partial sums).
Orbax writes each checkpoint to a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact; restoring reads the latest complete one.

Multi-process runs (``jax.distributed``): every process calls :func:`save_checkpoint` and
:func:`restore_checkpoint` with a manager on the same folder (a file system all processes see).
Orbax writes each array once (replicated arrays by the primary process, sharded ones shard by
shard), the JSON ``meta`` by the primary process, and synchronises the processes around each save;
a restore places every array with the sharding of the template's leaf (e.g. replicated over the
training mesh). Tested: a 2-process run killed on one process resumes to the uninterrupted state
(``tests/distributed/test_train.py``); a restore on another process or device count is not tested.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import jax

from advjax.train.state import TrainState

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def checkpoint_manager(directory: str | os.PathLike, *, max_to_keep: int | None = 2
                       ) -> ocp.CheckpointManager:
    """A synchronous Orbax ``CheckpointManager`` on ``directory`` (created if missing).

    Args:
      directory: checkpoint folder (one sub-folder per saved step).
      max_to_keep: keep only the latest checkpoints (None: keep all).
    """
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.fspath(os.path.abspath(directory)), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState,
                    meta: dict[str, Any] | None = None) -> int:
    """Saves ``state`` (and JSON-able ``meta``) at step ``int(state.step)``; returns the step."""
    import orbax.checkpoint as ocp

    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta or {})), force=True)
    manager.wait_until_finished()
    log.info("saved checkpoint at step %d in %s", step, manager.directory)
    return step


def restore_checkpoint(manager: ocp.CheckpointManager, template: TrainState,
                       step: int | None = None) -> tuple[TrainState, dict[str, Any]] | None:
    """Restores the checkpoint at ``step`` (default: the latest) into the structure of ``template``.

    Args:
      manager: the checkpoint manager.
      template: a state with the same structure, shapes and dtypes (e.g. a freshly created one);
        its static fields (apply_fn, tx, ...) are kept.

    Returns:
      ``(state, meta)``, or None when the folder holds no checkpoint.
    """
    import orbax.checkpoint as ocp

    if step is None:
        step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    log.info("restored checkpoint at step %d from %s", step, manager.directory)
    return restored.state, dict(restored.meta or {})
