"""Contrast normalisation as one primitive, so the graph walk can bound it (Szegedy §4.3).

``φ(x) = x / (ε + ‖x‖²)^γ``, the norm taken over ``axis`` (all axes by default, or per position over
the channel axis, ...). Its Jacobian on each group is ``s·(I − 2γ x xᵀ/(ε + ‖x‖²))`` with
``s = (ε + ‖x‖²)^{−γ}``; the eigenvalues are ``s`` and ``s·(1 − 2γ t)`` with ``t ∈ [0, 1)``, so for
``γ ∈ [0, 1]`` the spectral norm is ``<= s <= ε^{−γ}`` (Szegedy et al. 2013, §4.3; the paper states
``γ ∈ [0.5, 1]``). Groups are disjoint, so the same bound holds for the whole map.

As a JAX primitive (with evaluation, JVP, batching and lowering rules) it appears in the jaxpr as
one equation ``advjax_contrast_norm`` whose parameters the graph walk reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

from advjax._checks import check_floating

Array = jax.Array

contrast_norm_p = jcore.Primitive("advjax_contrast_norm")


def _impl(x, *, eps: float, gamma: float, axis: tuple[int, ...]):
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * (eps + sq) ** (-gamma)


contrast_norm_p.def_impl(_impl)
contrast_norm_p.def_abstract_eval(lambda x, **_: jax.core.ShapedArray(x.shape, x.dtype))
mlir.register_lowering(contrast_norm_p, mlir.lower_fun(_impl, multiple_results=False))


def _jvp(primals, tangents, *, eps, gamma, axis):
    (x,), (t,) = primals, tangents
    t = ad.instantiate_zeros(t)
    return jax.jvp(lambda v: _impl(v, eps=eps, gamma=gamma, axis=axis), (x,), (t,))


ad.primitive_jvps[contrast_norm_p] = _jvp


def _batch(args, dims, *, eps, gamma, axis):
    (x,), (d,) = args, dims
    x = jnp.moveaxis(x, d, 0)
    axis = tuple(a + 1 for a in axis)
    return contrast_norm_p.bind(x, eps=eps, gamma=gamma, axis=axis), 0


batching.primitive_batchers[contrast_norm_p] = _batch


def contrast_normalize(
    x: Array,
    *,
    eps: float = 1.0,
    gamma: float = 0.5,
    axis: int | Sequence[int] | None = None,
) -> Array:
    """Contrast normalisation ``x / (ε + ‖x‖²)^γ`` (Szegedy et al. 2013, §4.3).

    Args:
      x: float array of any shape.
      eps: ``ε > 0``.
      gamma: ``γ ∈ [0, 1]`` (Szegedy: ``[0.5, 1]``).
      axis: axes of the norm (``None``: all axes; e.g. ``-1`` for per-position channel norms).

    Returns:
      Array of the shape of ``x``. Its Lipschitz constant is ``<= eps ** -gamma`` (module
      docstring); :func:`advjax.lipschitz.layer_bounds` uses exactly that.
    """
    check_floating(x, "x")
    if not eps > 0:
        raise ValueError(f"`eps` must be > 0; got {eps!r}.")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"`gamma` must lie in [0, 1]; got {gamma!r}.")
    x = jnp.asarray(x)
    if axis is None:
        axes = tuple(range(x.ndim))
    else:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        axes = tuple(sorted(a % x.ndim for a in axes)) if x.ndim else ()
    return contrast_norm_p.bind(x, eps=float(eps), gamma=float(gamma), axis=axes)
