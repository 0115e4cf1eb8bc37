"""``advjax evaluate`` started as P processes: one results folder, written by process 0, equal to
the one-process run; an interrupted run resumes after its last finished AutoAttack stage (also
when the hosts share no disk: process 0 sends its state); a failure on one process stops all.

The model is ``tests.distributed.workers.evaluate_model:mlp`` (a 64-32-10 MLP) on 24 ``digits``
test images, APGD-CE then APGD-T with 3 steps: flags, counts and accuracies are compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from advjax import cli
from tests.distributed.launch import ProcessesFailed, run_processes

WORKER = "tests/distributed/workers/evaluate_cli.py"
MODEL = "tests.distributed.workers.evaluate_model:mlp"
ARGS = ["--data", "digits", "--n", "24", "--eps", "0.035", "--version", "custom",
        "--attacks", "apgd-ce,apgd-t", "--steps", "3", "--n-targets", "2", "--batch-size", "8",
        "--no-progress"]
TIMINGS = ("wall_time_s", "stages", "seconds", "compile_seconds")


def _args(out: Path, *extra: str) -> list:
    return [WORKER, MODEL, *ARGS, "--out", out, *extra]


def _record(out: Path) -> dict:
    """The folder's files, the metrics without timings and the run's fingerprint."""
    metrics = json.loads((out / "metrics.json").read_text())
    for k in TIMINGS:
        metrics.pop(k)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return dict(metrics=metrics, files=files,
                fingerprint=json.loads((out / "config.json").read_text())["fingerprint"])


def _log(path: Path) -> list[str]:
    return sorted(path.read_text().split()) if path.exists() else []


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The one-process run (in this process), and what it found."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert cli.main(["evaluate", MODEL, *ARGS, "--out", str(out)]) == 0
    record = _record(out)
    m = record["metrics"]
    # Worth comparing: some examples broken, some robust, APGD-T attacks fewer than APGD-CE.
    assert 0 < m["robust_accuracy_final"] < m["clean_accuracy"] < 1
    assert 0 < m["attacked"]["apgd-t"] < m["attacked"]["apgd-ce"] < 24
    return record


def test_two_processes_write_one_folder_equal_to_one_process(single, tmp_path):
    out = tmp_path / "multi"
    stdouts = run_processes(_args(out), 2, local_devices=2, timeout=150)
    assert "results written to" in stdouts[0]
    assert f"process 1 of 2 finished; process 0 wrote the results to {out}" in stdouts[1]
    assert "results written to" not in stdouts[1]
    assert _record(out) == single
    # Only process 0 wrote: nothing but the results folder appeared.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi"]


@pytest.mark.parametrize("private_disk", [False, True], ids=["shared-disk", "private-disk"])
def test_interrupted_on_two_processes_resumes_after_the_first_stage(single, tmp_path,
                                                                    private_disk):
    log = tmp_path / "stages.txt"
    env = {"ADVJAX_TEST_STAGE_LOG": str(log), "ADVJAX_TEST_PRIVATE_DISK": str(int(private_disk))}
    out = tmp_path / "run"
    # Ctrl-C on process 0 when APGD-T starts: it saved APGD-CE, and the group stops.
    with pytest.raises(ProcessesFailed, match="process 0 of 2 exited with 130") as err:
        run_processes(_args(out), 2, timeout=150, env={**env, "ADVJAX_TEST_STOP_AT": "apgd-t"})
    assert "interrupted; the same command resumes" in str(err.value)
    assert {"0:apgd-ce", "1:apgd-ce", "0:apgd-t"} <= set(_log(log))
    assert not (out / "metrics.json").exists()
    [state] = (out / "state").glob("*/autoattack_state.npz")
    assert json.loads(str(np.load(state)["meta"]))["done"] == ["apgd-ce"]
    if private_disk:
        private = Path(f"{out}.process1")
        assert not private.exists() or not any(p.is_file() for p in private.rglob("*"))

    log.unlink()
    stdouts = run_processes(_args(out, "--resume"), 2, timeout=150, env=env)
    # Both processes resumed process 0's state: APGD-CE was reused, only APGD-T computed again.
    assert _log(log) == ["0:apgd-t", "1:apgd-t"]
    for text in stdouts:
        assert "evaluate: resumed" in text and "stages ['apgd-ce']; running ['apgd-t']" in text
    assert "stage autoattack   computed" in stdouts[0]
    assert _record(out) == single
    assert state.is_file()


def test_a_bad_argument_on_one_process_stops_every_process(tmp_path):
    out = tmp_path / "run"
    # Process 1 alone gets --eps 0 (appended last, it wins): it refuses it and the group stops.
    # Process 1 exits first; process 0, waiting for it in a collective, may notice first (gloo:
    # connection closed) and exit too: either way the group stops with process 1's message.
    with pytest.raises(ProcessesFailed, match="(?s)process [01] of 2 exited with [12].*"
                       "error on process 1 of 2: --eps must be a positive"):
        run_processes(_args(out), 2, timeout=150, env={"ADVJAX_TEST_ARGS_1": "--eps 0"})
    assert not (out / "metrics.json").exists()


def test_a_failing_process_stops_every_process(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ProcessesFailed, match="(?s)process [01] of 2 exited with [12].*"
                       "error on process 1 of 2: RuntimeError: process 1 failed on purpose"):
        run_processes(_args(out), 2, timeout=150, env={"ADVJAX_TEST_FAIL_ON": "1"})
    assert not (out / "metrics.json").exists()

