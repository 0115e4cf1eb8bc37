"""Presets (Szegedy weight decay, Woods SGD schedule) and checkpoint round trips of full states."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax.train import (
    LipschitzConfig,
    TrainConfig,
    checkpoint_manager,
    create_train_state,
    psi_controller_init,
    restore_checkpoint,
    save_checkpoint,
    szegedy_config,
    train_step,
    woods_config,
    woods_learning_rate,
    woods_optimizer,
    woods_psi_config,
)


class _BNNet(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(6)(x.reshape((x.shape[0], -1)))
        h = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(h)
        return nn.Dense(3)(jnp.tanh(h))


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(size=(n, 2, 2, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 3, size=n), jnp.int32)}


def test_woods_optimizer_matches_torch_sgd_by_hand():
    # PyTorch SGD (momentum 0.9, weight_decay 1e-4): g' = g + wd p; buf = 0.9 buf + g'; p -= lr buf.
    tx = woods_optimizer(10, epochs=200)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    state = tx.init(p)
    buf, ref = np.zeros(2), np.array([1.0, -2.0])
    for step in range(3):
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        buf = 0.9 * buf + (np.array([0.5, 0.25]) + 1e-4 * ref)
        ref = ref - 0.1 * buf
        np.testing.assert_allclose(p["w"], ref, rtol=1e-6, err_msg=str(step))


def test_woods_learning_rate_boundaries():
    lr = woods_learning_rate(2, epochs=200, num_devices=2)
    got = {step: float(lr(step)) for step in (0, 339, 340, 389, 390, 399)}
    assert got == pytest.approx({0: 0.2, 339: 0.2, 340: 0.02, 389: 0.02, 390: 0.002, 399: 0.002})


def test_presets():
    assert szegedy_config("FC100-100-10").weight_decay == (1e-5, 1e-5, 1e-6)
    assert szegedy_config("AE400-10").weight_decay == (("classifier", 1e-6),)
    assert woods_config("robust").lipschitz == LipschitzConfig()
    cfg = woods_config("all")
    assert cfg.adversarial.criterion == "l2_min" and cfg.adversarial.eps == 0.1
    assert cfg.adversarial.half_half and cfg.adversarial.steps == 7
    assert woods_config("adv-train").adversarial.eps == 0.01
    with pytest.raises(ValueError, match="variant"):
        woods_config("nope")


def test_woods_psi_scales_with_input_size():
    # The reference k_psi0 = 220 belongs to 3·32·32 inputs; the penalty is a mean over input
    # elements, so 8·8 digits get 220·64/3072 and 28·28 MNIST 220·784/3072.
    assert woods_psi_config().k_psi0 == 220.0
    assert woods_psi_config(64).k_psi0 == pytest.approx(220.0 * 64 / 3072)
    assert woods_config("all", input_size=784).lipschitz.psi.k_psi0 == pytest.approx(
        220.0 * 784 / 3072)
    assert woods_config("robust", input_size=784).lipschitz.psi.k_psi == 0.02
    with pytest.raises(ValueError, match="input_size"):
        woods_psi_config(0)


@pytest.mark.slow
def test_lipschitz_step_with_batch_statistics_is_axis_name_invariant():
    # The regulariser differentiates Σ_b s_b through training-mode BatchNorm; the per-example
    # (vmap + axis_name) and the batched forward must give the same loss and update.
    batch = _batch(1)
    plain = create_train_state(_BNNet(), jax.random.key(0), batch["image"][:1], optax.sgd(0.1))
    named = create_train_state(_BNNet(axis_name="batch"), jax.random.key(0),
                               batch["image"][:1], optax.sgd(0.1))
    cfg = TrainConfig(lipschitz=LipschitzConfig())
    s1, m1 = train_step(plain, batch, cfg)
    s2, m2 = train_step(named, batch, cfg)
    for k in ("loss", "l_adv", "ce"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 s1.params, s2.params)


def test_checkpoint_round_trip_of_a_full_state(tmp_path):
    batch = _batch(2)
    state = create_train_state(_BNNet(), jax.random.key(0), batch["image"][:1],
                               optax.adam(1e-2), pool_size=5)
    state, _ = train_step(state, batch, TrainConfig(lipschitz=LipschitzConfig()))
    state = state.replace(pool=state.pool.replace(valid=state.pool.valid.at[2].set(True)),
                          psi=psi_controller_init(3.25))
    manager = checkpoint_manager(tmp_path)
    save_checkpoint(manager, state, {"note": [1, 2]})
    fresh = create_train_state(_BNNet(), jax.random.key(9), batch["image"][:1],
                               optax.adam(1e-2), pool_size=5)
    restored, meta = restore_checkpoint(manager, fresh)
    manager.close()
    assert meta == {"note": [1, 2]}
    a, b = jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(restored)
    assert len(a) == len(b)
    for (path, x), y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert float(restored.psi.integral) == 3.25 and bool(restored.pool.valid[2])
    assert restored.apply_fn is fresh.apply_fn
    assert restore_checkpoint(checkpoint_manager(tmp_path / "empty"), fresh) is None
