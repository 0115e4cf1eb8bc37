"""Pre-activation ResNet (Woods et al. 2019): parameter count, structure, numpy reference forward
on converted PyTorch-layout weights, BatchNorm statistics and ``axis_name``, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import (
    PreActBlock,
    PreActResNet,
    linen_logits_fn,
    linen_logits_fn_batch_stats,
    woods2019_variables_from_state,
)
from tests.models._reference import random_woods_state, woods_resnet_torch_forward
from tests.models._transforms import check_logits_fn_transforms

_X = np.random.default_rng(2).uniform(size=(3, 32, 32, 3)).astype(np.float32)
_Y = np.array([2, 5, 9], np.int32)


def _shapes(module):
    return jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              train=False))


def test_resnet44_parameter_count_and_structure():
    variables = _shapes(PreActResNet())
    params = variables["params"]
    # papers.md §2.2 (checkpoint verification): 681,626 trainable parameters.
    assert sum(a.size for a in jax.tree.leaves(params)) == 681_626
    blocks = sorted(k for k in params if k.startswith("stage"))
    assert blocks == sorted(f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(7))
    with_shortcut = sorted(k for k in blocks if "shortcut" in params[k])
    assert with_shortcut == ["stage2_block0", "stage3_block0"]
    assert params["stage2_block0"]["shortcut"]["kernel"].shape == (3, 3, 16, 32)  # 3x3, not 1x1
    assert params["stage3_block0"]["conv1"]["kernel"].shape == (3, 3, 32, 64)
    assert params["classifier"]["kernel"].shape == (1, 1, 64, 10)
    assert params["classifier"]["bias"].shape == (10,)
    assert "bias" not in params["stem"]
    # Running mean and var of pre_bn (input width) and bn (output width) per block, and final_bn.
    per_stage = [7 * (16 + 16), 16 + 32 + 6 * (32 + 32), 32 + 64 + 6 * (64 + 64)]
    assert sum(a.size for a in jax.tree.leaves(variables["batch_stats"])) == 2 * (
            sum(per_stage) + 64)
    # ResNet-20: (20 - 2) // 6 = 3 blocks per superblock.
    assert len([k for k in _shapes(PreActResNet(depth=20))["params"] if k.startswith("stage")]) == 9


def test_zero_init_last_conv_makes_blocks_identity():
    block = PreActBlock(16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 16)), jnp.float32)
    bv = jax.jit(lambda k, z: block.init(k, z, train=False))(jax.random.key(1), x)
    assert float(jnp.abs(bv["params"]["conv2"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(bv["params"]["conv1"]["kernel"]).max()) > 0.0
    np.testing.assert_allclose(block.apply(bv, x, train=False), x, rtol=0, atol=0)
    # A strided block with a shortcut is not the identity, but its conv2 also starts at zero.
    down = PreActBlock(32, strides=2)
    dv = jax.eval_shape(lambda: down.init(jax.random.key(1), x, train=False))
    assert dv["params"]["shortcut"]["kernel"].shape == (3, 3, 16, 32)


@pytest.mark.parametrize("delta", [None, 0.5, 0.25])
def test_converted_weights_match_numpy_torch_forward(delta):
    state = random_woods_state(np.random.default_rng(3), blocks=1, hhrelu_delta=delta)
    module, variables = woods2019_variables_from_state(state)
    assert module.depth == 8
    assert module.activation == ("relu" if delta is None else "hhrelu")
    if delta is not None:
        assert module.hhrelu_delta == delta
    got = jax.jit(lambda x: module.apply(variables, x, train=False))(_X)
    ref = woods_resnet_torch_forward(state, _X, blocks_per_stage=1)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_batchnorm_running_stats_use_torch_momentum():
    block = PreActBlock(16)
    x = jnp.asarray(np.random.default_rng(4).normal(2.0, 3.0, size=(4, 8, 8, 16)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=False)
    _, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]["pre_bn"]
    xn = np.asarray(x, np.float64)
    # PyTorch momentum 0.1 == Flax momentum 0.9: new = 0.9 * old + 0.1 * batch statistic.
    np.testing.assert_allclose(stats["mean"], 0.1 * xn.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * xn.var(axis=(0, 1, 2)), rtol=1e-4)


def test_batchnorm_axis_name_under_vmap_equals_batched_training_forward():
    state = random_woods_state(np.random.default_rng(5), blocks=1, hhrelu_delta=0.5)
    module, variables = woods2019_variables_from_state(state)
    expected, _ = module.apply(variables, _X, train=True, mutable=["batch_stats"])
    per_example = module.clone(axis_name="batch")
    logits_fn = linen_logits_fn_batch_stats(per_example, variables, axis_name="batch", train=True)
    got = jax.jit(jax.vmap(logits_fn, axis_name="batch"))(_X)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Without the axis name, per-example statistics would differ from batch statistics.
    alone = jax.jit(jax.vmap(linen_logits_fn_batch_stats(module, variables, axis_name="batch",
                                                         train=True)))(_X)
    assert not np.allclose(alone, expected, atol=1e-3)


def test_input_and_setting_validation():
    with pytest.raises(ValueError, match="`depth` must be 6 n \\+ 2"):
        _shapes(PreActResNet(depth=10))
    with pytest.raises(ValueError, match="`activation` must be one of"):
        _shapes(PreActResNet(depth=8, activation="tanh"))
    def init_shape(x):
        return jax.eval_shape(lambda: PreActResNet(depth=8).init(jax.random.key(0), x, train=False))

    with pytest.raises(ValueError, match="3 channel"):
        init_shape(jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="8×8"):
        init_shape(jnp.zeros((1, 28, 28, 3)))


@pytest.mark.slow  # about 10 s of CPU: several compilations of a ResNet-8, in float64 too
def test_logits_fn_transforms():
    state = random_woods_state(np.random.default_rng(6), blocks=1, widths=(4, 8, 8),
                               hhrelu_delta=0.5)
    module, variables = woods2019_variables_from_state(state)
    check_logits_fn_transforms(module, variables, _X, _Y, fd_examples=1, eager_grad=False,
                               train=False)
    # Second-order terms flow through HHReLU (double backprop, papers.md §2.12).
    logits_fn = linen_logits_fn(module, variables, train=False)
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(lambda z: logits_fn(z)[0]), (x,), (v,))[1])
    assert float(jnp.abs(hvp(jnp.asarray(_X[0]), jnp.ones_like(_X[0]))).max()) > 0.0


def test_conversion_rejects_bad_state_dicts():
    def fresh():
        return random_woods_state(np.random.default_rng(7), blocks=1, hhrelu_delta=0.5)

    state = fresh()
    state["pipe.9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match="pipe.9.weight"):
        woods2019_variables_from_state(state)
    state = fresh()
    del state["pipe.2.0.shortcut.weight"]
    with pytest.raises(ValueError, match="missing"):
        woods2019_variables_from_state(state)
    state = fresh()
    state["pipe.1.0.main.2.d"] = np.array(0.25, np.float32)
    with pytest.raises(ValueError, match="must all be equal"):
        woods2019_variables_from_state(state)
    state = fresh()
    state["pipe.3.0.main.0.weight"] = state["pipe.3.0.main.0.weight"][:, :16]
    with pytest.raises(ValueError, match="wrong shapes"):
        woods2019_variables_from_state(state)
    state = fresh()
    state["pipe.7.bias"][3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        woods2019_variables_from_state(state)
    state = fresh()
    del state["input_offset"]
    with pytest.raises(KeyError, match="input_offset"):
        woods2019_variables_from_state(state)
