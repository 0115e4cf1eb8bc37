"""Safe reader for ``torch.save`` files (legacy and zip formats): no torch, no pickled code is run.

Byte layout (papers.md §2.12), a concatenation of pickles and raw data:

1. the magic number ``0x1950a86a20f9469cfc6c`` (a pickled int);
2. the protocol version ``1001`` (a pickled int);
3. system information (a pickled dict: ``protocol_version``, ``little_endian``, ``type_sizes``);
4. the main pickle: the saved object; each tensor is ``torch._utils._rebuild_tensor_v2(storage,
   offset, size, stride, requires_grad, backward_hooks)`` whose ``storage`` is a persistent id
   ``("storage", <StorageType>, key, location, numel, view_metadata)``;
5. a pickled list of storage keys;
6. for each key in that order: the element count (int64, little-endian) and the raw data.

The zip format (``torch.save`` default since PyTorch 1.6) is a zip archive ``<name>/data.pkl`` (the
main pickle, whose storages are persistent ids ``("storage", <StorageType>, key, location, numel)``)
plus one entry ``<name>/data/<key>`` of raw little-endian bytes per storage; :func:`load_torch`
reads either format.

The unpickler is restricted: ``find_class`` resolves only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` (replaced by a function that records the tensor's layout),
``torch._utils._rebuild_parameter`` (a parameter is read as its tensor), the
storage types ``torch.<Type>Storage`` (inert dtype markers) and, when the caller names them, stub
globals that map to a harmless placeholder class (never imported). Any other global raises
:class:`pickle.UnpicklingError` naming it, so no pickled code is executed.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage type name -> little-endian numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Inert marker standing for ``torch.<name>``: only its dtype is used."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor whose storage bytes have not been read yet."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class StubGlobal:
    """Harmless stand-in for a pickled global that is allowed but never imported.

    A stub records the ``(module, name)`` it replaces; instances (if the pickle builds any) keep the
    constructor arguments and state as plain data.
    """

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub of {self.module}.{self.name}>"


def _make_stub(module: str, name: str) -> type:
    return type(f"Stub_{name}", (StubGlobal,), {"module": module, "name": name})


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, *metadata) -> _TensorRef:
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor storage is not a persistent storage reference.")
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(storage_offset)
    except (TypeError, ValueError) as err:
        raise pickle.UnpicklingError(f"malformed tensor layout: {err}") from None
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise pickle.UnpicklingError(f"malformed tensor layout: size {size}, stride {stride}, "
                                     f"offset {offset}.")
    count = int(np.prod(size, dtype=np.int64)) if size else 1
    if count > max(storage.numel, 1):
        raise pickle.UnpicklingError(
                f"tensor of size {size} has more elements than its storage {storage.key!r} "
                f"({storage.numel}); overlapping (stride-0) tensors are not supported.")
    if all(size):
        last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
        if last >= storage.numel:
            raise pickle.UnpicklingError(
                    f"tensor (offset {offset}, size {size}, stride {stride}) reads past the end of "
                    f"storage {storage.key!r} of {storage.numel} elements.")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args) -> Any:
    del requires_grad, backward_hooks, args
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("a pickled parameter does not wrap a tensor.")
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only an explicit allow-list of globals (see the module docstring).

    Args:
      file: binary file object positioned at a pickle.
      allow_tensors: allow the tensor/storage globals and storage persistent ids (main pickle).
      stubs: ``(module, name)`` globals to replace by :class:`StubGlobal` subclasses.
      zip_format: storages are zip-format persistent ids (5-tuples, no view metadata).
    """

    def __init__(self, file, *, allow_tensors: bool = False,
                 stubs: Iterable[tuple[str, str]] = (), zip_format: bool = False) -> None:
        super().__init__(file)
        self._allow_tensors = bool(allow_tensors)
        self._zip_format = bool(zip_format)
        self._allowed: dict[tuple[str, str], Any] = {}
        if allow_tensors:
            self._allowed[("collections", "OrderedDict")] = collections.OrderedDict
            self._allowed[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
            self._allowed[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
            for name in STORAGE_DTYPES:
                self._allowed[("torch", name)] = _StorageType(name)
        for module, name in stubs:
            self._allowed[(module, name)] = _make_stub(module, name)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self._allowed) or "none"
            raise pickle.UnpicklingError(
                    f"refusing to load global '{module}.{name}': not in the allow-list of this "
                    f"checkpoint reader (allowed: {allowed}).") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not self._allow_tensors:
            raise pickle.UnpicklingError(f"refusing persistent id {pid!r}: this pickle of the file "
                                         "may not reference storages.")
        if self._zip_format:
            if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
                raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}; expected "
                                             "('storage', StorageType, key, location, numel).")
            pid = (*pid, None)
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}; expected "
                                         "('storage', StorageType, key, location, numel, None).")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id {pid!r} names no known storage type.")
        if view_metadata is not None:
            raise pickle.UnpicklingError(
                    f"storage views are not supported (persistent id {pid!r}).")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed persistent id {pid!r}.")
        ref = _StorageRef(key, storage_type.dtype, numel)
        if self.storages.setdefault(key, ref) != ref:
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice with different types.")
        return ref


