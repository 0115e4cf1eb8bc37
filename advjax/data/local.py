"""Datasets read from real local files under ``ADVJAX_DATA_DIR`` (or an explicit ``data_dir``).

* ``"mnist_local"``: the 10,000 MNIST **test** images, ``mnist-test/t10k-images-idx3-ubyte.gz``
  and ``mnist-test/t10k-labels-idx1-ubyte.gz`` (standard IDX files). Splits: ``"train"`` = the
  first 8,000 and ``"test"`` = the last 2,000 entries of
  ``fixed_permutation(10000, seed=MNIST_LOCAL_SEED)``; ``"all"`` = all 10,000 in the stored order.
  Licence: CC BY-SA 3.0, Yann LeCun, Corinna Cortes and Christopher J.C. Burges.
* ``"cifar10_head"``: the first 846 CIFAR-10 test images in canonical order,
  ``cifar10-test-head/cifar10_test_first846.npz`` (``images`` uint8 (846, 32, 32, 3) NHWC,
  ``labels`` uint8). Splits ``"test"`` and ``"all"`` (the same 846, order preserved: indices
  2, 5, 8, 9 are ship, frog, cat, automobile). CIFAR-10: Alex Krizhevsky, 2009.
"""

from __future__ import annotations

import os
from pathlib import Path

from advjax.data._types import (
    DataFormatError,
    DataNotFoundError,
    Dataset,
    to_float_images,
    to_int_labels,
)
from advjax.data.idx import read_idx
from advjax.data.npz import read_npz
from advjax.data.splits import fixed_permutation

DATA_ENV = "ADVJAX_DATA_DIR"

MNIST_LOCAL_DIR = "mnist-test"
MNIST_LOCAL_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LOCAL_LABELS = "t10k-labels-idx1-ubyte.gz"
MNIST_LOCAL_SEED = 0
MNIST_LOCAL_TRAIN = 8000

CIFAR10_HEAD_DIR = "cifar10-test-head"
CIFAR10_HEAD_FILE = "cifar10_test_first846.npz"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The real-data folder: ``data_dir`` if given, else the ``ADVJAX_DATA_DIR`` variable.

    Args:
        data_dir: folder holding ``mnist-test/``, ``cifar10-test-head/``, ...; ``None`` reads
            ``ADVJAX_DATA_DIR``.

    Returns:
        The folder as a ``Path``.

    Raises:
        DataNotFoundError: neither is set, or the folder does not exist.
    """
    if data_dir is None:
        value = os.environ.get(DATA_ENV)
        if not value:
            raise DataNotFoundError(
                    f"no data folder: pass `data_dir=` or set the environment variable {DATA_ENV} "
                    "to the folder that holds mnist-test/ and cifar10-test-head/ "
                    f"(e.g. `export {DATA_ENV}=/path/to/data`).")
        path, origin = Path(value), f"{DATA_ENV}={value!r}"
    else:
        path, origin = Path(data_dir), f"`data_dir`={os.fspath(data_dir)!r}"
    if not path.is_dir():
        raise DataNotFoundError(f"data folder {origin} does not exist or is not a folder; point "
                                f"`data_dir` or {DATA_ENV} at the folder that holds mnist-test/ "
                                "and cifar10-test-head/.")
    return path


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A file or folder named by ``path``, looked up in the working directory, then the data folder.

    The order: ``path`` as given (absolute, or relative to the working directory); then, for a
    relative ``path`` that is not found there, ``$ADVJAX_DATA_DIR/path``. Checkpoint loaders
    (``advjax.models.load_lenet5``, ``load_woods2019``, ...) call this, so
    ``load_lenet5("advertorch-lenet5/lenet5_mnist.npz")`` works from any directory once
    ``ADVJAX_DATA_DIR`` is set.

    Args:
        path: a file or folder path.

    Returns:
        The first of the candidates above that exists, as a ``Path``.

    Raises:
        DataNotFoundError: no candidate exists; the message names every place tried and
            ``ADVJAX_DATA_DIR``.
    """
    given = Path(path)
    if given.exists():
        return given
    tried = [f"{os.fspath(given.absolute())!r}"]
    value = os.environ.get(DATA_ENV)
    if not given.is_absolute():
        if value:
            candidate = Path(value) / given
            if candidate.exists():
                return candidate
            tried.append(f"{os.fspath(candidate)!r} (from {DATA_ENV}={value!r})")
        else:
            tried.append(f"{DATA_ENV} (not set)")
    raise DataNotFoundError(
            f"{os.fspath(path)!r} not found; tried {' and '.join(tried)}. A relative path is "
            f"looked up in the working directory, then under {DATA_ENV} (the folder holding "
            "advertorch-lenet5/, woods2019-resnet44/, ...).")


