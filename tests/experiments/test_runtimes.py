"""Each study's quick runtime is recorded once (runtimes.json, with machine, load and date);
``advjax list`` prints it and experiments/README.md's table is generated from it."""

from __future__ import annotations

import json
from pathlib import Path

from advjax import cli, pipeline
from advjax.studies import _runtimes

ROOT = Path(__file__).resolve().parents[2]


def test_every_study_has_one_measured_runtime():
    records = _runtimes.load_runtimes()
    assert set(records) == set(pipeline.list_experiments())
    for name, r in records.items():
        assert r.seconds > 0 and r.config == "quick", name
        assert "core" in r.machine and len(r.load) == 2 and all(v >= 0 for v in r.load), name
        assert len(r.date) == len("2026-12-07 12:40"), name
    # No study keeps a second, hand-typed runtime.
    for name in pipeline.list_experiments():
        assert not hasattr(pipeline.load_experiment(name), "QUICK_RUNTIME"), name


def test_advjax_list_prints_the_record(capsys):
    assert cli.main(["list"]) == 0
    printed = capsys.readouterr().out
    for name, r in _runtimes.load_runtimes().items():
        assert f"quick runtime: {r.describe()}" in printed, name


def test_readme_table_is_generated_from_the_record():
    text = (ROOT / "experiments" / "README.md").read_text()
    assert _runtimes.readme_with_table(text, pipeline.list_experiments()) == text, (
        "experiments/README.md's runtime table differs from advjax/studies/runtimes.json; "
        "run `python -m advjax.studies._runtimes readme`")
    assert text.count(_runtimes.README_BEGIN) == 1


def test_record_round_trip_and_describe(tmp_path):
    r = _runtimes.Runtime(seconds=64.0, machine="2-core X", load=(12.04, 9.5),
                          date="2026-12-07 12:42")
    path = tmp_path / "runtimes.json"
    _runtimes.save({"quickstart": r}, path)
    assert json.loads(path.read_text())["quickstart"]["load"] == [12.04, 9.5]
    assert _runtimes.load_runtimes(path) == {"quickstart": r}
    assert r.describe() == "64 s (load 12.0, 2-core X, 2026-12-07)"
    assert _runtimes.load_runtimes(tmp_path / "absent.json") == {}
