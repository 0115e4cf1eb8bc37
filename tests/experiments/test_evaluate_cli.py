"""``advjax evaluate``: results folder, reuse, refusals, argument checks, the three model forms."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import cli
from advjax import data as data_lib
from advjax.attacks import evaluate
from tests.conftest import require_data

MODULE = "tests.experiments.test_evaluate_cli"
# A quick custom evaluation: two APGD stages of a few steps (the CLI passes them on unchanged).
QUICK = ["--version", "custom", "--attacks", "apgd-ce,apgd-t", "--steps", "3", "--n-targets", "2",
         "--no-progress"]


def linear_digits():
    """A least-squares linear classifier of the offline digits (8x8x1): ``logits_fn`` (10,)."""
    ds = data_lib.load("digits", "train")
    x = ds.images.reshape(len(ds.labels), -1)
    a = np.c_[x, np.ones(len(x))]
    w, *_ = np.linalg.lstsq(a, np.eye(10)[ds.labels], rcond=None)
    w = jnp.asarray(w, jnp.float32)
    return lambda img: jnp.r_[img.reshape(-1), 1.0] @ w


def not_a_model():
    return 3


def _run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished module:function run on 12 digits (shared by the folder tests)."""
    out = tmp_path_factory.mktemp("ev") / "linear"
    argv = ["evaluate", f"{MODULE}:linear_digits", "--data", "digits", "--n", "12", "--eps",
            "0.05", "--seed", "3", "--out", str(out), *QUICK]
    code = cli.main(argv)
    assert code == 0
    return out, argv


def test_module_function_matches_evaluate_called_directly(finished):
    out, _ = finished
    metrics = json.loads((out / "metrics.json").read_text())
    ds = data_lib.load("digits", "test", limit=12)
    # The peer: advjax.attacks.evaluate on the same model, examples, budget, key and stages.
    # At eps 0.05 the 12 examples are a mix (10 correct, 1 robust) and APGD's random start makes
    # the adversarial points depend on the key: equal points mean the same seed reached it.
    ev = evaluate(linear_digits(), ds.images, ds.labels, eps=0.05, key=jax.random.key(3),
                  version="standard", attacks=("apgd-ce", "apgd-t"), steps=3, n_targets=2)
    record = json.loads((out / "config.json").read_text())
    saved = pickle.loads((out / "state" / record["fingerprint"] / "stages" /
                          "autoattack.pkl").read_bytes())
    np.testing.assert_array_equal(saved["x_adv"], ev.x_adv)
    assert 0 < ev.robust_accuracy["apgd-t"] < ev.clean_accuracy < 1
    assert metrics["clean_accuracy"] == ev.clean_accuracy
    assert metrics["robust_accuracy"] == pytest.approx(ev.robust_accuracy, abs=0)
    assert metrics["per_example"]["broken_by"] == ev.broken_by.tolist()
    assert metrics["per_example"]["label"] == ds.labels.tolist()
    # Clean accuracy from the weights themselves (independent of the attack code).
    pred = np.argmax(np.stack([np.asarray(linear_digits()(x)) for x in ds.images]), axis=1)
    assert metrics["clean_accuracy"] == np.mean(pred == ds.labels)


