"""conv_norm's guarantees: "exact" never above the true norm (low-rank operators included), the
certified Fourier norm equal to the SVD of the Fourier blocks and above the dense operator's norm.

Truth is the SVD (float64, numpy) of the explicit matrix of the convolution (jacfwd), or the
batched SVD of the Fourier blocks (:func:`fourier_singular_values`, the previous fft path).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import conv_norm, conv_operator, fourier_singular_values
from advjax.lipschitz.spectral import (
    _cholesky_test,
    _half_plane,
    circular_size,
    fourier_gram_blocks,
    fourier_norm,
    max_eigenvalue_bound,
    resolve_padding,
)

# float32 evaluation of the conv in the Rayleigh quotient: a few ulps (~1e-7) above the float64
# truth at most; the pre-fix Ritz estimate overshoots by 5e-2 and more on these cases.
ABOVE_TRUTH = 1e-6
# float32 SVD of the Fourier blocks (the reference) is backward stable: ~1e-7 relative.
RTOL_SVD = 1e-5


def _dense_sv(kernel, input_shape, strides, padding) -> np.ndarray:
    op = conv_operator(kernel, input_shape, strides=strides, padding=padding)
    jac = jax.jacfwd(op)(jnp.zeros(input_shape, jnp.float32))
    mat = np.asarray(jac, np.float64).reshape(-1, int(np.prod(input_shape)))
    return np.linalg.svd(mat, compute_uv=False)


def _low_rank_kernel(kind, seed, k, c, d):
    rng = np.random.default_rng(seed)
    kern = rng.normal(size=(k, k, c, d))
    if kind == "zero-channel":
        kern[..., 0] = 0.0
    elif kind == "rank-1":  # every tap the same rank-1 C × D matrix up to a scale
        kern = rng.normal(size=(k, k, 1, 1)) * np.outer(rng.normal(size=c), rng.normal(size=d))
    elif kind == "one-tap":
        kern[:] = 0.0
        kern[1, 1] = rng.normal(size=(c, d))
    return jnp.asarray(kern, jnp.float32)


# (H, W, C, D, k, stride, padding, kernel kind): rank below the default block of 8 vectors
# (C_in = 1 on tiny inputs, strides 2-3, rank-deficient kernels), and the block size: each case
# compiles its own power iteration (seconds on a loaded CPU), so half of them run as `slow`.
LOW_RANK = [
    (4, 4, 1, 1, 3, 2, "SAME", "random", 8),  # rank 4
    (5, 5, 2, 1, 3, 2, "SAME", "zero-channel", 8),  # zero operator
    (6, 6, 3, 2, 3, 2, "SAME", "rank-1", 16),
    (3, 5, 1, 3, 3, 2, ((1, 1), (0, 1)), "random", 8),
]
SLOW_LOW_RANK = [
    (6, 6, 1, 1, 3, 2, "VALID", "random", 8),  # rank 4
    (2, 2, 1, 2, 3, 1, "SAME", "random", 8),  # input dim 4
    (8, 8, 1, 1, 3, 3, "VALID", "random", 1),  # rank 4, plain power iteration
    (4, 4, 2, 3, 3, 2, "CIRCULAR", "one-tap", 8),
]
LOW_RANK_PARAMS = [pytest.param(c, id=f"{c[:6]}-{c[7]}-b{c[8]}") for c in LOW_RANK] + [
    pytest.param(c, id=f"{c[:6]}-{c[7]}-b{c[8]}", marks=pytest.mark.slow) for c in SLOW_LOW_RANK]


@pytest.mark.parametrize("case", LOW_RANK_PARAMS)
def test_exact_is_a_lower_bound_at_low_rank(case):
    h, w, c, d, k, s, pad, kind, block = case
    kernel = _low_rank_kernel(kind, h * 7 + w * 3 + c + d, k, c, d)
    sv = _dense_sv(kernel, (h, w, c), (s, s), pad)
    true = float(sv[0])
    exact = float(conv_norm(kernel, (h, w, c), strides=s, padding=pad, method="exact",
                            block=block, tol=1e-7, iters=3000))
    assert exact <= true * (1 + ABOVE_TRUTH) + 1e-6, (exact, true)
    assert exact >= true * (1 - 1e-4) - 1e-6, (exact, true)  # converged
    fft = float(conv_norm(kernel, (h, w, c), strides=s, padding=pad, method="fft"))
    assert fft >= true * (1 - 1e-6) - 1e-6  # sound upper bound


# (kh, kw, C, D, Nh, Nw, Δh, Δw): output-side Gram (D <= CΔ²), input side at stride 1 (C < D),
# input side with strides (CΔ² < D, built from the DFT of the taps), a kernel larger than the
# torus (taps wrap), 1×1 taps, unequal strides.
GRAM_CASES = [
    (3, 3, 4, 3, 8, 8, 1, 1),
    (3, 3, 3, 2, 8, 8, 2, 2),
    (3, 3, 2, 5, 7, 6, 1, 1),
    (3, 3, 1, 8, 8, 8, 2, 2),
    (3, 3, 2, 16, 6, 8, 2, 2),
    (5, 5, 2, 3, 3, 3, 1, 1),
    (1, 1, 3, 7, 4, 4, 1, 1),
    (2, 4, 3, 5, 6, 8, 2, 1),
    (3, 3, 2, 2, 9, 6, 3, 3),
]


@pytest.mark.parametrize("case", GRAM_CASES, ids=[str(c) for c in GRAM_CASES])
def test_gram_blocks_carry_the_squared_fourier_spectrum(case):
    kh, kw, c, d, nh, nw, sh, sw = case
    kernel = np.random.default_rng(sum(case)).normal(size=(kh, kw, c, d)).astype(np.float32)
    sv = np.asarray(fourier_singular_values(jnp.asarray(kernel), (nh, nw), (sh, sw)), np.float64)
    grams = np.concatenate(list(fourier_gram_blocks(kernel, (nh, nw), (sh, sw))))
    idx = _half_plane(nh // sh, nw // sw)
    assert len(grams) == len(idx)
    np.testing.assert_allclose(grams, np.conj(grams.transpose(0, 2, 1)), atol=1e-9)
    eig = np.linalg.eigvalsh(grams)[:, ::-1][:, :sv.shape[1]]
    top = float(sv.max()) ** 2
    # float32 SVD of the reference: absolute error ~1e-6 of the top squared value
    np.testing.assert_allclose(eig, sv[idx] ** 2, rtol=1e-5, atol=1e-5 * top)
    assert fourier_norm(kernel, (nh, nw), (sh, sw)) == pytest.approx(float(sv.max()),
                                                                     rel=RTOL_SVD)


def test_half_plane_covers_every_frequency_up_to_conjugation():
    for mh, mw in [(1, 1), (4, 4), (5, 3), (6, 1), (2, 7)]:
        idx = _half_plane(mh, mw)
        a, b = np.divmod(idx, mw)
        conj = ((-a) % mh) * mw + ((-b) % mw)
        assert set(idx) | set(conj) == set(range(mh * mw))
        assert len(set(idx) & set(conj)) == len(set(idx[idx == conj]))  # no pair twice


# conv_norm(fft) against the batched SVD of the Fourier blocks it replaces, on the same torus.
FFT_CASES = [
    ((8, 8, 4), (3, 3, 4, 6), 1, "SAME"),
    ((9, 9, 3), (3, 3, 3, 5), 2, "SAME"),
    ((8, 8, 2), (3, 3, 2, 12), 2, "VALID"),
    ((8, 8, 6), (3, 3, 6, 4), 2, "CIRCULAR"),
    ((7, 8, 3), (3, 3, 3, 3), 2, "CIRCULAR"),  # stride does not divide H
    ((8, 6, 5), (5, 5, 5, 2), 1, ((2, 0), (1, 2))),
    ((6, 6, 3), (2, 2, 3, 3), 3, "SAME"),
]


@pytest.mark.parametrize("case", FFT_CASES, ids=[str(c[:2]) + str(c[2:]) for c in FFT_CASES])
def test_fft_equals_the_svd_path_and_bounds_the_dense_norm(case):
    shape, kshape, s, pad = case
    kernel = jnp.asarray(np.random.default_rng(sum(kshape)).normal(size=kshape), jnp.float32)
    pads, circ = resolve_padding(pad, shape[:2], kshape[:2], (s, s))
    if circ:
        torus = shape[:2]
        eff = tuple(s if n % s == 0 else 1 for n in shape[:2])
    else:
        torus = tuple(circular_size(n, k, s, *p)
                      for n, k, p in zip(shape[:2], kshape[:2], pads, strict=True))
        eff = (s, s)
    svd_path = float(np.max(np.asarray(fourier_singular_values(kernel, torus, eff))))
    fft = float(conv_norm(kernel, shape, strides=s, padding=pad, method="fft"))
    assert fft == pytest.approx(svd_path, rel=RTOL_SVD)
    # float64 value rounded UP into float32: never below the float64 certificate
    assert fft >= fourier_norm(np.asarray(kernel), torus, eff)
    true = float(_dense_sv(kernel, shape, (s, s), pad)[0])
    assert fft >= true * (1 - 1e-7)
    if circ and all(n % s == 0 for n in shape[:2]):
        assert fft == pytest.approx(true, rel=1e-6)


def test_max_eigenvalue_bound_finds_a_block_the_ranking_misses():
    """Power steps from the largest diagonal entry rank block 0 below block 1, but block 0's
    top eigenvalue (10, along (e2 + e3)/√2) is the largest: only its failed Cholesky test finds it.
    """
    g0 = np.diag([9.0, 5.0, 5.0, 0.0])
    g0[1, 2] = g0[2, 1] = 5.0  # eigenvalues 10, 9, 0, 0
    g1 = np.diag([9.5, 1.0, 1.0, 1.0])
    blocks = np.stack([g0, g1]).astype(np.complex128)
    assert max_eigenvalue_bound([blocks]) == pytest.approx(10.0, rel=1e-8)
    assert max_eigenvalue_bound([blocks]) >= 10.0
    # the same split into two chunks, in either order
    assert max_eigenvalue_bound([blocks[1:], blocks[:1]]) == pytest.approx(10.0, rel=1e-8)
    assert max_eigenvalue_bound([blocks[:1], blocks[1:]]) >= 10.0


def test_max_eigenvalue_bound_on_random_blocks():
    rng = np.random.default_rng(0)
    chunks = []
    for n, b in [(5, 30), (12, 7), (5, 1)]:
        a = rng.normal(size=(b, n, n)) + 1j * rng.normal(size=(b, n, n))
        a *= rng.uniform(0.1, 1.0, size=(b, 1, 1))  # many blocks, near-equal tops
        chunks.append(a @ np.conj(a.transpose(0, 2, 1)))
    truth = max(float(np.linalg.eigvalsh(c)[:, -1].max()) for c in chunks)
    bound = max_eigenvalue_bound(chunks, workers=2)
    assert truth <= bound <= truth * (1 + 1e-8)
    zero = np.zeros((3, 4, 4), np.complex128)
    assert 0.0 <= max_eigenvalue_bound([zero]) <= 1e-290


def test_cholesky_test_decides_positive_definiteness():
    """The GIL-free zpotrf call accepts exactly the positive definite matrices (eigvalsh truth)."""
    rng = np.random.default_rng(3)
    test = _cholesky_test()
    for n in (1, 4, 37):
        a = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
        g = a @ np.conj(a.T)
        top = float(np.linalg.eigvalsh(g)[-1])
        # margins of 1e-6 relative: far above the float64 Cholesky backward error (~n²ε)
        for mu, expect in [(top * (1 + 1e-6), True), (top * (1 - 1e-6), False)]:
            m = np.ascontiguousarray(mu * np.eye(n) - g)
            assert test(m) is expect, (n, mu, top)
    with pytest.raises(ValueError, match="C-contiguous complex128"):
        test(np.eye(3))


@pytest.mark.parametrize("workers", [1, 3])
def test_fourier_norm_is_the_same_for_any_thread_count(workers):
    """Threads change the order in which blocks raise the running maximum, never the result
    beyond the certificate's margin; the SVD of the blocks is the truth (float64 numpy)."""
    kernel = np.random.default_rng(5).normal(size=(3, 3, 12, 12))
    torus = (10, 9)
    sv = np.linalg.svd(np.fft.fft2(kernel, s=torus, axes=(0, 1)).reshape(-1, 12, 12),
                       compute_uv=False)
    truth = float(sv.max())
    value = fourier_norm(kernel, torus, (1, 1), workers=workers)
    assert truth <= value <= truth * (1 + 1e-9)


def test_max_eigenvalue_bound_catches_a_block_just_above_the_seed():
    """Block 1 (top 10 - 5e-4) seeds the running maximum; block 0's top, 10, exceeds it by 5e-5
    relative and must still be found: a Cholesky test at any level above 10 - 5e-4 would miss it.
    """
    g0 = np.diag([9.0, 5.0, 5.0, 0.0])
    g0[1, 2] = g0[2, 1] = 5.0  # eigenvalues 10, 9, 0, 0; power steps from e1 see only 9
    g1 = np.diag([10.0 - 5e-4, 1.0, 1.0, 1.0])
    bound = max_eigenvalue_bound([np.stack([g0, g1]).astype(np.complex128)])
    assert 10.0 <= bound <= 10.0 * (1 + 1e-8)
