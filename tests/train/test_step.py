"""Train state, pure train/eval steps, batch-statistics handling and robust-training transforms."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax.train import (
    PGDAdversarialConfig,
    PoolConfig,
    TrainConfig,
    WoodsAdversarialConfig,
    adversarial_examples,
    adversarial_pool,
    adversarial_training,
    apply_model,
    build_train_step,
    classification_loss,
    create_train_state,
    eval_step,
    evaluate,
    example_logits_fn,
    train_step,
)

B, K = 8, 4


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.tanh(nn.Dense(16)(x.reshape((x.shape[0], -1))))
        return nn.Dense(K)(h)


class _BNNet(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(12)(x.reshape((x.shape[0], -1)))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(h)
        return nn.Dense(K)(nn.relu(h))


@flax.struct.dataclass
class _Result:
    x_adv: jax.Array


def _shift_attack(logits_fn):
    """A deterministic stand-in attack: x + eps (no box), enough to check the plumbing."""

    def attack(x, label, *, eps, key=None):
        del label, key
        return _Result(x_adv=x + eps)

    return attack


def _fake(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(n, 3, 3, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, K, size=n), jnp.int32)
    return {"image": x, "label": y}


def _state(module=None, tx=None, **kw):
    module = module or _MLP()
    return create_train_state(module, jax.random.key(0), jnp.zeros((1, 3, 3, 1)),
                              tx or optax.sgd(0.5), **kw)


@pytest.mark.parametrize("jit", [False, True])
def test_one_step_decreases_loss_on_fake_data(jit):
    state, batch = _state(), _fake()
    before, _ = classification_loss(state.params, state, batch, None)
    if jit:
        new, metrics = train_step(state, batch, TrainConfig())
    else:
        new, metrics = build_train_step(TrainConfig())(state, batch)
    after, _ = classification_loss(new.params, new, batch, None)
    assert int(new.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), float(before), rtol=1e-6)
    assert float(after) < float(before)


def test_jit_and_no_jit_steps_agree():
    state, batch = _state(tx=optax.adam(1e-2)), _fake()
    cfg = TrainConfig(weight_decay=1e-3)
    s1, m1 = train_step(state, batch, cfg)
    s2, m2 = build_train_step(cfg)(state, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 s1.params, s2.params)
    np.testing.assert_allclose(m1["weight_decay"], m2["weight_decay"], rtol=1e-6)


def test_eval_step_and_evaluate_count_padding_out():
    state = _state()
    data = _fake(1, n=11)
    logits = state.apply_fn({"params": state.params}, data["image"])
    want = float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(data["label"])))
    got = evaluate(state, data["image"], data["label"], batch_size=4)  # 4 + 4 + 3 (padded)
    assert got["count"] == 11
    np.testing.assert_allclose(got["accuracy"], want, rtol=1e-6)
    sums = eval_step(state, data)
    np.testing.assert_allclose(float(sums["correct"]) / float(sums["count"]), want, rtol=1e-6)


def test_bad_batch_is_rejected():
    state = _state()
    with pytest.raises(ValueError, match="'image' and 'label'"):
        build_train_step()(state, {"x": 1})
    with pytest.raises(ValueError, match="batch\\['label'\\]"):
        build_train_step()(state, {"image": jnp.zeros((3, 3, 3, 1)), "label": jnp.zeros((2,),
                                                                                         jnp.int32)})


def test_batchnorm_axis_name_forward_equals_batched_forward():
    batch = _fake(2)
    plain = _state(_BNNet())
    named = _state(_BNNet(axis_name="batch"))
    assert named.bn_axis_name == "batch" and plain.bn_axis_name is None
    named = named.replace(params=plain.params, batch_stats=plain.batch_stats)
    l1, bs1 = apply_model(plain, plain.params, batch["image"], train=True)
    l2, bs2 = apply_model(named, named.params, batch["image"], train=True)
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), bs1, bs2)
    # The per-example logits_fn in training mode sees the statistics of the vmapped batch.
    fn, axis = example_logits_fn(named, train=True)
    l3 = jax.jit(jax.vmap(fn, axis_name=axis))(batch["image"])
    np.testing.assert_allclose(l1, l3, rtol=1e-5, atol=1e-6)
    # A training step updates the running statistics identically.
    s1, _ = train_step(plain, batch)
    s2, _ = train_step(named, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 s1.batch_stats, s2.batch_stats)
    assert not np.allclose(s1.batch_stats["BatchNorm_0"]["mean"], 0.0)


@pytest.mark.parametrize("prob", [1.0, 0.5])
def test_adversarial_examples_transform_masks_and_plumbing(prob):
    state, batch = _state(), _fake(3, n=64)
    transform = adversarial_examples(_shift_attack, eps=0.25, prob=prob)
    _, out, metrics = jax.jit(transform)(state, batch, jax.random.key(4))
    delta = np.asarray(out["image"] - batch["image"]).reshape(64, -1)
    changed = np.all(np.isclose(delta, 0.25), axis=1)
    unchanged = np.all(delta == 0.0, axis=1)
    assert np.all(changed | unchanged)
    np.testing.assert_allclose(float(metrics["adv_fraction"]), changed.mean(), rtol=1e-6)
    if prob == 1.0:
        assert changed.all()
    else:
        assert 0.25 < changed.mean() < 0.75  # Bernoulli(1/2) on 64 examples: ~4 sigma
    np.testing.assert_array_equal(out["label"], batch["label"])


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.5)])
def test_pgd_adversarial_training_step(norm, eps):
    state, batch = _state(), _fake(5)
    cfg = TrainConfig(adversarial=PGDAdversarialConfig(norm=norm, eps=eps, steps=5))
    _, adv, _ = jax.jit(adversarial_training(cfg.adversarial))(state, batch, jax.random.key(0))
    delta = np.asarray(adv["image"] - batch["image"]).reshape(B, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5 and size.max() > 0.5 * eps
    assert float(np.min(adv["image"])) >= 0.0 and float(np.max(adv["image"])) <= 1.0
    clean, _ = classification_loss(state.params, state, batch, None)
    attacked, _ = classification_loss(state.params, state, adv, None)
    assert float(attacked) > float(clean)
    new, metrics = train_step(state, batch, cfg)
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("half_half", [False, True])
def test_woods_adversarial_training_with_batch_statistics(half_half):
    state, batch = _state(_BNNet(axis_name="batch")), _fake(6, n=16)
    cfg = TrainConfig(adversarial=WoodsAdversarialConfig.l2(half_half=half_half))
    new, metrics = train_step(state, batch, cfg)
    assert np.isfinite(float(metrics["loss"]))
    # RMSE of each perturbation is at most the budget (step sizes sum to eps = 0.01).
    assert 0.0 < float(metrics["adv_rmse"]) <= 0.01 + 1e-6
    if half_half:
        assert 0.0 < float(metrics["adv_fraction"]) < 1.0
    else:
        assert float(metrics["adv_fraction"]) == 1.0


def test_adversarial_pool_is_refreshed_and_mixed():
    state = _state(pool_size=10)
    transform = jax.jit(adversarial_pool(_shift_attack, eps=0.5, refresh=4, mix=6))
    sources = {}
    for t in range(3):
        batch = _fake(10 + t)
        for xi, yi in zip(np.asarray(batch["image"]), np.asarray(batch["label"]), strict=True):
            sources[np.round(xi + 0.5, 5).tobytes()] = int(yi)
        state, mixed, metrics = transform(state, batch, jax.random.key(t))
        assert mixed["image"].shape == (B + 6, 3, 3, 1) and mixed["label"].shape == (B + 6,)
        np.testing.assert_array_equal(mixed["image"][:B], batch["image"])
        valid = np.asarray(state.pool.valid)
        assert 4 <= valid.sum() <= min(10, 4 * (t + 1))
        np.testing.assert_allclose(float(metrics["pool_filled"]), valid.mean())
        # Every filled slot holds an attacked (x + 0.5) example of some batch, with its label.
        for xi, yi in zip(np.asarray(state.pool.x)[valid], np.asarray(state.pool.y)[valid],
                          strict=True):
            assert sources[np.round(xi, 5).tobytes()] == int(yi)
        # Every mixed-in example is a filled pool entry.
        pool_keys = {np.round(xi, 5).tobytes() for xi in np.asarray(state.pool.x)[valid]}
        for xi in np.asarray(mixed["image"][B:]):
            assert np.round(xi, 5).tobytes() in pool_keys


def test_pool_training_step_and_missing_pool_error():
    cfg = TrainConfig(pool=PoolConfig(size=16, refresh=4, mix=4,
                                      attack=PGDAdversarialConfig(norm="l2", eps=0.5, steps=3)))
    new, metrics = train_step(_state(pool_size=16), _fake(7), cfg)
    assert int(np.sum(new.pool.valid)) == 4 and np.isfinite(float(metrics["loss"]))
    with pytest.raises(ValueError, match="pool_size"):
        train_step(_state(), _fake(7), cfg)


def test_nonfinite_flag_survives_jit():
    state, batch = _state(), _fake(8)
    _, ok = train_step(state, batch)
    bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
    _, flagged = train_step(state, bad)
    assert float(ok["nonfinite"]) == 0.0 and float(flagged["nonfinite"]) == 1.0
