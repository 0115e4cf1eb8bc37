"""The Woods Lipschitz-inspired regulariser (papers.md §2.5) against explicit Jacobians."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax.train import (
    LipschitzConfig,
    PsiConfig,
    classification_loss,
    create_train_state,
    input_gradient_penalty,
    psi,
    psi_controller_init,
    psi_controller_update,
    selected_outputs,
    tandem_choice,
    with_lipschitz_regularizer,
)

B, K = 6, 5


class _Tiny(nn.Module):
    """Smooth (tanh) two-layer net on (4, 4, 1) images: non-zero second derivatives."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = jnp.tanh(nn.Dense(7)(x.reshape((x.shape[0], -1))))
        return nn.Dense(K)(h)


def _setup(dtype=jnp.float32):
    module = _Tiny()
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(B, 4, 4, 1)), dtype)
    y = jnp.arange(B, dtype=jnp.int32) % K
    params = jax.jit(module.init)(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return module, params, x, y


def _explicit(module, params, x, y, use_margin, j, z=2.0):
    """mean_b,i |∂s_b/∂x_b|^z with s_b differentiated per example by jax.jacrev."""

    def s(xb, yb, margin, jb):
        logits = module.apply({"params": params}, xb[None])[0]
        others = jnp.where(jnp.arange(K) == yb, -jnp.inf, logits)
        return jnp.where(margin, logits[yb] - jnp.max(others), logits[jb])

    jac = jax.jit(jax.vmap(jax.jacrev(s)))(x, y, jnp.asarray(use_margin), jnp.asarray(j))
    return float(np.mean(np.abs(np.asarray(jac, np.float64)) ** z))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("zeta", [0.0, 0.2, 1.0])
def test_penalty_equals_explicit_jacobian(zeta, jit):
    module, params, x, y = _setup()
    key = jax.random.key(7)
    fn = lambda p, xx: module.apply({"params": p}, xx)
    pen_fn = lambda p: input_gradient_penalty(lambda xx: fn(p, xx), x, y, key, zeta=zeta)[0]
    pen_fn = jax.jit(pen_fn) if jit else pen_fn
    use_margin, j = tandem_choice(key, B, K, zeta)
    want = _explicit(module, params, x, y, use_margin, j)
    np.testing.assert_allclose(float(pen_fn(params)), want, rtol=1e-5)


def test_tandem_choice_statistics_and_batch_independence():
    key = jax.random.key(3)
    use_margin, j = jax.jit(tandem_choice, static_argnums=(1, 2, 3))(key, 20000, K, 0.2)
    assert abs(float(jnp.mean(use_margin)) - 0.2) < 0.01  # 5 sigma of Bernoulli(0.2) at n=2e4
    counts = np.bincount(np.asarray(j), minlength=K)
    assert counts.min() > 20000 / K * 0.9 and int(j.max()) < K
    small = tandem_choice(key, 7, K, 0.2)
    np.testing.assert_array_equal(small[0], use_margin[:7])
    np.testing.assert_array_equal(small[1], j[:7])


def test_selected_outputs_margin_and_logit():
    logits = jnp.array([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    labels = jnp.array([1, 1])
    s = selected_outputs(logits, labels, jnp.array([True, True]), jnp.array([0, 0]))
    np.testing.assert_allclose(s, [1.0, -5.0])
    s = selected_outputs(logits, labels, jnp.array([False, False]), jnp.array([2, 0]))
    np.testing.assert_allclose(s, [2.0, 0.5])


def test_linear_model_closed_form_and_gradient():
    # logits = x W + b: ∂z_j/∂x = W[:, j], so with ζ = 0 the penalty is mean_b mean_i W[i, j_b]²
    # and its gradient w.r.t. W is 2 W[i, j] · (#{b: j_b = j}) / (B · D) (second-order term).
    d = 12
    w = jax.random.normal(jax.random.key(0), (d, K))
    x = jax.random.uniform(jax.random.key(1), (B, d))
    y = jnp.zeros((B,), jnp.int32)
    key = jax.random.key(2)
    _, j = tandem_choice(key, B, K, 0.0)
    pen = lambda w: input_gradient_penalty(lambda xx: xx @ w, x, y, key, zeta=0.0)[0]
    want = np.mean(np.asarray(w)[:, np.asarray(j)] ** 2)
    np.testing.assert_allclose(float(pen(w)), want, rtol=1e-6)
    counts = np.bincount(np.asarray(j), minlength=K)
    np.testing.assert_allclose(jax.grad(pen)(w), 2 * np.asarray(w) * counts / (B * d), rtol=1e-5)


def test_gradient_flows_through_double_backprop_finite_differences():
    with jax.enable_x64(True):
        module, params, x, y = _setup(jnp.float64)
        key = jax.random.key(5)
        pen = jax.jit(lambda p: input_gradient_penalty(
                lambda xx: module.apply({"params": p}, xx), x, y, key, zeta=0.2)[0])
        grad = jax.grad(pen)(params)["Dense_0"]["kernel"]

        @jax.jit
        def shifted(step, unit):
            kernel = params["Dense_0"]["kernel"] + step * unit
            return pen({**params, "Dense_0": {**params["Dense_0"], "kernel": kernel}})

        h = 1e-5
        for idx in [(0, 0), (3, 5), (15, 2)]:
            unit = np.zeros(params["Dense_0"]["kernel"].shape)
            unit[idx] = 1.0
            fd = (float(shifted(h, unit)) - float(shifted(-h, unit))) / (2 * h)
            assert abs(fd) > 1e-6
            np.testing.assert_allclose(float(grad[idx]), fd, rtol=1e-6, atol=1e-10)


def test_jit_vmap_over_keys():
    module, params, x, y = _setup()
    keys = jax.random.split(jax.random.key(9), 4)
    f = lambda xx: module.apply({"params": params}, xx)
    batched = jax.jit(jax.vmap(lambda k: input_gradient_penalty(f, x, y, k)[0]))(keys)
    single = [float(input_gradient_penalty(f, x, y, k)[0]) for k in keys]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-5)


@pytest.mark.parametrize("fixed_psi", [None, 3.0])
def test_loss_transform_adds_psi_times_penalty(fixed_psi):
    # ζ = 1: the output is always the margin, so the explicit Jacobian needs no random draw.
    module, _, x, y = _setup()
    state = create_train_state(module, jax.random.key(0), x[:1], optax.sgd(0.1))
    state = state.replace(psi=psi_controller_init(5.0))
    cfg = LipschitzConfig(zeta=1.0, fixed_psi=fixed_psi)
    loss_fn = with_lipschitz_regularizer(cfg)(classification_loss)
    batch = {"image": x, "label": y}
    loss, aux = loss_fn(state.params, state, batch, jax.random.key(1))
    ce = aux["metrics"]["ce"]
    explicit = _explicit(module, state.params, x, y, np.ones(B, bool), np.zeros(B, int))
    if fixed_psi is None:
        new = psi_controller_update(state.psi, ce, PsiConfig())
        weight = float(psi(new))
        np.testing.assert_allclose(float(aux["updates"]["psi"].integral), float(new.integral))
        assert float(new.integral) != 5.0
    else:
        weight = fixed_psi
        assert "psi" not in aux["updates"]
    np.testing.assert_allclose(float(aux["metrics"]["l_adv"]), weight * explicit, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(ce) + weight * explicit, rtol=1e-5)
