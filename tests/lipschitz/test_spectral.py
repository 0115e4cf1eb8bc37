"""dense_norm / conv_norm against the SVD of the explicit matrix (numpy), jit and no-jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import conv_norm, conv_operator, dense_norm, fourier_singular_values
from advjax.lipschitz.spectral import circular_size, resolve_padding

RTOL_EXACT = 1e-4  # power iteration vs SVD of the explicit Jacobian


def _explicit_singular_values(kernel, input_shape, strides, padding) -> np.ndarray:
    op = conv_operator(kernel, input_shape, strides=strides, padding=padding)
    jac = jax.jacfwd(op)(jnp.zeros(input_shape, jnp.float32))
    mat = np.asarray(jac, np.float64).reshape(-1, int(np.prod(input_shape)))
    return np.linalg.svd(mat, compute_uv=False)


def _kernel(seed, k, c, d):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, k, c, d)), jnp.float32)


# (H, W, C, D, k, stride, padding): several sizes, strides 1-3, every padding kind. Each case
# compiles its own programs (a few seconds on a loaded CPU), so half of them run as `slow`.
CASES = [
    (8, 8, 2, 3, 3, 1, "SAME"),
    (9, 9, 3, 2, 3, 3, "SAME"),
    (8, 8, 3, 2, 3, 2, "VALID"),
    (8, 8, 2, 4, 3, 2, "CIRCULAR"),
    (7, 8, 2, 3, 3, 2, "CIRCULAR"),  # stride does not divide H: fft is a bound only
    (8, 8, 2, 3, 3, 2, ((1, 1), (0, -1))),
]
SLOW_CASES = [
    (8, 8, 2, 3, 3, 2, "SAME"),
    (7, 8, 2, 3, 5, 1, "VALID"),
    (9, 9, 2, 2, 4, 3, "VALID"),
    (8, 8, 2, 3, 3, 1, "CIRCULAR"),
    (9, 6, 2, 3, 2, 3, "CIRCULAR"),
    (8, 7, 2, 2, 3, 1, ((2, 0), (1, 2))),
]
ALL_CASES = [pytest.param(c, id=f"{c[0]}x{c[1]}x{c[2]}-k{c[4]}-s{c[5]}-{c[6]}") for c in CASES] + [
    pytest.param(c, id=f"{c[0]}x{c[1]}x{c[2]}-k{c[4]}-s{c[5]}-{c[6]}", marks=pytest.mark.slow)
    for c in SLOW_CASES]


@pytest.mark.parametrize("case", ALL_CASES)
def test_conv_norm_matches_explicit_svd(case):
    h, w, c, d, k, s, pad = case
    kernel = _kernel(sum(map(hash, case[:6])) % 997, k, c, d)
    sv = _explicit_singular_values(kernel, (h, w, c), (s, s), pad)
    true = float(sv[0])
    exact = float(conv_norm(kernel, (h, w, c), strides=s, padding=pad, method="exact",
                            tol=1e-7, iters=5000))
    fft = float(conv_norm(kernel, (h, w, c), strides=s, padding=pad, method="fft"))
    assert exact == pytest.approx(true, rel=RTOL_EXACT)
    assert exact <= true * (1 + 1e-5)  # power iteration approaches from below
    circular_exact = pad == "CIRCULAR" and h % s == 0 and w % s == 0
    if circular_exact:
        assert fft == pytest.approx(true, rel=1e-5)
    else:
        assert fft >= true * (1 - 1e-5)  # sound upper bound


@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1), (3, 3)])
def test_fourier_spectrum_is_the_full_spectrum_for_circular(strides):
    """Every singular value of the circular strided conv (not only the top) is a Fourier one."""
    h, w, c, d = 6, 6, 2, 3
    kernel = _kernel(7, 3, c, d)
    sv = _explicit_singular_values(kernel, (h, w, c), strides, "CIRCULAR")
    fourier = np.sort(np.asarray(fourier_singular_values(kernel, (h, w), strides)).ravel())[::-1]
    n = min(len(sv), len(fourier))
    np.testing.assert_allclose(fourier[:n], sv[:n], rtol=1e-4, atol=1e-4)
    # Frobenius norm: the Fourier blocks carry all the energy of the matrix.
    np.testing.assert_allclose(np.sum(fourier ** 2), np.sum(sv ** 2), rtol=1e-4)


def test_circular_size_rule():
    # VALID, stride 1: the torus is the input itself.
    assert circular_size(8, 3, 1, 0, 0) == 8
    # SAME stride 1 (pads 1, 1): N >= (H - 1) + k = H + 2.
    assert circular_size(8, 3, 1, 1, 1) == 10
    # a multiple of the stride
    assert circular_size(9, 3, 2, 1, 1) % 2 == 0
    pads, circ = resolve_padding("circular", (8, 8), (3, 3), (1, 1))
    assert circ and pads == ((1, 1), (1, 1))


def test_kernel_larger_than_input_circular_folds():
    kernel = _kernel(3, 5, 1, 2)
    sv = _explicit_singular_values(kernel, (3, 3, 1), (1, 1), "CIRCULAR")
    fft = float(conv_norm(kernel, (3, 3, 1), padding="CIRCULAR", method="fft"))
    assert fft == pytest.approx(float(sv[0]), rel=1e-5)


@pytest.mark.parametrize("use_jit,method", [(False, "fft"), (True, "exact")])
def test_conv_norm_jit_and_vmap(use_jit, method):
    kernels = jnp.stack([_kernel(i, 3, 2, 3) for i in range(3)])
    fn = functools.partial(conv_norm, input_shape=(6, 6, 2), strides=2, padding="SAME",
                           method=method)
    single = jax.jit(fn) if use_jit else fn
    eager = np.array([float(fn(k)) for k in kernels])
    np.testing.assert_allclose(float(single(kernels[0])), eager[0], rtol=1e-5)
    batched = jax.jit(jax.vmap(fn))(kernels)
    np.testing.assert_allclose(np.asarray(batched), eager, rtol=1e-4)


@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (16, 16), (1, 4)])
@pytest.mark.parametrize("use_jit", [False, True])
def test_dense_norm_matches_numpy(shape, use_jit):
    k = jnp.asarray(np.random.default_rng(shape[0] * 31 + shape[1]).normal(size=shape),
                    jnp.float32)
    true = np.linalg.svd(np.asarray(k, np.float64), compute_uv=False)[0]
    for method in ("svd", "power"):
        fn = functools.partial(dense_norm, method=method, tol=1e-8, iters=5000)
        fn = jax.jit(fn) if use_jit else fn
        assert float(fn(k)) == pytest.approx(true, rel=1e-4)


def test_dense_norm_of_a_known_matrix():
    k = jnp.diag(jnp.array([3.0, -5.0, 1.0]))
    assert float(dense_norm(k)) == pytest.approx(5.0, rel=1e-6)
    assert float(dense_norm(k, method="power")) == pytest.approx(5.0, rel=1e-5)


def test_bad_inputs_are_named():
    k = _kernel(0, 3, 2, 3)
    with pytest.raises(ValueError, match="`kernel`"):
        conv_norm(k[0], (6, 6, 2))
    with pytest.raises(ValueError, match="input channels"):
        conv_norm(k, (6, 6, 3))
    with pytest.raises(ValueError, match="`padding`"):
        conv_norm(k, (6, 6, 2), padding="REFLECT")
    with pytest.raises(ValueError, match="`method`"):
        conv_norm(k, (6, 6, 2), method="svd")
    with pytest.raises(ValueError, match="`strides`"):
        conv_norm(k, (6, 6, 2), strides=0)
    with pytest.raises(ValueError, match="`input_shape`"):
        conv_norm(k, (6, 6))
    with pytest.raises(TypeError, match="`kernel`"):
        dense_norm(jnp.ones((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="`kernel`"):
        dense_norm(jnp.ones((2, 2, 2)))
