"""Data-parallel execution over every device: meshes, sharded batch attacks, streaming evaluation.

Everything here is a thin layer over JAX's own machinery (``jax.sharding.Mesh``, ``NamedSharding``,
``jax.jit`` sharding propagation, ``jax.distributed``): a per-example function is batched with
``jax.vmap``, its batch axis is split over a 1-D ``"batch"`` mesh axis, and XLA runs one shard per
device with no communication (attacks are independent per example). Uneven batch sizes are padded to
a multiple of the device count by repeating the last example and unpadded afterwards, so results
equal the unsharded ones.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from advjax.lowering import lower_convs

logger = logging.getLogger(__name__)

BATCH_AXIS = "batch"


# advjax's own settings for a multi-process run where JAX cannot detect the cluster itself.
COORDINATOR_ENV = "ADVJAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "ADVJAX_NUM_PROCESSES"
PROCESS_ID_ENV = "ADVJAX_PROCESS_ID"
# Cluster environments ``jax.distributed.initialize()`` detects by itself.
_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           **kwargs: Any) -> bool:
    """Starts multi-process JAX (``jax.distributed.initialize``) when asked to; else does nothing.

    Call it before any other JAX call in the process (the ``advjax`` command does). The three
    settings come, in order of precedence, from the arguments, from advjax's environment variables
    ``ADVJAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``ADVJAX_NUM_PROCESSES`` and
    ``ADVJAX_PROCESS_ID``, or from JAX's cluster auto-detection (TPU pods, SLURM, Open MPI; used
    when none of them is set and such a cluster is detected). On CPU-only runs the cross-process
    collectives use gloo.

    Args:
      coordinator_address, num_processes, process_id: as ``jax.distributed.initialize``.
      **kwargs: passed on to ``jax.distributed.initialize`` (``local_device_ids``,
        ``initialization_timeout``, ...).

    Returns:
      True when initialised here; False for a single-process run (nothing set, no cluster).

    Raises:
      ValueError: when only some of the three settings are given, or they are not integers.
    """
    def setting(value, env):
        return value if value is not None else os.environ.get(env)

    address = setting(coordinator_address, COORDINATOR_ENV)
    count = setting(num_processes, NUM_PROCESSES_ENV)
    index = setting(process_id, PROCESS_ID_ENV)
    given = {COORDINATOR_ENV: address, NUM_PROCESSES_ENV: count, PROCESS_ID_ENV: index}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError("initialize_distributed: the coordinator address, process count and "
                             f"process id go together; missing {', '.join(missing)} (argument "
                             "or environment variable).")
        try:
            count, index = int(count), int(index)
        except (TypeError, ValueError):
            raise ValueError(f"initialize_distributed: {NUM_PROCESSES_ENV}={count!r} and "
                             f"{PROCESS_ID_ENV}={index!r} must be integers.") from None
        if not 0 <= index < count:
            raise ValueError(f"initialize_distributed: process id {index} is not in "
                             f"[0, {count}).")
        kwargs.update(coordinator_address=str(address), num_processes=count, process_id=index)
    elif not (kwargs or any(v in os.environ for v in _CLUSTER_ENV)):
        return False
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    logger.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
                jax.process_count(), jax.device_count())
    return True


def make_mesh(devices: Any = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: every device of every host)."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = BATCH_AXIS) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over ``axis_name``, replicates the rest."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def _pad_leading(tree: Any, n: int, size: int) -> Any:
    """Pads every leaf along axis 0 from ``n`` to ``size`` rows by repeating the last row."""
    if size == n:
        return tree
    index = np.concatenate([np.arange(n), np.full(size - n, n - 1)])
    return jax.tree.map(lambda a: a[index], tree)


def _leading_size(tree: Any) -> int:
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(tree) if np.ndim(leaf) > 0}
    if len(sizes) != 1:
        raise ValueError("all batched arguments must share the leading (batch) size; "
                         f"got {sorted(sizes)}")
    return sizes.pop()


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _broadcast_scalars(tree: Any, n: int) -> Any:
    """Scalars to ``(n,)``; a single typed PRNG key to the per-example keys ``fold_in(key, i)``.

    Example ``i`` (its row in the whole set) gets ``fold_in(key, i)``, so examples draw independent
    randomness and a result depends neither on the chunk size nor on the device count.
    """
    def expand(leaf):
        leaf = jnp.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        if leaf.ndim != 0:
            return leaf
        if _is_key(leaf):
            return jax.vmap(lambda i: jax.random.fold_in(leaf, i))(jnp.arange(n))
        return jnp.broadcast_to(leaf, (n,))
    return jax.tree.map(expand, tree)


def shard_attack(attack: Callable[..., Any], mesh: Mesh | None = None, *,
                 axis_name: str = BATCH_AXIS, conv_lowering: str = "native") -> Callable[..., Any]:
    """The batched ``attack`` sharded over ``mesh`` along the batch axis (contract).

    Args:
      attack: a per-example function ``attack(x, label, **per_example)`` (e.g. from
        ``advjax.attacks``) — or any per-example function of arrays.
      mesh: a mesh with axis ``axis_name`` (default: :func:`make_mesh` over all devices).
      conv_lowering: as in :func:`stream`.

    Returns:
      ``run(xs, labels, **per_example)``: ``xs`` ``(N, ...)``, ``labels`` ``(N,)``; keyword arrays
      with a leading axis of size N are per-example (keys, eps, targets), scalars are broadcast
      to every example, and a single typed PRNG key ``k`` becomes ``fold_in(k, i)`` for example
      ``i`` (independent randomness per example; raw ``uint32`` keys must be given per example,
      ``(N, 2)``). N need not divide the device count: the batch is
      padded and the result unpadded. The result is the attack's pytree with leading axis N, each
      leaf sharded over the mesh. Equal to ``jax.jit(jax.vmap(attack))`` on one device.
    """
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    sharding = batch_sharding(mesh, axis_name)
    n_dev = mesh.shape[axis_name]
    compiled = jax.jit(jax.vmap(lower_convs(attack, mode=conv_lowering)), out_shardings=sharding)

    @functools.wraps(attack)
    def run(xs, labels, **per_example):
        args = (xs, labels, per_example)
        n = _leading_size((xs, labels))
        args = _broadcast_scalars(args, n)
        if _leading_size(args) != n:
            raise ValueError("per-example keyword arrays must have leading size "
                             f"{n} (the batch size of `xs`)")
        padded = -(-n // n_dev) * n_dev
        args = _pad_leading(args, n, padded)
        args = jax.device_put(args, sharding)
        xs_p, labels_p, kw_p = args
        out = compiled(xs_p, labels_p, **kw_p)
        return out if padded == n else jax.tree.map(lambda a: a[:n], out)

    return run


def iterate_chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def stream(fn: Callable[..., Any], *arrays: Any, chunk_size: int = 256, progress: bool = False,
           mesh: Mesh | None = None, desc: str = "chunks", conv_lowering: str = "native",
           **per_example: Any) -> Any:
    """Applies a per-example ``fn`` to large arrays in fixed-size chunks, results gathered on host.

    Every chunk has the same number of rows, ``min(chunk_size, N)`` (the last one is padded), so
    ``fn`` compiles once and a set smaller than ``chunk_size`` is not padded up to it;
    each chunk's result is copied to host memory (numpy) before the next starts, so device memory is
    flat in the number of examples. With more than one device (or an explicit ``mesh``) each chunk
    is sharded over the mesh (``chunk_size`` is rounded up to a multiple of the device count).

    Args:
      fn: per-example function ``fn(*rows, **per_example_rows)``.
      *arrays: positional arrays with the same leading size N.
      chunk_size: rows per compiled call.
      progress: show a tqdm progress bar.
      conv_lowering: ``"native"`` (default: XLA's convolution kernels), ``"auto"`` (convolutions
        as matrix products on CPU backends only) or ``"gemm"`` (always); see
        :func:`advjax.lowering.lower_convs`, applied to the whole ``fn``. The attacks already
        run their model's convolution derivatives without XLA:CPU's transposed convolution on
        CPU backends (``form="tangent"``), so the default leaves ``fn`` as it is; see
        ``benchmarks/README.md``.
      **per_example: keyword arrays with leading size N, or scalars (broadcast), or a single
        typed PRNG key ``k`` (example ``i`` of the whole set gets ``fold_in(k, i)``, whatever
        ``chunk_size`` and the device count).

    Returns:
      The pytree of ``fn``'s outputs stacked over the N examples, as numpy arrays.
    """
    if not arrays:
        raise ValueError("`arrays`: at least one positional array is required")
    n = _leading_size(arrays)
    if n == 0:
        raise ValueError("`arrays`: at least one row is required")
    chunk_size = min(chunk_size, n)
    fn = lower_convs(fn, mode=conv_lowering)
    if mesh is None and jax.device_count() > 1:
        mesh = make_mesh()
    if mesh is not None:
        n_dev = mesh.shape[BATCH_AXIS]
        chunk_size = -(-chunk_size // n_dev) * n_dev
        sharding = batch_sharding(mesh)
        compiled = jax.jit(jax.vmap(fn), out_shardings=sharding)
    else:
        sharding = None
        compiled = jax.jit(jax.vmap(fn))
    per_example = _broadcast_scalars(per_example, n)
    chunks = list(iterate_chunks(n, chunk_size))
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc=desc, unit="chunk")
    outputs = []
    for start, stop in chunks:
        rows = jax.tree.map(lambda a: a[start:stop], (arrays, per_example))  # noqa: B023
        rows = _pad_leading(rows, stop - start, chunk_size)
        if sharding is not None:
            rows = jax.device_put(rows, sharding)
        out = compiled(*rows[0], **rows[1])
        outputs.append(jax.tree.map(lambda a: np.asarray(a)[: stop - start], out))  # noqa: B023
    return jax.tree.map(lambda *parts: np.concatenate(parts, axis=0), *outputs)
