"""Data-parallel ``advjax.train.fit`` with real processes: P processes x D devices each.

Every run trains the same config (PGD adversarial training of a small BatchNorm MLP on 190 digits,
batch 32, 2 epochs = 10 steps, Adam) and must end with the parameters of the one-process,
one-device run up to float reduction order. Tolerance ``ATOL = 1e-4`` (absolute, on parameters of
magnitude <= ~1.1): the only difference between the runs is the order of the float32 sums of the
gradient and BatchNorm all-reduces (relative ~1e-7 per step, measured max |Δ| ~4e-7 after 10
steps); Adam's m/√v normalisation and PGD's sign steps can amplify a rounding difference, so the
tolerance leaves ~300x headroom, while a wrong batch order, per-device batch statistics or an
un-averaged gradient change the parameters by ~1e-2 or more.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.distributed.launch import ProcessesFailed, run_processes

WORKER = "tests/distributed/workers/train_fit.py"
HLO_WORKER = "tests/distributed/workers/train_hlo.py"
ATOL = 1e-4
STEPS = 10  # 2 epochs of 190 // 32 steps


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict[str, str]:
    """A compilation cache shared by this module's runs (a resumed run reuses the program)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax-cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def train(out: Path, p: int, d: int, env: dict[str, str], *, kind: str = "pgd",
          layout: str = "global", ckpt: str | os.PathLike = "-", die_at: int = -1) -> dict:
    """Runs the worker on P processes x D devices; checks that every process ends the same."""
    run_processes([WORKER, out, kind, layout, ckpt, die_at], p, local_devices=d, timeout=240,
                  env=env)
    results = [dict(np.load(f"{out}.{i}.npz")) for i in range(p)]
    for i, other in enumerate(results[1:], 1):
        for k, v in results[0].items():
            np.testing.assert_array_equal(other[k], v, err_msg=f"process {i} differs in {k}")
    return results[0]


def max_param_diff(a: dict, b: dict) -> float:
    keys = [k for k in a if k.startswith("arr_")] + ["batch_stats"]
    assert keys and set(keys) <= set(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_env) -> dict:
    """The one-process, one-device run."""
    res = train(tmp_path_factory.mktemp("ref") / "run", 1, 1, cache_env)
    assert int(res["step"]) == STEPS
    return res


def check_equal_to_reference(res: dict, reference: dict, label: str) -> None:
    diff = max_param_diff(res, reference)
    print(f"{label}: max |param difference| vs 1x1 = {diff:.3g}")
    assert int(res["step"]) == STEPS
    assert diff <= ATOL, f"{label}: parameters differ from the one-device run by {diff:.3g}"
    np.testing.assert_allclose(res["loss"], reference["loss"], rtol=1e-5)
    # Held-out accuracy over 360 digits: at most one example may flip on a near-tie.
    np.testing.assert_allclose(res["eval_accuracy"], reference["eval_accuracy"], atol=1.01 / 360)


@pytest.mark.parametrize("p,d,kind", [
    (1, 8, "pgd"),
    (2, 4, "pgd"),
    pytest.param(4, 2, "pgd", marks=pytest.mark.slow),
    # Parameters and Adam moments split over the 8 devices (fsdp_sharding): same result.
    pytest.param(2, 4, "pgd-fsdp", marks=pytest.mark.slow),
])
def test_data_parallel_fit_equals_one_device(p, d, kind, tmp_path, reference, cache_env):
    res = train(tmp_path / "run", p, d, cache_env, kind=kind)
    check_equal_to_reference(res, reference, f"{kind} {p}x{d} global")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["woods", "pool"])
def test_woods_and_pool_training_on_two_processes_equal_one_device(kind, tmp_path, cache_env):
    """Woods Algorithm 1 adversarial training (half-half) + the Lipschitz regulariser with adaptive
    ψ (double backprop, global BatchNorm statistics), and Szegedy's pool (attacks on random rows
    of the sharded batch, a replicated pool): 2x2 equals 1x1 (measured ~1e-6)."""
    ref = train(tmp_path / "ref", 1, 1, cache_env, kind=kind)
    res = train(tmp_path / "run", 2, 2, cache_env, kind=kind)
    check_equal_to_reference(res, ref, f"{kind} 2x2 global")


def test_checkpoint_restart_on_two_processes(tmp_path, reference, cache_env):
    """2x4, each process passing only its 95 rows of the data (``data_layout="local"``; 24 rows per
    device, so each process pads one): an uninterrupted run with checkpoints equals the one-device
    run; a run whose process 1 dies after step 9 (checkpoints every 4 steps and at the end of
    epoch 1 = step 5; the last two kept: 5 and 8, mid-epoch 2), restarted with the same
    arguments, ends with the uninterrupted run's state and history, bit for bit."""
    full = train(tmp_path / "full", 2, 4, cache_env, layout="local", ckpt=tmp_path / "ckpt-full")
    check_equal_to_reference(full, reference, "2x4 local")
    ckpt = tmp_path / "ckpt"
    with pytest.raises(ProcessesFailed, match="process 1 of 2 exited with 7"):
        train(tmp_path / "killed", 2, 4, cache_env, layout="local", ckpt=ckpt, die_at=9)
    assert sorted(int(c.name) for c in ckpt.iterdir() if c.name.isdigit()) == [5, 8]
    resumed = train(tmp_path / "resumed", 2, 4, cache_env, layout="local", ckpt=ckpt)
    for k, v in full.items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)
    assert (ckpt / "metrics.json").exists()  # written by process 0
    assert sorted(int(c.name) for c in ckpt.iterdir() if c.name.isdigit())[-1] == STEPS


def test_processes_with_different_global_data_are_refused(tmp_path, cache_env):
    with pytest.raises(ProcessesFailed, match="(?s)`data`: with data_layout='global'"):
        train(tmp_path / "bad", 2, 1, cache_env, layout="mismatch")


def test_compiled_step_collectives_do_not_grow_with_devices(tmp_path):
    out = tmp_path / "hlo.npz"
    run_processes([HLO_WORKER, out], 1, local_devices=8, timeout=240)
    res = np.load(out)
    names = [str(n) for n in res["collectives"]]
    for config, ds in (("plain", (2, 4, 8)), ("pgd", (2, 8))):
        table = {d: dict(zip(names, res[f"{config}_{d}"].tolist(), strict=True)) for d in ds}
        print(config, table)
        assert table[ds[0]]["all-reduce"] >= 1, "no gradient all-reduce in the compiled step"
        for d in ds[1:]:
            assert table[d] == table[ds[0]], f"{config}: collectives grow with D: {table}"
        # Replicated parameters, sharded batch: only all-reduces (gradients, batch statistics).
        assert all(table[d][n] == 0 for d in ds for n in names if n != "all-reduce"), table
    # fit's default mesh on 8 devices: all 8 for a batch of 32, else the most the batch divides.
    assert res["default_mesh"].tolist() == [8, 6, 7]
