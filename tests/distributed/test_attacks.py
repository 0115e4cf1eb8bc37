"""``shard_attack`` and ``stream`` under real processes (jax.distributed, CPU devices, gloo).

Every P x D layout (1x1, 1x8, 2x4, 4x2) must give, per example, the single-device
``jax.jit(jax.vmap(attack))`` result with ``key = fold_in(KEY, global index)``, for the whole set
passed on every process (``data_layout="global"``) and for each process's own rows
(``"local"``), with N = 13 (not a multiple of P·D) and uneven row counts, one process with none.

Tolerance: the flags are compared exactly; ``x_adv`` to 1e-6 because a device runs
``vmap(attack)`` on its own rows (shard_map), and the rows per device differ between layouts (13
rows as 1 x 13, 8 x 2, ...): XLA:CPU may order a batched matmul's sums differently for another
batch size. For the same per-device rows the results are bitwise equal.
"""

import numpy as np
import pytest

from tests.distributed.launch import run_processes
from tests.distributed.workers import attack_worker

WORKER = "tests/distributed/workers/attack_worker.py"
N = 13
COUNTS = {1: [13], 2: [6, 7], 4: [3, 0, 5, 5]}


@pytest.fixture(scope="module")
def reference():
    import jax

    logits_fn, xs, labels, eps = attack_worker.problem(N)
    key = jax.random.key(attack_worker.KEY_SEED)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jax.numpy.arange(N))
    r = jax.jit(jax.vmap(attack_worker.make_attack(logits_fn)))(xs, labels, key=keys, eps=eps)
    return np.asarray(r.x_adv), np.asarray(r.success)


@pytest.mark.parametrize("p,d", [(1, 1), (1, 8), (2, 4), (4, 2)])
def test_per_example_results_equal_one_device(p, d, reference, tmp_path):
    ref_x, ref_s = reference
    counts = COUNTS[p]
    run_processes([WORKER, tmp_path / "out", N, ",".join(map(str, counts))], p,
                  local_devices=d, timeout=150)
    starts = np.concatenate([[0], np.cumsum(counts)])
    moved = False
    for i in range(p):
        got = np.load(tmp_path / f"out.{i}.npz")
        rows = slice(starts[i], starts[i + 1])
        for name in ("shard_global", "stream_global", "shard_gathered"):   # all N rows
            np.testing.assert_array_equal(got[f"{name}_s"], ref_s, err_msg=name)
            np.testing.assert_allclose(got[f"{name}_x"], ref_x, rtol=0, atol=1e-6,
                                       err_msg=name)
        for name in ("shard_local",):                                       # own rows only
            assert got[f"{name}_x"].shape == (counts[i], 4, 4, 1), name
            np.testing.assert_array_equal(got[f"{name}_s"], ref_s[rows], err_msg=name)
            np.testing.assert_allclose(got[f"{name}_x"], ref_x[rows], rtol=0, atol=1e-6,
                                       err_msg=name)
        assert bool(got["mismatch_refused"])
        assert int(got["collectives"]) == 0, "a sharded attack needs no cross-device collective"
        moved |= bool(np.any(got["shard_global_x"] != 0))
    assert moved and ref_s.any() and not ref_s.all()   # the attack really did something
