"""Spectral regularisers: penalise each upper Lipschitz bound (Szegedy et al. 2013, §4.3).

"small bounds guarantee that no such examples can appear. This suggests a simple regularization of
the parameters, consisting in penalizing each upper Lipschitz bound" (papers.md §1.6). The per-layer
bounds are the operator norms ``‖W_k‖``; here they are estimated differentiably by power iteration
with persistent vectors (one or a few iterations per training step, warm-started from the previous
step's vectors, as in spectral normalisation), in the optax style of two pure functions:

* ``penalty = spectral_penalty(specs, n_iters=1, reduce="sum")``
* ``state = penalty.init(params, key)``: the persistent vectors (a pytree; keep it in the train
  state or a Flax variable collection);
* ``value, state = penalty.update(params, state)``: ``Σ_k σ_k`` (or ``Σ_k log σ_k``, i.e. the log of
  Szegedy's product bound ``∏ L_k``), differentiable in ``params``; ``state.sigmas`` holds the
  estimates.

Dense layers use the kernel matrix; convolutional layers use the true convolution operator on their
input shape (the conv and its transpose), not the reshaped kernel matrix, so ``σ_k`` estimates the
bound of :func:`advjax.lipschitz.conv_norm`. The estimates approach the norm from below; the
gradient is that of ``‖A v‖`` at the current vector (``u vᵀ`` for a matrix), the standard choice.

:func:`spectral_normalize` divides a kernel by its (reshaped-matrix) power-iteration estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from advjax._checks import check_choice, check_positive_int
from advjax.lipschitz.spectral import Padding, _conv_apply, _pair, resolve_padding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Which kernel to penalise and how it acts.

    Attributes:
      path: keys from the params root to the kernel, e.g. ``("Dense_0", "kernel")``.
      kind: ``"dense"`` (kernel ``(d_in, d_out)``) or ``"conv"`` (HWIO kernel).
      input_shape: ``(H, W, C)`` of the conv's input (``kind="conv"``).
      strides: conv strides.
      padding: conv padding (``"SAME"``, ``"VALID"``, ``"CIRCULAR"`` or explicit pairs).
    """

    path: tuple[str, ...]
    kind: str = "dense"
    input_shape: tuple[int, ...] | None = None
    strides: tuple[int, int] = (1, 1)
    padding: Any = "SAME"


def dense_spec(*path: str) -> LayerSpec:
    """Spec of a dense kernel at ``path`` (e.g. ``dense_spec("Dense_0", "kernel")``)."""
    return LayerSpec(tuple(path), "dense")


