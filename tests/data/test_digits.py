"""The offline default "digits": values, shapes and the fixed split, against scikit-learn's data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

import advjax.data as data


@pytest.fixture(scope="module")
def sk_digits():
    bunch = sk_load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def test_default_is_digits():
    assert data.DEFAULT_DATASET == "digits"
    images, labels = data.load()
    assert images.shape == (1437, 8, 8, 1)
    assert labels.shape == (1437,)


@pytest.mark.parametrize("split,n", [("train", 1437), ("test", 360), ("all", 1797)])
def test_shapes_dtypes_ranges(split, n):
    images, labels = data.load("digits", split)
    assert images.shape == (n, 8, 8, 1) and images.dtype == np.float32
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    # Values are k / 16 for integer k in [0, 16] (exact in float32).
    assert np.array_equal(images * 16, np.round(images * 16))
    assert set(np.unique(labels)) == set(range(10))


def test_all_equals_sklearn_over_16(sk_digits):
    raw, target = sk_digits
    images, labels = data.load("digits", "all")
    np.testing.assert_array_equal(images[..., 0], (raw / 16.0).astype(np.float32))
    np.testing.assert_array_equal(labels, target)


def _rows(images, labels):
    return sorted(images[i].tobytes() + bytes([labels[i]]) for i in range(len(labels)))


def test_train_test_partition_all():
    """train and test are disjoint by index and together are exactly "all" (as a multiset)."""
    all_x, all_y = data.load("digits", "all")
    tr_x, tr_y = data.load("digits", "train")
    te_x, te_y = data.load("digits", "test")
    assert len(tr_y) + len(te_y) == len(all_y)
    merged = _rows(np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y]))
    assert merged == _rows(all_x, all_y)
    perm = data.fixed_permutation(1797, 0)
    np.testing.assert_array_equal(tr_x, all_x[perm[:1437]])
    np.testing.assert_array_equal(te_y, all_y[perm[1437:]])


def test_split_is_fixed():
    """The documented split never changes: pinned labels of the first train/test examples."""
    a = data.load("digits", "train")
    b = data.load("digits", "train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels[:10], [4, 3, 1, 8, 4, 6, 0, 5, 1, 9])
    # Every class is represented in the test split.
    assert np.bincount(data.load("digits", "test").labels, minlength=10).min() > 15


def test_limit():
    images, labels = data.load("digits", "test", limit=7)
    full = data.load("digits", "test")
    np.testing.assert_array_equal(images, full.images[:7])
    np.testing.assert_array_equal(labels, full.labels[:7])
