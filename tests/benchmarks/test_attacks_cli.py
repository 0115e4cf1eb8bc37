"""benchmarks/attacks.py runs unchanged in a tiny CPU form (synthetic weights, 2 steps).

The GPU command ``python benchmarks/attacks.py --device gpu --quick`` is the same code path with
``--device gpu``; here the CPU form checks that the table is produced and written, that the
lowered and native advjax rows find the same adversarial examples, and that no GPU figure is
recorded. Timings are not checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *extra):
    out = tmp_path / "attacks.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "attacks.py"), "--quick", "--synthetic",
           "--steps", "2", "--n", "4", "--repeats", "1", "--out", str(out), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check(record, frameworks, models):
    assert record["backend"] == "cpu" and record["synthetic"] is True
    rows = {(r["framework"], r["model"], r["attack"]): r for r in record["rows"]}
    for fw in frameworks:
        for model, attack in models:
            r = rows[(fw, model, attack)]
            assert r["device"] == "cpu" and r["n"] == 4 and r["steps"] == 2
            assert r["images_per_s"] > 0 and 0.0 <= r["robust_accuracy"] <= 1.0
    for model, attack in models:
        assert rows[("advjax", model, attack)]["robust_accuracy"] == \
            rows[("advjax-native", model, attack)]["robust_accuracy"]
        assert rows[("advjax", model, attack)]["conv_lowering"] == "auto"
    assert record["matmul_fp32_gflops"] > 0


def test_tiny_cpu_form_advjax_rows(tmp_path):
    record = _run(tmp_path, "--models", "flaxlenet", "--frameworks", "advjax", "advjax-native")
    _check(record, ["advjax", "advjax-native"], [("flaxlenet", "pgd")])


@pytest.mark.slow
def test_tiny_cpu_form_resnet_and_peer(tmp_path):
    peers = ["torchattacks"] if importlib.util.find_spec("torchattacks") else []
    record = _run(tmp_path, "--models", "lenet5adv", "resnet44", "--resnet-depth", "8",
                  "--frameworks", "advjax", "advjax-native", *peers)
    _check(record, ["advjax", "advjax-native", *peers], [("lenet5adv", "pgd")])
    _check(record, ["advjax", "advjax-native"], [("resnet44", "pgd"), ("resnet44", "apgd")])
