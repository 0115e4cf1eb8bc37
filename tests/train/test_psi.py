"""The adaptive-ψ integrator controller (papers.md §2.6) against its closed form and checkpoints."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.train import PsiConfig, PsiState, psi, psi_controller_init, psi_controller_update


def _closed_form_integral(loss: float, t: int, cfg: PsiConfig = PsiConfig()) -> float:
    # Constant loss L: I_t = max(0, t · clip(-ln(L / L_target), -eps_worse, eps_better)).
    step = min(max(-math.log(loss / cfg.l_target), -cfg.eps_worse), cfg.eps_better)
    return max(0.0, t * step)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("loss", [0.3, 1.2, 1.5, 1.7, 40.0])
def test_constant_loss_matches_closed_form(loss, jit):
    steps = 60
    update = jax.jit(psi_controller_update) if jit else psi_controller_update

    def body(state, _):
        state = update(state, jnp.float32(loss))
        return state, (state.integral, psi(state))

    _, (integrals, psis) = jax.lax.scan(body, psi_controller_init(), None, length=steps)
    want = np.array([_closed_form_integral(loss, t) for t in range(1, steps + 1)])
    np.testing.assert_allclose(np.asarray(integrals), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(psis), 220.0 * np.exp(0.02 * want), rtol=1e-5)


def test_controller_recovers_from_high_loss_slowly():
    # Below target for 10 batches (+1 each: L = L_target / e^2 clips at eps_better = 1), then
    # far above (-0.01 each): the closed form of the two phases.
    state = psi_controller_init()
    for _ in range(10):
        state = psi_controller_update(state, 1.5 * math.exp(-2.0))
    np.testing.assert_allclose(float(state.integral), 10.0, rtol=1e-6)
    for _ in range(100):
        state = psi_controller_update(state, 100.0)
    np.testing.assert_allclose(float(state.integral), 9.0, rtol=1e-5)


def test_psi_of_the_official_checkpoints():
    # papers.md §2.2 [CK]: robust_integration 208.512 -> ψ 14240, 251.697 -> ψ 33778 (±5).
    assert abs(float(psi(PsiState(jnp.float32(208.512)))) - 14240) <= 5
    assert abs(float(psi(PsiState(jnp.float32(251.697)))) - 33778) <= 5


def test_vmapped_and_jitted_update():
    losses = jnp.array([0.5, 1.5, 3.0, 1e3], jnp.float32)
    states = PsiState(jnp.array([0.0, 2.0, 0.005, 7.0], jnp.float32))
    out = jax.jit(jax.vmap(psi_controller_update))(states, losses)
    want = [max(0.0, i + min(max(-math.log(float(v) / 1.5), -0.01), 1.0))
            for i, v in zip([0.0, 2.0, 0.005, 7.0], np.asarray(losses), strict=True)]
    np.testing.assert_allclose(np.asarray(out.integral), want, rtol=1e-6, atol=1e-7)
    assert float(out.integral[2]) == 0.0  # clamped at 0


def test_psi_is_stop_gradient_and_nan_safe():
    assert float(jax.grad(lambda i: psi(PsiState(i)))(jnp.float32(3.0))) == 0.0
    state = psi_controller_update(PsiState(jnp.float32(4.0)), jnp.float32(jnp.nan))
    assert float(state.integral) == 4.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="ce_loss"):
        psi_controller_update(psi_controller_init(), jnp.ones(3))
    with pytest.raises(ValueError, match="integral"):
        psi_controller_init(-1.0)
    with pytest.raises(ValueError, match="l_target"):
        PsiConfig(l_target=0.0)
