"""The lead process and what it shares, for runs started as P processes (``jax.distributed``).

On a pod every process runs the same command. Files are written by process 0 (the *lead*);
decisions that depend on the file system (refuse a folder, reuse a finished stage) are taken by
the lead and sent to every process, so that all processes run the same computations and meet in
the same collectives, whether or not they see the lead's files. With one process every function
here is the plain single-process behaviour and makes no collective call.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Exceptions the lead's check may raise that every process raises again, with the lead's message.
_SHARED_ERRORS = (ValueError, TypeError, FileNotFoundError)


def process_count() -> int:
    import jax

    return jax.process_count()


def process_index() -> int:
    import jax

    return jax.process_index()


def is_lead() -> bool:
    """True on process 0 (and in a single-process run)."""
    return process_index() == 0


def broadcast_bytes(data: bytes | None) -> bytes | None:
    """The lead's ``data`` on every process (``None`` stays ``None``); others pass anything."""
    if process_count() == 1:
        return data
    import numpy as np
    from jax.experimental import multihost_utils

    size = -1 if data is None else len(data)
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(size, np.int64)))
    if size < 0:
        return None
    buf = np.frombuffer(data, np.uint8) if is_lead() else np.zeros(size, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8))


def broadcast_object(obj: Any) -> Any:
    """The lead's picklable ``obj`` on every process."""
    if process_count() == 1:
        return obj
    blob = broadcast_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if is_lead()
                           else b"")
    return pickle.loads(blob)  # noqa: S301 - sent by this job's own process 0


def on_lead(fn: Callable[[], T]) -> T | None:
    """Runs ``fn`` on the lead only; returns its result on every process.

    A ``ValueError``, ``TypeError`` or ``FileNotFoundError`` raised by ``fn`` on the lead is raised
    on every process (same type, same message), so that all stop together instead of the others
    waiting for the lead in the next collective.
    """
    outcome: tuple[str, Any] | None = None
    if is_lead():
        try:
            outcome = ("ok", fn())
        except _SHARED_ERRORS as err:
            if process_count() == 1:
                raise
            outcome = ("error", err)
    outcome = broadcast_object(outcome)
    kind, value = outcome
    if kind == "error":
        raise value
    return value


def barrier(name: str) -> None:
    """Every process waits here until all have reached it (no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
