"""IDX reader against files encoded here with struct (independently), and corrupted files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from advjax.data import DataFormatError, DataNotFoundError, read_idx

_CODES = {np.uint8: (0x08, "B"), np.int8: (0x09, "b"), np.int16: (0x0B, "h"),
          np.int32: (0x0C, "i"), np.float32: (0x0D, "f"), np.float64: (0x0E, "d")}


def _encode(array: np.ndarray) -> bytes:
    """IDX bytes built element by element with struct (big-endian), not with numpy byte views."""
    code, fmt = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    body = b"".join(struct.pack(">" + fmt, v) for v in array.ravel().tolist())
    return header + body


def _write(tmp_path, name, payload: bytes, compress: bool):
    path = tmp_path / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", list(_CODES))
def test_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 5, 4), endpoint=True).astype(dtype)
    else:
        array = rng.normal(size=(3, 5, 4)).astype(dtype)
    out = read_idx(_write(tmp_path, "x-idx3", _encode(array), compress))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 5, 4)
    np.testing.assert_array_equal(out, array)


def test_labels_1d_and_mnist_layout(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], np.uint8)
    path = _write(tmp_path, "t10k-labels-idx1-ubyte", _encode(labels), True)
    np.testing.assert_array_equal(read_idx(path), labels)
    # The header of a real MNIST label file: magic 0x00000801, then the count.
    raw = gzip.decompress(path.read_bytes())
    assert struct.unpack(">II", raw[:8]) == (0x801, 5)


def test_gzip_detected_by_content_not_extension(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "plain-name-but-gzipped"
    path.write_bytes(gzip.compress(_encode(array)))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("mutate,match", [
        (lambda b: b"\x01" + b[1:], "magic number"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX dtype code 0x07"),
        (lambda b: b[:3] + b"\x00", "0 dimensions"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:6], "truncated inside its header"),
        (lambda b: b[:3], "too short"),
])
def test_corrupted(tmp_path, mutate, match):
    payload = mutate(_encode(np.arange(12, dtype=np.uint8).reshape(3, 4)))
    path = _write(tmp_path, "bad", payload, False)
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(path)
    assert "`path`" in str(info.value)


def test_corrupted_gzip(tmp_path):
    good = gzip.compress(_encode(np.arange(100, dtype=np.uint8)))
    path = tmp_path / "bad.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFormatError, match="corrupted gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope-idx1-ubyte.gz")
    assert issubclass(DataNotFoundError, FileNotFoundError)
