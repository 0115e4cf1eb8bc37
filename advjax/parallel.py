"""Data-parallel execution over every device: meshes, sharded batch attacks, streaming evaluation.

Everything here is a thin layer over JAX's own machinery (``jax.sharding.Mesh``, ``NamedSharding``,
``jax.jit`` sharding propagation, ``jax.distributed``): a per-example function is batched with
``jax.vmap``, its batch axis is split over a 1-D ``"batch"`` mesh axis, and XLA runs one shard per
device with no communication (attacks are independent per example). One runner,
:func:`run_chunked`, feeds every batch entry point: rows go in fixed-size chunks, padded to a
multiple of the device count (:func:`_pad_leading`) and unpadded afterwards, so results equal the
unsharded ones. Under ``jax.distributed`` (P processes) each process passes either the whole set
(``data_layout="global"``) or its own rows (``data_layout="local"``); per-example randomness is
``fold_in(key, global index)`` either way, and :func:`gather` collects every process's rows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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
    """A 1-D data-parallel mesh over ``devices`` (default: every device of every process)."""
    devices = np.asarray(jax.devices() if devices is None else devices).reshape(-1)
    return Mesh(devices, (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = BATCH_AXIS) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over ``axis_name``, replicates the rest."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


# ----------------------------------------------------------------------------- rows and keys
DATA_LAYOUTS = ("global", "local")


def check_data_layout(data_layout: str) -> str:
    """``data_layout`` itself, or a ValueError naming it and the two layouts."""
    if data_layout not in DATA_LAYOUTS:
        raise ValueError(f"`data_layout` must be 'global' (every process passes the whole set) "
                         f"or 'local' (each process passes its own rows); got {data_layout!r}.")
    return data_layout


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leading_size(tree: Any) -> int:
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(tree) if np.ndim(leaf) > 0}
    if len(sizes) != 1:
        raise ValueError("all batched arguments must share the leading (batch) size; "
                         f"got {sorted(sizes)}")
    return sizes.pop()


def _pad_leading(tree: Any, n: int, size: int) -> Any:
    """Pads every leaf along axis 0 from ``n`` to ``size`` rows (the one padding rule).

    Padded rows repeat the last row; a leaf with no row at all (a process without examples) is
    padded with zeros. Padded rows are computed and thrown away.
    """
    if size == n:
        return tree

    def pad(a):
        if n == 0:
            return np.zeros((size, *np.shape(a)[1:]), np.asarray(a).dtype)
        return np.concatenate([a, np.repeat(a[-1:], size - n, axis=0)], axis=0)

    return jax.tree.map(pad, tree)


def _process_rows(n: int, count: int, index: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that process ``index`` of ``count`` takes (balanced)."""
    bounds = [n * p // count for p in range(count + 1)]
    return bounds[index], bounds[index + 1]


def _allgather_ints(values: Sequence[int]) -> np.ndarray:
    """``(P, len(values))`` int32: every process's ``values``, in process order (no-op for P=1)."""
    values = np.asarray(values, np.int32).reshape(1, -1)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(values, tiled=True)).reshape(
        jax.process_count(), -1)


def _signature(tree: Any) -> int:
    """A 31-bit checksum of the per-row shapes and dtypes of ``tree``'s leaves."""
    parts = [f"{np.shape(a)[1:]}{getattr(a, 'dtype', type(a).__name__)}"
             for a in jax.tree.leaves(tree)]
    return zlib.crc32("|".join([str(jax.tree.structure(tree))] + parts).encode()) & 0x7FFFFFFF


def _agree(n_local: int, tree: Any, what: str) -> np.ndarray:
    """Allgathers every process's row count and checks that all processes pass rows of the same
    shapes and dtypes (else every process raises the same ``ValueError``, none hangs)."""
    table = _allgather_ints([n_local, _signature(tree)])
    if len(set(table[:, 1].tolist())) != 1:
        raise ValueError(f"{what}: the processes pass arrays of different per-row shapes, dtypes "
                         "or structure; every process must pass the same kind of rows.")
    return table[:, 0].astype(np.int64)


