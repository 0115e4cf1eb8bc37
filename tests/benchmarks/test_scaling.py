"""benchmarks/scaling.py on its smallest configuration: 1 and 2 CPU devices, 1 process under
jax.distributed; the JSON it writes, and the collectives it counts in real compiled HLO."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaling.py"


def _module():
    spec = importlib.util.spec_from_file_location("scaling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_count_collectives_reads_instructions_not_names():
    hlo = "\n".join([
        "  %all-reduce.1 = f32[4]{0} all-reduce(f32[4]{0} %p), channel_id=1, to_apply=%add",
        "  %ags = (f32[2], f32[4]) all-gather-start(f32[2]{0} %q), dimensions={0}",
        "  %agd = f32[4]{0} all-gather-done((f32[2], f32[4]) %ags)",
        "  %cp = f32[4]{0} collective-permute(f32[4]{0} %all-reduce.1), pairs={{0,1}}",
        "  %add.2 = f32[4]{0} add(f32[4]{0} %all-reduce.1, f32[4]{0} %cp)",
    ])
    c = _module().count_collectives(hlo)
    assert c == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 0, "collective-permute": 1,
                 "all-to-all": 0, "total": 3}


def test_smallest_configuration_writes_the_json(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--devices", "1", "2", "--processes", "1", "--batch", "8",
         "--steps", "2", "--repeats", "1", "--timeout", "300", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| workload |" in proc.stdout  # the Markdown table
    result = json.loads(out.read_text())
    assert {"command", "date_utc", "machine", "versions", "advjax_commit", "settings",
            "rows"} <= set(result)
    assert {"jax", "jaxlib", "flax", "optax", "numpy", "python"} <= set(result["versions"])
    assert result["machine"]["cpu_count"] >= 1
    rows = {(r["workload"], r["distributed"], r["global_devices"]): r for r in result["rows"]}
    assert set(rows) == {(w, dist, d) for w in ("pgd", "train")
                         for dist, d in ((False, 1), (False, 2), (True, 1))}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["batch"] == 8 and r["examples_per_s"] > 0
        assert r["examples_per_s"] == 8 / r["best_s"] and len(r["times_s"]) == 1
        assert set(r["collectives"]) == {"all-reduce", "all-gather", "reduce-scatter",
                                         "collective-permute", "all-to-all", "total"}
        assert r["memory"] is None or r["memory"]["peak_bytes"] > 0
    for d, dist in ((1, False), (2, False), (1, True)):
        pgd = rows[("pgd", dist, d)]
        assert pgd["collectives"]["total"] == 0  # attacks are independent per example
        assert pgd["hlo_source"] == "shard_attack.lower"
    # The data-parallel step on 2 devices sums gradients across them: at least one all-reduce;
    # on 1 device none.
    assert rows[("train", False, 2)]["collectives"]["all-reduce"] >= 1
    assert rows[("train", False, 1)]["collectives"]["total"] == 0
    # Per-device memory: each of 2 devices holds half of the attack's batch.
    m1, m2 = rows[("pgd", False, 1)]["memory"], rows[("pgd", False, 2)]["memory"]
    if m1 and m2:
        assert m2["argument_size_in_bytes"] < m1["argument_size_in_bytes"]
