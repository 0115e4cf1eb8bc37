"""Sound upper bounds of the spectral norm of a linear map with nonnegative entries.

For any matrix ``A``, ``‖A‖₂ <= ‖|A|‖₂`` (``|Ax| <= |A||x|`` entrywise). For a nonnegative ``M``
(here ``M = |A|``, e.g. a convolution with the kernel ``|K|``) and any entrywise positive vector
``v``, the Collatz–Wielandt inequality gives ``‖M‖₂² = ρ(MᵀM) <= max_i (MᵀM v)_i / v_i``: with
``D = diag(v)``, ``D⁻¹ MᵀM D`` has the spectrum of ``MᵀM`` and row sums ``(MᵀMv)_i / v_i``, and
the spectral radius is at most the largest row sum. Every iterate of the power method started at
``v = 1`` stays positive, so the minimum over iterates is a certified upper bound that decreases
towards ``‖M‖₂`` (never from below, unlike power iteration on ``A`` itself).

The iteration runs in float64 (``jax.enable_x64``); the result is enlarged by a relative 1e-9,
far above the float64 rounding of the sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def norm_upper_bound(apply: Callable[[jax.Array], jax.Array], in_shape: Sequence[int], *,
                     iters: int = 50) -> float:
    """Certified upper bound of ``‖M‖₂`` for a linear ``apply`` with nonnegative matrix entries.

    Args:
      apply: ``x (in_shape) -> M x``, linear, with every matrix entry ``>= 0`` (the caller's
        responsibility, e.g. a convolution with an entrywise nonnegative kernel); it is called on
        float64 arrays.
      in_shape: input shape.
      iters: power-method iterates (each one gives a bound; the smallest is returned).

    Returns:
      ``b >= ‖M‖₂`` (``0.0`` for the zero map).
    """
    with jax.enable_x64(True):
        v = jnp.ones(tuple(in_shape), jnp.float64)
        mt = jax.linear_transpose(apply, v)

        @jax.jit
        def step(v):
            u = mt(apply(v))[0]
            ratio = jnp.max(u / v)
            top = jnp.max(u)
            v_next = jnp.where(top > 0, u / jnp.where(top > 0, top, 1.0), v) + 1e-30
            return ratio, v_next

        best = math.inf
        for _ in range(max(int(iters), 1)):
            ratio, v = step(v)
            best = min(best, float(ratio))
    return math.sqrt(max(best, 0.0)) * (1.0 + 1e-9)
