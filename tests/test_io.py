"""The one data fingerprint: ``advjax.io.array_digest``."""

import hashlib

import numpy as np
import pytest

from advjax import io


def test_digest_is_sha256_of_dtype_shape_and_bytes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 0], np.int32)
    h = hashlib.sha256()
    for arr in (a, b):
        h.update(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes())
    assert io.array_digest(a, b) == h.hexdigest()
    assert io.array_digest(np.asfortranarray(a), b) == h.hexdigest()  # layout is not content


@pytest.mark.parametrize("other", [
    np.arange(6, dtype=np.float64).reshape(2, 3),      # dtype
    np.arange(6, dtype=np.float32).reshape(3, 2),      # shape
    np.arange(1, 7, dtype=np.float32).reshape(2, 3),   # values
])
def test_digest_sees_dtype_shape_and_values(other):
    assert io.array_digest(other) != io.array_digest(np.arange(6, dtype=np.float32).reshape(2, 3))