def _subfolder(data_dir, folder: str, files: tuple[str, ...]) -> Path:
    root = resolve_data_dir(data_dir)
    base = root / folder
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        origin = DATA_ENV if data_dir is None else "`data_dir`"
        raise DataNotFoundError(
                f"{', '.join(f'{folder}/{f}' for f in missing)} not found under {root} (from "
                f"{origin}); point `data_dir` or {DATA_ENV} at the folder holding {folder}/.")
    return base


def load_mnist_all(data_dir: str | os.PathLike | None = None) -> Dataset:
    """All 10,000 MNIST test images in the stored order.

    Args:
        data_dir: the real-data folder (``None``: ``ADVJAX_DATA_DIR``).

    Returns:
        ``Dataset(images (10000, 28, 28, 1) float32 in [0, 1], labels (10000,) int32 in [0, 10))``.
    """
    base = _subfolder(data_dir, MNIST_LOCAL_DIR, (MNIST_LOCAL_IMAGES, MNIST_LOCAL_LABELS))
    images = read_idx(base / MNIST_LOCAL_IMAGES)
    labels = read_idx(base / MNIST_LOCAL_LABELS)
    if images.ndim != 3 or images.dtype.name != "uint8":
        raise DataFormatError(f"{base / MNIST_LOCAL_IMAGES} must hold (N, 28, 28) uint8; got "
                              f"{images.shape} {images.dtype}.")
    labels = to_int_labels(labels, images.shape[0], name=str(base / MNIST_LOCAL_LABELS))
    if labels.size and labels.max() >= 10:
        raise DataFormatError(f"{base / MNIST_LOCAL_LABELS} holds labels up to {labels.max()}; "
                              "MNIST labels lie in [0, 10).")
    return Dataset(to_float_images(images), labels)


def load_mnist_local(split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The ``"mnist_local"`` dataset (see the module docstring for the splits).

    Args:
        split: ``"train"`` (8,000), ``"test"`` (2,000) or ``"all"`` (10,000).
        data_dir: the real-data folder (``None``: ``ADVJAX_DATA_DIR``).

    Returns:
        ``Dataset(images (N, 28, 28, 1) float32 in [0, 1], labels (N,) int32 in [0, 10))``.
    """
    data = load_mnist_all(data_dir)
    if split == "all":
        return data
    perm = fixed_permutation(data.labels.shape[0], MNIST_LOCAL_SEED)
    idx = perm[:MNIST_LOCAL_TRAIN] if split == "train" else perm[MNIST_LOCAL_TRAIN:]
    return Dataset(data.images[idx], data.labels[idx])


def load_cifar10_head(split: str = "test", data_dir: str | os.PathLike | None = None) -> Dataset:
    """The ``"cifar10_head"`` dataset: the first 846 CIFAR-10 test images, canonical order.

    Args:
        split: ``"test"`` or ``"all"`` (the same 846 images).
        data_dir: the real-data folder (``None``: ``ADVJAX_DATA_DIR``).

    Returns:
        ``Dataset(images (846, 32, 32, 3) float32 in [0, 1], labels (846,) int32 in [0, 10))``.
    """
    del split  # both splits are the whole file
    base = _subfolder(data_dir, CIFAR10_HEAD_DIR, (CIFAR10_HEAD_FILE,))
    data = read_npz(base / CIFAR10_HEAD_FILE)
    if data.images.shape[1:] != (32, 32, 3):
        raise DataFormatError(f"{base / CIFAR10_HEAD_FILE} must hold (N, 32, 32, 3) images; got "
                              f"{data.images.shape}.")
    if data.labels.size and data.labels.max() >= 10:
        raise DataFormatError(f"{base / CIFAR10_HEAD_FILE} holds labels up to "
                              f"{data.labels.max()}; CIFAR-10 labels lie in [0, 10).")
    return data