def test_results_folder_content(finished):
    out, argv = finished
    record = json.loads((out / "config.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "report.md",
                                                    "state", "versions.json"]
    assert record["command"].startswith("advjax evaluate tests.experiments")
    assert record["config"]["n"] == 12 and record["config"]["eps"] == 0.05
    assert record["config"]["attacks"] == ["apgd-ce", "apgd-t"]
    assert set(record["inputs"]) == {"data:digits", "file:test_evaluate_cli.py"}
    state = out / "state" / record["fingerprint"]
    assert (state / "stages" / "autoattack.pkl").is_file() and (state / "run.json").is_file()
    report = (out / "report.md").read_text()
    assert "robust after apgd-t" in report and record["fingerprint"] in report


def test_same_command_reuses(finished, capsys):
    out, argv = finished
    before = json.loads((out / "metrics.json").read_text())
    code, printed, _ = _run(argv, capsys)
    assert code == 0
    assert "stage autoattack   reused" in printed
    after = json.loads((out / "metrics.json").read_text())
    for key in ("clean_accuracy", "robust_accuracy", "per_example"):
        assert after[key] == before[key]


def test_other_config_in_same_folder_is_refused(finished, capsys):
    out, argv = finished
    before = _listing(out)
    changed = [a if a != "0.05" else "0.2" for a in argv]
    code, _, err = _run(changed, capsys)
    assert code == 2 and "config.eps: 0.05 -> 0.2" in err
    assert _listing(out) == before


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "--n must be a positive integer"),
    (["--eps", "-1"], "--eps must be a positive"),
    (["--eps", "x/2"], "fraction such as 8/255"),
    (["--version", "best"], "--version must be one of"),
    (["--version", "standard", "--attacks", "apgd-ce"], "--attacks is for --version custom"),
    (["--attacks", "apgd-ce,pgd"], "attacks"),
    (["--data", "digits:validation"], "split"),
    (["--n", "100000"], "has only"),
    (["--checkpoint", "model.pt"], "--checkpoint is for RobustBench models"),
])
def test_bad_arguments_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    base = ["evaluate", f"{MODULE}:linear_digits", "--data", "digits", "--n", "4", "--eps", "0.1",
            "--out", str(out), *QUICK]
    code, _, err = _run(base + extra, capsys)
    assert code == 2 and message in err
    assert not out.exists()


@pytest.mark.parametrize("model, extra, message", [
    ("Carmon2019Unlabled", ["--checkpoint", "x.pt"], "Did you mean 'Carmon2019Unlabeled'"),
    ("Carmon2019Unlabeled", [], "needs its checkpoint file"),
    ("Carmon2019Unlabeled", ["--checkpoint", "absent.pt"], "not found"),
    ("Chen2020Adversarial", ["--checkpoint", "a", "--checkpoint", "b", "--checkpoint", "c"],
     "Chen2020AdversarialNet"),
    (f"{MODULE}:absent", [], "has no function 'absent'"),
    (f"{MODULE}:not_a_model", [], "must return a per-example logits_fn"),
    ("no_such_package.mod:fn", [], "cannot import"),
])
def test_bad_models_write_nothing(tmp_path, capsys, model, extra, message):
    out = tmp_path / "never"
    code, _, err = _run(["evaluate", model, *extra, "--data", "digits", "--n", "4", "--eps", "0.1",
                         "--out", str(out), *QUICK], capsys)
    assert code == 2 and message in err
    assert not out.exists()


def test_model_data_mismatch_is_refused(tmp_path, capsys):
    require_data("mnist-test")
    out = tmp_path / "never"
    code, _, err = _run(["evaluate", f"{MODULE}:linear_digits", "--data", "mnist-test", "--n", "4",
                         "--eps", "0.1", "--out", str(out), *QUICK], capsys)
    assert code == 2 and "does not accept the examples of mnist-test" in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("model, folder", [
    ("advertorch-lenet5-advtrained", "advertorch-lenet5"),
    ("woods2019-resnet44-standard", "woods2019-resnet44"),
])
def test_zoo_checkpoints_end_to_end(tmp_path, capsys, model, folder):
    require_data(folder)
    out = tmp_path / model
    argv = ["evaluate", model, "--n", "4", "--eps", "8/255", "--out", str(out), "--version",
            "custom", "--attacks", "apgd-ce", "--steps", "2", "--no-progress"]
    code, printed, _ = _run(argv, capsys)
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    # Clean accuracy from the zoo loader and the model itself, outside the CLI.
    from advjax import models

    root = require_data(folder)
    if folder == "advertorch-lenet5":
        module, variables = models.load_lenet5(root / "lenet5_mnist.npz", "advtrained")
        ds = data_lib.load("mnist_local", "all", limit=4)
        logits = module.apply(variables, ds.images)
        assert metrics["published"]["clean"] == 0.9864
    else:
        module, variables = models.load_woods2019(root / "resnet44-standard.pt")
        ds = data_lib.load("cifar10_head", "all", limit=4)
        logits = module.apply(variables, ds.images, train=False)
        assert metrics["published"]["clean"] == 0.9384
    assert metrics["clean_accuracy"] == np.mean(np.argmax(logits, 1) == ds.labels)
    assert metrics["robust_accuracy"]["apgd-ce"] <= metrics["clean_accuracy"]
    assert "| clean |" in printed and "published" in printed


