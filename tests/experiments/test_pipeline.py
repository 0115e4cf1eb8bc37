"""The experiment pipeline and the ``advjax`` command: configs, run folders, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from advjax import cli, pipeline

EXPECTED = {"quickstart", "szegedy_table1", "szegedy_transfer", "szegedy_adversarial_training",
            "szegedy_units", "szegedy_spectral", "woods_ara", "woods_explanations"}


def test_every_study_is_listed_with_quick_and_paper_configs():
    names = set(pipeline.list_experiments())
    assert EXPECTED <= names
    for name in EXPECTED:
        module = pipeline.load_experiment(name)
        assert {"quick", "paper"} <= set(module.CONFIGS)
        for config in module.CONFIGS.values():
            assert dataclasses.is_dataclass(config)
            with pytest.raises(dataclasses.FrozenInstanceError):
                config.seed = 1  # configs are frozen data


def test_cli_list_shows_data_and_runtime(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in EXPECTED:
        i, line = next((i, line) for i, line in enumerate(lines) if line.startswith(name + " "))
        assert "ADVJAX_DATA_DIR" in line or "offline" in line, line
        runtime = next(line for line in lines[i + 1:] if "quick runtime:" in line)
        assert "not recorded" not in runtime and " s (load " in runtime, runtime
    assert "digits (offline, embedded)" in out


def test_every_config_field_is_documented(capsys):
    for name in EXPECTED:
        module = pipeline.load_experiment(name)
        for config in module.CONFIGS.values():
            fields = pipeline.config_fields(config)
            undocumented = [f.name for f in fields if not f.meaning]
            assert not undocumented, f"{name}: {undocumented}"
    assert cli.main(["show", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert "pgd_eps" in out and "tuple[float, ...]" in out and "L2 radii" in out


@pytest.mark.parametrize("setting, message", [
    ("learning_rate=abc", "field 'learning_rate' expects a number"),
    ("seed=1.5", "field 'seed' expects an integer"),
    ("pgd_eps=0.5", "field 'pgd_eps' expects a list of float"),
    ("pgd_eps=[0.5, \"x\"]", "field 'pgd_eps[1]' expects a number"),
    ("epochs=true", "field 'epochs' expects an integer"),
])
def test_set_values_are_type_checked_before_anything_runs(setting, message, capsys, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", "quickstart", "--out", str(out), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_set_values_parse_to_the_field_types():
    module = pipeline.load_experiment("quickstart")
    config = pipeline.resolve_config(module, "quick", {
        "learning_rate": "1", "seed": "7", "pgd_eps": "[0.5, 1]", "dataset": "digits",
        "data_dir": "null"}, raw=True)
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.seed == 7 and config.pgd_eps == (0.5, 1.0) and config.data_dir is None


def test_unknown_experiment_config_and_field_are_clear_errors(capsys, tmp_path):
    assert cli.main(["run", "no_such_study", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'no_such_study'" in capsys.readouterr().err
    assert cli.main(["run", "quickstart", "--config", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown config 'huge'" in capsys.readouterr().err
    assert cli.main(["run", "quickstart", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "unknown config field 'nope'" in capsys.readouterr().err


def test_override_parsing_keeps_the_text_for_the_field_type():
    assert cli._parse_override("epochs=3") == ("epochs", "3")
    assert cli._parse_override("pgd_eps=[0.5, 1.0]") == ("pgd_eps", "[0.5, 1.0]")


def test_markdown_table_formats_numbers():
    table = pipeline.markdown_table(["a", "b"], [["x", 0.123456], ["y", 1e-6]])
    assert table.splitlines()[0] == "| a | b |"
    assert "0.1235" in table and "1.000e-06" in table


@pytest.mark.slow
def test_quickstart_writes_a_complete_run_folder(tmp_path):
    out, metrics = pipeline.execute("quickstart", "quick", tmp_path / "run", {
        "epochs": 25, "attack_examples": 24, "lbfgs_search_steps": 3, "lbfgs_iterations": 20,
        "pgd_eps": [0.0, 1.0, 3.0]})
    for name in ("config.json", "versions.json", "metrics.json", "report.md"):
        assert (out / name).is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 25
    # Real properties of the run: the net learned, attacks behave, certificates hold.
    assert metrics["clean_accuracy"] > 0.85
    acc = metrics["pgd_l2_accuracy"]
    assert acc[0] == pytest.approx(metrics["clean_accuracy"], abs=0.1)
    assert acc[0] >= acc[1] >= acc[2]
    assert metrics["lbfgs_success_rate"] > 0.9
    assert metrics["certificate_violations"] == 0
    assert metrics["lipschitz_bound"] > 0
    ci = metrics["clean_accuracy_ci"]
    assert ci["ci_low"] < metrics["clean_accuracy"] < ci["ci_high"]
    assert {c["verdict"] for c in metrics["claims"]} <= {"reproduced", "inconclusive"}
    report = (out / "report.md").read_text()
    assert "| model | train error | test error |" in report
    assert "Command: `advjax run quickstart --config quick" in report
    assert "--set epochs=25" in report


def test_studies_are_found_beside_a_users_own_experiments_package(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text('"""A user project\'s studies."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "experiments", raising=False)
    assert importlib.import_module("experiments").__file__.startswith(str(tmp_path))
    assert EXPECTED <= set(pipeline.list_experiments())
    assert pipeline.load_experiment("quickstart").__name__ == "advjax.studies.quickstart"


def test_no_top_level_experiments_package_is_installed():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")

    from setuptools import find_packages

    root = Path(__file__).resolve().parents[2]
    find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    packages = find_packages(str(root), include=find["include"])
    assert "advjax.studies" in packages
    assert not [p for p in packages if not p.startswith("advjax")], packages


def test_study_scripts_run_on_their_own(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "experiments" / "szegedy_units.py"),
                           "--out", str(tmp_path / "u"), "--set", "top_k=many"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=120)
    assert proc.returncode == 2
    assert "field 'top_k' expects an integer" in proc.stderr
    assert not (tmp_path / "u").exists()


def test_paper_config_without_tfds_data_says_how_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "run"
    code = cli.main(["run", "quickstart", "--config", "paper", "--out", str(out),
                     "--set", f"data_dir={tmp_path / 'tfds'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'mnist' is not prepared" in err and "--download" in err
    assert not out.exists()
