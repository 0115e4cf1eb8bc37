"""TensorFlow Datasets backend: any TFDS image-classification dataset as numpy arrays.

``tensorflow_datasets`` (and TensorFlow) are imported inside the functions, so importing advjax does
no TF work. The data must already be prepared in the TFDS data folder unless ``download=True``;
without internet, prepare it elsewhere (``tfds build NAME --data_dir DIR``) and copy ``DIR/NAME/``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from advjax._checks import check_positive_int
from advjax.data._types import (
    DataFormatError,
    DataNotFoundError,
    Dataset,
    DatasetInfo,
    to_float_images,
    to_int_labels,
)

logger = logging.getLogger(__name__)

_OFFLINE_HINT = ("Offline alternatives that need no TFDS: 'digits' (shipped with scikit-learn), "
                 "'mnist_local' and 'cifar10_head' (files under ADVJAX_DATA_DIR).")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("TFDS datasets need `tensorflow-datasets` and `tensorflow` (CPU build is "
                          "enough): `pip install tensorflow-datasets tensorflow-cpu`.") from exc
    return tfds


def _builder(name: str, data_dir, known: tuple[str, ...] = ()):
    tfds = _import_tfds()
    kwargs = {} if data_dir is None else {"data_dir": os.fspath(data_dir)}
    try:
        return tfds.builder(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError as exc:
        listed = f"advjax datasets {list(known)}, or " if known else ""
        raise ValueError(f"unknown dataset `name`={name!r}: expected one of {listed}a TFDS "
                         "image-classification dataset name (see `tfds.list_builders()`).") from exc


def _not_prepared_message(name: str, builder, data_dir, download: bool) -> str:
    where = (os.fspath(data_dir) if data_dir is not None
             else "the TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)")
    return (f"TFDS dataset {name!r} is not prepared in data_dir {where} (looked for "
            f"{builder.data_dir}), and download={download}. To prepare it: on a machine with "
            f"internet run `tfds build {name} --data_dir DIR` (or "
            f"`tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`), copy DIR/{name}/ "
            f"here, and pass `data_dir=DIR` (or set TFDS_DATA_DIR=DIR); or call with "
            f"`download=True` where internet is available. {_OFFLINE_HINT}")


def _feature_keys(builder) -> tuple[str, str]:
    features = builder.info.features
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        image_key, label_key = "image", "label"
    present = list(features.keys()) if hasattr(features, "keys") else []
    for key in (image_key, label_key):
        if key not in present:
            raise DataFormatError(f"TFDS dataset {builder.name!r} has no feature {key!r} "
                                  f"(features: {present}); expected an image-classification "
                                  "dataset with image and label features.")
    shape = tuple(features[image_key].shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataFormatError(f"TFDS dataset {builder.name!r}: feature {image_key!r} has shape "
                              f"{shape}; expected a fixed (H, W, C) image shape.")
    return image_key, label_key


def tfds_info(name: str, *, data_dir: str | os.PathLike | None = None,
              known: tuple[str, ...] = ()) -> DatasetInfo:
    """Static description of a TFDS image-classification dataset, read from its builder.

    Args:
        name: TFDS name, e.g. ``"mnist"``.
        data_dir: TFDS data folder (split sizes are known only when the data are prepared there).
        known: advjax dataset names, listed in the error for an unknown name.

    Returns:
        ``DatasetInfo`` with ``source="tfds"``.
    """
    builder = _builder(name, data_dir, known)
    image_key, label_key = _feature_keys(builder)
    features = builder.info.features
    label = features[label_key]
    names = tuple(getattr(label, "names", None) or ())
    num_classes = int(getattr(label, "num_classes", len(names)))
    splits = {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
    return DatasetInfo(name=name, shape=tuple(features[image_key].shape), num_classes=num_classes,
                       class_names=names or tuple(str(i) for i in range(num_classes)),
                       splits=splits, source="tfds", description=builder.info.description or "")


def load_tfds(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
              download: bool = False, batch_size: int = 1024, limit: int | None = None,
              known: tuple[str, ...] = ()) -> Dataset:
    """Loads a TFDS image-classification split into numpy arrays.

    The split is read in its stored order (``shuffle_files=False``) in batches through
    ``tfds.as_numpy``.

    Args:
        name: TFDS name (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, or any registered builder,
            including one defined in user code).
        split: TFDS split string (``"train"``, ``"test"``, ``"train[:10%]"``, ...).
        data_dir: TFDS data folder; ``None`` uses TFDS's default.
        download: download and prepare the data if absent (needs internet).
        batch_size: examples per read batch (memory only; the result does not depend on it).
        limit: keep only the first ``limit`` examples of the split.
        known: advjax dataset names, listed in the error for an unknown name.

    Returns:
        ``Dataset(images (N, H, W, C) float32 in [0, 1], labels (N,) int32)``; uint8 pixels are
        divided by 255.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DataNotFoundError: the data are not prepared in ``data_dir`` and cannot be downloaded; the
            message says how to prepare them offline.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"`split` must be a TFDS split string such as 'train', 'test' or "
                         f"'train[:10%]'; got {split!r}.")
    check_positive_int(batch_size, "batch_size")
    if limit is not None:
        check_positive_int(limit, "limit")
    if data_dir is not None and not download and not os.path.isdir(data_dir):
        raise DataNotFoundError(f"`data_dir`={os.fspath(data_dir)!r} does not exist or is not a "
                                f"folder; it must be a TFDS data folder holding {name}/. "
                                f"{_OFFLINE_HINT}")
    builder = _builder(name, data_dir, known)
    if not builder.is_prepared():
        if not download:
            raise DataNotFoundError(_not_prepared_message(name, builder, data_dir, download))
        try:
            builder.download_and_prepare()
        except Exception as exc:  # network and build errors of any kind
            raise DataNotFoundError(_not_prepared_message(name, builder, data_dir, download)
                                    + f" (download failed: {type(exc).__name__}: {exc})") from exc
    image_key, label_key = _feature_keys(builder)
    available = sorted(builder.info.splits.keys())
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (ValueError, KeyError, AssertionError) as exc:
        raise ValueError(f"unknown `split`={split!r} for TFDS dataset {name!r}; available "
                         f"splits: {available} (slices such as 'train[:10%]' also work).") from exc
    if limit is not None:
        ds = ds.take(int(limit))
    tfds = _import_tfds()
    images, labels = [], []
    for batch in tfds.as_numpy(ds.batch(batch_size)):
        images.append(batch[image_key])
        labels.append(batch[label_key])
    shape = tuple(builder.info.features[image_key].shape)
    if images:
        images_np: Any = np.concatenate(images)
        labels_np: Any = np.concatenate(labels)
    else:
        images_np = np.zeros((0, *shape), np.uint8)
        labels_np = np.zeros((0,), np.int64)
    logger.info("loaded TFDS %s[%s]: %d examples of shape %s", name, split, len(labels_np), shape)
    out_images = to_float_images(images_np, name=f"{name}[{split}] images")
    return Dataset(out_images, to_int_labels(labels_np, out_images.shape[0],
                                             name=f"{name}[{split}] labels"))
