"""The training loop: epochs of jitted steps, evaluation, atomic metrics and resumable checkpoints.

Exact resumption: the batches of epoch ``e`` are a permutation drawn from ``fold_in(key, e)``
(drop-remainder, fixed batch size), the randomness of step ``t`` is ``fold_in(state.key, t)``, and
a checkpoint stores the whole state plus the loop's metric sums. A run killed at any point and
restarted with the same arguments restores the latest checkpoint, recomputes the position
``(epoch, batch) = divmod(step, steps_per_epoch)`` and continues with the same batches, giving the
same final parameters as an uninterrupted run (bitwise on the same machine and software).

Data parallelism (:mod:`advjax.train.distributed`): the step is compiled once over a 1-D
``"batch"`` mesh (default: every device of every process) with the batch sharded and the state
replicated; the global batch of step ``t`` is the same rows in the same order on 1 device, D
devices or P processes, so the runs end with the same parameters up to the order of floating-point
reductions. With P processes, every process calls :func:`fit` with the same arguments except that,
with ``data_layout="local"``, each passes its own rows of the training set; checkpoints are written
by all processes together into one folder, the metrics file by process 0 only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from advjax._checks import check_positive_int
from advjax.io import array_digest, atomic_write_json
from advjax.parallel import (
    BATCH_AXIS,
    batch_sharding,
    check_data_layout,
    make_mesh,
)
from advjax.train.checkpoint import checkpoint_manager, restore_checkpoint, save_checkpoint
from advjax.train.config import TrainConfig
from advjax.train.distributed import (
    allgather_bytes,
    allgather_int,
    fsdp_sharding,
    global_batch,
    place,
    process_rows,
    replicate,
    replicated_sharding,
    shard_train_step,
    tree_digest,
)
from advjax.train.state import TrainState, _raw_key
from advjax.train.step import evaluate, train_step

log = logging.getLogger(__name__)

StepFn = Callable[[TrainState, dict], tuple[TrainState, dict]]


def _as_arrays(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, Mapping):
        images, labels = data["image"], data["label"]
    elif isinstance(data, Sequence) and len(data) == 2:
        images, labels = data
    else:
        raise TypeError(f"`{name}` must be an (images, labels) pair or a dict with "
                        "'image'/'label'.")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(f"`{name}`: images {images.shape} and labels {labels.shape} must have the "
                         "same number of examples, labels of rank 1.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`{name}` labels must be integers; got dtype {labels.dtype}.")
    return images, labels.astype(np.int32)


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of ``epoch``: ``permutation(fold_in(key, epoch), num_examples)``."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(_raw_key(key), epoch),
                                             num_examples))


_RUN_FIELDS_DOC = ("data: SHA-256 of the images and labels; data_key: the data-order key; "
                   "batch_size; config: the TrainConfig")


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the training set's exact bytes (dtype and shape included)."""
    return array_digest(images, labels)


