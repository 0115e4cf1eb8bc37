"""``advjax run`` started as P processes: one results folder, written by process 0, equal to the
one-process run; refusals and failures stop every process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advjax import pipeline
from tests.distributed.launch import ProcessesFailed, run_processes

WORKER = "tests/distributed/workers/cli_toy.py"
TOY = "tests.experiments.toy_studies"


def _record(out: Path) -> dict:
    """The folder's files (figures included) and the metrics without the timings."""
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("wall_time_s", "stages"):
        metrics.pop(k)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return dict(metrics=metrics, files=files,
                figure=(out / "figures" / "toy.txt").read_text())


def _log(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_processes_write_one_folder_equal_to_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STUDIES_PACKAGE", TOY)
    single = tmp_path / "single"
    pipeline.execute("counter", "quick", single, {"n": 4})
    log = tmp_path / "log.txt"
    env = {"ADVJAX_TOY_LOG": str(log)}
    out = tmp_path / "multi"
    stdouts = run_processes([WORKER, "run", "counter", "--out", out, "--set", "n=4"], 2,
                            env=env, timeout=120)
    assert "results written to" in stdouts[0]
    assert f"process 1 of 2 finished; process 0 wrote the results to {out}" in stdouts[1]
    assert "results written to" not in stdouts[1]
    assert _record(out) == _record(single)
    assert sorted(_log(log)) == ["first", "first", "second", "second"]   # each process computed
    # The finished run resumed on two processes: nothing runs, the record stays byte for byte.
    record = {n: (out / n).read_bytes() for n in pipeline.RECORD_FILES}
    stdouts = run_processes([WORKER, "run", "counter", "--out", out, "--set", "n=4", "--resume"],
                            2, env=env, timeout=120)
    assert sorted(_log(log)) == ["first", "first", "second", "second"]
    assert {n: (out / n).read_bytes() for n in pipeline.RECORD_FILES} == record
    # Without its record (a run stopped after its stages), resumed on two processes: process 0's
    # saved stages are reused by both, nothing recomputed.
    for name in pipeline.RECORD_FILES:
        (out / name).unlink()
    stdouts = run_processes([WORKER, "run", "counter", "--out", out, "--set", "n=4", "--resume"],
                            2, env=env, timeout=120)
    assert sorted(_log(log)) == ["first", "first", "second", "second"]
    stages = json.loads((out / "metrics.json").read_text())["stages"]
    assert [s["cached"] for s in stages] == [True, True]


def test_a_refused_folder_stops_every_process_with_the_same_message(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STUDIES_PACKAGE", TOY)
    out = tmp_path / "run"
    pipeline.execute("counter", "quick", out)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(ProcessesFailed, match="exited with 2") as err:
        run_processes([WORKER, "run", "counter", "--out", out, "--set", "n=5"], 2, timeout=120)
    assert "config.n: 3 -> 5" in str(err.value)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before


def test_a_failing_study_stops_every_process(tmp_path):
    with pytest.raises(ProcessesFailed, match="(?s)exited with 1.*failed on purpose"):
        run_processes([WORKER, "run", "counter", "--out", tmp_path / "run", "--set", "fail=true"],
                      2, timeout=120)


def test_hosts_without_a_shared_disk_follow_process_0(tmp_path):
    """Process 1 sees none of process 0's files: it writes nothing, and on resume it reuses the
    stages process 0 saved (sent to it), instead of recomputing alone and leaving the others."""
    log = tmp_path / "log.txt"
    env = {"ADVJAX_TOY_LOG": str(log), "ADVJAX_TEST_PRIVATE_DISK": "1"}
    out = tmp_path / "run"
    run_processes([WORKER, "run", "counter", "--out", out], 2, env=env, timeout=120)
    assert (out / "metrics.json").is_file()
    private = Path(f"{out}.process1")
    assert not private.exists() or not any(p.is_file() for p in private.rglob("*"))
    assert sorted(_log(log)) == ["first", "first", "second", "second"]
    run_processes([WORKER, "run", "counter", "--out", out, "--resume"], 2, env=env, timeout=120)
    assert sorted(_log(log)) == ["first", "first", "second", "second"]