def _load_plain(f) -> Any:
    """A pickle that may reference no global at all (magic, protocol, sys info, key list)."""
    return RestrictedUnpickler(f).load()


def _materialise(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _TensorRef):
        buf = arrays[obj.storage.key]
        item = buf.itemsize
        view = np.lib.stride_tricks.as_strided(
                buf[obj.offset:], shape=obj.size, strides=tuple(s * item for s in obj.stride),
                writeable=False)
        return np.array(view)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v, arrays)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, arrays) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, arrays) for v in obj)
    return obj


def load_legacy_torch(source: str | os.PathLike | bytes,
                      *, stubs: Iterable[tuple[str, str]] = ()) -> Any:
    """Load a legacy (non-zip) ``torch.save`` file into Python containers and numpy arrays.

    Args:
      source: path of the file, or its bytes.
      stubs: ``(module, name)`` globals the file references that should be replaced by inert
        :class:`StubGlobal` placeholders (e.g. ``("__main__", "cifar10_preprocess")``).

    Returns:
      The saved object with every tensor replaced by a numpy array (its storage dtype, C order).

    Raises:
      pickle.UnpicklingError: a global outside the allow-list, or a malformed tensor / storage.
      ValueError: wrong magic number / protocol, big-endian data, or truncated / trailing data.
    """
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<bytes>"
    else:
        where = os.fspath(source)
        with open(where, "rb") as fh:
            data = fh.read()
    if data[:2] == b"PK":
        raise ValueError(
                f"{where!r} is a zip-format torch file; only the legacy format is supported.")
    f = io.BytesIO(data)
    try:
        magic = _load_plain(f)
    except Exception as err:  # noqa: BLE001 - any parse error means "not this format"
        raise ValueError(f"{where!r} is not a legacy torch file: {err}") from None
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{where!r} is not a legacy torch file (magic number {magic!r}).")
    protocol = _load_plain(f)
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{where!r}: unsupported legacy protocol {protocol!r} (expected 1001).")
    sys_info = _load_plain(f)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError(
                f"{where!r}: only little-endian files are supported (sys info {sys_info!r}).")
    main = RestrictedUnpickler(f, allow_tensors=True, stubs=stubs)
    obj = main.load()
    keys = _load_plain(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{where!r}: malformed storage key list.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where!r}: the storage key list repeats keys.")
    missing = set(main.storages) - set(keys)
    if missing:
        raise ValueError(f"{where!r}: storages {sorted(missing)[:5]} have no data section.")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{where!r}: truncated before the data of storage {key!r}.")
        numel = int(np.frombuffer(head, "<i8")[0])
        ref = main.storages.get(key)
        if ref is None:
            raise ValueError(f"{where!r}: storage {key!r} is not referenced by the main pickle.")
        if numel != ref.numel:
            raise ValueError(f"{where!r}: storage {key!r} holds {numel} elements, the pickle "
                             f"declares {ref.numel}.")
        raw = f.read(numel * ref.dtype.itemsize)
        if len(raw) != numel * ref.dtype.itemsize:
            raise ValueError(f"{where!r}: truncated data of storage {key!r}.")
        arrays[key] = np.frombuffer(raw, ref.dtype)
    if f.read(1):
        raise ValueError(f"{where!r}: unexpected trailing bytes after the last storage.")
    return _materialise(obj, arrays)


