"""Smoke test of benchmarks/lipschitz.py: it runs, prints a table and writes consistent JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lipschitz.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_lipschitz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_quick_run(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "lip.json"
    assert bench.main(["--sizes", "2:5", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| C→C on H×W |")
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["channels"] == 2 and row["size"] == 5
    # exact and explicit agree; the Fourier value bounds them (SAME padding)
    assert row["exact"]["value"] == pytest.approx(row["explicit"]["value"], rel=1e-4)
    assert row["fft"]["value"] >= row["explicit"]["value"] * (1 - 1e-5)
    # the certified host maximum and the previous batched-SVD path agree
    assert row["fft"]["value"] == pytest.approx(row["fft_svd"]["value"], rel=1e-5)
    assert result["load_average"]["before"] and result["date"]
    for m in ("fft", "fft_svd", "exact", "explicit"):
        assert row[m]["compile_s"] > 0 and row[m]["steady_s"] > 0
