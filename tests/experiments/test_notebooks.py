"""The notebooks run top to bottom on the CPU (small settings), outputs discarded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NEEDS_DATA = {"03_explanations.ipynb"}
# Rendered by the documentation site with their outputs, so committed executed (in order, from a
# fresh kernel); the test still executes them again from scratch.
COMMITTED_WITH_OUTPUTS = {"04_nnx.ipynb"}


def _execute(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if path.name in COMMITTED_WITH_OUTPUTS:
        counts = [cell.get("execution_count") for cell in code]
        assert counts == list(range(1, len(code) + 1)), (
                f"{path.name}: commit it executed top to bottom in a fresh kernel; got {counts}")
    else:
        for cell in code:
            assert not cell.get("outputs"), f"{path.name}: outputs must be stripped in git"
    env_before = dict(os.environ)
    os.environ["ADVJAX_NOTEBOOK_OUT"] = str(tmp_path)
    try:
        client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs(name, tmp_path):
    if name in NEEDS_DATA and not os.environ.get("ADVJAX_DATA_DIR"):
        pytest.skip("needs the real data folder: set ADVJAX_DATA_DIR")
    _execute(NOTEBOOKS / name, tmp_path)
