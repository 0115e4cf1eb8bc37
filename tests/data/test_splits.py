"""Shuffles, splits, Szegedy's P1/P2 and batches: determinism, disjointness, coverage."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import advjax.data as data

MASK = (1 << 64) - 1


def _splitmix64_reference(seed: int, n: int) -> list[int]:
    """Steele, Lea & Flood's SplitMix64 in plain Python integers (sequential state updates)."""
    out, state = [], seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        out.append(z ^ (z >> 31))
    return out


def _coded(n: int, shape=(2, 2, 1)):
    """Images whose pixels encode the example index, labels = index: rows stay traceable."""
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None],
                             (n, *shape)).copy()
    return images, np.arange(n, dtype=np.int32)


def test_splitmix64_published_and_reference():
    # Published first outputs of SplitMix64 seeded with 0.
    assert [int(v) for v in data.splitmix64(0, 3)] == [
            0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for seed in (1, 12345, 2**64 - 1):
        assert [int(v) for v in data.splitmix64(seed, 40)] == _splitmix64_reference(seed, 40)


def test_fixed_permutation():
    perm = data.fixed_permutation(1000, 7)
    assert perm.dtype == np.int64
    np.testing.assert_array_equal(np.sort(perm), np.arange(1000))
    ref = np.argsort(np.array(_splitmix64_reference(7, 1000), dtype=np.uint64))
    np.testing.assert_array_equal(perm, ref)
    assert not np.array_equal(perm, data.fixed_permutation(1000, 8))
    assert data.fixed_permutation(0).shape == (0,)
    with pytest.raises(ValueError, match="`seed`"):
        data.fixed_permutation(5, -1)
    with pytest.raises(ValueError, match="`n`"):
        data.fixed_permutation(-5)


# --- shuffle ---------------------------------------------------------------------------------


def test_shuffle_numpy_deterministic():
    x, y = _coded(50)
    key = jax.random.key(0)
    a = data.shuffle(key, x, y)
    b = data.shuffle(key, x, y)
    c = data.shuffle(jax.random.key(1), x, y)
    assert isinstance(a.images, np.ndarray) and isinstance(a.labels, np.ndarray)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.labels, c.labels)
    np.testing.assert_array_equal(np.sort(a.labels), y)
    np.testing.assert_array_equal(a.images[:, 0, 0, 0], a.labels)  # pairs stay together
    perm = np.asarray(jax.random.permutation(key, 50))
    np.testing.assert_array_equal(a.labels, y[perm])


def test_shuffle_legacy_key_and_bad_key():
    x, y = _coded(10)
    out = data.shuffle(jax.random.PRNGKey(3), x, y)
    np.testing.assert_array_equal(np.sort(out.labels), y)
    with pytest.raises(ValueError, match="`key`"):
        data.shuffle(None, x, y)
    with pytest.raises(ValueError, match="`key`"):
        data.shuffle(np.zeros(3), x, y)
    with pytest.raises(ValueError, match="same number of examples"):
        data.shuffle(jax.random.key(0), x, y[:-1])
    with pytest.raises(ValueError, match="`labels`"):
        data.shuffle(jax.random.key(0), x, y[:, None])


@pytest.mark.parametrize("jit", [False, True])
def test_shuffle_jax_arrays_jit_and_no_jit(jit):
    x, y = _coded(20)
    fn = jax.jit(data.shuffle) if jit else data.shuffle
    key = jax.random.key(5)
    out = fn(key, jnp.asarray(x), jnp.asarray(y))
    assert isinstance(out.images, jax.Array)
    ref = data.shuffle(key, x, y)
    np.testing.assert_array_equal(np.asarray(out.images), ref.images)
    np.testing.assert_array_equal(np.asarray(out.labels), ref.labels)


def test_shuffle_jit_vmap_over_keys():
    x, y = _coded(16)
    keys = jax.random.split(jax.random.key(2), 4)
    out = jax.jit(jax.vmap(data.shuffle, in_axes=(0, None, None)))(keys, jnp.asarray(x),
                                                                   jnp.asarray(y))
    assert out.images.shape == (4, 16, 2, 2, 1) and out.labels.shape == (4, 16)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(out.labels[i]),
                                      data.shuffle(keys[i], x, y).labels)
    assert len({tuple(np.asarray(r)) for r in out.labels}) == 4


# --- split -----------------------------------------------------------------------------------


def test_split_counts_in_order():
    x, y = _coded(10)
    a, b, c = data.split(x, y, (3, 5, 2))
    np.testing.assert_array_equal(a.labels, [0, 1, 2])
    np.testing.assert_array_equal(b.labels, [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(c.labels, [8, 9])
    np.testing.assert_array_equal(c.images[:, 0, 0, 0], [8, 9])
    (d,) = data.split(x, y, (4,))
    assert d.labels.shape == (4,)


def test_split_fractions():
    x, y = _coded(1797)
    tr, te = data.split(x, y, (0.8, 0.2), key=jax.random.key(0))
    assert (len(tr.labels), len(te.labels)) == (1438, 359)  # 1437.6 / 359.4 -> largest remainder
    assert len(np.intersect1d(tr.labels, te.labels)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr.labels, te.labels])), y)
    (half,) = data.split(x, y, (0.5,))
    assert len(half.labels) == 898  # floor(898.5): fractions below 1 are floored
    parts = data.split(x, y, (1 / 3, 1 / 3, 1 / 3))
    assert [len(p.labels) for p in parts] == [599, 599, 599]


