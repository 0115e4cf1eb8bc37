"""Operator 2-norms (largest singular values) of dense and convolutional layers.

Szegedy et al. (2013), §4.3 (papers.md §1.6): the upper Lipschitz constant of a fully connected or
convolutional layer followed by a contractive nonlinearity is the operator norm ``‖W‖`` of its
linear part. For a dense kernel that is the largest singular value of the matrix. For a convolution
it is the largest singular value of the (huge, structured) matrix of the map
``x -> conv(x, kernel)``, which is computed here two ways:

* ``method="fft"``: the Fourier formula (1) of §4.3 with the corrected stride factor ``1/Δ``
  (``1/sqrt(Δh·Δw)`` for unequal strides). Exact for circular padding (when the strides divide the
  input size), a sound upper bound for zero padding (see :func:`conv_norm` for the proof). The
  maximum over the frequency blocks is CERTIFIED on the host in float64 (:func:`fourier_norm`:
  Gram matrices from the kernel taps, Cholesky certificates, ``eigvalsh`` of the top blocks).
* ``method="exact"``: block power iteration on ``A^T A`` with the convolution and its transpose
  (``jax.linear_transpose``) inside ``lax.while_loop``, until the relative change of the estimate
  falls below ``tol``; the result is the Rayleigh quotient of an explicit vector, a lower bound.

Everything here is traceable: ``jax.jit(functools.partial(conv_norm, input_shape=...,
padding=...))(kernel)`` and ``jax.vmap`` work; shapes, strides, padding and methods are static.
The Fourier maximum runs on the host through ``jax.pure_callback`` (numpy/SciPy LAPACK; one
call per kernel under ``vmap``): the batched complex SVD of the blocks took minutes on XLA:CPU
for wide layers (benchmarks/results/lab_notes.md). It is not differentiable.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from threadpoolctl import threadpool_limits

from advjax._checks import check_choice, check_floating, check_positive_int, check_rank

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]

_PAD_NAMES = ("SAME", "VALID", "CIRCULAR")


# --------------------------------------------------------------------------------------------------
# Power iteration
# --------------------------------------------------------------------------------------------------


def power_iteration(
    op: Callable[[Array], Array],
    op_t: Callable[[Array], Array],
    v0: Array,
    *,
    iters: int = 2000,
    tol: float = 1e-6,
) -> tuple[Array, Array, Array]:
    """Largest singular value of a linear map by power iteration on ``A^T A`` (``lax.while_loop``).

    Args:
      op: the linear map ``A``, array of ``v0``'s shape -> any shape.
      op_t: its transpose ``A^T``.
      v0: start vector (any shape, not orthogonal to the top right singular vector; a random normal
        draw is fine).
      iters: maximum number of iterations (static, >= 1).
      tol: stop when ``|σ_k - σ_{k-1}| <= tol · σ_k`` (relative change of the estimate).

    Returns:
      ``(sigma, v, n)``: the estimate ``σ = ‖A v‖`` for the final unit vector ``v`` (always a lower
      bound of the true norm, converging to it from below), ``v`` and the number of iterations run.
    """
    check_positive_int(iters, "iters")
    if not tol >= 0:
        raise ValueError(f"`tol` must be >= 0; got {tol!r}.")
    tiny = jnp.finfo(jnp.result_type(v0)).tiny

    def normalise(v):
        return v / jnp.maximum(jnp.linalg.norm(v.ravel()), tiny)

    def cond(carry):
        i, _, prev, sigma = carry
        return (i < iters) & ((i < 2) | (jnp.abs(sigma - prev) > tol * sigma))

    def body(carry):
        i, v, _, sigma = carry
        w = op(v)
        new_sigma = jnp.linalg.norm(w.ravel())
        return i + 1, normalise(op_t(w)), sigma, new_sigma

    v = normalise(v0)
    zero = jnp.zeros((), jnp.result_type(v0))
    n, v, _, _ = lax.while_loop(cond, body, (jnp.int32(0), v, zero, zero))
    sigma = jnp.linalg.norm(op(v).ravel()) / jnp.maximum(jnp.linalg.norm(v.ravel()), tiny)
    return sigma, v, n


def subspace_iteration(
    op: Callable[[Array], Array],
    op_t: Callable[[Array], Array],
    v0: Array,
    *,
    iters: int = 2000,
    tol: float = 1e-6,
) -> tuple[Array, Array, Array]:
    """Largest singular value by block power (subspace) iteration with Rayleigh–Ritz.

    A block of ``b`` vectors ``V`` is iterated as ``V <- orth(A^T A V)`` in ``lax.while_loop``
    (Gram-Schmidt, twice; a vector whose norm falls below ``1e-3`` of its norm before the
    projections lies, to working precision, in the span of the earlier ones and is set to zero, so
    a block wider than the rank of ``A`` keeps ``rank`` orthonormal vectors and zeros). It
    converges like ``(σ_{b+1}/σ_1)^{2k}`` instead of ``(σ_2/σ_1)^{2k}``, which matters for
    convolutions, whose top singular values are often nearly equal (many frequencies).

    The returned estimate is NOT the Ritz value ``σ_max(A V)`` (that exceeds ``‖A‖`` when rounding
    leaves ``V`` non-orthonormal, e.g. when ``b`` is above the rank): it is the Rayleigh quotient
    ``‖A v‖ / ‖v‖`` of the explicit vector ``v = V^T y`` (``y`` the top eigenvector of the ``b × b``
    Gram matrix of ``A V``), recomputed with one more application of ``A``. That is a lower bound
    of ``‖A‖`` whatever ``V`` is, up to the rounding of one evaluation of ``A`` (relative
    ``O(ε · fan-in)``).

    Args:
      op: the linear map ``A`` on arrays of shape ``v0.shape[1:]``.
      op_t: its transpose.
      v0: ``(b, ...)`` start block (random normal).
      iters: maximum iterations (static, >= 1).
      tol: stop when the relative change of the Ritz estimate between two iterations is
        ``<= tol``.

    Returns:
      ``(sigma, V, n)``: the lower estimate ``‖A v‖ / ‖v‖``, the final block ``(b, ...)``
      (orthonormal rows and zero rows) and the number of iterations run.
    """
    check_positive_int(iters, "iters")
    if not tol >= 0:
        raise ValueError(f"`tol` must be >= 0; got {tol!r}.")
    b = v0.shape[0]
    shape = v0.shape[1:]
    a_block = jax.vmap(op)
    at_block = jax.vmap(op_t)
    tiny = jnp.finfo(jnp.result_type(v0)).tiny

    def orth(v):
        # Gram-Schmidt with re-orthogonalisation over the b rows (O(b² n) memory-light; a
        # Householder QR of the tall (n, b) matrix materialises n × n on XLA:CPU).
        rows = jnp.arange(b)

        def step(i, q):
            vi = q[i]
            before = jnp.linalg.norm(vi)
            for _ in range(2):
                coeffs = jnp.where(rows < i, q @ vi, 0.0)
                vi = vi - coeffs @ q
            after = jnp.linalg.norm(vi)
            keep = after > 1e-3 * before
            return q.at[i].set(jnp.where(keep, vi / jnp.maximum(after, tiny), 0.0))

        return lax.fori_loop(0, b, step, v.reshape(b, -1)).reshape(b, *shape)

    def ritz(av):
        # Top eigenpair of the b × b Gram matrix of A V (an SVD of the wide (b, m) matrix would
        # allocate m × m workspace).
        flat = av.reshape(b, -1)
        vals, vecs = jnp.linalg.eigh(flat @ flat.T)
        return jnp.sqrt(jnp.maximum(vals[-1], 0.0)), vecs[:, -1]

    def cond(carry):
        i, _, prev, sigma = carry
        return (i < iters) & ((i < 2) | (jnp.abs(sigma - prev) > tol * sigma))

    def body(carry):
        i, v, _, sigma = carry
        av = a_block(v)
        return i + 1, orth(at_block(av)), sigma, ritz(av)[0]

    zero = jnp.zeros((), jnp.result_type(v0))
    n, v, _, _ = lax.while_loop(cond, body, (jnp.int32(0), orth(v0), zero, zero))
    _, y = ritz(a_block(v))
    top = jnp.tensordot(y, v, axes=1)
    sigma = jnp.linalg.norm(op(top).ravel()) / jnp.maximum(jnp.linalg.norm(top.ravel()), tiny)
    return sigma, v, n


# --------------------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------------------


def dense_norm(
    kernel: Array,
    *,
    method: str = "svd",
    iters: int = 2000,
    tol: float = 1e-6,
    key: Array | None = None,
) -> Array:
    """Largest singular value of a dense kernel (Szegedy §4.3: ``‖W‖`` of a fully connected layer).

    Args:
      kernel: ``(d_in, d_out)`` float matrix (Flax ``Dense`` layout; the norm is that of ``x @ W``
        and equally of ``W^T x``).
      method: ``"svd"`` (``jnp.linalg.svd(..., compute_uv=False)``, exact to float precision) or
        ``"power"`` (power iteration, see :func:`power_iteration`; a lower estimate converging to
        the norm).
      iters: maximum power iterations (``method="power"``).
      tol: relative-change tolerance of the power iteration.
      key: PRNG key of the power iteration's start vector (default ``PRNGKey(0)``).

    Returns:
      Scalar ``σ_max(kernel) >= 0`` (same float dtype as ``kernel``).
    """
    check_rank(kernel, "kernel", 2)
    check_floating(kernel, "kernel")
    check_choice(method, "method", ("svd", "power"))
    kernel = jnp.asarray(kernel)
    if kernel.size == 0:
        return jnp.zeros((), kernel.dtype)
    if method == "svd":
        return jnp.linalg.svd(kernel, compute_uv=False)[0]
    key = jax.random.PRNGKey(0) if key is None else key
    v0 = jax.random.normal(key, (kernel.shape[1],), kernel.dtype)
    sigma, _, _ = power_iteration(lambda v: kernel @ v, lambda u: kernel.T @ u, v0,
                                  iters=iters, tol=tol)
    return sigma


# --------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"`{name}` must be a positive int or a pair of positive ints; "
                         f"got {value}.")
    return value  # type: ignore[return-value]


def resolve_padding(
    padding: Padding,
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
) -> tuple[tuple[tuple[int, int], tuple[int, int]], bool]:
    """Explicit ``((lo, hi), (lo, hi))`` pads for a padding spec, and whether it is circular.

    ``"CIRCULAR"`` uses the pads of ``"SAME"`` (output size ``ceil(H / Δ)``) but fills them by
    wrapping the input around; ``"SAME"`` and ``"VALID"`` are those of
    ``lax.conv_general_dilated``; explicit pairs (possibly negative, which crops) are zero padding.
    """
    if isinstance(padding, str):
        check_choice(padding.upper(), "padding", _PAD_NAMES)
        name = padding.upper()
        lax_name = "SAME" if name == "CIRCULAR" else name
        pads = lax.padtype_to_pads(input_hw, kernel_hw, strides, lax_name)
        return tuple((int(lo), int(hi)) for lo, hi in pads), name == "CIRCULAR"  # type: ignore
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError("`padding` must be 'SAME', 'VALID', 'CIRCULAR' or a pair of (lo, hi) "
                         f"pairs; got {padding!r}.") from None
    if len(pads) != 2:
        raise ValueError(f"`padding` must hold 2 (lo, hi) pairs (H and W); got {padding!r}.")
    return pads, False  # type: ignore[return-value]


def _conv_apply(x, kernel, strides, pads, circular):
    """The convolution as a map on ONE input ``(H, W, C)`` -> ``(Ho, Wo, D)``."""
    if circular:
        x = jnp.pad(x, (pads[0], pads[1], (0, 0)), mode="wrap")
        pads = ((0, 0), (0, 0))
    y = lax.conv_general_dilated(x[None], kernel, strides, pads,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=lax.Precision.HIGHEST)
    return y[0]


def _output_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    return max((n + lo + hi - k) // s + 1, 0)


def circular_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    """Smallest torus length ``N`` (multiple of ``s``) whose circular conv dominates the padded one.

    See :func:`conv_norm` (zero padding) for the proof: ``N >= max(min(lo + n, n + lo + hi),
    (n_out - 1)·s + k)`` and ``s | N``.
    """
    n_out = _output_size(n, k, s, lo, hi)
    need = max(min(lo + n, n + lo + hi), (n_out - 1) * s + k, k, 1)
    return -(-need // s) * s


def _fold(kernel: Array, nh: int, nw: int) -> Array:
    """Kernel taps placed on an ``nh × nw`` torus (taps beyond the torus wrap around and add up)."""
    kh, kw = kernel.shape[:2]
    ph, pw = -(-kh // nh) * nh, -(-kw // nw) * nw
    k = jnp.pad(kernel, ((0, ph - kh), (0, pw - kw), (0, 0), (0, 0)))
    k = k.reshape(ph // nh, nh, pw // nw, nw, *kernel.shape[2:]).sum(axis=(0, 2))
    return k


def fourier_singular_values(kernel: Array, torus: tuple[int, int],
                            strides: tuple[int, int]) -> Array:
    """Singular values of the circular strided convolution on an ``Nh × Nw`` torus, per frequency.

    Args:
      kernel: ``(kh, kw, C, D)`` HWIO kernel (taps beyond the torus wrap around).
      torus: ``(Nh, Nw)``, multiples of the strides.
      strides: ``(Δh, Δw)``.

    Returns:
      ``(Nh/Δh · Nw/Δw, min(D, C·Δh·Δw))`` array: for each alias group ``ξ`` the singular values of
      ``B(ξ) / sqrt(Δh Δw)``, where ``B(ξ)`` (``D × C·Δh·Δw``) stacks the DFT of the kernel at the
      ``Δh·Δw`` frequencies ``ξ + l·N/Δ`` that the subsampling folds onto ``ξ`` (Szegedy eq. (1)
      with the ``1/Δ`` factor of papers.md §1.6), by a batched SVD. Their maximum is the operator
      norm.
    """
    nh, nw = torus
    sh, sw = strides
    c, d = kernel.shape[2:]
    k_hat = jnp.fft.fft2(_fold(kernel, nh, nw), axes=(0, 1))  # (Nh, Nw, C, D)
    mh, mw = nh // sh, nw // sw
    b = k_hat.reshape(sh, mh, sw, mw, c, d).transpose(1, 3, 5, 0, 2, 4)
    b = b.reshape(mh * mw, d, sh * sw * c)
    # The QR-iteration SVD is an order of magnitude faster than the default divide-and-conquer one
    # for batches of small complex matrices on XLA:CPU (benchmarks/lipschitz.py).
    sv = lax.linalg.svd(b, full_matrices=False, compute_uv=False,
                        algorithm=lax.linalg.SvdAlgorithm.QR)
    return sv / math.sqrt(sh * sw)


# Relative margin on σ² of the certified Fourier norm: it covers the float64 rounding of the Gram
# matrices (sums of fan-in·taps products) and of eigvalsh, of relative size n·ε₆₄ ≈ 1e-13 for the
# block sizes n of neural networks. The backward error of the Cholesky tests is added on top
# (:func:`max_eigenvalue_bound`). Invisible at float32 output precision.
_GRAM_MARGIN = 1e-9
_CHUNK_BYTES = 8 * 2**20  # Gram matrices one worker holds at once (cache-sized)


def _half_plane(mh: int, mw: int) -> np.ndarray:
    """Flat indices on the ``mh × mw`` grid of one frequency out of each pair ``{ξ, -ξ}``."""
    i = np.arange(mh * mw)
    a, b = np.divmod(i, mw)
    return i[i <= ((-a) % mh) * mw + ((-b) % mw)]


def _tap_gram(taps: np.ndarray, offset_ok) -> tuple[np.ndarray, np.ndarray]:
    """``X_s = Σ_{t - u = s} L_t^T L_u`` for every tap offset ``s`` (``taps``: ``(kh, kw, p, q)``).

    Returns ``(offsets (S, 2) ints, X (S, q, q) float64)`` for the offsets with ``offset_ok(s)``;
    ``X_{-s} = X_s^T``.
    """
    kh, kw, _, q = taps.shape
    offs, mats = [], []
    for a in range(-(kh - 1), kh):
        for b in range(-(kw - 1), kw):
            if not offset_ok(a, b):
                continue
            lt = taps[max(0, a):kh + min(0, a), max(0, b):kw + min(0, b)].reshape(-1, q)
            lu = taps[max(0, -a):kh - max(0, a), max(0, -b):kw - max(0, b)].reshape(-1, q)
            offs.append((a, b))
            mats.append(lt.T @ lu)
    return np.asarray(offs, np.int64).reshape(-1, 2), np.stack(mats)


class _Grams:
    """``count`` Hermitian PSD ``n × n`` blocks, written NEGATED into caller buffers on request.

    ``fill(idx, out, scratch)`` writes ``-G_i`` for ``i`` in ``idx`` into ``out[:len(idx)]`` and
    returns the largest real diagonal entry; ``scores()`` estimates ``‖G_i‖_F²`` (zeros where
    unknown). Scores order the blocks and decide which ones get the exact Frobenius test; the
    certificate does not depend on them.
    """

    n: int
    count: int

    def scores(self) -> np.ndarray:
        return np.zeros(self.count)

    def scratch(self, b: int) -> np.ndarray | None:
        return None

    def fill(self, idx, out, scratch) -> float:
        raise NotImplementedError


class _ArrayGrams(_Grams):
    """Blocks given as a ``(b, n, n)`` array."""

    def __init__(self, g):
        self._g = np.asarray(g, np.complex128)
        self.count, self.n = self._g.shape[0], self._g.shape[-1]

    def scores(self):
        return np.linalg.norm(self._g.reshape(self.count, -1), axis=1) ** 2

    def fill(self, idx, out, scratch):
        g = self._g[idx]
        np.negative(g, out=out[:len(idx)])
        return float(np.real(np.einsum("bii->bi", g)).max(initial=0.0))


class _TapGrams(_Grams):
    """``G(ξ) = Σ_s Q_s e^{-2πi⟨ξ, s/N⟩}`` from tap-offset matrices (see fourier_gram_blocks).

    One block costs one real matrix product row pair: ``[cos; sin](phases) @ Q`` (``2b × S``
    times ``S × n²``), interleaved into complex storage.
    """

    def __init__(self, xi, offs, mats):
        self._xi, self._offs = xi, offs  # (F, 2) alias-grid frequencies; (S, 2) offsets / N
        self.count, self.n = len(xi), mats.shape[-1]
        self._mats = mats.reshape(len(mats), -1)

    def _phase(self, idx):
        return -2.0 * np.pi * (self._xi[idx] @ self._offs.T)  # (b, S)

    def scores(self):
        # ‖G(ξ)‖_F² = Σ_{s,s'} e^{i(φ_s - φ_s')} ⟨Q_s, Q_s'⟩ for all ξ at once
        c = np.exp(1j * self._phase(slice(None)))
        return np.real(np.einsum("fs,fs->f", c @ (self._mats @ self._mats.T), c.conj()))

    def scratch(self, b):
        return np.empty((2 * b, self.n * self.n))

    def fill(self, idx, out, scratch):
        b, n = len(idx), self.n
        phase = self._phase(idx)
        r = scratch[:2 * b]
        np.matmul(np.concatenate([np.cos(phase), np.sin(phase)]), self._mats, out=r)
        flat = out[:b].reshape(b, n * n)
        np.negative(r[:b], out=flat.real)
        np.negative(r[b:], out=flat.imag)
        return float(r[:b, ::n + 1].max(initial=0.0))


class _StackedGrams(_Grams):
    """Input side with a stride (``CΔ < D``): ``conj(M) M^T / Δ``, ``M`` the ``Δ`` stacked DFTs."""

    def __init__(self, xi, kernel, torus, strides):
        kh, kw, c, d = kernel.shape
        sh, sw = strides
        mh, mw = torus[0] // sh, torus[1] // sw
        self._xi, self._torus, self._strides = xi, np.asarray(torus, np.float64), strides
        self._shape = (c, d)
        self.count, self.n = len(xi), c * sh * sw
        taps = np.stack(np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij"), -1)
        self._taps = taps.reshape(-1, 2).astype(np.float64)
        self._flat = kernel.reshape(kh * kw, c * d)
        alias = np.stack(np.meshgrid(np.arange(sh) * mh, np.arange(sw) * mw, indexing="ij"), -1)
        self._alias = alias.reshape(-1, 2).astype(np.float64)  # (Δ, 2) offsets on the N-grid

    def fill(self, idx, out, scratch):
        b, (c, d) = len(idx), self._shape
        delta = self._strides[0] * self._strides[1]
        zeta = (self._xi[idx][:, None, :] + self._alias[None]).reshape(-1, 2) / self._torus
        k_hat = np.exp(-2j * np.pi * (zeta @ self._taps.T)) @ self._flat  # (bΔ, C·D)
        m = k_hat.reshape(b, delta * c, d)
        g = np.matmul(m.conj(), m.transpose(0, 2, 1)) / delta
        np.negative(g, out=out[:b])
        return float(np.real(np.einsum("bii->bi", g)).max(initial=0.0))


def _gram_source(kernel, torus: tuple[int, int], strides: tuple[int, int]) -> _Grams:
    """The Gram blocks of :func:`fourier_gram_blocks`, in its order, as a :class:`_Grams`."""
    k = np.asarray(kernel, np.float64)
    kh, kw, c, d = k.shape
    nh, nw = torus
    sh, sw = strides
    mh, mw = nh // sh, nw // sw
    xi = np.stack(np.divmod(_half_plane(mh, mw), mw), axis=1).astype(np.float64)  # (F, 2)
    if c * sh * sw < d and (sh, sw) != (1, 1):
        return _StackedGrams(xi, k, torus, strides)
    if d <= c * sh * sw:
        offs, mats = _tap_gram(k, lambda a, b: a % sh == 0 and b % sw == 0)
    else:
        offs, mats = _tap_gram(k.transpose(0, 1, 3, 2), lambda a, b: True)
    return _TapGrams(xi, offs.astype(np.float64) / np.array([nh, nw], np.float64), mats)


def fourier_gram_blocks(kernel, torus: tuple[int, int], strides: tuple[int, int]):
    """Hermitian Gram matrices of the Fourier blocks of a circular strided conv (host, float64).

    For each alias group ``ξ`` in one half of the ``(Nh/Δh) × (Nw/Δw)`` grid (``ξ`` and ``-ξ`` have
    complex-conjugate blocks, hence the same spectrum, for a real kernel), the Gram matrix of the
    block ``B(ξ)/sqrt(Δh Δw)`` of :func:`fourier_singular_values` on its smaller side, whose
    eigenvalues are the squared singular values. They are formed without the blocks:

    * output side (``D <= C·Δh·Δw``): ``B B^H / Δ = Σ_l K̂(ξ+lN/Δ)^T conj(K̂(ξ+lN/Δ)) / Δ
      = Σ_{s: Δ | s} Q_s e^{-2πi⟨ξ, s⟩/N}`` with ``Q_s = Σ_{t-u=s} K_t^T K_u`` (``D × D``, from
      the kernel taps ``K_t`` (``C × D``); the alias sum keeps the offsets that are multiples of
      the stride): ``O(taps² C D²)`` once plus ``O(offsets · D²)`` per block, instead of
      ``O(C D²)`` per block;
    * input side, stride 1 (``C < D``): the same with ``K_t^T`` for ``K_t`` (``C × C``);
    * input side with a stride (``C·Δh·Δw < D``): ``conj(M) M^T / Δ`` with ``M`` the ``Δ``
      stacked ``K̂(ξ + lN/Δ)`` (``C·Δ × D``), each a DFT of the taps.

    Args:
      kernel: ``(kh, kw, C, D)`` real HWIO kernel (array-like; taps beyond the torus wrap around).
      torus: ``(Nh, Nw)``, multiples of the strides.
      strides: ``(Δh, Δw)``.

    Yields:
      ``(b, n, n)`` complex128 chunks of Gram matrices (``n = min(D, C·Δh·Δw)``, or ``min(C, D)``
      for stride 1), together covering every alias group up to conjugation, in the order of
      :func:`_half_plane`.
    """
    src = _gram_source(kernel, torus, strides)
    n = src.n
    b = max(1, _CHUNK_BYTES // (16 * max(n, 1) ** 2))
    scratch = src.scratch(b)
    for lo in range(0, src.count, b):
        idx = np.arange(lo, min(lo + b, src.count))
        out = np.empty((len(idx), n, n), np.complex128)
        src.fill(idx, out, scratch)
        yield np.negative(out, out=out)


@functools.cache
def _cholesky_test() -> Callable[[np.ndarray], bool]:
    """``test(a)``: whether LAPACK's ``zpotrf`` factors the Hermitian ``a`` (overwritten).

    ``a`` is a C-contiguous ``(n, n)`` complex128 array; LAPACK reads it column-major, i.e. reads
    ``a^T = conj(a)``, which is positive definite iff ``a`` is. The routine is SciPy's LAPACK
    (``scipy.linalg.cython_lapack``) called through ``ctypes``, which releases the GIL, so the tests
    of a chunk run in parallel threads; where that pointer is unavailable, SciPy's Python wrapper
    (which holds the GIL: correct, single-threaded).
    """
    try:
        import ctypes

        from scipy.linalg import cython_lapack

        capsule = cython_lapack.__pyx_capi__["zpotrf"]
        name = ctypes.pythonapi.PyCapsule_GetName
        name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        pointer = ctypes.pythonapi.PyCapsule_GetPointer
        pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        if b"int *" not in name(capsule):  # LAPACK's integers are C ints here
            raise TypeError(name(capsule))
        ip = ctypes.POINTER(ctypes.c_int)
        zpotrf = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ip, ctypes.c_void_p, ip, ip)(
            pointer(capsule, name(capsule)))

        def test(a: np.ndarray) -> bool:
            if not (a.flags.c_contiguous and a.dtype == np.complex128 and a.ndim == 2):
                raise ValueError("the Cholesky test needs a C-contiguous complex128 matrix")
            n, info = ctypes.c_int(a.shape[0]), ctypes.c_int(0)
            zpotrf(b"U", ctypes.byref(n), a.ctypes.data, ctypes.byref(n), ctypes.byref(info))
            return info.value == 0

        return test
    except (ImportError, AttributeError, KeyError, TypeError):  # pragma: no cover
        from scipy.linalg import lapack

        return lambda a: lapack.zpotrf(a.T, lower=0, overwrite_a=1, clean=0)[1] == 0


def _rayleigh_rank(g: np.ndarray, steps: int = 8) -> np.ndarray:
    """Rayleigh quotients (lower bounds of ``λ_max``) of a few power steps on each Gram block."""
    j = np.argmax(np.real(np.einsum("bii->bi", g)), axis=1)
    x = g[np.arange(len(g)), :, j][..., None]
    rq = np.zeros(len(g))
    for _ in range(steps):
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(nrm > 0, nrm, 1.0)
        y = np.matmul(g, x)
        rq = np.real(np.sum(x.conj() * y, axis=(1, 2)))
        x = y
    return rq


def _certify(src: _Grams, lam: float, scale: float,
             pool: ThreadPoolExecutor) -> tuple[float, float]:
    """Raise ``(λ*, scale)`` until every block of ``src`` is certified below the test level.

    The test level is ``μ = λ*(1 + margin) + margin·scale + tiny`` at the time of the test (it only
    grows). Seed: the exact top eigenvalue (``eigvalsh``) of the block that a few power steps rank
    highest among the ``b`` best-scored ones. Then, chunk by chunk (in score order, over the
    threads of ``pool``): a block with ``‖G‖_F < μ`` is below ``μ``; every other one gets a
    float64 Cholesky test of ``μI - G`` (it succeeds iff ``μI - G`` is positive definite, up to
    its backward error), and a block whose test fails gets its exact top eigenvalue, which raises
    ``λ*``. Returns the final ``(λ*, scale)``; ``scale`` is the largest diagonal entry seen.
    """
    n = src.n
    scores = src.scores()
    order = np.argsort(-scores, kind="stable")
    b = int(max(1, min(src.count, _CHUNK_BYTES // (16 * n * n))))
    local = threading.local()

    def buffers():
        if not hasattr(local, "out"):
            local.out, local.scratch = np.empty((b, n, n), np.complex128), src.scratch(b)
        return local.out, local.scratch

    out, scratch = buffers()
    seed = order[:b]
    top_diag = src.fill(seed, out, scratch)
    g = -out[:len(seed)]
    lam = max(lam, float(np.linalg.eigvalsh(g[int(np.argmax(_rayleigh_rank(g)))])[-1]))
    state = {"lam": lam, "scale": max(scale, top_diag)}
    lock = threading.Lock()
    positive_definite = _cholesky_test()
    tiny = np.finfo(np.float64).tiny

    def level() -> float:
        return state["lam"] * (1 + _GRAM_MARGIN) + _GRAM_MARGIN * state["scale"] + tiny

    def run(idx):
        out, scratch = buffers()
        top_diag = src.fill(idx, out, scratch)
        with lock:
            state["scale"] = max(state["scale"], top_diag)
        failed = []
        for j, i in enumerate(idx):
            mu = level()
            # λ_max <= ‖G‖_F, computed exactly where the score says it may be below μ
            if scores[i] < 1.01 * mu * mu and np.linalg.norm(out[j]) < mu:
                continue
            a = out[j]
            a.reshape(-1)[::n + 1] += mu  # μI - G
            if not positive_definite(a):
                failed.append(i)
        for i in failed:
            src.fill(np.array([i]), out, scratch)
            top = -float(np.linalg.eigvalsh(out[0])[0])  # out[0] = -G_i
            with lock:
                state["lam"] = max(state["lam"], top)

    list(pool.map(run, [order[lo:lo + b] for lo in range(0, src.count, b)]))
    return state["lam"], state["scale"]


def _bound(sources, workers: int | None) -> float:
    """Certified ``max λ_max`` over the blocks of every source (see max_eigenvalue_bound)."""
    if workers is None:
        workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    lam, scale, n_max = 0.0, 0.0, 0
    _cholesky_test()  # loads SciPy's LAPACK before threadpool_limits looks for BLAS libraries
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for src in sources:
            if src.count and src.n:
                n_max = max(n_max, src.n)
                lam, scale = _certify(src, lam, scale, pool)
    eps = np.finfo(np.float64).eps
    mu = lam * (1 + _GRAM_MARGIN) + _GRAM_MARGIN * scale + np.finfo(np.float64).tiny
    return mu * (1 + 2.0 * (n_max + 1) ** 2 * eps)


def max_eigenvalue_bound(chunks, *, workers: int | None = None) -> float:
    """Certified upper bound of ``max_b λ_max(G_b)`` over Hermitian PSD blocks, exact to 1e-9.

    The exact top eigenvalue (``eigvalsh``) of the most promising block (a few power steps on the
    blocks of largest Frobenius norm) sets the running maximum ``λ*`` (a true eigenvalue of some
    block, so the result is never below the true maximum by more than rounding); every block is
    then CERTIFIED below the test level ``μ = λ*(1 + 1e-9) + 1e-9·scale`` (``scale`` the largest
    diagonal entry) either by ``λ_max <= ‖G‖_F < μ`` or by a successful float64 Cholesky
    factorisation of ``μI - G`` (it exists iff ``μI - G`` is positive definite); a block whose
    factorisation fails gets its exact top eigenvalue, which raises ``λ*`` and ``μ``.

    Rounding: a Cholesky factorisation that runs to completion in floating point is the exact
    factorisation of ``μI - G + E`` with ``‖E‖_2 <= γ_{n+1} trace(R^H R) <~ (n+1)·n·u·μ``
    (Demmel; Higham, Thm 10.3; a few times that in complex arithmetic), so a certified block has
    ``λ_max(G) <= μ(1 + 2(n+1)²ε₆₄)``, the factor applied to the result. The ``1e-9`` margins cover
    the rounding of the Gram matrices and of ``eigvalsh``. So the result is an upper bound of
    every block's ``λ_max`` and within ``1e-9 + 2(n+1)²ε₆₄`` (relative, plus ``1e-9·scale``) of
    the largest one.

    LAPACK runs single-threaded per call (multi-threaded BLAS on many small matrices thrashes on a
    loaded machine); the chunks are spread over ``workers`` threads.

    Args:
      chunks: iterable of ``(b, n, n)`` complex128 (or float64) Hermitian PSD arrays (``n`` may
        differ between chunks).
      workers: threads for the Cholesky tests (default: the CPUs this process may use).

    Returns:
      The bound ``μ >= 0`` (float).
    """
    return _bound((_ArrayGrams(g) for g in chunks), workers)


def fourier_norm(kernel, torus: tuple[int, int], strides: tuple[int, int],
                 *, workers: int | None = None) -> float:
    """``max_ξ σ_max(B(ξ)) / sqrt(Δh Δw)``: the circular strided conv's norm, certified (host).

    The value of ``fourier_singular_values(kernel, torus, strides).max()`` without an SVD: the
    Gram matrices of :func:`fourier_gram_blocks` (formed chunk by chunk into reused buffers, in
    decreasing order of their Frobenius norm) and the certified maximum eigenvalue of
    :func:`max_eigenvalue_bound`, in float64 (numpy/SciPy LAPACK). It is an upper bound of the
    exact-arithmetic norm for the given kernel values, within a relative ``1e-9`` of it.

    Args:
      kernel: ``(kh, kw, C, D)`` real HWIO kernel (array-like).
      torus: ``(Nh, Nw)``, multiples of the strides.
      strides: ``(Δh, Δw)``.
      workers: threads (default: the CPUs this process may use).

    Returns:
      The norm as a Python float.
    """
    def sources():  # built inside _bound's single-threaded BLAS scope
        yield _gram_source(kernel, torus, strides)

    return math.sqrt(_bound(sources(), workers))


def _fourier_norm_callback(kernel, torus, strides):
    value = fourier_norm(kernel, torus, strides)
    # Round up into the kernel's dtype (round-to-nearest moves by at most ε/2 relative).
    return np.asarray(value * (1 + 2 * float(jnp.finfo(kernel.dtype).eps)), kernel.dtype)


@functools.partial(jax.jit, static_argnames=("input_shape", "strides", "pads", "circular"))
def _conv_norm_fft(kernel, input_shape, strides, pads, circular):
    h, w, _ = input_shape
    kh, kw = kernel.shape[:2]
    if circular:
        # Along an axis whose stride does not divide the input, the map selects rows of the stride-1
        # circular convolution along that axis (a contraction), whose norm is then a sound bound.
        torus = (h, w)
        eff = tuple(s if n % s == 0 else 1 for n, s in zip((h, w), strides, strict=True))
    else:
        torus = (circular_size(h, kh, strides[0], *pads[0]),
                 circular_size(w, kw, strides[1], *pads[1]))
        eff = strides
    host = functools.partial(_fourier_norm_callback, torus=torus, strides=eff)
    return jax.pure_callback(host, jax.ShapeDtypeStruct((), kernel.dtype), kernel,
                             vmap_method="sequential")


@functools.partial(jax.jit, static_argnames=("input_shape", "strides", "pads", "circular",
                                             "iters", "tol", "block"))
def _conv_norm_exact(kernel, key, input_shape, strides, pads, circular, iters, tol, block):
    op = lambda x: _conv_apply(x, kernel, strides, pads, circular)
    n = math.prod(input_shape)
    block = max(1, min(block, n))
    x0 = jax.random.normal(key, (block, *input_shape), kernel.dtype)
    op_t_fn = jax.linear_transpose(op, x0[0])
    op_t = lambda y: op_t_fn(y)[0]
    if block == 1:
        sigma, _, _ = power_iteration(op, op_t, x0[0], iters=iters, tol=tol)
    else:
        sigma, _, _ = subspace_iteration(op, op_t, x0, iters=iters, tol=tol)
    return sigma


def conv_norm(
    kernel: Array,
    input_shape: Sequence[int],
    *,
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    method: str = "exact",
    iters: int = 2000,
    tol: float = 1e-6,
    key: Array | None = None,
    block: int = 8,
) -> Array:
    """Operator 2-norm of a 2-D convolution as a linear map on inputs ``(H, W, C)`` (Szegedy §4.3).

    The map is ``x -> lax.conv_general_dilated(x[None], kernel, strides, padding)[0]`` (NHWC / HWIO,
    cross-correlation as in Flax ``nn.Conv``; the bias is a translation and does not count).

    ``method="fft"`` (Szegedy eq. (1), corrected stride factor). For a circular convolution on an
    ``Nh × Nw`` torus with strides ``Δ`` dividing ``N``, Parseval turns the map into independent
    blocks, one per alias group ``ξ ∈ [0, N/Δ)²``: ``Ŷ(ξ) = Δ^{-2} Σ_l K̂(ξ + lN/Δ) X̂(ξ + lN/Δ)``;
    with ``‖x‖² = N^{-2} Σ|X̂|²`` and ``‖y‖² = (N/Δ)^{-2} Σ|Ŷ|²`` the norm is
    ``max_ξ σ_max(B(ξ)) / Δ`` (``B(ξ)`` the ``D × CΔ²`` matrix of DFT coefficients). It is the
    maximum of :func:`fourier_singular_values` but computed by :func:`fourier_norm` on the host in
    float64 (Gram matrices of the blocks formed from the kernel taps; the top blocks' largest
    eigenvalue exactly, every other block certified below it by a Cholesky factorisation), and
    rounded UP into the kernel's dtype: an upper bound of the exact-arithmetic norm of the conv
    with the given kernel values, within ``1e-9`` relative plus one rounding of the dtype (float32:
    ``2.4e-7``) of it.

    * ``padding="CIRCULAR"``: exact when ``Δ`` divides ``(H, W)`` (along an axis where it does not,
      the stride-1 circular norm along that axis is used, a sound bound: the strided map selects
      rows of the stride-1 map).
    * Zero padding (``"SAME"``, ``"VALID"``, explicit pads ``(lo, hi)`` per axis): a sound upper
      bound. Proof (per axis; the 2-D case is the product of the per-axis maps): let
      ``H_out = ⌊(H + lo + hi - k)/Δ⌋ + 1`` and take ``N`` a multiple of ``Δ`` with
      ``N >= max(min(lo + H, H + lo + hi), (H_out - 1)Δ + k)`` (the smallest one is used). Embed
      ``x`` into ``z ∈ R^N`` by ``z_j = x_{j - lo}`` for ``0 <= j - lo < H`` and
      ``j < min(lo + H, H + lo + hi)``, zero elsewhere: a coordinate embedding/projection ``E``
      with ``‖E‖ <= 1`` (entries dropped are cropped by negative pads or never read). The padded
      conv reads ``x_pad[mΔ + u] = z[mΔ + u]`` for ``m < H_out``, ``u < k``; these indices are
      ``<= (H_out - 1)Δ + k - 1 < N``, so no index wraps and the circular strided conv ``C`` on
      ``Z_N`` gives the same outputs at ``m < H_out <= N/Δ``. Hence the padded map is ``P C E``
      with ``P`` selecting the first ``H_out`` outputs, and ``‖P C E‖ <= ‖C‖``, which is the
      Fourier norm above.

    ``method="exact"``: block power iteration on ``A^T A`` (``A^T`` from ``jax.linear_transpose``;
    :func:`subspace_iteration` with ``block`` vectors, plain :func:`power_iteration` for
    ``block=1``) in ``lax.while_loop`` until the relative change of ``σ`` is ``<= tol`` or ``iters``
    is reached. What it guarantees: the result is ``‖A v‖ / ‖v‖`` for an explicit vector ``v``
    (the top Ritz vector, recomputed), hence never above the true norm, whatever the rank of the
    operator and the block size (up to one float evaluation of the conv, ~1e-7 relative in
    float32), and it approaches the norm from below. It is NOT certified from above: ``tol`` bounds
    the change between iterations, not the distance to the norm (a start block nearly orthogonal
    to the top singular vectors converges late). Tests: within 1e-4 relative of the SVD of the
    explicit matrix at ``tol=1e-7``, low-rank operators included. Use ``"fft"`` where an upper
    bound is needed.

    Args:
      kernel: ``(kh, kw, C, D)`` float HWIO kernel.
      input_shape: ``(H, W, C)`` of ONE input (static).
      strides: ``Δ`` or ``(Δh, Δw)``, positive ints.
      padding: ``"SAME"``, ``"VALID"``, ``"CIRCULAR"`` or ``((lo_h, hi_h), (lo_w, hi_w))``.
      method: ``"exact"`` or ``"fft"``.
      iters, tol, key, block: power-iteration settings (``method="exact"``); ``key`` draws the
        start block (default ``PRNGKey(0)``), ``block`` is its number of vectors.

    Returns:
      Scalar operator norm (``>= 0``), dtype of ``kernel``.
    """
    check_rank(kernel, "kernel", 4)
    check_floating(kernel, "kernel")
    check_choice(method, "method", ("exact", "fft"))
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"`input_shape` must be (H, W, C) of positive ints; got {input_shape}.")
    if kernel.shape[2] != input_shape[2]:
        raise ValueError(f"`kernel` input channels ({kernel.shape[2]}) must equal `input_shape`'s "
                         f"C ({input_shape[2]}); kernel shape {kernel.shape} is HWIO.")
    strides = _pair(strides, "strides")
    pads, circular = resolve_padding(padding, input_shape[:2], kernel.shape[:2], strides)
    kernel = jnp.asarray(kernel)
    for axis in range(2):
        n_out = _output_size(input_shape[axis], kernel.shape[axis], strides[axis], *pads[axis])
        if n_out < 1 and not circular:
            raise ValueError(f"the convolution has an empty output along axis {axis} for "
                             f"`input_shape` {input_shape}, kernel {kernel.shape}, pads {pads}.")
    if method == "fft":
        return _conv_norm_fft(kernel, input_shape, strides, pads, circular)
    check_positive_int(iters, "iters")
    check_positive_int(block, "block")
    key = jax.random.PRNGKey(0) if key is None else key
    return _conv_norm_exact(kernel, key, input_shape, strides, pads, circular, iters, float(tol),
                            block)


def conv_operator(kernel: Array, input_shape: Sequence[int], *, strides=(1, 1),
                  padding: Padding = "SAME") -> Callable[[Array], Array]:
    """The convolution of :func:`conv_norm` as a function of one input ``(H, W, C)`` (for tests)."""
    strides = _pair(strides, "strides")
    input_shape = tuple(int(v) for v in input_shape)
    pads, circular = resolve_padding(padding, input_shape[:2], kernel.shape[:2], strides)
    return lambda x: _conv_apply(x, kernel, strides, pads, circular)
