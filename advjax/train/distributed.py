"""Data-parallel training over a ``"batch"`` mesh axis, on one device, D devices or P processes.

The training step stays a pure function of ``(state, batch)`` written for the *global* batch; it is
compiled once with sharding annotations (no ``pmap``, no hand-written collectives):

* the batch ``(B, ...)`` is split along its leading axis over the mesh axis ``"batch"``
  (:func:`advjax.parallel.batch_sharding`); ``B`` must be a multiple of the device count;
* the state (parameters, optimiser state, batch statistics, key, ψ integrator, pool) is replicated;
* every batch mean in the loss (cross-entropy, the Woods penalty ``mean |G|^z``, BatchNorm batch
  statistics) is a mean over the global batch, so XLA inserts the all-reduces of the gradients
  and of these statistics. BatchNorm therefore uses the statistics of the **global** batch, as on
  one device: for a batch-level ``apply`` the mean over axis 0 is global, and with
  ``state.bn_axis_name`` the per-example ``jax.vmap(..., axis_name=...)`` collective is a reduction
  over the whole (sharded) vmapped axis. Per-example randomness is ``fold_in(key, row)`` with the
  row in the global batch, so attacks draw the same numbers on any device count.

Multi-process runs (``jax.distributed``): the state is replicated over every device of every
process; each process builds only its own rows of each global batch
(:func:`global_batch`, :func:`process_rows`) and ``jax.make_array_from_process_local_data`` joins
them into one global array.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from advjax.parallel import BATCH_AXIS, batch_sharding, make_mesh

StepFn = Callable[[Any, dict], tuple[Any, dict]]


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that holds a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def _check_mesh(mesh: Mesh, axis_name: str) -> None:
    if not isinstance(mesh, Mesh) or axis_name not in mesh.axis_names:
        raise ValueError(f"`mesh` must be a jax.sharding.Mesh with an axis {axis_name!r}; got "
                         f"{mesh!r}.")


def shard_train_step(step_fn: StepFn, mesh: Mesh | None = None, *,
                     axis_name: str = BATCH_AXIS, donate: bool = False,
                     state_sharding: Any = None) -> StepFn:
    """``step_fn`` compiled for data parallelism over ``mesh`` (sharding annotations only).

    Args:
      step_fn: a pure ``step(state, batch) -> (state, metrics)`` written for the global batch (e.g.
        ``functools.partial(train_step, config=config)`` or :func:`make_train_step`'s result).
      mesh: a mesh with axis ``axis_name`` (default: :func:`advjax.parallel.make_mesh` over every
        device of every process).
      donate: donate the input state's buffers to the output (saves memory; the input state must not
        be used afterwards).
      state_sharding: the state's shardings, a pytree (prefix) of ``NamedSharding`` on ``mesh``,
        e.g. :func:`fsdp_sharding` for models too large to replicate (default: replicated). The new
        state comes back with the same shardings.

    Returns:
      ``step(state, batch)``: ``state`` placed by ``state_sharding`` (see :func:`place`),
      ``batch`` a dict of arrays with leading size ``B`` (a multiple of the mesh size) sharded by
      :func:`advjax.parallel.batch_sharding` (see :func:`global_batch`); returns the new state (same
      shardings) and the scalar metrics (replicated). Equal to ``jax.jit(step_fn)`` on one device
      up to the order of floating-point reductions.
    """
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    _check_mesh(mesh, axis_name)
    rep, shard = replicated_sharding(mesh), batch_sharding(mesh, axis_name)
    state_sharding = rep if state_sharding is None else state_sharding
    return jax.jit(step_fn, in_shardings=(state_sharding, shard),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,) if donate else ())


def fsdp_sharding(tree: Any, mesh: Mesh, *, min_size: int = 2 ** 16,
                  axis_name: str = BATCH_AXIS) -> Any:
    """Shardings that split each large leaf of ``tree`` over ``axis_name`` (ZeRO-3 / FSDP style).

    A leaf with at least ``min_size`` elements is split along its largest dimension that the mesh
    size divides; every other leaf (scalars, small biases, keys) is replicated. Under
    :func:`shard_train_step` XLA then all-gathers each parameter where it is used and
    reduce-scatters its gradient, so each device holds ~1/D of the parameters and optimiser
    state; the arithmetic, and so the result, is that of the replicated step up to float
    reduction order.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tree``.
    """
    _check_mesh(mesh, axis_name)
    n_dev = mesh.shape[axis_name]

    def one(leaf):
        shape = np.shape(leaf)
        if int(np.prod(shape, dtype=np.int64)) < min_size or not shape:
            return replicated_sharding(mesh)
        dims = [i for i in np.argsort(shape)[::-1] if shape[i] % n_dev == 0]
        if not dims:
            return replicated_sharding(mesh)
        spec = [None] * len(shape)
        spec[int(dims[0])] = axis_name
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` as a global array replicated over ``mesh``.

    Each process passes the same values (e.g. a state created from the same key); leaves already
    replicated on ``mesh`` are kept as they are.
    """
    return place(tree, replicated_sharding(mesh))