class _DeviceData:
    """A training set given as one contiguous slice per process, held sharded on the devices.

    Process ``p`` passes global rows ``[offset_p, offset_p + n_p)`` (offsets in process order);
    its rows are placed on its own devices (padded to a common per-device size) and each global
    batch is gathered on device from the global row indices, so every process sees the same
    global batch as a one-process run while holding only its own rows in host memory.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mesh: Mesh, counts: list[int]):
        n_dev = mesh.shape[BATCH_AXIS]
        local = [d for d in mesh.devices.reshape(-1) if d.process_index == jax.process_index()]
        per_process = allgather_int(len(local))
        if len(set(per_process)) != 1:
            raise ValueError("`mesh`: with data_layout='local' every process must hold the same "
                             f"number of mesh devices; got {per_process}.")
        rows = -(-max(counts) // per_process[0])  # rows per device
        total = rows * n_dev
        lo, hi = process_rows(mesh, total)
        starts = allgather_int(lo)
        pad = (hi - lo) - images.shape[0]
        fill = [np.zeros((pad, *a.shape[1:]), a.dtype) for a in (images, labels)]
        self.data = global_batch({"image": np.concatenate([images, fill[0]]),
                                  "label": np.concatenate([labels, fill[1]])}, mesh, total)
        # Stored row of every global row.
        self.where = np.concatenate([starts[p] + np.arange(c) for p, c in enumerate(counts)])
        self.mesh = mesh
        self._take = jax.jit(lambda data, idx: jax.tree.map(lambda a: a[idx], data),
                             in_shardings=(batch_sharding(mesh), replicated_sharding(mesh)),
                             out_shardings=batch_sharding(mesh))

    def batch(self, idx: np.ndarray) -> dict[str, jax.Array]:
        return self._take(self.data, replicate(self.where[idx].astype(np.int32), self.mesh))


def _default_mesh(batch_size: int) -> Mesh:
    """Every device when ``batch_size`` divides over them; else (one process) the most that do."""
    devices = jax.devices()
    if batch_size % len(devices) == 0:
        return make_mesh(devices)
    if jax.process_count() > 1:
        raise ValueError(f"`batch_size` ({batch_size}) must be a multiple of the "
                         f"{len(devices)} devices of the {jax.process_count()} processes.")
    k = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    log.warning("batch size %d does not divide over %d devices: training on %d of them",
                batch_size, len(devices), k)
    return make_mesh(devices[:k])


def fit(
    state: TrainState,
    data: Any,
    *,
    key: jax.Array,
    epochs: int,
    batch_size: int = 128,
    config: TrainConfig = TrainConfig(),
    step_fn: StepFn | None = None,
    eval_data: Any = None,
    eval_every: int = 1,
    eval_batch_size: int = 512,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_every_epochs: int | None = 1,
    max_to_keep: int | None = 2,
    metrics_path: str | os.PathLike | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    mesh: Mesh | None = None,
    data_layout: str = "global",
    state_sharding: str | Callable[[TrainState, Mesh], Any] = "replicated",
) -> tuple[TrainState, list[dict]]:
    """Trains ``state`` for ``epochs`` epochs over ``data`` (data-parallel), resuming if it can.

    Every process of a multi-process run calls ``fit`` with the same arguments (``data`` aside
    with ``data_layout="local"``) and gets the same result.

    Args:
      state: the initial state (also the structure template for restoring); every process passes
        the same values (checked). It is replicated over ``mesh``.
      data: training set, ``(images (N, ...), labels (N,) int)`` or a dict ``image``/``label``;
        see ``data_layout`` for what each process passes.
      key: data-order key: epoch ``e`` visits ``epoch_permutation(key, e, N)`` in batches of
        ``batch_size`` (the last partial batch is dropped), ``N`` the size of the whole set.
      epochs: total number of epochs (a resumed run stops at the same total).
      batch_size: global examples per step (<= N), a multiple of the number of mesh devices.
      config: static :class:`TrainConfig` of :func:`advjax.train.train_step` (ignored when
        ``step_fn`` is given).
      step_fn: a custom ``step(state, batch) -> (state, metrics)`` written for the global batch
        (compiled here with :func:`advjax.train.shard_train_step`), e.g. the autoencoder
        pretraining step.
      eval_data: optional held-out set (the whole set on every process), evaluated every
        ``eval_every`` epochs and after the last.
      eval_batch_size: evaluation batch size (rounded up to a multiple of the device count).
      checkpoint_dir: Orbax checkpoint folder (the same folder for every process; every process
        takes part in each save and restore); the latest checkpoint there is restored first. It
        must come from a run with the same data (SHA-256 of images and labels), ``key``,
        ``batch_size`` and ``config``, else a ``ValueError`` names what differs (``epochs`` may
        grow: training continues to the new total). The data digest is that of the whole set
        with ``data_layout="global"``; with ``"local"`` it combines the processes' slice digests
        (gathered from every process, so all processes agree), so a local-layout run resumes
        with the same process count and slices.
      checkpoint_every: checkpoint every this many steps (None: not by step count).
      checkpoint_every_epochs: checkpoint at the end of every this many epochs (None: not by
        epoch). The final state is always saved.
      max_to_keep: checkpoints kept.
      metrics_path: JSON file rewritten atomically by process 0 after every epoch with the history,
        the step and the resolved ``config`` (default: ``checkpoint_dir/metrics.json`` when
        ``checkpoint_dir`` is given).
      progress: show a tqdm progress bar (process 0 only).
      on_step: ``on_step(step, metrics)`` called after each step on every process (step = new
        ``state.step``; metrics are replicated scalars).
      mesh: a 1-D mesh with axis ``"batch"`` (default: :func:`advjax.parallel.make_mesh`, every
        device of every process; in a one-process run whose ``batch_size`` does not divide over
        them, the most devices it divides over, with a warning). The batch is sharded over it.
      data_layout: ``"global"`` (default): every process passes the whole training set and
        takes its own rows of each global batch from it. ``"local"``: process ``p`` passes only
        its contiguous slice of the set, rows ``[offset_p, offset_p + n_p)`` with offsets in
        process order (e.g. ``tfds.split_for_jax_process`` or ``np.array_split(rows, P)[p]``);
        the slices are placed on the devices and each global batch is gathered on device, so the
        batch order is the same as with the whole set.

    Returns:
      ``(state, history)``; ``state`` replicated over ``mesh``; ``history`` holds one dict per
      epoch: ``epoch``, ``step``, ``train`` (means of the step metrics over the epoch), ``eval``
      (``accuracy``, ``loss``; when evaluated).
    """
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(eval_every, "eval_every")
    check_data_layout(data_layout)
    if checkpoint_every is not None:
        check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint_every_epochs is not None:
        check_positive_int(checkpoint_every_epochs, "checkpoint_every_epochs")
    if mesh is None:
        mesh = _default_mesh(batch_size)
    lo, hi = process_rows(mesh, batch_size)
    images, labels = _as_arrays(data, "data")
    process_index = jax.process_index()
    lead = process_index == 0
    digest = _digest(images, labels)
    if data_layout == "global":
        n = images.shape[0]
        digests = allgather_bytes(bytes.fromhex(digest))
        if len(set(digests)) != 1:
            raise ValueError("`data`: with data_layout='global' every process must pass the same "
                             "whole training set; the processes' SHA-256 digests differ (pass "
                             "data_layout='local' for per-process slices).")
    else:
        counts = allgather_int(images.shape[0])
        n = sum(counts)
        digests = allgather_bytes(bytes.fromhex(digest))
        if jax.process_count() > 1:
            digest = hashlib.sha256(b"".join(
                    f"{c}:".encode() + d for c, d in zip(counts, digests, strict=True))).hexdigest()
    if batch_size > n:
        raise ValueError(f"`batch_size` ({batch_size}) must be <= the number of examples ({n}).")
    if len(set(allgather_bytes(tree_digest(state)))) != 1:
        raise ValueError("`state`: the processes passed different initial states; create it from "
                         "the same key on every process.")
    if state_sharding == "replicated":
        shardings = replicated_sharding(mesh)
    elif state_sharding == "fsdp":
        shardings = fsdp_sharding(state, mesh)
    elif callable(state_sharding):
        shardings = state_sharding(state, mesh)
    else:
        raise ValueError("`state_sharding` must be 'replicated', 'fsdp' or a callable "
                         f"(state, mesh) -> shardings; got {state_sharding!r}.")
    state = place(state, shardings)
    eval_arrays = None if eval_data is None else _as_arrays(eval_data, "eval_data")
    data_key = _raw_key(key)
    steps_per_epoch = n // batch_size
    total_steps = epochs * steps_per_epoch
    step = shard_train_step(functools.partial(train_step, config=config) if step_fn is None
                            else step_fn, mesh, state_sharding=shardings)
    device_data = None
    if data_layout == "local":
        device_data = _DeviceData(images, labels, mesh, counts)
    if metrics_path is None and checkpoint_dir is not None:
        metrics_path = os.path.join(os.fspath(checkpoint_dir), "metrics.json")

    history: list[dict] = []
    sums: dict[str, np.float32] = {}
    manager = None
    # What a checkpoint must match to be resumed (``epochs`` may grow: training continues).
    run = {"data": digest, "data_key": [int(v) for v in np.asarray(data_key)],
           "batch_size": int(batch_size),
           "config": repr(config) if step_fn is None else None}
    if checkpoint_dir is not None:
        manager = checkpoint_manager(checkpoint_dir, max_to_keep=max_to_keep)
        restored = restore_checkpoint(manager, state)
        if restored is not None:
            state, meta = restored
            history = list(meta.get("history", []))
            sums = {k: np.float32(v) for k, v in meta.get("sums", {}).items()}
            saved_run = meta.get("run")
            if saved_run is not None:
                differ = [k for k in run if saved_run.get(k) != run[k]]
                if differ:
                    raise ValueError(
                        f"`checkpoint_dir` {os.fspath(checkpoint_dir)} holds a run made with other "
                        f"{', '.join(differ)} ({_RUN_FIELDS_DOC}); resuming would mix two runs. "
                        "Use another folder, or the same data, key, batch size and config.")
            saved_key = meta.get("data_key")
            if saved_key is not None and list(saved_key) != [int(v) for v in np.asarray(data_key)]:
                log.warning("resuming with a different data key than the checkpoint's; the batch "
                            "order will differ from the interrupted run")

    start = int(jax.device_get(state.step))
    if start > total_steps:
        raise ValueError(f"the restored state is at step {start}, beyond the {total_steps} "
                         f"steps of {epochs} epochs.")

    def meta() -> dict:
        return {"history": history, "data_key": [int(v) for v in np.asarray(data_key)], "run": run,
                "sums": {k: float(v) for k, v in sums.items()},
                "steps_per_epoch": steps_per_epoch}

    def write_metrics(finished: bool) -> None:
        if metrics_path is not None and lead:
            atomic_write_json(metrics_path, {"history": history, "step": int(state.step),
                                             "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                             "finished": finished,
                                             "config": None if step_fn is not None else config})

    bar = None
    if progress and lead:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start, desc="train", unit="step")
    perm, perm_epoch = None, -1
    t0 = time.perf_counter()
    last_saved = start
    log.debug("process %d builds rows [%d, %d) of each batch", process_index, lo, hi)
    try:
        for global_step in range(start, total_steps):
            epoch, index = divmod(global_step, steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = epoch_permutation(data_key, epoch, n), epoch
            idx = perm[index * batch_size:(index + 1) * batch_size]
            if device_data is None:
                own = idx[lo:hi]
                batch = global_batch({"image": images[own], "label": labels[own]}, mesh,
                                     batch_size)
            else:
                batch = device_data.batch(idx)
            state, metrics = step(state, batch)
            # Float32 sums on the host (the metrics are replicated scalars).
            for k, v in jax.device_get(metrics).items():
                sums[k] = np.float32(sums.get(k, np.float32(0)) + np.float32(v))
            if on_step is not None:
                on_step(global_step + 1, metrics)
            if bar is not None:
                bar.update(1)
            if index == steps_per_epoch - 1:
                train_means = {k: float(v) / steps_per_epoch for k, v in sums.items()}
                sums = {}
                if train_means.get("nonfinite", 0.0) > 0:
                    log.warning("epoch %d: %d step(s) with a NaN or infinite loss or gradient",
                                epoch + 1, round(train_means["nonfinite"] * steps_per_epoch))
                entry = {"epoch": epoch + 1, "step": global_step + 1, "train": train_means,
                         "seconds": time.perf_counter() - t0}
                if eval_arrays is not None and ((epoch + 1) % eval_every == 0
                                                or epoch + 1 == epochs):
                    entry["eval"] = evaluate(state, *eval_arrays, batch_size=eval_batch_size,
                                             mesh=mesh)
                history.append(entry)
                log.info("epoch %d: %s", epoch + 1, entry)
                if bar is not None:
                    post = {"loss": f"{train_means.get('loss', float('nan')):.4f}"}
                    if "eval" in entry:
                        post["eval_acc"] = f"{entry['eval']['accuracy']:.4f}"
                    bar.set_postfix(post)
                write_metrics(finished=global_step + 1 == total_steps)
            due = (checkpoint_every is not None and (global_step + 1) % checkpoint_every == 0) or (
                    checkpoint_every_epochs is not None and index == steps_per_epoch - 1
                    and (epoch + 1) % checkpoint_every_epochs == 0)
            if manager is not None and (due or global_step + 1 == total_steps):
                save_checkpoint(manager, state, meta())
                last_saved = global_step + 1
        if manager is not None and last_saved != int(jax.device_get(state.step)):
            save_checkpoint(manager, state, meta())
        if start == total_steps:
            write_metrics(finished=True)
    finally:
        if bar is not None:
            bar.close()
        if manager is not None:
            manager.close()
    return state, history
