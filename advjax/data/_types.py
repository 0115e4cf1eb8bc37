"""Shared types of ``advjax.data``: the ``Dataset`` pair, ``DatasetInfo`` and the error classes.

Conversions from stored pixel formats to the project's convention (float32 NHWC in ``[0, 1]``,
int32 labels) live here too, so every backend converts the same way.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """Images and labels of one split; a tuple, so ``images, labels = load(...)`` works.

    Attributes:
        images: ``(N, H, W, C)`` float32 in ``[0, 1]`` (NHWC).
        labels: ``(N,)`` int32 class indices in ``[0, num_classes)``.
    """

    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a named dataset.

    Attributes:
        name: the name given to ``advjax.data.load``.
        shape: ``(H, W, C)`` of one image.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        class_names: one name per class, index = label.
        splits: read-only ``{split: number of examples}``.
        source: ``"sklearn"``, ``"local"`` (files under ``ADVJAX_DATA_DIR``) or ``"tfds"``.
        description: one line on what the data are and how the splits are made.
        licence: licence of the data and its holders.
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    splits: Mapping[str, int | None]
    source: str
    description: str = ""
    licence: str = ""

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "splits", types.MappingProxyType(dict(self.splits)))


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are absent; the message says what to set or prepare."""


class DataFormatError(ValueError):
    """Raised when a data file exists but does not hold what its format promises."""


def to_float_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Converts stored pixels to float32 NHWC in ``[0, 1]``.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, C)``; uint8 (divided by 255) or floating (must already
            lie in ``[0, 1]``). A rank-3 array gets a trailing channel axis of size 1.
        name: argument name used in error messages.

    Returns:
        ``(N, H, W, C)`` float32 in ``[0, 1]``.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataFormatError(
                f"`{name}` must have shape (N, H, W) or (N, H, W, C); got {images.shape}.")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(images.dtype, np.floating):
        out = images.astype(np.float32)
        if out.size and not np.all(np.isfinite(out)):
            raise DataFormatError(f"`{name}` contains NaN or infinite values.")
        if out.size and (out.min() < 0.0 or out.max() > 1.0):
            raise DataFormatError(
                    f"`{name}` holds floats outside [0, 1] (range [{out.min():.6g}, "
                    f"{out.max():.6g}]); store uint8 pixels or floats already scaled to [0, 1].")
        return out
    raise DataFormatError(f"`{name}` must be uint8 or floating; got dtype {images.dtype}.")


def to_int_labels(labels: np.ndarray, num_examples: int, name: str = "labels") -> np.ndarray:
    """Converts stored labels to ``(N,)`` int32, checking the length and that they are >= 0.

    Args:
        labels: ``(N,)`` (or ``(N, 1)``) integer array.
        num_examples: expected ``N`` (the number of images).
        name: argument name used in error messages.

    Returns:
        ``(N,)`` int32.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataFormatError(f"`{name}` must have shape (N,); got {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"`{name}` must be an integer array; got dtype {labels.dtype}.")
    if labels.shape[0] != num_examples:
        raise DataFormatError(
                f"`{name}` has {labels.shape[0]} entries but there are {num_examples} images.")
    if labels.size and labels.min() < 0:
        raise DataFormatError(f"`{name}` must be >= 0; got minimum {labels.min()}.")
    return labels.astype(np.int32)
