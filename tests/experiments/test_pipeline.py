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


def test_cli_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


def test_unknown_experiment_config_and_field_are_clear_errors(capsys, tmp_path):
    assert cli.main(["run", "no_such_study", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'no_such_study'" in capsys.readouterr().err
    assert cli.main(["run", "quickstart", "--config", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown config 'huge'" in capsys.readouterr().err
    assert cli.main(["run", "quickstart", "--set", "nope=1", "--out", str(tmp_path)]) == 2
    assert "unknown config field 'nope'" in capsys.readouterr().err


def test_override_parsing_is_json():
    assert cli._parse_override("epochs=3") == ("epochs", 3)
    assert cli._parse_override("pgd_eps=[0.5, 1.0]") == ("pgd_eps", [0.5, 1.0])
    assert cli._parse_override("dataset=digits") == ("dataset", "digits")


def test_markdown_table_formats_numbers():
    table = pipeline.markdown_table(["a", "b"], [["x", 0.123456], ["y", 1e-6]])
    assert table.splitlines()[0] == "| a | b |"
    assert "0.1235" in table and "1.000e-06" in table


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
    report = (out / "report.md").read_text()
    assert "| model | train error | test error |" in report
