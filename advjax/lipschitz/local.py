"""Local (lower) Lipschitz estimates and margin certificates.

* :func:`local_lower_bound`: the largest Jacobian spectral norm ``‖J(x)‖₂`` found at given points,
  optionally improved by gradient ascent on the point. Every value is attained by the network, so it
  is a lower bound of the global Lipschitz constant (for a piecewise-smooth network) and brackets
  the graph bound: ``local_lower_bound <= true L <= layer_bounds(...).total``. The Jacobian is the
  one JAX computes, so a ``custom_jvp``/``custom_vjp`` rule that differs from the derivative of the
  primal is measured as written, while :func:`layer_bounds` bounds the primal; with
  ``primal_step`` the lower bound is instead a difference quotient of the primal itself.
* :func:`certified_radius`: the L2 radius around an input within which the predicted label cannot
  change, from the logit margin and a Lipschitz constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import check_floating, check_integer, check_nonnegative, check_rank

Array = jax.Array


def jacobian_norm(logits_fn: Callable[[Array], Array], x: Array) -> Array:
    """Spectral norm of the Jacobian of ``logits_fn`` at one input.

    Args:
      logits_fn: ``x -> logits (K,)`` for one example.
      x: one input (any shape).

    Returns:
      Scalar ``σ_max(∂ logits / ∂ x)`` (Jacobian by ``jax.jacrev`` when ``K`` is smaller than the
      input size, ``jax.jacfwd`` otherwise; top singular value by SVD).
    """
    out = jax.eval_shape(logits_fn, x)
    k = max(math.prod(out.shape), 1)
    jac_fn = jax.jacrev if k <= x.size else jax.jacfwd
    jac = jac_fn(logits_fn)(x).reshape(k, x.size)
    return jnp.linalg.svd(jac, compute_uv=False)[0]


def local_lower_bound(
    logits_fn: Callable[[Array], Array],
    xs: Array,
    *,
    refine_steps: int = 0,
    step_size: float = 0.05,
    key: Array | None = None,
    noise: float = 0.0,
    primal_step: float | None = None,
) -> Array:
    """Largest Jacobian spectral norm over points: a lower bound of the Lipschitz constant.

    Args:
      logits_fn: ``x -> logits (K,)`` for ONE example.
      xs: ``(N, ...)`` points (a batch of inputs).
      refine_steps: gradient-ascent steps on each point maximising ``‖J(x)‖₂`` (``lax.fori_loop``;
        the gradient of the top singular value is that of ``‖J v‖`` with the top right singular
        vector ``v``). The step is normalised: ``x <- x + step_size · g / ‖g‖``.
      step_size: L2 length of each ascent step (input units).
      key: PRNG key for ``noise`` (required when ``noise > 0``).
      noise: std of Gaussian noise added to the points before the search (explores more regions).
      primal_step: ``None`` (default): measure ``‖J(x)‖₂`` with JAX's derivative, which includes
        any ``custom_jvp``/``custom_vjp`` rule (a lower bound of the primal's constant only where
        such a rule is the true derivative). A length ``h > 0`` (input units): measure instead the
        primal's difference quotient ``‖f(x + h v) − f(x − h v)‖ / (2h)`` along the top right
        singular vector ``v`` of ``J(x)``; every such quotient is ``<=`` the primal's Lipschitz
        constant, whatever the derivative rules (up to float rounding of the two evaluations).

    Returns:
      Scalar, the largest measured value over the (refined) points; every value is attained, so it
      is ``<=`` the true Lipschitz constant, which is ``<=`` :func:`layer_bounds` ``.total``.
    """
    xs = jnp.asarray(xs)
    check_floating(xs, "xs")
    if xs.ndim < 1 or xs.shape[0] < 1:
        raise ValueError(f"`xs` must be a non-empty batch (N, ...); got shape {xs.shape}.")
    if refine_steps < 0:
        raise ValueError(f"`refine_steps` must be >= 0; got {refine_steps!r}.")
    if noise > 0:
        if key is None:
            raise ValueError("`key` is required when `noise` > 0.")
        xs = xs + noise * jax.random.normal(key, xs.shape, xs.dtype)
    if primal_step is not None and not primal_step > 0:
        raise ValueError(f"`primal_step` must be > 0 or None; got {primal_step!r}.")
    norm_fn = lambda x: jacobian_norm(logits_fn, x)

    def secant_fn(x):
        out = jax.eval_shape(logits_fn, x)
        jac = jax.jacfwd(logits_fn)(x).reshape(max(math.prod(out.shape), 1), x.size)
        v = jnp.linalg.svd(jac, full_matrices=False)[2][0].reshape(x.shape)
        diff = logits_fn(x + primal_step * v) - logits_fn(x - primal_step * v)
        return jnp.linalg.norm(diff.ravel()) / (2.0 * primal_step)

    measure = norm_fn if primal_step is None else secant_fn

    def refine(x):
        def body(_, carry):
            x, best = carry
            val, g = jax.value_and_grad(norm_fn)(x)
            gn = jnp.linalg.norm(g.ravel())
            x_new = x + step_size * g / jnp.maximum(gn, 1e-12)
            return x_new, jnp.maximum(best, val if primal_step is None else measure(x))

        x, best = jax.lax.fori_loop(0, refine_steps, body, (x, measure(x)))
        return jnp.maximum(best, measure(x))

    per_point = jax.vmap(refine if refine_steps > 0 else measure)(xs)
    return jnp.max(per_point)


def certified_radius(
    logits: Array,
    label: Array,
    lipschitz: Array | float,
    *,
    pairwise: bool = False,
) -> Array:
    """L2 radius within which the label provably keeps the top logit (margin certificate).

    With ``L`` an upper bound of the L2 Lipschitz constant of ``x -> logits``, each difference
    ``z_y - z_j`` is Lipschitz with constant ``‖(e_y - e_j)ᵀ J‖ <= √2 · L``. The margin
    ``m_j = z_y - z_j`` can shrink by at most ``√2 L ‖δ‖``, so no ``j`` overtakes ``y`` while
    ``‖δ‖₂ < min_j m_j / (√2 L)``. With ``pairwise=True``, ``lipschitz[j]`` is instead a bound of
    the Lipschitz constant of ``z_y - z_j`` itself and the radius is ``min_j m_j / L_j``.

    Args:
      logits: ``(K,)`` logits at the clean input (vmap for a batch).
      label: scalar int, the class to certify (usually the prediction; if it is not the top class
        the radius is 0).
      lipschitz: scalar network bound ``L > 0``, or ``(K,)`` per-pair bounds with ``pairwise=True``
        (entry ``label`` ignored).
      pairwise: interpret ``lipschitz`` as per-pair constants.

    Returns:
      Scalar radius ``>= 0`` in input L2 units (``0`` if ``label`` is not the strict top class).
    """
    logits = jnp.asarray(logits)
    check_rank(logits, "logits", 1)
    check_floating(logits, "logits")
    check_integer(label, "label")
    check_nonnegative(lipschitz, "lipschitz")
    k = logits.shape[0]
    margins = logits[label] - logits
    others = jnp.arange(k) != label
    if pairwise:
        lip = jnp.broadcast_to(jnp.asarray(lipschitz, logits.dtype), (k,))
    else:
        lip = jnp.full((k,), jnp.sqrt(2.0).astype(logits.dtype)) * jnp.asarray(lipschitz,
                                                                                logits.dtype)
    try:  # a concrete positive bound that the logits' dtype rounds to 0 (a bound below 1e-38 in
        # float32) is raised to the dtype's smallest normal number: a larger bound is still a
        # bound, and the radius stays finite
        positive = np.asarray(lipschitz, np.float64) > 0
    except (TypeError, jax.errors.TracerArrayConversionError):
        positive = None
    if positive is not None:
        tiny = jnp.finfo(logits.dtype).tiny
        lip = jnp.where(jnp.broadcast_to(positive, lip.shape), jnp.maximum(lip, tiny), lip)
    # a quotient beyond the dtype's range is a radius beyond it: the largest finite value
    big = jnp.finfo(logits.dtype).max
    quotient = jnp.where(lip > 0, jnp.minimum(margins / lip, big), margins / lip)
    per_class = jnp.where(others, quotient, jnp.inf)
    radius = jnp.min(per_class)
    return jnp.where(jnp.isfinite(radius), jnp.maximum(radius, 0.0),
                     jnp.where(radius > 0, radius, 0.0))
