"""Robust training on the digits data: the Woods regulariser lowers input gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

from advjax.models.szegedy import MLP
from advjax.train import LipschitzConfig, PsiConfig, TrainConfig, create_train_state, fit


def _mean_margin_gradient_norm(state, x, y):
    """Mean over examples of ||∂(true-vs-best-other logit margin)/∂x||_2 (independent of L_adv)."""

    def margin(xi, yi):
        z = state.apply_fn({"params": state.params}, xi[None])[0]
        return z[yi] - jnp.max(jnp.where(jnp.arange(z.shape[0]) == yi, -jnp.inf, z))

    g = jax.jit(jax.vmap(jax.grad(margin)))(jnp.asarray(x), jnp.asarray(y))
    return float(jnp.mean(jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, -1))))


@pytest.mark.slow
def test_lipschitz_regulariser_lowers_input_gradients_on_digits():
    from advjax.data import load

    (x, y), (xt, yt) = load("digits", "train"), load("digits", "test")
    # The paper's k_psi0 = 220 is for 3x32x32 inputs with a mean over 3072 elements; for 8x8
    # inputs the same per-example strength is 220 * 64 / 3072 ≈ 4.6 (other constants as §2.6).
    configs = {"plain": TrainConfig(),
               "lipschitz": TrainConfig(lipschitz=LipschitzConfig(psi=PsiConfig(k_psi0=4.6)))}
    results = {}
    for name, cfg in configs.items():
        state = create_train_state(MLP(hidden=(32,), activation="hhrelu"), jax.random.key(0),
                                   x[:1], optax.adam(1e-2))
        state, hist = fit(state, (x, y), key=jax.random.key(1), epochs=5, batch_size=64,
                          config=cfg, eval_data=(xt, yt), progress=False)
        results[name] = (_mean_margin_gradient_norm(state, xt, yt), hist[-1])
    plain, reg = results["plain"], results["lipschitz"]
    # Measured: plain 8.39 (acc 0.94), regularised 1.75 (acc 0.89, psi 14.6 after 5 epochs).
    assert reg[0] < 0.5 * plain[0], (plain, reg)
    assert reg[1]["eval"]["accuracy"] >= 0.8, reg
    assert reg[1]["train"]["psi"] > 4.6  # the controller raised psi (CE below L_target)
