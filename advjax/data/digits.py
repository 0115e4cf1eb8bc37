"""The offline default dataset ``"digits"``: UCI optical recognition of handwritten digits.

The 1,797 8×8 images that scikit-learn ships (``sklearn.datasets.load_digits``; no download):
pixel counts 0..16 divided by 16, so images are float32 in ``[0, 1]`` of shape ``(8, 8, 1)``, and
labels 0..9. Splits: ``"train"`` = the first 1,437 and ``"test"`` = the last 360 entries of
``fixed_permutation(1797, seed=DIGITS_SEED)`` (about 80 / 20), ``"all"`` = all 1,797 in the stored
order.

Licence: E. Alpaydin and C. Kaynak (1998), "Optical Recognition of Handwritten Digits", UCI Machine
Learning Repository, https://doi.org/10.24432/C50P49, Creative Commons Attribution 4.0 (CC BY 4.0).
"""

from __future__ import annotations

import numpy as np

from advjax.data._types import DataFormatError, Dataset
from advjax.data.splits import fixed_permutation

DIGITS_SEED = 0
DIGITS_NUM_TRAIN = 1437
DIGITS_NUM_EXAMPLES = 1797


def load_digits_all() -> Dataset:
    """All 1,797 digits in scikit-learn's order.

    Returns:
        ``Dataset(images (1797, 8, 8, 1) float32 in [0, 1], labels (1797,) int32 in [0, 10))``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    raw = np.asarray(bunch.images)
    if raw.shape != (DIGITS_NUM_EXAMPLES, 8, 8) or raw.min() < 0 or raw.max() > 16:
        raise DataFormatError(f"scikit-learn's digits have shape {raw.shape} and range "
                              f"[{raw.min()}, {raw.max()}]; expected (1797, 8, 8) in [0, 16].")
    images = (raw.astype(np.float32) / np.float32(16.0))[..., None]
    return Dataset(images, np.asarray(bunch.target, dtype=np.int32))


def load_digits(split: str) -> Dataset:
    """The ``"digits"`` dataset (see the module docstring for the splits).

    Args:
        split: ``"train"`` (1,437), ``"test"`` (360) or ``"all"`` (1,797).

    Returns:
        ``Dataset(images (N, 8, 8, 1) float32 in [0, 1], labels (N,) int32 in [0, 10))``.
    """
    data = load_digits_all()
    if split == "all":
        return data
    perm = fixed_permutation(DIGITS_NUM_EXAMPLES, DIGITS_SEED)
    idx = perm[:DIGITS_NUM_TRAIN] if split == "train" else perm[DIGITS_NUM_TRAIN:]
    return Dataset(data.images[idx], data.labels[idx])
