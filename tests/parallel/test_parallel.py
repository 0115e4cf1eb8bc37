"""Sharded execution equals single-device execution; the batch is really split over devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import parallel

HERE = Path(__file__).parent


def _run_with_devices(script: str, *args: str, devices: int = 8) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(HERE / script), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _step(x, label, *, eps):
    return {"x": jnp.clip(x + eps * (label + 1), 0.0, 1.0), "sum": jnp.sum(x) * eps}


@pytest.mark.slow
def test_sharded_equals_unsharded_on_eight_devices():
    out = _run_with_devices("_sharded_check.py")
    assert out["device_count"] == 8
    for n in (13, 16):          # padded to the device count, and divisible by it
        got = out["by_size"][str(n)]
        assert got["max_abs_diff"] == 0.0, n
        assert got["labels_equal"], n
        assert got["shape"] == [n, 4, 4, 1]
        assert got["stream_max_abs_diff"] == 0.0, n
        assert got["single_key_max_abs_diff"] == 0.0, n
    assert out["num_shards"] == 8 and out["distinct_devices"] == 8
    # n rows not a multiple of 8: split along the batch over the largest device count that
    # divides n (JAX shards an axis only evenly), each row on one device, never replicated.
    for n, devices in (("13", 1), ("12", 6), ("16", 8)):
        got = out["ragged"][n]
        assert got["equal"], n
        assert not got["replicated"] and got["spec"] == "P('batch',)", (n, got)
        assert got["devices"] == devices and got["rows_per_device"] == [int(n) // devices] * devices
    assert out["shard_rows"] == [2]
    # Attacks are independent per example: no cross-device communication in the program.
    assert sum(out["collectives"].values()) == 0, out["collectives"]
    assert sum(out["pgd_collectives"].values()) == 0, out["pgd_collectives"]
    assert out["pgd_diff"] < 1e-5 and out["pgd_success_equal"] and out["pgd_devices"] == 8
    assert out["lbfgs_diff"] < 1e-5
    single = _run_with_devices("_sharded_check.py", devices=1)
    assert single["device_count"] == 1
    np.testing.assert_allclose(out["ara_distortions"], single["ara_distortions"], atol=1e-6)
    assert out["ara"] == pytest.approx(single["ara"], abs=1e-7)
    assert out["bound"] == pytest.approx(single["bound"], rel=1e-6)


def test_stream_equals_vmap_and_pads_last_chunk():
    xs = jax.random.uniform(jax.random.key(0), (11, 3))
    labels = jnp.arange(11) % 2
    eps = jnp.linspace(0, 1, 11)
    ref = jax.vmap(_step)(xs, labels, eps=eps)
    got = parallel.stream(_step, xs, labels, chunk_size=4, eps=eps)
    np.testing.assert_allclose(got["x"], ref["x"], rtol=0, atol=0)
    np.testing.assert_allclose(got["sum"], ref["sum"], rtol=1e-6)
    assert isinstance(got["x"], np.ndarray) and got["x"].shape == (11, 3)


def test_stream_does_not_pad_a_small_set_up_to_the_chunk_size(monkeypatch):
    padded_to = []
    pad = parallel._pad_leading
    monkeypatch.setattr(parallel, "_pad_leading",
                        lambda rows, n, size: (padded_to.append(size), pad(rows, n, size))[1])
    out = parallel.stream(lambda x: 2 * x, jnp.ones((5, 2)), chunk_size=256)
    np.testing.assert_array_equal(out, 2 * np.ones((5, 2)))
    assert padded_to == [5]
    with pytest.raises(ValueError, match="`arrays`"):
        parallel.stream(lambda x: x, jnp.ones((0, 2)))


def test_stream_broadcasts_scalar_and_compiles_once():
    calls = []

    def fn(x, label, *, eps):
        calls.append(1)  # counted at trace time only
        return x * eps

    xs = jnp.ones((10, 2))
    out = parallel.stream(fn, xs, jnp.zeros(10, jnp.int32), chunk_size=3, eps=2.0)
    np.testing.assert_array_equal(out, 2 * np.ones((10, 2)))
    assert len(calls) == 1


def test_shard_attack_single_device_matches_vmap():
    xs = jax.random.uniform(jax.random.key(1), (5, 3))
    labels = jnp.array([0, 1, 0, 1, 1])
    run = parallel.shard_attack(_step)
    got = run(xs, labels, eps=0.25)
    ref = jax.vmap(_step)(xs, labels, eps=jnp.full(5, 0.25))
    np.testing.assert_array_equal(np.asarray(got["x"]), np.asarray(ref["x"]))


def _noisy(x, label, *, key):
    return {"x": x + jax.random.normal(key, x.shape), "label": label}


def test_a_single_key_becomes_fold_in_per_example_whatever_the_chunking():
    xs = jnp.zeros((7, 3))
    labels = jnp.arange(7)
    key = jax.random.key(3)
    ref = jax.vmap(_noisy)(xs, labels, key=jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(7)))["x"]
    for chunk in (2, 3, 7):
        got = parallel.stream(_noisy, xs, labels, chunk_size=chunk, key=key)["x"]
        np.testing.assert_array_equal(got, np.asarray(ref))
    got = parallel.shard_attack(_noisy)(xs, labels, key=key)["x"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert len({tuple(np.round(r, 6)) for r in np.asarray(got)}) == 7  # no two examples alike


def test_mismatched_batch_sizes_are_rejected():
    run = parallel.shard_attack(_step)
    with pytest.raises(ValueError, match="leading"):
        run(jnp.ones((4, 3)), jnp.zeros(5, jnp.int32), eps=0.1)
    with pytest.raises(ValueError, match="arrays"):
        parallel.stream(_step)


def test_initialize_distributed_is_a_no_op_on_one_process(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize_distributed() is False


def test_data_layout_is_checked_and_gather_is_the_identity_on_one_process():
    with pytest.raises(ValueError, match="`data_layout`"):
        parallel.stream(lambda x: x, jnp.ones((3, 2)), data_layout="pod")
    with pytest.raises(ValueError, match="`data_layout`"):
        parallel.shard_attack(_step, data_layout="rows")
    tree = {"a": np.arange(3), "b": np.ones((3, 2))}
    got = parallel.gather(tree)
    np.testing.assert_array_equal(got["a"], tree["a"])
    # One process: local rows are the whole set, global index = row.
    got = parallel.stream(_noisy, jnp.zeros((5, 3)), jnp.arange(5), key=jax.random.key(3),
                          data_layout="local")["x"]
    ref = parallel.stream(_noisy, jnp.zeros((5, 3)), jnp.arange(5), key=jax.random.key(3))["x"]
    np.testing.assert_array_equal(got, ref)


def test_run_chunked_follows_rows_per_call_and_keeps_key_implementations():
    sizes = []

    def rows_per_call(left, local_devices):
        sizes.append(left)
        return min(4, left)

    t = {}
    xs, labels = jnp.zeros((10, 3)), jnp.arange(10)

    def reference(key):
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(10))
        return np.asarray(jax.vmap(_noisy)(xs, labels, key=keys)["x"])

    key = jax.random.key(0)
    out = parallel.run_chunked(_noisy, (xs, labels), {"key": key},
                               rows_per_call=rows_per_call, timings=t)
    assert sizes == [10, 6, 2]                      # 4 + 4 + 2 rows
    np.testing.assert_array_equal(out["x"], reference(key))
    assert t["compile_s"] > 0 and t["run_s"] > 0
    # Another PRNG implementation is kept (rebuilt from its key data with its own impl). JAX's
    # "rbg" bits under vmap depend on the batch, so compare with one call over the same rows.
    rbg = jax.random.key(0, impl="rbg")
    out = parallel.run_chunked(_noisy, (xs, labels), {"key": rbg}, chunk_size=None)
    np.testing.assert_array_equal(out["x"], reference(rbg))
