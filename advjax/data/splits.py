"""Deterministic shuffles, splits and batches of ``(images, labels)`` pairs.

Two kinds of randomness, both explicit:

* ``fixed_permutation(n, seed)`` is a library-independent permutation (SplitMix64 hashes of the
  indices, sorted). The named datasets use it for their fixed train/test splits, so a split never
  changes with the numpy or JAX version (JAX's PRNG implementation defaults have changed before).
* ``shuffle``, ``split``, ``szegedy_p1_p2`` and ``batches`` take a ``jax.random`` key, like every
  other sampling function in advjax.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import check_positive_int, check_rank
from advjax.data._types import Dataset

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of the SplitMix64 generator started at ``seed``.

    Steele, Lea & Flood (2014), "Fast splittable pseudorandom number generators": output ``i``
    (1-based) is ``mix(seed + i * 0x9E3779B97F4A7C15 mod 2**64)``.

    Args:
        seed: integer in ``[0, 2**64)``.
        n: number of outputs, >= 0.

    Returns:
        ``(n,)`` uint64.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**64:
        raise ValueError(f"`seed` must be an integer in [0, 2**64); got {seed!r}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` must be a non-negative integer; got {n!r}.")
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def fixed_permutation(n: int, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random permutation of ``range(n)``, identical on every platform and version.

    The permutation sorts the indices by their SplitMix64 hash (``splitmix64(seed, n)``); SplitMix64
    is a bijection of its state, so there are no ties.

    Args:
        n: length, >= 0.
        seed: integer in ``[0, 2**64)``.

    Returns:
        ``(n,)`` int64, a permutation of ``0 .. n-1``.
    """
    return np.argsort(splitmix64(seed, n), kind="stable").astype(np.int64)


def _num_examples(images, labels) -> int:
    check_rank(labels, "labels", 1)
    if np.ndim(images) < 1:
        raise ValueError(
                f"`images` must have a leading example axis; got shape {np.shape(images)}.")
    n_img, n_lab = np.shape(images)[0], np.shape(labels)[0]
    if n_img != n_lab:
        raise ValueError(f"`images` and `labels` must have the same number of examples; got "
                         f"{n_img} images and {n_lab} labels.")
    return int(n_img)


def _check_key(key, name: str = "key") -> None:
    if key is None:
        raise ValueError(f"`{name}` must be a jax.random key (e.g. jax.random.key(0)); got None.")
    if not (jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
            or (np.shape(key) == (2,) and jnp.result_type(key) == jnp.uint32)):
        raise ValueError(f"`{name}` must be a jax.random key (jax.random.key(seed) or "
                         f"jax.random.PRNGKey(seed)); got shape {np.shape(key)}, dtype "
                         f"{jnp.result_type(key)}.")


def _take(images, labels, idx) -> Dataset:
    """Rows ``idx`` of both arrays: numpy indexing for numpy inputs, ``jnp.take`` otherwise."""
    concrete = not isinstance(idx, jax.core.Tracer)
    if concrete and isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        idx = np.asarray(idx)
        return Dataset(images[idx], labels[idx])
    return Dataset(jnp.take(jnp.asarray(images), idx, axis=0),
                   jnp.take(jnp.asarray(labels), idx, axis=0))


def shuffle(key: jax.Array, images, labels) -> Dataset:
    """Shuffles the examples with the permutation ``jax.random.permutation(key, N)``.

    Works on numpy arrays (returns numpy; the data stay on the host) and on JAX arrays, also under
    ``jax.jit`` and ``jax.vmap`` over keys (e.g. one shuffle per epoch on the device).

    Args:
        key: a ``jax.random`` key.
        images: ``(N, ...)``.
        labels: ``(N,)``.

    Returns:
        ``Dataset(images[perm], labels[perm])`` with the same types, shapes and dtypes.
    """
    _check_key(key)
    n = _num_examples(images, labels)
    return _take(images, labels, jax.random.permutation(key, n))


def _split_sizes(sizes: Sequence[int | float], n: int) -> list[int]:
    if isinstance(sizes, (int, float)) or len(sizes) == 0:
        raise ValueError(f"`sizes` must be a non-empty sequence of counts or fractions; got "
                         f"{sizes!r}.")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
        counts = [int(s) for s in sizes]
        if any(c < 0 for c in counts) or sum(counts) > n:
            raise ValueError(f"`sizes` as counts must be >= 0 and sum to at most {n} (the number "
                             f"of examples); got {counts} (sum {sum(counts)}).")
        return counts
    fractions = [float(s) for s in sizes]
    total = math.fsum(fractions)
    if any(not 0.0 <= f <= 1.0 for f in fractions) or total > 1.0 + 1e-9:
        raise ValueError(f"`sizes` as fractions must lie in [0, 1] and sum to at most 1; got "
                         f"{fractions} (sum {total:.6g}).")
    counts = [int(math.floor(f * n + 1e-9)) for f in fractions]
    if abs(total - 1.0) <= 1e-9:
        # Fractions that sum to one use every example: largest remainders get the leftovers.
        remainders = sorted(range(len(fractions)), key=lambda i: counts[i] - fractions[i] * n)
        for i in remainders[: n - sum(counts)]:
            counts[i] += 1
    return counts


