"""The ``advjax run`` boundary: an invalid ``--set`` writes nothing; a finished run resumed
runs nothing and leaves its record byte for byte as it was."""

from __future__ import annotations

import pytest

from advjax import cli, pipeline
from advjax.studies import common
from tests.experiments.test_run_folders import _log, _snapshot


@pytest.mark.parametrize("setting, named", [
    ("n=-3", "'n' = -3: expected a number > 0"),
    ("n=0", "'n' = 0: expected a number > 0"),
    ("scale=[1, -2]", "'scale' = (1.0, -2.0): expected a number >= 0 for every item"),
    ("data=nope", "'data' = 'nope': expected one of ['digits', 'mnist_local']"),
    ("nn=3", "unknown config field 'nn'"),
])
def test_invalid_set_writes_nothing_and_the_next_valid_run_succeeds(toy, tmp_path, capsys,
                                                                      setting, named):
    parent = tmp_path / "results"
    parent.mkdir()
    out = parent / "run"
    assert cli.main(["run", "counter", "--out", str(out), "--set", setting]) == 2
    assert named in capsys.readouterr().err
    assert list(parent.iterdir()) == []                 # not even an empty --out
    assert _log(toy) == []
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=4"]) == 0
    assert (out / "metrics.json").is_file()


def test_invalid_set_leaves_a_finished_run_as_it_was(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "counter", "--out", str(out)]) == 0
    before = _snapshot(out)
    for mode in ([], ["--resume"], ["--overwrite"]):
        assert cli.main(["run", "counter", "--out", str(out), "--set", "n=-3", *mode]) == 2
        assert _snapshot(out) == before
    # No leftover state of the refused config: the same folder takes another valid config.
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=5", "--overwrite"]) == 0
    assert "sum = 10" in capsys.readouterr().out


@pytest.mark.parametrize("quickstart_setting", ["model=FC999", "epochs=-3", "pgd_eps=[1,-1]",
                                                "quantization_step=0"])
def test_invalid_set_of_a_real_study_is_refused_before_its_folder(tmp_path, capsys,
                                                                  quickstart_setting):
    out = tmp_path / "quickstart"
    assert cli.main(["run", "quickstart", "--out", str(out), "--set", quickstart_setting]) == 2
    key = quickstart_setting.split("=")[0]
    err = capsys.readouterr().err
    assert f"config field {key!r}" in err and "expected" in err
    assert not out.exists()


def test_model_error_names_the_known_models(capsys, tmp_path):
    cli.main(["run", "quickstart", "--out", str(tmp_path / "q"), "--set", "model=FC999"])
    err = capsys.readouterr().err
    assert "'FC999'" in err and "'FC100-100-10'" in err


@pytest.mark.parametrize("mode", [["--resume"], []], ids=["resume", "same-command"])
def test_finished_run_resumed_runs_nothing_and_keeps_its_record(toy, tmp_path, capsys,
                                                                monkeypatch, mode):
    out = tmp_path / "run"
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=2"]) == 0
    assert _log(toy) == ["first", "second"]
    capsys.readouterr()
    before = _snapshot(out)                              # bytes and mtimes of every file
    from tests.experiments.toy_studies import counter

    def must_not_run(*args, **kwargs):
        raise AssertionError("a stage of a finished run ran again")

    monkeypatch.setattr(counter, "_first", must_not_run)
    monkeypatch.setattr(counter, "_second", must_not_run)
    monkeypatch.setattr(counter, "run", must_not_run)
    assert cli.main(["run", "counter", "--out", str(out), "--set", "n=2", *mode]) == 0
    printed = capsys.readouterr().out
    assert "computed" not in printed
    assert [line.split()[:2] for line in printed.splitlines()[1:3]] == [
        ["first", "reused"], ["second", "reused"]]
    assert "sum = 1" in printed
    assert _snapshot(out) == before
    assert _log(toy) == ["first", "second"]


def test_overwrite_of_the_same_finished_run_recomputes_the_record(toy, tmp_path):
    out = tmp_path / "run"
    pipeline.execute("counter", "quick", out)
    _, m = pipeline.execute("counter", "quick", out, overwrite=True)
    # Stages come from the state folder; the record is written again.
    assert [s["cached"] for s in m["stages"]] == [True, True]
    assert m["figures"] == ["toy.txt"]


def test_check_config_rules():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class C:
        k: int = 1
        xs: tuple[float, ...] = (0.0, 1.0)
        name: str = "a"

    common.check_config(C(), positive=("k",), nonnegative=("xs",), choices={"name": ("a",)})
    for bad, match in [({"k": 0}, "'k' = 0"), ({"xs": (0.0, float("nan"))}, "'xs'"),
                       ({"name": "b"}, r"one of \['a'\] \(unknown: \['b'\]\)")]:
        with pytest.raises(ValueError, match=match):
            common.check_config(dataclasses.replace(C(), **bad), positive=("k",),
                                nonnegative=("xs",), choices={"name": ("a",)})