def conv_spec(*path: str, input_shape: Sequence[int], strides: int | Sequence[int] = (1, 1),
              padding: Padding = "SAME") -> LayerSpec:
    """Spec of a conv kernel at ``path`` acting on inputs ``input_shape = (H, W, C)``."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"`input_shape` must be (H, W, C); got {shape}.")
    pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return LayerSpec(tuple(path), "conv", shape, _pair(strides, "strides"), pad)


class SpectralState(NamedTuple):
    """Persistent power-iteration vectors (one per spec) and the latest estimates ``(n_specs,)``."""

    vectors: tuple[Array, ...]
    sigmas: Array


class SpectralPenalty(NamedTuple):
    """``init(params, key) -> state`` and ``update(params, state) -> (penalty, state)``."""

    init: Callable[[Any, Array], SpectralState]
    update: Callable[[Any, SpectralState], tuple[Array, SpectralState]]


def _get(params: Mapping, path: Sequence[str]) -> Array:
    node = params
    for i, k in enumerate(path):
        try:
            node = node[k]
        except (KeyError, TypeError):
            raise KeyError(f"params have no entry {'/'.join(path[:i + 1])!r} (spec path "
                           f"{'/'.join(path)!r})") from None
    return node


def _operator(spec: LayerSpec, kernel: Array):
    if spec.kind == "dense":
        if kernel.ndim != 2:
            raise ValueError(f"dense kernel at {'/'.join(spec.path)!r} must have rank 2; got "
                             f"shape {kernel.shape}.")
        return (lambda v: v @ kernel), (kernel.shape[0],)
    if kernel.ndim != 4:
        raise ValueError(f"conv kernel at {'/'.join(spec.path)!r} must be HWIO (rank 4); got "
                         f"shape {kernel.shape}.")
    pads, circular = resolve_padding(spec.padding, spec.input_shape[:2], kernel.shape[:2],
                                     spec.strides)
    return (lambda v: _conv_apply(v, kernel, spec.strides, pads, circular)), spec.input_shape


def _sigma_step(spec: LayerSpec, kernel: Array, v: Array, n_iters: int) -> tuple[Array, Array]:
    """``n_iters`` power steps from ``v`` (no gradient), then ``σ = ‖A v‖`` (gradient to kernel)."""
    op, _ = _operator(spec, kernel)
    k_ng = jax.lax.stop_gradient(kernel)
    op_ng, _ = _operator(spec, k_ng)
    v = jax.lax.stop_gradient(v)

    def body(_, v):
        w, vjp = jax.vjp(op_ng, v)
        u = vjp(w)[0]
        return u / jnp.maximum(jnp.linalg.norm(u.ravel()), 1e-12)

    v = jax.lax.fori_loop(0, n_iters, body, v)
    v = jax.lax.stop_gradient(v)
    return jnp.linalg.norm(op(v).ravel()), v


def spectral_penalty(
    specs: Sequence[LayerSpec],
    *,
    n_iters: int = 1,
    reduce: str = "sum",
) -> SpectralPenalty:
    """Penalty on the per-layer upper Lipschitz bounds (Szegedy §4.3), as ``init``/``update``.

    Args:
      specs: the layers (:func:`dense_spec`, :func:`conv_spec`).
      n_iters: power iterations per ``update`` (static, >= 1; warm-started from the state).
      reduce: ``"sum"`` (``Σ σ_k``), ``"log_sum"`` (``Σ log σ_k = log ∏ σ_k``) or ``"sum_squares"``.

    Returns:
      :class:`SpectralPenalty`. ``init(params, key)`` draws unit start vectors (dense: ``(d_in,)``,
      conv: ``input_shape``); ``update(params, state)`` returns ``(penalty scalar, new state)``;
      both are pure and jit-able, and ``jax.grad`` of the penalty w.r.t. ``params`` is the
      regulariser's gradient.
    """
    specs = tuple(specs)
    if not specs:
        raise ValueError("`specs` must name at least one layer.")
    check_positive_int(n_iters, "n_iters")
    check_choice(reduce, "reduce", ("sum", "log_sum", "sum_squares"))
    for s in specs:
        check_choice(s.kind, "spec.kind", ("dense", "conv"))
        if s.kind == "conv" and s.input_shape is None:
            raise ValueError(f"conv spec {'/'.join(s.path)!r} needs `input_shape`.")

    def init(params, key: Array) -> SpectralState:
        vecs = []
        for i, s in enumerate(specs):
            kernel = _get(params, s.path)
            _, shape = _operator(s, kernel)
            v = jax.random.normal(jax.random.fold_in(key, i), shape, kernel.dtype)
            vecs.append(v / jnp.linalg.norm(v.ravel()))
        return SpectralState(tuple(vecs), jnp.zeros((len(specs),), jnp.float32))

    def update(params, state: SpectralState) -> tuple[Array, SpectralState]:
        sigmas, vecs = [], []
        for s, v in zip(specs, state.vectors, strict=True):
            sigma, v_new = _sigma_step(s, _get(params, s.path), v, n_iters)
            sigmas.append(sigma)
            vecs.append(v_new)
        sig = jnp.stack(sigmas)
        if reduce == "sum":
            value = sig.sum()
        elif reduce == "sum_squares":
            value = (sig * sig).sum()
        else:
            value = jnp.log(jnp.maximum(sig, 1e-12)).sum()
        return value, SpectralState(tuple(vecs), jax.lax.stop_gradient(sig).astype(jnp.float32))

    return SpectralPenalty(init, update)


def spectral_normalize(
    kernel: Array,
    u: Array,
    *,
    n_iters: int = 1,
    eps: float = 1e-12,
) -> tuple[Array, Array]:
    """Spectral normalisation of a kernel (power iteration on the reshaped ``(-1, d_out)`` matrix).

    Args:
      kernel: float kernel, last axis = outputs (dense ``(d_in, d_out)``, conv HWIO, ...).
      u: ``(d_out,)`` persistent vector (e.g. a Flax ``"spectral"`` variable; start from a random
        unit vector).
      n_iters: power iterations (static, >= 1).
      eps: floor of the norms.

    Returns:
      ``(kernel / σ, u_new)`` where ``σ = vᵀ W u`` estimates the largest singular value of
      ``W = kernel.reshape(-1, d_out)`` (from below); gradients flow through ``σ`` with ``u, v``
      held fixed. For a dense kernel the normalised kernel has spectral norm ``≈ 1``; for a conv
      kernel this is the matrix norm of the reshaped kernel, not the convolution's operator norm
      (use :func:`spectral_penalty` with a :func:`conv_spec` for that).
    """
    check_positive_int(n_iters, "n_iters")
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"`kernel` must have rank >= 2; got shape {kernel.shape}.")
    w = kernel.reshape(-1, kernel.shape[-1])
    if u.shape != (w.shape[1],):
        raise ValueError(f"`u` must have shape ({w.shape[1]},); got {u.shape}.")
    w_ng = jax.lax.stop_gradient(w)

    def body(_, u):
        v = w_ng @ u
        v = v / jnp.maximum(jnp.linalg.norm(v), eps)
        u = w_ng.T @ v
        return u / jnp.maximum(jnp.linalg.norm(u), eps)

    u = jax.lax.stop_gradient(jax.lax.fori_loop(0, n_iters, body, u))
    v = jax.lax.stop_gradient(w_ng @ u)
    v = v / jnp.maximum(jnp.linalg.norm(v), eps)
    sigma = v @ w @ u
    return kernel / jnp.maximum(sigma, eps), u
