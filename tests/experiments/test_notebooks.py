"""The notebooks are committed executed (a reader sees outputs and inline plots) and CI
re-executes them top to bottom on the CPU, leaving no file beside them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
NEEDS_DATA = {"03_explanations.ipynb"}
WITH_PLOTS = {"01_quickstart.ipynb", "03_explanations.ipynb"}


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_with_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell was executed"
    assert not [out for c in code for out in c.get("outputs", [])
                if out.get("output_type") == "error"], "a committed cell failed"
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2
    if name in WITH_PLOTS:
        assert _images(nb) >= 1, "plots are shown inline"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_leaves_no_files(name):
    if name in NEEDS_DATA and not os.environ.get("ADVJAX_DATA_DIR"):
        pytest.skip("needs the real data folder: set ADVJAX_DATA_DIR")
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before
    if name in WITH_PLOTS:
        assert _images(nb) >= 1
