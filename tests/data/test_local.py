"""Real local files (mnist_local, cifar10_head), the .npz reader and data-folder errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import advjax.data as data
from tests.conftest import DATA_ENV, require_data

# Published class counts of the 10,000 MNIST test images, and the first ten test labels.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TEST_FIRST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
# First ten CIFAR-10 test labels: cat ship ship airplane frog frog automobile frog cat automobile.
CIFAR10_TEST_FIRST = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


@pytest.fixture(scope="module")
def mnist_all():
    root = require_data("mnist-test").parent
    return root, data.load("mnist_local", "all", data_dir=root)


@pytest.mark.data
def test_mnist_local_all_against_raw_bytes(mnist_all):
    root, (images, labels) = mnist_all
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (10000,) and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    # Independent decode: the IDX image header is 16 bytes, the label header 8 bytes.
    raw_x = gzip.decompress((root / "mnist-test/t10k-images-idx3-ubyte.gz").read_bytes())
    raw_y = gzip.decompress((root / "mnist-test/t10k-labels-idx1-ubyte.gz").read_bytes())
    ref_x = np.frombuffer(raw_x[16:], np.uint8).reshape(10000, 28, 28, 1) / np.float32(255)
    np.testing.assert_array_equal(images, ref_x)
    np.testing.assert_array_equal(labels, np.frombuffer(raw_y[8:], np.uint8))
    np.testing.assert_array_equal(labels[:10], MNIST_TEST_FIRST)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), MNIST_TEST_COUNTS)
    assert data.num_classes("mnist_local") == 10 == len(np.unique(labels))


@pytest.mark.data
def test_mnist_local_splits(mnist_all):
    root, (all_x, all_y) = mnist_all
    train = data.load("mnist_local", "train", data_dir=root)
    test = data.load("mnist_local", "test", data_dir=root)
    assert train.images.shape == (8000, 28, 28, 1) and test.images.shape == (2000, 28, 28, 1)
    perm = data.fixed_permutation(10000, data.local.MNIST_LOCAL_SEED)
    assert len(np.intersect1d(perm[:8000], perm[8000:])) == 0
    np.testing.assert_array_equal(train.images, all_x[perm[:8000]])
    np.testing.assert_array_equal(test.labels, all_y[perm[8000:]])
    counts = np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10)
    np.testing.assert_array_equal(counts, MNIST_TEST_COUNTS)
    # Deterministic: loading again gives the same split.
    np.testing.assert_array_equal(data.load("mnist_local", "test", data_dir=root).labels,
                                  test.labels)


@pytest.mark.data
def test_mnist_local_from_env(monkeypatch):
    root = require_data("mnist-test").parent
    monkeypatch.setenv(DATA_ENV, str(root))
    images, labels = data.load("mnist_local", "test", limit=5)
    assert images.shape == (5, 28, 28, 1) and labels.shape == (5,)


@pytest.mark.data
def test_cifar10_head(data_dir):
    path = require_data("cifar10-test-head", "cifar10_test_first846.npz")
    images, labels = data.load("cifar10_head", "test", data_dir=data_dir)
    assert images.shape == (846, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (846,) and labels.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(labels[[2, 5, 8, 9]], [8, 6, 3, 1])
    np.testing.assert_array_equal(labels[:10], CIFAR10_TEST_FIRST)
    names = data.info("cifar10_head").class_names
    assert [names[i] for i in labels[[2, 5, 8, 9]]] == ["ship", "frog", "cat", "automobile"]
    with np.load(path) as raw:
        np.testing.assert_array_equal(images, raw["images"] / np.float32(255))
    np.testing.assert_array_equal(data.load("cifar10_head", "all", data_dir=data_dir).labels,
                                  labels)


@pytest.mark.data
def test_cifar10_head_matches_png_examples(data_dir):
    """Indices 2, 5, 8, 9 are the four PNG example images shipped with the ResNet-44 checkpoints."""
    require_data("woods2019-resnet44", "images", "test_image_0.png")
    import matplotlib.image as mpimg

    images, _ = data.load("cifar10_head", "test", data_dir=data_dir)
    for i, index in enumerate([2, 5, 8, 9]):
        png = mpimg.imread(data_dir / "woods2019-resnet44" / "images" / f"test_image_{i}.png")
        np.testing.assert_allclose(png[..., :3], images[index], atol=0.5 / 255)


# --- .npz reader (files written here) --------------------------------------------------------


def test_read_npz_uint8_and_float(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    y = np.array([0, 3, 1, 2], np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    out = data.read_npz(tmp_path / "a.npz")
    assert out.images.dtype == np.float32 and out.labels.dtype == np.int32
    np.testing.assert_array_equal(out.images * 255, x.astype(np.float32))
    np.testing.assert_array_equal(out.labels, y)
    # Rank-3 grayscale gets a channel axis; floats in [0, 1] pass through; custom keys.
    g = rng.uniform(size=(4, 5, 6))
    np.savez(tmp_path / "b.npz", x=g, y=np.arange(4))
    out = data.read_npz(tmp_path / "b.npz", images_key="x", labels_key="y")
    assert out.images.shape == (4, 5, 6, 1)
    np.testing.assert_allclose(out.images[..., 0], g, rtol=1e-7)


@pytest.mark.parametrize("arrays,kwargs,match", [
        ({"images": np.zeros((2, 3, 3), np.uint8)}, {}, "no array 'labels'.*arrays present"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(3, np.int64)}, {},
         "3 entries but there are 2 images"),
        ({"images": np.full((2, 3, 3), 2.0), "labels": np.zeros(2, np.int64)}, {},
         r"outside \[0, 1\]"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(2)}, {},
         "integer array"),
        ({"images": np.zeros((2, 3), np.uint8), "labels": np.zeros(2, np.int64)}, {},
         r"shape \(N, H, W\)"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": -np.ones(2, np.int64)}, {},
         ">= 0"),
        ({"img": np.zeros((2, 3, 3), np.uint8)}, {"images_key": "pix"}, "`images_key`"),
])
def test_read_npz_bad(tmp_path, arrays, kwargs, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(data.DataFormatError, match=match):
        data.read_npz(tmp_path / "bad.npz", **kwargs)


def test_read_npz_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(data.DataFormatError, match="not a NumPy archive"):
        data.read_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(data.DataFormatError, match="single array"):
        data.read_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object), labels=np.zeros(2))
    with pytest.raises(data.DataFormatError, match="unpickling"):
        data.read_npz(tmp_path / "obj.npz")
    with pytest.raises(data.DataNotFoundError):
        data.read_npz(tmp_path / "absent.npz")


# --- data-folder errors ----------------------------------------------------------------------


def test_env_unset_says_what_to_set(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(data.DataNotFoundError, match=f"set the environment variable {DATA_ENV}"):
        data.load("mnist_local", "train")
    with pytest.raises(data.DataNotFoundError, match=DATA_ENV):
        data.load("cifar10_head", "test")


def test_env_points_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(data.DataNotFoundError, match=f"{DATA_ENV}=.*does not exist"):
        data.load("mnist_local", "train")


def test_wrong_data_dir(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="`data_dir`.*does not exist"):
        data.load("mnist_local", "train", data_dir=tmp_path / "missing")
    # An existing folder without the dataset's subfolder names the missing files.
    with pytest.raises(data.DataNotFoundError, match="mnist-test/t10k-images-idx3-ubyte.gz"):
        data.load("mnist_local", "train", data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="cifar10-test-head/"):
        data.load("cifar10_head", "test", data_dir=tmp_path)


def test_corrupted_local_file(tmp_path):
    folder = tmp_path / "mnist-test"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00"))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01"))
    with pytest.raises(data.DataFormatError, match="truncated"):
        data.load("mnist_local", "all", data_dir=tmp_path)