def test_split_keys():
    x, y = _coded(40)
    a = data.split(x, y, (30, 10), key=jax.random.key(1))
    b = data.split(x, y, (30, 10), key=jax.random.key(1))
    c = data.split(x, y, (30, 10), key=jax.random.key(2))
    np.testing.assert_array_equal(a[0].labels, b[0].labels)
    assert not np.array_equal(a[0].labels, c[0].labels)
    perm = np.asarray(jax.random.permutation(jax.random.key(1), 40))
    np.testing.assert_array_equal(a[1].labels, perm[30:])


@pytest.mark.parametrize("sizes,match", [
        ((8, 5), "sum to at most 10"),
        ((-1, 2), ">= 0"),
        ((0.7, 0.7), "sum to at most 1"),
        ((1.5,), r"lie in \[0, 1\]"),
        ((), "non-empty"),
        (5, "non-empty sequence"),
])
def test_split_bad_sizes(sizes, match):
    x, y = _coded(10)
    with pytest.raises(ValueError, match=match) as info:
        data.split(x, y, sizes)
    assert "`sizes`" in str(info.value)


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([0, 1, 9, 60]), cuts=st.lists(st.integers(0, 20), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_split_property_disjoint_and_sized(n, cuts, seed):
    x, y = _coded(n)
    counts = [min(c, n) for c in cuts]
    while sum(counts) > n:
        counts[counts.index(max(counts))] -= 1
    parts = data.split(x, y, counts, key=jax.random.key(seed))
    assert [len(p.labels) for p in parts] == counts
    got = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0)
    assert len(np.unique(got)) == len(got) == sum(counts)
    for p in parts:
        np.testing.assert_array_equal(p.images[:, 0, 0, 0], p.labels)


# --- Szegedy P1 / P2 ---------------------------------------------------------------------------


def test_szegedy_p1_p2_first_and_last_half():
    x, y = _coded(60)
    p1, p2 = data.szegedy_p1_p2(x, y)
    np.testing.assert_array_equal(p1.labels, np.arange(30))
    np.testing.assert_array_equal(p2.labels, np.arange(30, 60))


@pytest.mark.parametrize("n", [60, 61])
def test_szegedy_p1_p2_random_disjoint_equal(n):
    x, y = _coded(n)
    p1, p2 = data.szegedy_p1_p2(x, y, key=jax.random.key(3))
    assert len(p1.labels) == len(p2.labels) == n // 2
    assert len(np.intersect1d(p1.labels, p2.labels)) == 0
    union = np.union1d(p1.labels, p2.labels)
    assert len(union) == 2 * (n // 2)
    if n % 2 == 0:
        np.testing.assert_array_equal(union, y)
    q1, _ = data.szegedy_p1_p2(x, y, key=jax.random.key(3))
    np.testing.assert_array_equal(p1.labels, q1.labels)
    r1, _ = data.szegedy_p1_p2(x, y, key=jax.random.key(4))
    assert not np.array_equal(p1.labels, r1.labels)


def test_szegedy_p1_p2_on_digits():
    x, y = data.load("digits", "all")
    index = np.arange(len(y), dtype=np.int32)  # carry the example index in place of the label
    p1, p2 = data.szegedy_p1_p2(x, index, key=jax.random.key(0))
    assert p1.images.shape == p2.images.shape == (898, 8, 8, 1)
    assert len(np.intersect1d(p1.labels, p2.labels)) == 0
    np.testing.assert_array_equal(p1.images, x[p1.labels])
    np.testing.assert_array_equal(p2.images, x[p2.labels])
    assert set(y[p1.labels]) == set(y[p2.labels]) == set(range(10))


# --- batches -----------------------------------------------------------------------------------


def test_batches_in_order():
    x, y = _coded(10)
    got = list(data.batches(x, y, 4))
    assert [len(b.labels) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in got]), y)
    got = list(data.batches(x, y, 4, drop_remainder=True, num_epochs=2))
    assert [len(b.labels) for b in got] == [4, 4, 4, 4]
    np.testing.assert_array_equal(got[2].labels, [0, 1, 2, 3])


def test_batches_epochwise_shuffle():
    x, y = _coded(12)
    key = jax.random.key(9)
    got = list(data.batches(x, y, 5, key=key, num_epochs=3))
    assert [len(b.labels) for b in got] == [5, 5, 2] * 3
    epochs = [np.concatenate([b.labels for b in got[3 * e: 3 * e + 3]]) for e in range(3)]
    for e, order in enumerate(epochs):
        np.testing.assert_array_equal(
                order, np.asarray(jax.random.permutation(jax.random.fold_in(key, e), 12)))
        np.testing.assert_array_equal(np.sort(order), y)
    assert not np.array_equal(epochs[0], epochs[1])
    # An epoch's order does not depend on how many epochs are requested.
    one = list(data.batches(x, y, 5, key=key, num_epochs=1))
    np.testing.assert_array_equal(one[0].labels, got[0].labels)
    for b in got:
        np.testing.assert_array_equal(b.images[:, 0, 0, 0], b.labels)


def test_batches_forever():
    x, y = _coded(6)
    it = data.batches(x, y, 4, key=jax.random.key(0), drop_remainder=True, num_epochs=None)
    got = list(itertools.islice(it, 7))
    assert all(len(b.labels) == 4 for b in got)


def test_batches_errors():
    x, y = _coded(6)
    with pytest.raises(ValueError, match="`batch_size`"):
        data.batches(x, y, 0)
    with pytest.raises(ValueError, match="`batch_size`.*drop_remainder"):
        data.batches(x, y, 7, drop_remainder=True)
    with pytest.raises(ValueError, match="`num_epochs`"):
        data.batches(x, y, 2, num_epochs=0)
    with pytest.raises(ValueError, match="`key`"):
        data.batches(x, y, 2, key=123)
    with pytest.raises(ValueError, match="empty"):
        data.batches(x[:0], y[:0], 2)
