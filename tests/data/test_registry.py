"""Dataset names, descriptions and the errors of ``load`` for bad names and splits."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import advjax.data as data

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_list_datasets():
    names = data.list_datasets()
    assert names[0] == data.DEFAULT_DATASET == "digits"
    assert {"digits", "mnist_local", "cifar10_head", "mnist", "fashion_mnist",
            "cifar10"} <= set(names)


@pytest.mark.parametrize("name,shape,source", [
        ("digits", (8, 8, 1), "sklearn"), ("mnist_local", (28, 28, 1), "local"),
        ("cifar10_head", (32, 32, 3), "local"), ("mnist", (28, 28, 1), "tfds"),
        ("fashion_mnist", (28, 28, 1), "tfds"), ("cifar10", (32, 32, 3), "tfds")])
def test_info(name, shape, source):
    desc = data.info(name)
    assert desc.name == name and desc.shape == shape and desc.source == source
    assert desc.num_classes == data.num_classes(name) == 10 == len(desc.class_names)
    assert desc.licence


def test_info_class_names():
    assert list(data.info("cifar10").class_names) == CIFAR10
    assert list(data.info("cifar10_head").class_names) == CIFAR10
    assert list(data.info("mnist").class_names) == [str(i) for i in range(10)]
    assert data.info("fashion_mnist").class_names[9] == "Ankle boot"


def test_info_matches_loaded_digits():
    desc = data.info("digits")
    for split, n in desc.splits.items():
        images, labels = data.load("digits", split)
        assert images.shape == (n, *desc.shape)
        assert labels.max() < desc.num_classes


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="unknown dataset `name`='no_such_set_xyz'") as info:
        data.load("no_such_set_xyz", "train")
    for name in data.list_datasets():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="`name`"):
        data.load(3, "train")
    with pytest.raises(ValueError, match="`name`"):
        data.info("")


@pytest.mark.parametrize("name,split", [("digits", "validation"), ("digits", None),
                                        ("cifar10_head", "train"), ("mnist_local", "val")])
def test_unknown_split(name, split):
    with pytest.raises(ValueError, match=r"unknown `split`.*expected one of \[") as info:
        data.load(name, split, data_dir="/nonexistent")
    assert name in str(info.value)


def test_bad_limit():
    with pytest.raises(ValueError, match="`limit`"):
        data.load("digits", "train", limit=0)


def test_import_does_no_work():
    """Importing advjax.data and loading the default data never imports TensorFlow."""
    code = ("import sys, advjax.data as d; assert 'sklearn' not in sys.modules; d.load(); "
            "d.info('cifar10'); "
            "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_dataset_is_a_pair():
    out = data.load("digits", "test", limit=3)
    images, labels = out
    assert images is out.images and labels is out.labels
    assert isinstance(out, tuple) and len(out) == 2
    assert np.asarray(labels).dtype == np.int32
