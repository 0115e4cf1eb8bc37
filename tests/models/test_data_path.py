"""Checkpoint loaders find a relative path in the working directory, then under ADVJAX_DATA_DIR,
and a path found in neither fails naming both places and the variable."""

from __future__ import annotations

import numpy as np
import pytest

from advjax.data import DATA_ENV, DataNotFoundError, resolve_data_path
from advjax.models import load_lenet5, load_woods2019
from advjax.models.advertorch import _SHAPES
from tests.conftest import require_data

REL = "advertorch-lenet5/lenet5_mnist.npz"


def _write_lenet5(root, seed: int) -> dict[str, np.ndarray]:
    """A synthetic advertorch archive under ``root`` (random weights of the real shapes)."""
    rng = np.random.default_rng(seed)
    state = {k: rng.standard_normal(s).astype(np.float32) for k, s in _SHAPES.items()}
    (root / "advertorch-lenet5").mkdir(parents=True)
    np.savez(root / REL, **{f"mnist_lenet5_clntrained/{k}": v for k, v in state.items()})
    return state


def _conv1_kernel(state):  # PyTorch OIHW -> Flax HWIO, computed here independently
    return state["conv1.weight"].transpose(2, 3, 1, 0)


def test_relative_path_falls_back_to_the_data_dir(tmp_path, monkeypatch):
    data_dir, cwd = tmp_path / "data", tmp_path / "elsewhere"
    cwd.mkdir()
    state = _write_lenet5(data_dir, seed=0)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    assert resolve_data_path(REL) == data_dir / REL
    _, variables = load_lenet5(REL)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], _conv1_kernel(state))
    # the folder form resolves too
    _, variables = load_lenet5("advertorch-lenet5")
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], _conv1_kernel(state))


def test_the_working_directory_comes_first(tmp_path, monkeypatch):
    data_dir, cwd = tmp_path / "data", tmp_path / "here"
    in_data = _write_lenet5(data_dir, seed=0)
    in_cwd = _write_lenet5(cwd, seed=1)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(DATA_ENV, str(data_dir))
    _, variables = load_lenet5(REL)
    kernel = variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(kernel, _conv1_kernel(in_cwd))
    assert not np.array_equal(kernel, _conv1_kernel(in_data))


def test_not_found_names_both_places_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    with pytest.raises(DataNotFoundError) as err:
        load_lenet5(REL)
    message = str(err.value)
    assert str(tmp_path / REL) in message and str(tmp_path / "data" / REL) in message
    assert DATA_ENV in message
    monkeypatch.delenv(DATA_ENV)
    with pytest.raises(FileNotFoundError, match=f"{DATA_ENV} \\(not set\\)"):
        load_woods2019("woods2019-resnet44/resnet44-all.pt")
    # an absolute path is looked up only where it points
    with pytest.raises(DataNotFoundError) as err:
        resolve_data_path(tmp_path / "missing.pt")
    assert "not set" not in str(err.value)


@pytest.mark.data
def test_released_checkpoints_by_relative_path(tmp_path, monkeypatch):
    root = require_data("woods2019-resnet44", "resnet44-all.pt").parents[1]
    require_data("advertorch-lenet5", "lenet5_mnist.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(root))
    module, variables = load_woods2019("woods2019-resnet44/resnet44-all.pt")
    _, by_absolute = load_woods2019(root / "woods2019-resnet44" / "resnet44-all.pt")
    np.testing.assert_array_equal(variables["params"]["stem"]["kernel"],
                                  by_absolute["params"]["stem"]["kernel"])
    _, lenet = load_lenet5(REL, "advtrained")
    _, lenet_abs = load_lenet5(root / REL, "advtrained")
    np.testing.assert_array_equal(lenet["params"]["linear2"]["kernel"],
                                  lenet_abs["params"]["linear2"]["kernel"])
