"""``docs/distributed.md`` runs as written: its Python example under two processes, and its
two-processes-on-one-CPU commands, whose study record equals the same command on one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.distributed.launch import free_port, run_processes

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "distributed.md"


def _section(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_the_python_example_runs_under_two_processes(tmp_path):
    (code,) = _blocks(_section("Whole set or own rows"), "python")
    script = tmp_path / "example.py"
    script.write_text("from advjax import parallel\nparallel.initialize_distributed()\n" + code
                      + "\nprint('EXAMPLE OK', len(every.success))\n")
    outs = run_processes([script], 2, local_devices=2, timeout=180, cwd=ROOT)
    assert all("EXAMPLE OK 37" in out for out in outs)


def _metrics(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("wall_time_s", "stages"):
        metrics.pop(key)
    return metrics


def _compare(a, b, path=""):
    """Equal structure; equal non-float values; floats within 1e-4 relative + 1e-6."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _compare(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert np.isclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.slow
def test_two_processes_on_one_cpu_as_the_page_says(tmp_path):
    (block,) = _blocks(_section("Two processes on one CPU machine"), "bash")
    assert "127.0.0.1:12355" in block
    block = block.replace("127.0.0.1:12355", f"127.0.0.1:{free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADVJAX_", "XLA_FLAGS"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(["bash", "-ec", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1 of 2 finished; process 0 wrote the results" in done.stdout
    assert "results written to results/two-processes" in done.stdout
    # The same command on one process, one device.
    command = next(line for line in block.splitlines() if "ADVJAX_PROCESS_ID=0" in line)
    command = command.split("ADVJAX_PROCESS_ID=0 ", 1)[1].replace("two-processes", "one-process")
    one = subprocess.run(["bash", "-ec", command], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    _compare(_metrics(tmp_path / "results" / "two-processes"),
             _metrics(tmp_path / "results" / "one-process"))