def gather(tree: Any) -> Any:
    """Every process's rows, concatenated in process order, on every process.

    Args:
      tree: a pytree of host arrays (numpy) with leading size ``n_p`` on process ``p`` (sizes may
        differ, zero included; per-row shapes and dtypes must agree), e.g. what
        :func:`shard_attack`, :func:`stream` or :func:`run_chunked` return with
        ``data_layout="local"``.

    Returns:
      The pytree with leading size ``sum(n_p)`` as numpy arrays: rows of process 0, then 1, ...
      (the global order of :func:`run_chunked`'s local rows). One process: ``tree`` as numpy.
    """
    tree = jax.tree.map(np.asarray, tree)
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    n = _leading_size(tree) if jax.tree.leaves(tree) else 0
    counts = _agree(n, tree, "gather")
    top = max(int(counts.max()), 1)
    padded = jax.tree.map(lambda a: np.concatenate(
        [a, np.zeros((top - a.shape[0], *a.shape[1:]), a.dtype)]), tree)
    every = multihost_utils.process_allgather(padded, tiled=False)       # (P, top, ...)
    return jax.tree.map(lambda a: np.concatenate(
        [np.asarray(a)[p, :c] for p, c in enumerate(counts)], axis=0), every)


def example_keys(key: jax.Array, n: int, offset: int = 0) -> jax.Array:
    """The one per-example key helper: ``(n,)`` keys, key ``i`` = ``fold_in(key, offset + i)``.

    ``offset + i`` is the example's index in the whole set, so a key depends neither on ``n``, nor
    on the batch or chunk size, the device count or the process count. A typed key keeps its PRNG
    implementation (``fold_in`` never rewraps an ``rbg`` key with the default one); a raw
    ``uint32[2]`` key gives raw keys ``(n, 2)``. Every per-example and per-run key in advjax
    (attacks' restarts, AutoAttack stages, evaluation, training, studies) comes from here.
    """
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(offset, offset + n, dtype=jnp.uint32))


def _split_keys(tree: Any, offset: int, n: int) -> tuple[Any, Any]:
    """Host rows of ``tree`` for the compiled call: scalars broadcast to ``(n,)``, a single typed
    key ``k`` to ``fold_in(k, offset + i)`` (``offset + i`` is the row's global index), typed key
    arrays to their key data. Returns (rows, impls) with ``impls`` the PRNG implementation of each
    key leaf (None for other leaves), so the keys are rebuilt with their own implementation."""
    impls = []

    def expand(leaf):
        if _is_key(leaf):
            impls.append(jax.random.key_impl(leaf))
            if leaf.ndim == 0:
                leaf = example_keys(leaf, n, offset)
            return np.asarray(jax.random.key_data(leaf))
        impls.append(None)
        leaf = np.asarray(leaf)
        return np.broadcast_to(leaf, (n, *leaf.shape)) if leaf.ndim == 0 else leaf

    rows = jax.tree.map(expand, tree, is_leaf=_is_key)
    return rows, jax.tree.unflatten(jax.tree.structure(rows), impls)


def _wrap_keys(rows: Any, impls: Any) -> Any:
    return jax.tree.map(lambda a, impl: a if impl is None else
                        jax.random.wrap_key_data(a, impl=impl), rows, impls)