def _describe_non_checkpoint(data: bytes, where: str) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<")):
        return (f"{where!r} is not a PyTorch checkpoint: it is an HTML/XML page (most likely a "
                f"failed or interrupted download, e.g. a quota or login page); delete it and "
                f"download it again. First bytes: {data[:60]!r}.")
    if not data:
        return f"{where!r} is not a PyTorch checkpoint: the file is empty."
    return (f"{where!r} is not a PyTorch checkpoint (neither the zip nor the legacy torch.save "
            f"format); first bytes: {data[:16]!r}.")


def load_torch_zip(source: str | os.PathLike | bytes,
                   *, stubs: Iterable[tuple[str, str]] = ()) -> Any:
    """Load a zip-format ``torch.save`` file (PyTorch >= 1.6) into containers and numpy arrays.

    Args:
      source: path of the file, or its bytes.
      stubs: as in :func:`load_legacy_torch`.

    Returns:
      The saved object with every tensor replaced by a numpy array (its storage dtype, C order).

    Raises:
      pickle.UnpicklingError: a global outside the allow-list, or a malformed tensor / storage.
      ValueError: not a zip archive, no ``data.pkl``, a missing or short storage entry.
    """
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<bytes>"
    else:
        where = os.fspath(source)
        with open(where, "rb") as fh:
            data = fh.read()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{where!r} is not a zip-format torch file: {err}") from None
    with archive:
        names = archive.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{where!r}: expected exactly one '<name>/data.pkl' entry in the zip "
                             f"archive; found {pkls or 'none'}.")
        prefix = pkls[0][: -len("data.pkl")]
        main = RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), allow_tensors=True,
                                   stubs=stubs, zip_format=True)
        obj = main.load()
        arrays: dict[str, np.ndarray] = {}
        for key, ref in main.storages.items():
            entry = f"{prefix}data/{key}"
            try:
                raw = archive.read(entry)
            except KeyError:
                raise ValueError(f"{where!r}: storage {key!r} has no entry {entry!r}.") from None
            if len(raw) != ref.numel * ref.dtype.itemsize:
                raise ValueError(f"{where!r}: storage {key!r} holds {len(raw)} bytes, the pickle "
                                 f"declares {ref.numel} × {ref.dtype.itemsize}.")
            arrays[key] = np.frombuffer(raw, ref.dtype)
    return _materialise(obj, arrays)


def load_torch(source: str | os.PathLike | bytes,
               *, stubs: Iterable[tuple[str, str]] = (), name: str | None = None) -> Any:
    """Load a ``torch.save`` file of either format (zip or legacy) without torch.

    Args:
      source: path of the file, or its bytes.
      stubs: as in :func:`load_legacy_torch`.
      name: what errors call the file when ``source`` is bytes (e.g. the path they were read from,
        so the caller can hash exactly the bytes that were parsed).

    Returns:
      The saved object with tensors as numpy arrays.

    Raises:
      ValueError: naming the file when it is not a torch checkpoint at all (an HTML page saved by
        a failed download is recognised and said so), or when it is malformed.
      pickle.UnpicklingError: a global outside the allow-list.
    """
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), name or "<bytes>"
    else:
        where = os.fspath(source)
        with open(where, "rb") as fh:
            data = fh.read()
    if data[:4] == b"PK\x03\x04":
        return _with_name(load_torch_zip, data, where, stubs)
    if data[:2] == b"\x80\x02" or data[:1] == b"\x80":
        return _with_name(load_legacy_torch, data, where, stubs)
    raise ValueError(_describe_non_checkpoint(data, where))


def _with_name(loader, data: bytes, where: str, stubs) -> Any:
    """Run ``loader`` on ``data``, naming ``where`` (not ``<bytes>``) in its errors."""
    try:
        return loader(data, stubs=stubs)
    except (ValueError, pickle.UnpicklingError) as err:
        raise type(err)(str(err).replace("'<bytes>'", repr(where))) from None
