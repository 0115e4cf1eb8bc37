"""Shared fixtures: the real-data folder (ADVJAX_DATA_DIR) and CPU-friendly JAX settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ENV = "ADVJAX_DATA_DIR"
# The CLI turns on JAX's persistent compilation cache in ~/.cache; tests that run the CLI in this
# process must neither write there nor switch the cache on for the tests after them.
os.environ.setdefault("ADVJAX_COMPILATION_CACHE", "0")


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_ENV)
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder; tests that need it skip (with the reason) where it is absent."""
    path = _data_dir()
    if path is None:
        pytest.skip(f"real data folder not available: set {DATA_ENV} to the folder holding "
                    "mnist-test/, cifar10-test-head/, woods2019-resnet44/, advertorch-lenet5/")
    return path


def require_data(*parts: str) -> Path:
    """Path under the real-data folder, or skip the calling test with the reason."""
    root = _data_dir()
    if root is None:
        pytest.skip(f"real data folder not available: set {DATA_ENV}")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found under {DATA_ENV}")
    return path