def _local_rows(out: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order (numpy)."""
    shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, parts = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:                   # replicated copies are read once
            seen.add(start)
            parts.append(np.asarray(s.data))
    return np.concatenate(parts, axis=0)


def _slice_rows(tree: Any, start: int, stop: int) -> Any:
    return jax.tree.map(lambda a: a[start:stop] if np.ndim(a) else a, tree, is_leaf=_is_key)


# ----------------------------------------------------------------------------- progress
@dataclasses.dataclass(frozen=True)
class ProgressUpdate:
    """One report of :func:`run_chunked`'s progress to a callable ``progress`` sink.

    Attributes:
      desc: what runs (e.g. the stage name).
      done: rows finished so far (this process's rows; 0 at the start, ``total`` at the end).
      total: rows to run.
      elapsed_s: seconds since the start, compilation included.
      eta_s: estimated seconds left: the run seconds per row so far times the rows left,
        compilation excluded (``None`` before the first call finished; 0 at the end).
    """

    desc: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None


class _Progress:
    """Reports finished rows to a tqdm bar (``progress=True``; tqdm shows the time left) or to a
    callable sink (:class:`ProgressUpdate`), from the host loop between compiled calls: no
    callback inside a program (a program with a Python callback is never written to JAX's
    persistent compilation cache) and no synchronisation beyond the one per call."""

    def __init__(self, progress: bool | Callable[[ProgressUpdate], Any], total: int, desc: str):
        self.total, self.desc, self.done, self.run_s = total, desc, 0, 0.0
        self.t0 = time.perf_counter()
        self.bar = self.sink = None
        if callable(progress):
            self.sink = progress
        elif progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="ex")
        self._report()

    def _report(self):
        if self.sink is not None:
            left = self.total - self.done
            eta = (0.0 if left == 0 else None if self.done == 0
                   else self.run_s / self.done * left)
            self.sink(ProgressUpdate(self.desc, self.done, self.total,
                                     time.perf_counter() - self.t0, eta))

    def advance(self, rows: int, run_s: float):
        rows = min(rows, self.total - self.done)
        self.done += rows
        self.run_s += run_s
        if self.bar is not None:
            self.bar.update(rows)
        self._report()

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- the one runner
def _per_device(fn: Callable, impls: Any, mesh: Mesh, axis_name: str):
    """``batched(args, kwargs)``: ``jax.vmap(fn)`` run by every device on its own rows
    (``jax.shard_map``). Under a plain ``jit`` of the vmapped function, a ``while_loop`` whose
    condition depends on the example (early stopping) would be reduced over the whole sharded
    batch, an ``all-reduce`` per iteration; here each device stops on its own rows, with no
    cross-device communication, and runs exactly ``jax.jit(jax.vmap(fn))`` on its rows."""

    def local(args, kwargs):
        args, kwargs = _wrap_keys((args, kwargs), impls)
        return jax.vmap(fn)(*args, **kwargs)

    spec = PartitionSpec(axis_name)
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)


def run_chunked(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict | None = None, *,
                data_layout: str = "global", chunk_size: int | None = 256,
                rows_per_call: Callable[[int, int], int] | None = None,
                mesh: Mesh | None = None, axis_name: str = BATCH_AXIS,
                progress: bool | Callable[[ProgressUpdate], Any] = False, desc: str = "chunks",
                cache: dict | None = None, timings: dict | None = None, host: bool = True,
                lower_only: bool = False) -> Any:
    """Runs the per-example ``fn`` over rows in fixed-size chunks sharded over ``mesh``.

    The single loop behind :func:`stream`, :func:`shard_attack` and
    :func:`advjax.attacks.evaluate`. Each compiled call takes ``L`` rows from every process
    (``L * P`` rows over the ``P`` processes, split over the mesh's devices along the batch axis;
    no cross-device communication); a process with fewer rows left pads (:func:`_pad_leading`),
    so every process runs the same number of calls with the same shapes and none waits forever.

    Args:
      fn: per-example ``fn(*rows, **per_example_rows)`` (arrays or pytrees out).
      args, kwargs: positional / keyword pytrees. Leaves with a leading axis are rows (all the
        same size); scalars are broadcast to every row; a single typed PRNG key ``k`` becomes
        ``fold_in(k, j)`` for the row of global index ``j`` (any PRNG implementation; typed key
        arrays keep theirs). Results do not depend on the chunking for threefry keys (the
        default); JAX's ``"rbg"`` bits under ``vmap`` depend on the batch.
      data_layout: ``"global"``: every process passes the same whole set (N rows); process
        ``p`` runs a balanced slice and the results are gathered, so every process gets all N rows.
        ``"local"``: each process passes its own ``n_p`` rows (any sizes, zero included); the
        global index of local row ``i`` of process ``p`` is ``n_0 + ... + n_{p-1} + i``, and
        each process gets the results of its own rows (:func:`gather` collects all of them).
        With one process both are the same.
      chunk_size: rows per compiled call over all processes (rounded up to a multiple of the
        device count; a set smaller than it is not padded up to it); None: one call for all rows.
      rows_per_call: instead of ``chunk_size``, ``rows_per_call(left, local_devices)``: the rows
        per process of the next call when the process with the most rows still has ``left``
        (a multiple of ``local_devices``; e.g. :func:`advjax.attacks.evaluate.chunk_rows`).
      mesh: a 1-D mesh with axis ``axis_name`` over the devices of every process, the same number
        on each (default: :func:`make_mesh`).
      progress, desc: True: a tqdm bar over this process's rows (rate and time left); a
        callable: called with a :class:`ProgressUpdate` at the start and after every call
        (``done`` monotone, ending at the total, with the estimated time left).
      cache: a dict the compiled calls are kept in, keyed by the rows' shapes (reused when given).
      timings: a dict; ``"run_s"`` and ``"compile_s"`` (seconds) are added to it.
      host: True: numpy results. False: with one process, the results stay on the devices
        (``jax.Array`` leaves split along the batch axis, :func:`rows_sharding`); with several,
        numpy as with True.
      lower_only: instead of running, return the ``jax.stages.Lowered`` of the first call (the
        program, shapes and shardings the run would use; every process must call it).

    Returns:
      The pytree of ``fn``'s outputs stacked over the rows this process asked for (all N with
      ``data_layout="global"``, its own ``n_p`` with ``"local"``).

    Raises:
      ValueError: ``data_layout`` unknown, rows of different sizes, processes passing rows of
        different shapes, no row on any process, a mesh without the same devices count per process.
    """
    check_data_layout(data_layout)
    kwargs = {} if kwargs is None else dict(kwargs)
    tree = (tuple(args), kwargs)
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    n_proc, me = jax.process_count(), jax.process_index()
    n_dev = mesh.shape[axis_name]
    local_dev = sum(d.process_index == me for d in mesh.devices.reshape(-1))
    if local_dev * n_proc != n_dev:
        raise ValueError(f"`mesh` must hold the same number of devices of every process; this "
                         f"process has {local_dev} of {n_dev} over {n_proc} processes.")
    sharding = batch_sharding(mesh, axis_name)
    has_rows = any(np.ndim(a) > 0 for a in jax.tree.leaves(tree))
    if not has_rows:
        raise ValueError("`arrays`: at least one argument must have a leading (batch) axis.")
    n_given = _leading_size(tree)
    counts = _agree(n_given, tree, "run_chunked")
    if data_layout == "global":
        if len(set(counts.tolist())) != 1:
            raise ValueError(f"data_layout='global': every process must pass the whole set; the "
                             f"processes pass {counts.tolist()} rows (use data_layout='local').")
        total = int(counts[0])
        start, stop = _process_rows(total, n_proc, me)
        tree = _slice_rows(tree, start, stop)
        counts = np.asarray([b - a for a, b in (_process_rows(total, n_proc, p)
                                                for p in range(n_proc))])
        offset = start
    else:
        offset = int(counts[:me].sum())
    if int(counts.sum()) == 0:
        raise ValueError("`arrays`: at least one row is required (no process has any).")
    n_local, most = int(counts[me]), int(counts.max())
    rows, impls = _split_keys(tree, offset, n_local)

    fixed = most if chunk_size is None else min(-(-chunk_size // n_proc), most)

    def per_call(left):
        size = fixed if rows_per_call is None else int(rows_per_call(left, local_dev))
        return -(-size // local_dev) * local_dev

    batched = _per_device(fn, impls, mesh, axis_name)

    cache = {} if cache is None else cache
    timings = {} if timings is None else timings
    timings.setdefault("run_s", 0.0)
    timings.setdefault("compile_s", 0.0)
    bar = _Progress(progress, n_local, desc) if progress and not lower_only else None
    outputs, done = [], 0
    while done < most:
        size = per_call(most - done)
        real = max(0, min(n_local, done + size) - done)
        chunk = _pad_leading(_slice_rows(rows, done, done + real), real, size)
        chunk = jax.tree.map(lambda a: jax.make_array_from_process_local_data(
            sharding, a, (size * n_proc, *a.shape[1:])), chunk)  # noqa: B023
        if lower_only:
            return jax.jit(batched, out_shardings=sharding).lower(*chunk)
        sig = (size, jax.tree.structure(chunk), str(impls))
        if sig not in cache:
            t0 = time.perf_counter()
            cache[sig] = jax.jit(batched, out_shardings=sharding).lower(*chunk).compile()
            timings["compile_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = cache[sig](*chunk)
        if host or n_proc > 1:
            out = jax.tree.map(lambda a: _local_rows(a)[:real], out)  # noqa: B023
        elif real < size:
            out = jax.tree.map(lambda a: a[:real], out)  # noqa: B023
        outputs.append(out)
        run_s = time.perf_counter() - t0
        timings["run_s"] += run_s
        if bar is not None:
            bar.advance(real, run_s)
        done += size
    if bar is not None:
        bar.close()
    if len(outputs) == 1:
        result = outputs[0]
    else:
        cat = np.concatenate if host or n_proc > 1 else jnp.concatenate
        result = jax.tree.map(lambda *parts: cat(parts, axis=0), *outputs)
    if not (host or n_proc > 1):
        result = jax.tree.map(lambda a: jax.device_put(a, rows_sharding(a.shape[0], mesh,
                                                                        axis_name)), result)
    return gather(result) if data_layout == "global" and n_proc > 1 else result


def rows_sharding(n: int, mesh: Mesh, axis_name: str = BATCH_AXIS) -> NamedSharding:
    """Where :func:`run_chunked` (``host=False``) and :func:`shard_attack` leave ``n`` result
    rows: split along the batch axis over the first ``g`` devices of ``mesh``, ``g`` the largest
    device count up to the mesh's that divides ``n`` (JAX shards an axis only evenly).

    ``n`` a multiple of the device count: every device holds ``n / D`` rows (the mesh's own
    :func:`batch_sharding`). Otherwise (a ragged ``n``) each row is still on exactly one device,
    never copied to all of them, over fewer devices: 13 rows on 8 devices sit on 1 (13 is
    prime), 12 rows on 8 devices on 6 (2 rows each), 100 rows on 8 on 5.
    """
    devices = mesh.devices.reshape(-1)
    g = max(d for d in range(1, len(devices) + 1) if n % d == 0) if n else len(devices)
    if g == len(devices):
        return batch_sharding(mesh, axis_name)
    return NamedSharding(Mesh(devices[:g], (axis_name,)), PartitionSpec(axis_name))


def shard_attack(attack: Callable[..., Any], mesh: Mesh | None = None, *,
                 axis_name: str = BATCH_AXIS, data_layout: str = "global",
                 chunk_size: int | None = None) -> Callable[..., Any]:
    """The batched ``attack`` sharded over ``mesh`` along the batch axis (contract).

    Args:
      attack: a per-example function ``attack(x, label, **per_example)`` (e.g. from
        ``advjax.attacks``) — or any per-example function of arrays.
      mesh: a mesh with axis ``axis_name`` (default: :func:`make_mesh` over the devices of every
        process).
      data_layout: ``"global"`` (every process passes the whole set and gets every row's result) or
        ``"local"`` (each process passes its own rows and gets their results); see
        :func:`run_chunked`.
      chunk_size: rows per compiled call over all processes (default None: all rows in one call).

    Returns:
      ``run(xs, labels, **per_example)``: ``xs`` ``(n, ...)``, ``labels`` ``(n,)`` (``n`` = N
      with ``data_layout="global"``, this process's row count with ``"local"``); keyword arrays
      with a leading axis of size n are per-example (keys, eps, targets), scalars are broadcast,
      and a single typed PRNG key ``k`` becomes ``fold_in(k, j)`` for the example of global index
      ``j`` (raw ``uint32`` keys must be given per example, ``(n, 2)``). Uneven sizes are padded
      and unpadded. The result is the attack's pytree with leading axis n — one process:
      ``jax.Array`` leaves split along the batch axis (over the whole mesh when n is a multiple
      of its device count, else over the largest number of its devices that divides n:
      :func:`rows_sharding`; never replicated); several: numpy arrays on the host — equal
      per example to ``jax.jit(jax.vmap(attack))`` on one device (bitwise for the same
      per-device rows; otherwise up to float reduction order). ``run.lower(xs, labels,
      **per_example)`` gives the ``jax.stages.Lowered`` of one call (to inspect the program).
    """
    check_data_layout(data_layout)
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    cache: dict = {}

    @functools.wraps(attack)
    def run(xs, labels, **per_example):
        return run_chunked(attack, (xs, labels), per_example, data_layout=data_layout,
                           chunk_size=chunk_size, mesh=mesh, axis_name=axis_name, cache=cache,
                           host=False)

    def lower(xs, labels, **per_example):
        return run_chunked(attack, (xs, labels), per_example, data_layout=data_layout,
                           chunk_size=chunk_size, mesh=mesh, axis_name=axis_name,
                           lower_only=True)

    run.lower = lower
    return run


def iterate_chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)


def stream(fn: Callable[..., Any], *arrays: Any, chunk_size: int = 256, progress: bool = False,
           mesh: Mesh | None = None, desc: str = "chunks", data_layout: str = "global",
           **per_example: Any) -> Any:
    """Applies a per-example ``fn`` to large arrays in fixed-size chunks, results on host.

    Every call has the same rows, ``min(chunk_size, N)`` rounded up to a multiple of the device
    count (the last chunk is padded), so ``fn`` compiles once; each chunk's result is copied to
    host memory (numpy) before the next starts, so device memory is flat in the number of
    examples. Each chunk is sharded over ``mesh`` (default: every device of every process).

    Args:
      fn: per-example function ``fn(*rows, **per_example_rows)``.
      *arrays: positional arrays with the same leading size (N, or this process's rows with
        ``data_layout="local"``).
      chunk_size: rows per compiled call over all processes.
      progress, desc: a tqdm progress bar.
      data_layout: ``"global"`` or ``"local"``, see :func:`run_chunked`.
      **per_example: keyword arrays with the same leading size, or scalars (broadcast), or a
        single typed PRNG key ``k`` (the example of global index ``j`` gets ``fold_in(k, j)``,
        whatever ``chunk_size``, the device and the process count).

    Returns:
      The pytree of ``fn``'s outputs stacked over the rows this process asked for (all N with
      ``data_layout="global"``, its own with ``"local"``), as numpy arrays.
    """
    if not arrays:
        raise ValueError("`arrays`: at least one positional array is required")
    return run_chunked(fn, arrays, per_example, data_layout=data_layout, chunk_size=chunk_size,
                       mesh=mesh, progress=progress, desc=desc)
