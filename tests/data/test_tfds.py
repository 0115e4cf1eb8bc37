"""The TFDS backend, offline: a tiny builder prepared into a temporary folder, and missing data."""

from __future__ import annotations

import numpy as np
import pytest

import advjax.data as data

tfds = pytest.importorskip("tensorflow_datasets")

NAME = "advjax_tiny_digits_check"  # registered by the class below
SIZES = {"train": 20, "test": 8}


def _examples(split: str):
    """The dataset's content: deterministic random uint8 28x28x1 images and labels."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = SIZES[split]
    images = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    return images, labels


class AdvjaxTinyDigitsCheck(tfds.core.GeneratorBasedBuilder):
    """A standard image-classification dataset (features image + label) built without downloads."""

    # TFDS 4.9.x looks for checksum files beside a builder defined in a package and then needs the
    # optional `importlib_resources`; a single-component module name makes it skip that lookup.
    __module__ = "advjax_tfds_check"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(28, 28, 1)),
                        "label": tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        images, labels = _examples(split)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    AdvjaxTinyDigitsCheck(data_dir=str(root)).download_and_prepare()
    return root


def _index_by_content(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    lookup = {img.tobytes(): i for i, img in enumerate(reference)}
    return np.array([lookup[img.tobytes()] for img in images])


@pytest.mark.parametrize("split", ["train", "test"])
def test_round_trip(prepared, split):
    ref_x, ref_y = _examples(split)
    images, labels = data.load(NAME, split, data_dir=prepared)
    assert images.shape == (SIZES[split], 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (SIZES[split],) and labels.dtype == np.int32
    # TFDS stores examples in its own order; match each loaded image to its source exactly.
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_array_equal(images, as_uint8.astype(np.float32) / np.float32(255))
    idx = _index_by_content(ref_x, as_uint8)
    np.testing.assert_array_equal(np.sort(idx), np.arange(SIZES[split]))
    np.testing.assert_array_equal(labels, ref_y[idx])
    # Deterministic order, independent of the read batch size.
    again = data.load_tfds(NAME, split, data_dir=prepared, batch_size=3)
    np.testing.assert_array_equal(again.images, images)
    np.testing.assert_array_equal(again.labels, labels)


def test_limit_and_split_slices(prepared):
    full = data.load(NAME, "train", data_dir=prepared)
    head = data.load(NAME, "train", data_dir=prepared, limit=5)
    np.testing.assert_array_equal(head.images, full.images[:5])
    sliced = data.load(NAME, "train[:4]", data_dir=prepared)
    assert sliced.images.shape == (4, 28, 28, 1)


def test_info_from_builder(prepared):
    desc = data.info(NAME, data_dir=prepared)
    assert desc.shape == (28, 28, 1) and desc.num_classes == 10 and desc.source == "tfds"
    assert desc.splits == SIZES


def test_unknown_split(prepared):
    with pytest.raises(ValueError, match=r"unknown `split`='validation'.*\['test', 'train'\]"):
        data.load(NAME, "validation", data_dir=prepared)
    with pytest.raises(ValueError, match="`split` must be a TFDS split string"):
        data.load(NAME, None, data_dir=prepared)
    with pytest.raises(ValueError, match="`batch_size`"):
        data.load_tfds(NAME, "train", data_dir=prepared, batch_size=0)


def test_missing_mnist_is_actionable(tmp_path):
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    for part in ("'mnist'", str(tmp_path), "tfds build mnist", "data_dir", "download=True",
                 "mnist_local"):
        assert part in message, part


def test_unprepared_registered_builder(tmp_path):
    with pytest.raises(data.DataNotFoundError, match=f"{NAME}.*not prepared"):
        data.load(NAME, "train", data_dir=tmp_path)


def test_missing_data_dir(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="`data_dir`=.*does not exist"):
        data.load("cifar10", "test", data_dir=tmp_path / "absent")


def test_download_true_prepares_missing_data(tmp_path):
    """``download=True`` runs the builder's preparation (here it needs no network)."""
    out = data.load(NAME, "test", data_dir=tmp_path, download=True)
    ref_x, ref_y = _examples("test")
    idx = _index_by_content(ref_x, np.round(out.images * 255).astype(np.uint8))
    np.testing.assert_array_equal(out.labels, ref_y[idx])


def test_failed_download_is_actionable(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(AdvjaxTinyDigitsCheck, "download_and_prepare", offline)
    with pytest.raises(data.DataNotFoundError, match="download failed: ConnectionError") as info:
        data.load(NAME, "train", data_dir=tmp_path, download=True)
    assert f"tfds build {NAME}" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)
