"""``load(name, split)``: one entry point for every dataset, and their static descriptions.

Every loader returns ``Dataset(images float32 NHWC in [0, 1], labels int32)`` as numpy arrays.

| name | source | splits |
|---|---|---|
| ``"digits"`` (default) | scikit-learn (offline) | train 1,437 / test 360 / all 1,797 |
| ``"mnist_local"`` | IDX files under ``ADVJAX_DATA_DIR`` | train 8,000 / test 2,000 / all 10,000 |
| ``"cifar10_head"`` | ``.npz`` under ``ADVJAX_DATA_DIR`` | test = all = 846 |
| ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` | TFDS | train / test (TFDS split strings) |

Any other name is looked up in TFDS (including builders registered by user code).
"""

from __future__ import annotations

import os
import types

from advjax._checks import check_positive_int
from advjax.data._types import Dataset, DatasetInfo
from advjax.data.digits import DIGITS_NUM_EXAMPLES, DIGITS_NUM_TRAIN, load_digits
from advjax.data.local import MNIST_LOCAL_TRAIN, load_cifar10_head, load_mnist_local
from advjax.data.tfds_backend import load_tfds, tfds_info

DEFAULT_DATASET = "digits"

_DIGIT_NAMES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

_INFOS = types.MappingProxyType({
        "digits": DatasetInfo(
                name="digits", shape=(8, 8, 1), num_classes=10, class_names=_DIGIT_NAMES,
                splits={"train": DIGITS_NUM_TRAIN, "test": DIGITS_NUM_EXAMPLES - DIGITS_NUM_TRAIN,
                        "all": DIGITS_NUM_EXAMPLES},
                source="sklearn",
                description="UCI optical handwritten digits shipped with scikit-learn, 8x8, values "
                            "0..16 / 16; fixed SplitMix64 permutation split (seed 0).",
                licence="CC BY 4.0 (Alpaydin & Kaynak, UCI Machine Learning Repository)"),
        "mnist_local": DatasetInfo(
                name="mnist_local", shape=(28, 28, 1), num_classes=10, class_names=_DIGIT_NAMES,
                splits={"train": MNIST_LOCAL_TRAIN, "test": 10000 - MNIST_LOCAL_TRAIN,
                        "all": 10000},
                source="local",
                description="The 10,000 MNIST test images (mnist-test/ IDX files under "
                            "ADVJAX_DATA_DIR); fixed SplitMix64 permutation split (seed 0).",
                licence="CC BY-SA 3.0 (LeCun, Cortes, Burges)"),
        "cifar10_head": DatasetInfo(
                name="cifar10_head", shape=(32, 32, 3), num_classes=10,
                class_names=CIFAR10_CLASSES, splits={"test": 846, "all": 846}, source="local",
                description="The first 846 CIFAR-10 test images in canonical order "
                            "(cifar10-test-head/ under ADVJAX_DATA_DIR).",
                licence="CIFAR-10 (Krizhevsky, 2009)"),
        "mnist": DatasetInfo(
                name="mnist", shape=(28, 28, 1), num_classes=10, class_names=_DIGIT_NAMES,
                splits={"train": 60000, "test": 10000}, source="tfds",
                description="MNIST through TFDS.", licence="CC BY-SA 3.0 (LeCun, Cortes, Burges)"),
        "fashion_mnist": DatasetInfo(
                name="fashion_mnist", shape=(28, 28, 1), num_classes=10,
                class_names=FASHION_MNIST_CLASSES, splits={"train": 60000, "test": 10000},
                source="tfds", description="Fashion-MNIST through TFDS.",
                licence="MIT (Zalando Research)"),
        "cifar10": DatasetInfo(
                name="cifar10", shape=(32, 32, 3), num_classes=10, class_names=CIFAR10_CLASSES,
                splits={"train": 50000, "test": 10000}, source="tfds",
                description="CIFAR-10 through TFDS.", licence="CIFAR-10 (Krizhevsky, 2009)"),
})


def list_datasets() -> list[str]:
    """Names with a built-in description; ``load`` also accepts any other TFDS name.

    Returns:
        The names, the offline default first.
    """
    return list(_INFOS)


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a dataset name (one of {list_datasets()} or a TFDS "
                         f"name); got {name!r}.")
    return name


def info(name: str = DEFAULT_DATASET, *, data_dir: str | os.PathLike | None = None
         ) -> DatasetInfo:
    """Static description of a dataset: image shape, classes, class names, split sizes, source.

    Args:
        name: a name from ``list_datasets()`` or any TFDS image-classification name.
        data_dir: TFDS data folder, used only for names without a built-in description.

    Returns:
        ``DatasetInfo``.
    """
    name = _check_name(name)
    if name in _INFOS:
        return _INFOS[name]
    return tfds_info(name, data_dir=data_dir, known=tuple(_INFOS))


def num_classes(name: str = DEFAULT_DATASET) -> int:
    """Number of classes of dataset ``name`` (labels lie in ``[0, num_classes)``)."""
    return info(name).num_classes


def load(name: str = DEFAULT_DATASET, split: str = "train", *,
         data_dir: str | os.PathLike | None = None, download: bool = False,
         limit: int | None = None) -> Dataset:
    """Loads one split of a dataset as numpy arrays.

    Args:
        name: ``"digits"`` (offline default), ``"mnist_local"``, ``"cifar10_head"``, ``"mnist"``,
            ``"fashion_mnist"``, ``"cifar10"`` or any TFDS image-classification name.
        split: ``"train"``, ``"test"`` or ``"all"`` for the built-in datasets (see ``info(name)``);
            any TFDS split string for TFDS datasets.
        data_dir: for ``"mnist_local"`` / ``"cifar10_head"`` the real-data folder (default: the
            ``ADVJAX_DATA_DIR`` variable); for TFDS datasets the TFDS data folder (default: TFDS's);
            unused by ``"digits"``.
        download: TFDS only: download and prepare missing data (needs internet).
        limit: keep only the first ``limit`` examples of the split.

    Returns:
        ``Dataset(images, labels)`` (a NamedTuple): ``images`` ``(N, H, W, C)`` float32 in
        ``[0, 1]``, ``labels`` ``(N,)`` int32 in ``[0, num_classes)``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or ``split``.
        DataNotFoundError: the files are missing; the message says what to set or prepare.
    """
    name = _check_name(name)
    if limit is not None:
        check_positive_int(limit, "limit")
    desc = _INFOS.get(name)
    if desc is None or desc.source == "tfds":
        return load_tfds(name, split, data_dir=data_dir, download=download, limit=limit,
                         known=tuple(_INFOS))
    if not isinstance(split, str) or split not in desc.splits:
        raise ValueError(f"unknown `split`={split!r} for dataset {name!r}; expected one of "
                         f"{list(desc.splits)}.")
    if name == "digits":
        data = load_digits(split)
    elif name == "mnist_local":
        data = load_mnist_local(split, data_dir=data_dir)
    else:
        data = load_cifar10_head(split, data_dir=data_dir)
    if limit is not None:
        data = Dataset(data.images[:limit], data.labels[:limit])
    return data
