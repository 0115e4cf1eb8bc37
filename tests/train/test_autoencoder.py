"""AE400-10 training: sparse-autoencoder loss, pretraining, softmax on the frozen code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import rel_entr

from advjax.models.szegedy import AutoencoderClassifier
from advjax.train import (
    SparseAutoencoderConfig,
    TrainConfig,
    autoencoder_train_step,
    classifier_state,
    create_train_state,
    fit,
    freeze_except,
    kl_sparsity,
    sparse_autoencoder_loss,
)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_kl_sparsity_matches_scipy():
    rho_hat = np.array([0.01, 0.05, 0.3, 0.9])
    want = np.sum(rel_entr(0.05, rho_hat) + rel_entr(0.95, 1.0 - rho_hat))
    np.testing.assert_allclose(float(kl_sparsity(0.05, jnp.asarray(rho_hat))), want, rtol=1e-5)
    assert float(kl_sparsity(0.05, jnp.full((3,), 0.05))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_sparse_autoencoder_loss_equals_numpy(jit):
    module = AutoencoderClassifier(input_shape=(4, 4, 1), code_units=6, num_classes=3)
    x = np.random.default_rng(0).uniform(size=(5, 4, 4, 1)).astype(np.float32)
    state = create_train_state(module, jax.random.key(0), x[:1], optax.sgd(0.1))
    cfg = SparseAutoencoderConfig(rho=0.1, beta=0.3, weight_decay=1e-2)
    loss_fn = sparse_autoencoder_loss(cfg)
    loss_fn = jax.jit(loss_fn) if jit else loss_fn
    loss, aux = loss_fn(state.params, state, {"image": x, "label": np.zeros(5, np.int32)}, None)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
    code = _sigmoid(x.reshape(5, -1) @ p["encoder"]["kernel"] + p["encoder"]["bias"])
    recon = _sigmoid(code @ p["decoder"]["kernel"] + p["decoder"]["bias"])
    mse = np.mean((recon - x.reshape(5, -1)) ** 2)
    rho_hat = code.mean(0)
    kl = np.sum(rel_entr(0.1, rho_hat) + rel_entr(0.9, 1 - rho_hat))
    # λ Σw²/k with k = units (kernel output dimension): 6 code units, 16 reconstructed pixels.
    decay = 1e-2 * (np.sum(p["encoder"]["kernel"] ** 2) / 6
                    + np.sum(p["decoder"]["kernel"] ** 2) / 16)
    np.testing.assert_allclose(float(aux["metrics"]["mse"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(aux["metrics"]["sparsity"]), kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), mse + 0.3 * kl + decay, rtol=1e-5)


def test_freeze_except_names_unknown_subtrees():
    tx = freeze_except(optax.sgd(1.0), ("head",))
    with pytest.raises(ValueError, match="trainable"):
        tx.init({"encoder": {"kernel": jnp.ones(2)}})


@pytest.mark.slow
def test_pretrain_then_softmax_on_frozen_code():
    from advjax.data import load

    (x, y), (xt, yt) = load("digits", "train"), load("digits", "test")
    module = AutoencoderClassifier(input_shape=(8, 8, 1), code_units=64)
    state = create_train_state(module, jax.random.key(0), x[:1], optax.adam(1e-2))
    cfg = SparseAutoencoderConfig(rho=0.1, beta=0.1)
    state, hist = fit(state, (x, y), key=jax.random.key(1), epochs=6, batch_size=64,
                      step_fn=autoencoder_train_step(cfg), progress=False)
    first, last = hist[0]["train"], hist[-1]["train"]
    assert last["mse"] < 0.6 * first["mse"]
    assert abs(last["mean_activation"] - 0.1) < abs(first["mean_activation"] - 0.1)
    cls = classifier_state(state, optax.adam(1e-2))
    cls, hist = fit(cls, (x, y), key=jax.random.key(2), epochs=10, batch_size=64,
                    config=TrainConfig(weight_decay={"classifier": 1e-6}), eval_data=(xt, yt),
                    progress=False)
    # The autoencoder is not fine-tuned: encoder and decoder are bitwise unchanged.
    for name in ("encoder", "decoder"):
        jax.tree.map(np.testing.assert_array_equal, state.params[name], cls.params[name])
    assert not np.array_equal(state.params["classifier"]["kernel"],
                              cls.params["classifier"]["kernel"])
    assert hist[-1]["eval"]["accuracy"] >= 0.75, hist[-1]["eval"]  # measured 0.84 (10+10 epochs)
