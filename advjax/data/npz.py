"""Reader for image-classification data stored as a NumPy archive (``.npz``)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from advjax.data._types import (
    DataFormatError,
    DataNotFoundError,
    Dataset,
    to_float_images,
    to_int_labels,
)


def read_npz(path: str | os.PathLike, *, images_key: str = "images",
             labels_key: str = "labels") -> Dataset:
    """Reads images and labels from a ``.npz`` archive (never unpickles objects).

    Args:
        path: the archive.
        images_key: name of the image array: ``(N, H, W)`` or ``(N, H, W, C)``, uint8 (divided by
            255) or floats in ``[0, 1]``.
        labels_key: name of the label array: ``(N,)`` integers >= 0.

    Returns:
        ``Dataset(images (N, H, W, C) float32 in [0, 1], labels (N,) int32)``.

    Raises:
        DataNotFoundError: ``path`` does not exist.
        DataFormatError: not a NumPy archive, a key is missing (the message lists those present),
            object arrays, or shapes/dtypes that do not fit.
    """
    where = f"`path` {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{where} does not exist or is not a file.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataFormatError(f"{where} is not a NumPy archive readable without unpickling: "
                              f"{exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataFormatError(f"{where} holds a single array, not a .npz archive of named arrays.")
    with archive:
        present = sorted(archive.files)
        for key, arg in ((images_key, "images_key"), (labels_key, "labels_key")):
            if key not in present:
                raise DataFormatError(
                        f"{where} has no array {key!r} (`{arg}`); arrays present: {present}.")
        try:
            images = archive[images_key]
            labels = archive[labels_key]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataFormatError(f"{where}: cannot read {images_key!r}/{labels_key!r} without "
                                  f"unpickling: {exc}") from exc
    images = to_float_images(images, name=f"{images_key!r} in {os.fspath(path)!r}")
    labels = to_int_labels(labels, images.shape[0], name=f"{labels_key!r} in {os.fspath(path)!r}")
    return Dataset(images, labels)
