"""Data-parallel training pieces on this process's devices (the multi-process runs are in
``tests/distributed/test_train.py``)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from advjax.parallel import make_mesh
from advjax.train import (
    TrainConfig,
    create_train_state,
    evaluate,
    fit,
    global_batch,
    process_rows,
    replicate,
    replicated_sharding,
    shard_train_step,
    train_step,
)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(8, use_bias=False)(x.reshape((x.shape[0], -1)))
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(3)(nn.relu(h))


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def _state():
    x, _ = _data()
    return create_train_state(_Net(), jax.random.key(0), x[:1], optax.adam(1e-2))


def test_sharded_step_equals_plain_jit_on_this_mesh():
    x, y = _data()
    mesh = make_mesh()
    state = _state()
    plain, m_plain = jax.jit(functools.partial(train_step, config=TrainConfig()))(
            state, {"image": x[:16], "label": y[:16]})
    step = shard_train_step(functools.partial(train_step, config=TrainConfig()), mesh)
    sharded, m_sharded = step(replicate(state, mesh),
                              global_batch({"image": x[:16], "label": y[:16]}, mesh, 16))
    assert sharded.params["Dense_0"]["kernel"].sharding == replicated_sharding(mesh)
    for a, b in zip(jax.tree.leaves((plain, m_plain)), jax.tree.leaves((sharded, m_sharded)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_replicate_keeps_an_exact_sharding_and_refuses_typed_keys():
    mesh = make_mesh()
    state = replicate(_state(), mesh)
    again = replicate(state, mesh)
    assert all(a is b for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True))
    with pytest.raises(TypeError, match="typed PRNG keys cannot be placed"):
        replicate({"k": jax.random.key(0)}, mesh)


def test_process_rows_of_one_process_cover_the_batch():
    mesh = make_mesh()
    n = mesh.devices.size
    assert process_rows(mesh, 4 * n) == (0, 4 * n)
    with pytest.raises(ValueError, match="`mesh` must be a jax.sharding.Mesh with an axis 'batch'"):
        process_rows(jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",)), 4)


def test_fit_local_layout_on_one_process_equals_global():
    """``data_layout="local"`` (slices held on device, batches gathered there) gives the same
    batches as the whole set on the host: bitwise equal runs."""
    x, y = _data()
    kw = dict(key=jax.random.key(5), epochs=2, batch_size=16, progress=False)
    a, ha = fit(_state(), (x, y), data_layout="global", **kw)
    b, hb = fit(_state(), (x, y), data_layout="local", **kw)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert [h["train"] for h in ha] == [h["train"] for h in hb]


def test_fit_refuses_an_unknown_data_layout():
    x, y = _data()
    with pytest.raises(ValueError, match="`data_layout` must be 'global'"):
        fit(_state(), (x, y), key=jax.random.key(0), epochs=1, batch_size=16, progress=False,
            data_layout="mine")


def test_evaluate_on_a_mesh_equals_plain_evaluate():
    x, y = _data(50, seed=1)
    mesh = make_mesh()
    state = _state()
    plain = evaluate(state, x, y, batch_size=16)
    sharded = evaluate(replicate(state, mesh), x, y, batch_size=16, mesh=mesh)
    assert sharded["count"] == plain["count"] == 50
    np.testing.assert_allclose(sharded["accuracy"], plain["accuracy"])
    np.testing.assert_allclose(sharded["loss"], plain["loss"], rtol=1e-6)


def test_fsdp_sharding_splits_large_leaves_along_their_largest_divisible_dim():
    from jax.sharding import PartitionSpec

    from advjax.train import fsdp_sharding

    mesh = make_mesh()
    n = mesh.devices.size
    tree = {"big": np.zeros((3, 8 * n)), "small": np.zeros((4,)), "odd": np.zeros((7 * n + 1, 5)),
            "scalar": np.zeros(())}
    specs = {k: v.spec for k, v in fsdp_sharding(tree, mesh, min_size=8).items()}
    assert specs["big"] == PartitionSpec(None, "batch")
    assert specs["small"] == PartitionSpec()  # below min_size
    assert specs["scalar"] == PartitionSpec()
    # The largest dim (7n+1) is not divisible for n > 1; the next one (5) only for n in {1, 5}.
    assert specs["odd"] == (PartitionSpec("batch", None) if n == 1 else
                            PartitionSpec(None, "batch") if n == 5 else PartitionSpec())