def test_registry_model_from_checkpoint_file(tmp_path, capsys, monkeypatch):
    require_data("cifar10-test-head")
    from advjax.models import robustbench_registry as reg
    from tests.models.test_robustbench_registry import FIXTURES, tiny_registry

    tiny_registry(monkeypatch)
    ckpt = FIXTURES / "wrn-10-1.pt"
    out = tmp_path / "carmon"
    code, printed, err = _run(["evaluate", "Carmon2019Unlabeled", "--checkpoint", str(ckpt),
                               "--n", "4", "--out", str(out), "--version", "custom",
                               "--attacks", "apgd-ce", "--steps", "2", "--no-progress"], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "config.json").read_text())
    # The published numbers and budget come from the registry; the file is fingerprinted.
    assert metrics["eps"] == 8 / 255 and metrics["published"]["clean"] == 0.8969
    assert metrics["published"]["robust"] == 0.5953
    assert record["inputs"]["file:wrn-10-1.pt"] == reg.load_robustbench(
        "Carmon2019Unlabeled", path=ckpt)[1]["sha256"][0]
    logits_fn = reg.load_robustbench("Carmon2019Unlabeled", path=ckpt)[0]
    ds = data_lib.load("cifar10_head", "all", limit=4)
    pred = np.array([int(np.argmax(logits_fn(jnp.asarray(x)))) for x in ds.images])
    assert metrics["clean_accuracy"] == np.mean(pred == ds.labels)
    assert "59.53 %" in printed and "89.69 %" in printed


def masked_linear_digits():
    """:func:`linear_digits` behind a zero input gradient (the same values)."""
    fn = linear_digits()
    return lambda img: fn(jax.lax.stop_gradient(img))


def test_adaptive_version_with_a_surrogate_records_what_it_broke(tmp_path, capsys):
    out = tmp_path / "masked"
    argv = ["evaluate", f"{MODULE}:masked_linear_digits", "--surrogate",
            f"{MODULE}:linear_digits", "--version", "adaptive", "--data", "digits", "--n", "12",
            "--eps", "0.05", "--steps", "5", "--queries", "20", "--n-targets", "2",
            "--no-progress", "--out", str(out)]
    code, printed, _ = _run(argv, capsys)
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["surrogate"] == f"{MODULE}:linear_digits"
    assert record["config"]["attacks"][-2:] == ["transfer", "square-restarts"]
    beyond = metrics["broken_beyond_autoattack"]
    # The peer: the same evaluation called directly, stage by stage.
    ds = data_lib.load("digits", "test", limit=12)
    ev = evaluate(masked_linear_digits(), ds.images, ds.labels, eps=0.05, key=jax.random.key(0),
                  version="adaptive", surrogate=linear_digits(), steps=5, queries=20,
                  n_targets=2)
    assert beyond == ev.broken_beyond_autoattack() and beyond["transfer"] > 0
    assert metrics["robust_accuracy"] == pytest.approx(ev.robust_accuracy, abs=0)
    assert "Beyond AutoAttack" in (out / "report.md").read_text()


def test_a_surrogate_without_a_stage_that_attacks_it_is_refused(tmp_path, capsys):
    argv = ["evaluate", f"{MODULE}:linear_digits", "--surrogate", f"{MODULE}:linear_digits",
            "--data", "digits", "--n", "4", "--eps", "0.05", "--out", str(tmp_path / "x")]
    code, printed, err = _run(argv, capsys)
    assert code == 2 and "--surrogate is attacked by the transfer stage" in printed + err
