"""Adaptive ψ: the integrator controller of the Woods regulariser strength (papers.md §2.6).

Per training batch ``t``, before ``L_adv`` is computed::

    I_t = max(0, I_{t-1} + clip(-ln(L_t / L_target), -eps_worse, +eps_better))
    ψ_t = k_psi0 · exp(k_psi · I_t)

with ``L_t`` the batch's mean cross-entropy and, by default, ``L_target = 1.5``, ``k_psi0 = 220``,
``k_psi = 0.02``, ``eps_better = 1``, ``eps_worse = 0.01``, ``I_0 = 0``. ψ grows (up to ×e^0.02 per
batch) while the loss is below target and shrinks slowly (×e^-0.0002 per batch at most) above it.
The official checkpoints store ``I = 208.512`` and ``251.697``, i.e. ψ ≈ 14240 and 33778 (§2.2).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from advjax.train.config import PsiConfig

Array = jax.Array


@flax.struct.dataclass
class PsiState:
    """The controller's integrator ``I`` (float32 scalar, >= 0)."""

    integral: Array


def psi_controller_init(integral: float = 0.0) -> PsiState:
    """The controller at ``I = integral`` (0 at the start of training)."""
    if not float(integral) >= 0:
        raise ValueError(f"`integral` must be >= 0; got {integral!r}.")
    return PsiState(integral=jnp.asarray(integral, jnp.float32))


def psi_controller_update(state: PsiState, ce_loss: Array,
                          config: PsiConfig = PsiConfig()) -> PsiState:
    """One integrator step from the batch's mean cross-entropy.

    Args:
      state: the controller before this batch.
      ce_loss: scalar, the batch's mean classification loss ``L_t > 0`` (gradients are stopped).
      config: the controller constants.

    Returns:
      ``PsiState(I_t)`` with ``I_t = max(0, I_{t-1} + clip(-ln(L_t/L_target), -eps_worse,
      eps_better))``. A NaN loss leaves ``I`` unchanged rather than poisoning it.
    """
    loss = jax.lax.stop_gradient(jnp.asarray(ce_loss, jnp.float32))
    if loss.ndim != 0:
        raise ValueError(f"`ce_loss` must be a scalar; got shape {loss.shape}.")
    err = -jnp.log(loss / config.l_target)
    step = jnp.clip(err, -config.eps_worse, config.eps_better)
    step = jnp.where(jnp.isnan(step), 0.0, step)
    return PsiState(integral=jnp.maximum(0.0, state.integral + step))


def psi(state: PsiState, config: PsiConfig = PsiConfig()) -> Array:
    """ψ = ``k_psi0 · exp(k_psi · I)`` (a stop-gradient float32 scalar)."""
    return jax.lax.stop_gradient(config.k_psi0 * jnp.exp(config.k_psi * state.integral))
