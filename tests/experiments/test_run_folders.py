"""Run folders: numbers always belong to their config; refusals and failures change nothing;
stages resume; files honour the umask; Ctrl-C exits 130 with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advjax import cli, pipeline

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.experiments.toy_studies"


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None,
                                          p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _log(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_changed_config_is_refused_naming_the_fields_and_the_folder_is_unchanged(toy, tmp_path):
    out = tmp_path / "run"
    _, m = pipeline.execute("counter", "quick", out)
    assert m["sum"] == 3.0
    before = _snapshot(out)
    with pytest.raises(pipeline.RunFolderError) as err:
        pipeline.execute("counter", "quick", out, {"n": 4, "scale": [2.0]})
    message = str(err.value)
    assert "config.n: 3 -> 4" in message and "config.scale: [1.0] -> [2.0]" in message
    assert "--out" in message and "--overwrite" in message and "--resume" in message
    assert _snapshot(out) == before
    # The CLI says the same and exits 2.
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=4"]) == 2
    assert _snapshot(out) == before


def test_resume_of_another_config_is_refused(toy, tmp_path):
    out = tmp_path / "run"
    pipeline.execute("counter", "quick", out)
    with pytest.raises(pipeline.RunFolderError, match="only continues the same config"):
        pipeline.execute("counter", "quick", out, {"n": 5}, resume=True)
    with pytest.raises(pipeline.RunFolderError, match="no run to resume"):
        pipeline.execute("counter", "quick", tmp_path / "nothing", resume=True)


def test_repeat_reuses_finished_stages_and_overwrite_recomputes(toy, tmp_path):
    out = tmp_path / "run"
    _, first = pipeline.execute("counter", "quick", out)
    assert _log(toy) == ["first", "second"]
    _, again = pipeline.execute("counter", "quick", out, resume=True)
    assert _log(toy) == ["first", "second"]           # nothing recomputed
    assert [s["cached"] for s in again["stages"]] == [True, True]
    assert again["sum"] == first["sum"]
    _, new = pipeline.execute("counter", "quick", out, {"n": 4}, overwrite=True)
    assert _log(toy) == ["first", "second", "first", "second"]
    assert new["sum"] == 6.0
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["n"] == 4 and "--set n=4" in record["command"]
    assert json.loads((out / "metrics.json").read_text())["sum"] == 6.0
    assert [p.name for p in (out / "state").iterdir()] == [record["fingerprint"]]


def test_failed_run_leaves_the_record_as_it_was(toy, tmp_path):
    out = tmp_path / "run"
    pipeline.execute("counter", "quick", out)
    record = {n: (out / n).read_bytes() for n in pipeline.RECORD_FILES}
    with pytest.raises(RuntimeError, match="on purpose"):
        pipeline.execute("counter", "quick", out, {"fail": True}, overwrite=True)
    assert {n: (out / n).read_bytes() for n in pipeline.RECORD_FILES} == record
    assert (out / "figures" / "toy.txt").read_text() == "3.0\n"


def test_missing_data_writes_nothing(toy, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(FileNotFoundError):
        pipeline.execute("counter", "quick", out, {"data": "mnist_local",
                                                   "data_dir": str(tmp_path / "no_data")})
    assert not out.exists()


def test_changed_input_data_is_a_different_run(toy, tmp_path, monkeypatch):
    out = tmp_path / "run"
    pipeline.execute("counter", "quick", out)
    import numpy as np

    from advjax import data as data_lib

    real = data_lib.load

    def shifted(*args, **kwargs):
        ds = real(*args, **kwargs)
        return type(ds)(np.asarray(ds.images) * 0.5, ds.labels)

    monkeypatch.setattr(data_lib, "load", shifted)
    with pytest.raises(pipeline.RunFolderError, match="inputs.dataset:digits"):
        pipeline.execute("counter", "quick", out)


def test_command_with_overrides_is_recorded(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=2",
                     "--set", "scale=[0.5, 2]"]) == 0
    printed = capsys.readouterr().out
    assert "second" in printed and "computed" in printed and "nested.first = [0, 1]" in printed
    record = json.loads((out / "config.json").read_text())
    command = f"advjax run counter --out {out} --set n=2 --set 'scale=[0.5, 2]'"
    assert record["command"] == command
    assert command in (out / "report.md").read_text()
    assert record["config"]["scale"] == [0.5, 2.0]


def test_files_honour_the_umask(toy, tmp_path):
    old = os.umask(0o027)
    try:
        out, _ = pipeline.execute("counter", "quick", tmp_path / "run")
    finally:
        os.umask(old)
    for name in (*pipeline.RECORD_FILES, "figures/toy.txt"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    stage = next((out / "state").glob("*/stages/first.pkl"))
    assert stage.stat().st_mode & 0o777 == 0o640


def _toy_process(out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    code = ("import sys; from advjax import cli, pipeline; "
            f"pipeline.STUDIES_PACKAGE = {TOY!r}; sys.argv[0] = 'advjax'; cli.entry()")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ADVJAX_TOY_LOG": str(tmp_path / "log.txt"),
           "ADVJAX_TOY_MARKER": str(tmp_path / "marker"), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", code, "run", "counter", "--out", str(out),
                             "--set", "pause=60", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "the toy study did not reach its second stage"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_stage_resumes_after_the_finished_ones(tmp_path, sig, monkeypatch):
    out = tmp_path / "run"
    proc = _toy_process(out, tmp_path)
    _wait_for(tmp_path / "marker", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("advjax: interrupted"), stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()          # no record of an unfinished run
    assert _log(tmp_path / "log.txt") == ["first"]
    # The same command (shorter pause) resumes: the first stage is reused, the second computed.
    monkeypatch.setattr(pipeline, "STUDIES_PACKAGE", TOY)
    monkeypatch.setenv("ADVJAX_TOY_LOG", str(tmp_path / "log.txt"))
    with pytest.raises(pipeline.RunFolderError, match="config.pause: 60.0 -> 0.0"):
        pipeline.execute("counter", "quick", out, {"pause": 0.0})
    monkeypatch.setenv("ADVJAX_TOY_MARKER", str(tmp_path / "marker2"))
    monkeypatch.setattr("time.sleep", lambda s: None)
    _, m = pipeline.execute("counter", "quick", out, {"pause": 60.0}, resume=True)
    assert [s["cached"] for s in m["stages"]] == [True, False]
    assert _log(tmp_path / "log.txt") == ["first", "second"]


@pytest.mark.slow
def test_quickstart_interrupted_after_its_attack_resumes_without_redoing_it(tmp_path):
    out = tmp_path / "run"
    settings = ["--set", "epochs=2", "--set", "attack_examples=16", "--set",
                "lbfgs_search_steps=2", "--set", "lbfgs_iterations=10", "--set",
                "pgd_eps=[0.0, 1.0]"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "advjax.cli", "run", "quickstart", "--out",
                             str(out), "--no-progress", *settings], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while not list(out.glob("state/*/stages/lbfgs.pkl")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < 600
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert not (out / "metrics.json").exists()
    overrides = dict(s.split("=", 1) for s in settings[1::2])
    _, m = pipeline.execute("quickstart", "quick", out, overrides, raw=True, resume=True,
                            progress=False)
    stages = {s["name"]: s["cached"] for s in m["stages"]}
    assert stages["lbfgs"] is True
