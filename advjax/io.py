"""Atomic result files and run folders (resolved config, versions, metrics, report)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if hasattr(value, "__array__"):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for other threads' files)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def array_digest(*arrays: Any) -> str:
    """SHA-256 (hex, 64 characters) of arrays' exact contents: each one's dtype, shape and bytes.

    The one fingerprint of data in advjax: run inputs, training sets and evaluation states all
    use it, so equal arrays always get equal digests. Arrays that differ only in dtype or shape
    (``int32`` vs ``int64`` labels, ``(N, 784)`` vs ``(N, 28, 28, 1)`` images) differ.
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    The file gets the permissions an ordinary ``open(path, "w")`` would give (``0o666`` less the
    user's umask), not the ``0o600`` of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` (dataclasses, numpy and jax arrays allowed) as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                                  timeout=5, check=True)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - no git, not a repository: the revision is simply unknown
        return None


def versions() -> dict[str, Any]:
    """Library versions, platform and devices, for the record of a run."""
    import importlib.metadata as md

    import jax

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("advjax", "jax", "jaxlib", "flax", "optax", "chex", "numpy", "orbax-checkpoint",
                            "tensorflow-datasets"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    info["devices"] = [str(d) for d in jax.devices()]
    info["git_revision"] = git_revision(Path(__file__).resolve().parent)
    return info


def code_fingerprint() -> dict[str, Any]:
    """What identifies the code that computes a result: package version, git revision, local edits.

    ``local_changes`` is a digest of ``git diff HEAD`` restricted to the package folder (``None``
    outside a git checkout, e.g. after a plain ``pip install``), so uncommitted edits to the
    library count as a different code version.
    """

    import advjax

    package_dir = Path(advjax.__file__).resolve().parent
    revision = git_revision(package_dir)
    changes = None
    if revision is not None:
        try:
            diff = subprocess.run(["git", "diff", "HEAD", "--", "."], cwd=package_dir,
                                  capture_output=True, timeout=10, check=True).stdout
            changes = hashlib.sha256(diff).hexdigest()[:16] if diff else ""
        except Exception:  # noqa: BLE001 - git unusable: the local state is simply unknown
            changes = None
    return {"advjax": advjax.__version__, "git_revision": revision, "local_changes": changes}
