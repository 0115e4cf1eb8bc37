"""``attacks.evaluate`` under real processes: interrupted under 2 processes x 2 devices (whole set
on every process), resumed under 4 processes x 1 device (each its own rows, one with none), equal
per example to one process on one device.

Tolerance: flags and counts exactly; ``x_adv`` to 1e-6 (each device attacks its own rows, whose
number differs between layouts, so a batched matmul may sum in another order; see
``test_attacks.py``).
"""

import json

import numpy as np
import pytest

from tests.distributed.launch import run_processes
from tests.distributed.workers import evaluate_worker as w

WORKER = "tests/distributed/workers/evaluate_worker.py"
N = 12


@pytest.fixture(scope="module")
def reference():
    import jax

    from advjax.attacks import evaluate

    logits_fn, xs, labels = w.problem(N)
    return evaluate(logits_fn, xs, labels, eps=w.EPS, key=jax.random.key(w.KEY_SEED),
                    **w.SETTINGS)


def test_interrupted_under_two_processes_resumed_under_four(reference, tmp_path):
    state = tmp_path / "state.npz"
    run_processes([WORKER, tmp_path / "a", state, "global", str(N), "1"], 2,
                  local_devices=2, timeout=150)
    assert all(np.load(tmp_path / f"a.{i}.npz")["interrupted"] for i in range(2))
    # One file, written by process 0 after the clean pass and the first stage, atomically.
    assert sorted(p.name for p in tmp_path.iterdir() if "state" in p.name) == ["state.npz"]
    meta = json.loads(str(np.load(state)["meta"]))
    assert meta["done"] == ["apgd-ce"]
    np.testing.assert_array_equal(np.load(state)["broken_by"],
                                  np.where(reference.broken_by == 0, 0, -1))

    counts = [5, 0, 4, 3]
    run_processes([WORKER, tmp_path / "b", state, "local", ",".join(map(str, counts)), "0"], 4,
                  local_devices=1, timeout=150)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for i in range(4):
        got = np.load(tmp_path / f"b.{i}.npz")
        rows = slice(starts[i], starts[i + 1])
        assert got["broken_by"].shape == (counts[i],)        # its own rows only
        np.testing.assert_array_equal(got["broken_by"], reference.broken_by[rows])
        np.testing.assert_array_equal(got["robust"], reference.robust[rows])
        np.testing.assert_allclose(got["x_adv"], reference.x_adv[rows], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["robust_accuracy"],
                                   [reference.robust_accuracy[s] for s in reference.stages])
        np.testing.assert_array_equal(got["attacked"],
                                      [reference.attacked[s] for s in reference.stages])
        # model passes per example (the first stage's from the state written under 2
        # processes) and the totals over the whole set, as on one process
        np.testing.assert_array_equal(got["passes"], reference.passes[rows])
        np.testing.assert_array_equal(got["forward_passes"],
                                      [reference.forward_passes[s] for s in reference.stages])
        np.testing.assert_array_equal(got["backward_passes"],
                                      [reference.backward_passes[s] for s in reference.stages])
    assert (reference.broken_by == 0).any() and reference.robust.any()
    assert 0 < reference.attacked["apgd-t"] < reference.attacked["apgd-ce"] < N
    assert json.loads(str(np.load(state)["meta"]))["done"] == ["apgd-ce", "apgd-t"]
