"""Reader for the IDX format of the MNIST files (LeCun, Cortes, Burges).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data in C order, big-endian. Files may be gzip-compressed (recognised by the
gzip magic bytes, not by the extension).
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from advjax.data._types import DataFormatError, DataNotFoundError

# IDX dtype codes (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
        0x08: np.dtype(">u1"),
        0x09: np.dtype(">i1"),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    if not os.path.isfile(path):
        raise DataNotFoundError(f"`path` {os.fspath(path)!r} does not exist or is not a file.")
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFormatError(
                    f"`path` {os.fspath(path)!r} is a corrupted gzip file: {exc}") from exc
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (plain or gzip) into a numpy array in native byte order.

    Args:
        path: the ``*-idx?-ubyte`` file, optionally ``.gz``-compressed.

    Returns:
        An array of the dims stored in the header, e.g. ``(10000, 28, 28)`` uint8 for
        ``t10k-images-idx3-ubyte`` and ``(10000,)`` uint8 for ``t10k-labels-idx1-ubyte``; dtype
        from the magic number (uint8, int8, int16, int32, float32, float64).

    Raises:
        DataNotFoundError: ``path`` does not exist.
        DataFormatError: bad magic number, unknown dtype code, zero dims, or a data length that does
            not match the header (truncated or trailing bytes).
    """
    raw = _read_bytes(path)
    where = f"`path` {os.fspath(path)!r}"
    if len(raw) < 4:
        raise DataFormatError(f"{where} is too short for an IDX header ({len(raw)} bytes).")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(
                f"{where} has magic number 0x{raw[:4].hex()}; an IDX file starts with two zero "
                "bytes (0x0000<dtype><ndim>).")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataFormatError(f"{where} has unknown IDX dtype code 0x{code:02X}; expected one of "
                              f"{known}.")
    if ndim == 0:
        raise DataFormatError(f"{where} declares 0 dimensions; expected at least 1.")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataFormatError(f"{where} is truncated inside its header: {ndim} dims need "
                              f"{header_len} header bytes, file has {len(raw)}.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        kind = "truncated" if actual < expected else "followed by trailing bytes"
        raise DataFormatError(f"{where} is {kind}: header dims {dims} of {dtype.name} need "
                              f"{expected} data bytes, file has {actual}.")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="))
