"""Data loading: ``load(name, split)`` -> ``(images float32 NHWC in [0, 1], labels int32)``.

* ``load``, ``info``, ``num_classes``, ``list_datasets``, ``DEFAULT_DATASET`` (``"digits"``: the UCI
  handwritten digits shipped with scikit-learn, offline).
* Real local files under ``ADVJAX_DATA_DIR``: ``"mnist_local"`` (IDX), ``"cifar10_head"``
  (``.npz``); readers ``read_idx`` and ``read_npz``.
* TFDS: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or any TFDS image-classification name
  (``load_tfds``; TensorFlow is imported only when used).
* Utilities: ``shuffle``, ``split``, ``szegedy_p1_p2``, ``batches``, ``fixed_permutation``.
"""

from advjax.data._types import (
    DataFormatError,
    DataNotFoundError,
    Dataset,
    DatasetInfo,
)
from advjax.data.digits import load_digits
from advjax.data.idx import read_idx
from advjax.data.local import (
    DATA_ENV,
    load_cifar10_head,
    load_mnist_local,
    resolve_data_dir,
    resolve_data_path,
)
from advjax.data.npz import read_npz
from advjax.data.registry import (
    DEFAULT_DATASET,
    info,
    list_datasets,
    load,
    num_classes,
)
from advjax.data.splits import (
    batches,
    fixed_permutation,
    shuffle,
    split,
    splitmix64,
    szegedy_p1_p2,
)
from advjax.data.tfds_backend import load_tfds, tfds_info

__all__ = [
        "DATA_ENV",
        "DEFAULT_DATASET",
        "DataFormatError",
        "DataNotFoundError",
        "Dataset",
        "DatasetInfo",
        "batches",
        "fixed_permutation",
        "info",
        "list_datasets",
        "load",
        "load_cifar10_head",
        "load_digits",
        "load_mnist_local",
        "load_tfds",
        "num_classes",
        "read_idx",
        "read_npz",
        "resolve_data_dir",
        "resolve_data_path",
        "shuffle",
        "split",
        "splitmix64",
        "szegedy_p1_p2",
        "tfds_info",
]