def place(tree: Any, shardings: Any) -> Any:
    """Every array leaf of ``tree`` as a global array with the sharding of ``shardings``.

    Args:
      tree: host or device values, the same on every process (each process builds its own shards
        from them).
      shardings: one ``Sharding`` for every leaf, or a pytree of them with ``tree``'s structure.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: _put(leaf, shardings), tree)
    return jax.tree.map(_put, tree, shardings)


def _put(leaf: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError("typed PRNG keys cannot be placed here; store raw key data.")
        # Exactly this sharding (an equivalent single-device one would make jit compile twice).
        if leaf.sharding == sharding:
            return leaf
        if not leaf.is_fully_addressable:  # already a global array: reshard on the devices
            return jax.device_put(leaf, sharding)
    value = np.asarray(jax.device_get(leaf), dtype=jnp.asarray(leaf).dtype)
    return jax.make_array_from_process_local_data(sharding, value, value.shape)


def process_rows(mesh: Mesh, batch_size: int, axis_name: str = BATCH_AXIS) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a global batch of ``batch_size`` that this process's devices hold.

    Raises:
      ValueError: when ``batch_size`` is not a multiple of the mesh's ``axis_name`` size, or when
        this process's devices do not hold one contiguous block of rows (order the mesh's devices
        by process, as :func:`advjax.parallel.make_mesh` does).
    """
    _check_mesh(mesh, axis_name)
    n_dev = mesh.shape[axis_name]
    if batch_size % n_dev:
        raise ValueError(f"`batch_size` ({batch_size}) must be a multiple of the {n_dev} "
                         f"devices of the mesh axis {axis_name!r}.")
    indices = batch_sharding(mesh, axis_name).addressable_devices_indices_map((batch_size,))
    starts = sorted({s[0].start or 0 for s in indices.values()})
    stops = sorted({batch_size if s[0].stop is None else s[0].stop for s in indices.values()})
    lo, hi = starts[0], stops[-1]
    if len(starts) * (batch_size // n_dev) != hi - lo:
        raise ValueError("`mesh`: this process's devices hold rows that are not contiguous in the "
                         "batch axis; build the mesh with advjax.parallel.make_mesh().")
    return lo, hi


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_size: int,
                 axis_name: str = BATCH_AXIS) -> dict[str, jax.Array]:
    """Joins each process's rows into global arrays sharded over ``axis_name``.

    Args:
      local: ``{name: (hi - lo, ...) array}``, this process's rows ``[lo, hi) = process_rows(mesh,
        batch_size)`` of the global batch (all of them in a single-process run).
      mesh, batch_size: the mesh and the global batch size ``B``.

    Returns:
      ``{name: (B, ...) jax.Array}`` sharded by ``batch_sharding(mesh)``.
    """
    sharding = batch_sharding(mesh, axis_name)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                      (batch_size, *np.shape(v)[1:]))
            for k, v in local.items()}


def allgather_bytes(value: bytes) -> list[bytes]:
    """``value`` of every process, in process order (each process passes the same length)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.frombuffer(value, np.uint8))
    return [bytes(row) for row in np.asarray(gathered).reshape(jax.process_count(), -1)]


def allgather_int(value: int) -> list[int]:
    """The integer ``value`` of every process, in process order."""
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray([value], np.int64))
    return [int(v) for v in np.asarray(gathered).reshape(-1)]


def tree_digest(tree: Any) -> bytes:
    """SHA-256 of the exact bytes, dtypes and shapes of every leaf of ``tree`` (host values; a leaf
    sharded over several processes contributes its dtype and shape only)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:  # a sharded global array: its shape and dtype only
                h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
                continue
            leaf = leaf.addressable_data(0)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()