def split(images, labels, sizes: Sequence[int | float], key: jax.Array | None = None
          ) -> tuple[Dataset, ...]:
    """Splits the examples into consecutive disjoint parts, after an optional shuffle.

    Args:
        images: ``(N, ...)``.
        labels: ``(N,)``.
        sizes: counts (ints, sum <= N) or fractions (floats in [0, 1], sum <= 1). Fractions are
            floored, except that fractions summing to 1 use all N examples (largest remainders
            get the leftovers), e.g. ``(0.8, 0.2)`` of 1797 gives 1438 / 359.
        key: optional ``jax.random`` key; ``None`` keeps the stored order.

    Returns:
        One ``Dataset`` per entry of ``sizes``; the parts are disjoint.
    """
    n = _num_examples(images, labels)
    counts = _split_sizes(sizes, n)
    if key is not None:
        _check_key(key)
        order = np.asarray(jax.random.permutation(key, n))
    else:
        order = np.arange(n)
    bounds = np.cumsum([0] + counts)
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return tuple(_take(images, labels, order[a:b]) for a, b in pairs)


def szegedy_p1_p2(images, labels, key: jax.Array | None = None) -> tuple[Dataset, Dataset]:
    """Two disjoint halves P1 and P2 of equal size, as in Szegedy et al. (2014) §2 / Table 3.

    The paper splits the 60,000 MNIST training images into P1 and P2 of 30,000 each without saying
    how (papers.md §1.1, §1.8); ``key=None`` takes the first and the second half of the stored
    order, a key takes the halves of ``jax.random.permutation(key, N)``. With N odd the last
    example (after the shuffle) is left out, so both halves have ``N // 2`` examples.

    Args:
        images: ``(N, ...)``.
        labels: ``(N,)``.
        key: optional ``jax.random`` key.

    Returns:
        ``(P1, P2)``, each a ``Dataset`` of ``N // 2`` examples.
    """
    n = _num_examples(images, labels)
    half = n // 2
    p1, p2 = split(images, labels, (half, half), key=key)
    return p1, p2


def batches(images, labels, batch_size: int, *, key: jax.Array | None = None,
            drop_remainder: bool = False, num_epochs: int | None = 1) -> Iterator[Dataset]:
    """Iterates over mini-batches, epoch after epoch.

    Epoch ``e`` (0-based) visits the examples in the order ``jax.random.permutation(
    jax.random.fold_in(key, e), N)``, or in the stored order when ``key`` is None; the order of an
    epoch therefore does not depend on how many epochs are asked for.

    Args:
        images: ``(N, ...)``.
        labels: ``(N,)``.
        batch_size: examples per batch, >= 1.
        key: optional ``jax.random`` key for the per-epoch shuffles.
        drop_remainder: drop the last, smaller batch of each epoch (then ``batch_size`` <= N).
        num_epochs: number of passes, >= 1; ``None`` repeats forever.

    Returns:
        An iterator of ``Dataset(images (B, ...), labels (B,))``; ``B = batch_size`` except the
        last batch of an epoch when ``drop_remainder`` is False.
    """
    n = _num_examples(images, labels)
    check_positive_int(batch_size, "batch_size")
    if num_epochs is not None:
        check_positive_int(num_epochs, "num_epochs")
    if key is not None:
        _check_key(key)
    if drop_remainder and batch_size > n:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds the number of examples ({n}) with "
                         "`drop_remainder=True`: no batch would be produced.")
    if n == 0:
        raise ValueError("`images` and `labels` are empty: no batch can be produced.")
    stop = (n // batch_size) * batch_size if drop_remainder else n
    return _batch_iterator(images, labels, batch_size, key, stop, num_epochs)


def _batch_iterator(images, labels, batch_size, key, stop, num_epochs) -> Iterator[Dataset]:
    n = np.shape(labels)[0]
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        if key is None:
            order = np.arange(n)
        else:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        for start in range(0, stop, batch_size):
            yield _take(images, labels, order[start:min(start + batch_size, stop)])
        epoch += 1
