# ruff: noqa: E501  (the configuration table reads best as one case per line)
"""Lowered convolutions equal XLA's and an independent float64 NumPy reference.

Tolerance: every output (or input-gradient) element is a sum of ``n`` products; float32 recursive
summation in any order errs by at most ``n · eps · Σ|w||x|`` (Higham, Thm. 3.1 with γ_n ≈ n·eps),
so two float32 evaluations differ by at most twice that, elementwise. ``Σ|w||x|`` is the same
convolution of ``|x|`` with ``|w|`` (for gradients: of ``|ct|`` with ``|w|`` transposed), computed
here in float64.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.lowering import (
    MAC_MAX_IN_CHANNELS,
    SWAPPED_MIN_IN_CHANNELS,
    conv_gemm,
    lower_convs,
    lowering_plan,
)

EPS = float(np.finfo(np.float32).eps)


def np_conv(x, w, strides, padding, lhs_dil, rhs_dil, dn, fg=1, bg=1, ct=None):
    """Direct float64 convolution: explicit dilation, padding, crop, loops over taps.

    With ``ct`` (a cotangent in the output layout) returns the vector-Jacobian products
    ``(d<ct, y>/dx, d<ct, y>/dw)`` instead, by the same loops transposed.
    """
    spec = lax.conv_dimension_numbers(np.shape(x), np.shape(w), dn)
    ls, rs, os_ = spec
    d = len(strides)
    x_perm, w_perm = (ls[0], *ls[2:], ls[1]), (*rs[2:], rs[1], rs[0])
    x = np.transpose(np.asarray(x, np.float64), x_perm)
    w = np.transpose(np.asarray(w, np.float64), w_perm)
    n, c = x.shape[0], x.shape[-1]
    # lhs dilation: zeros between inputs; then padding: positive pads with zeros, negative crops.
    sp = [(s - 1) * ld + 1 for s, ld in zip(x.shape[1:-1], lhs_dil, strict=True)]
    dil_idx = (slice(None), *[slice(None, None, ld) for ld in lhs_dil], slice(None))
    xd = np.zeros((n, *sp, c))
    xd[dil_idx] = x
    big = np.pad(xd, [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in padding] + [(0, 0)])
    crop = (slice(None), *[slice(max(-lo, 0), big.shape[a + 1] - max(-hi, 0))
                           for a, (lo, hi) in enumerate(padding)], slice(None))
    xp = big[crop]
    kernel, cin, cout = w.shape[:d], w.shape[d], w.shape[d + 1]
    out = [(p - (k - 1) * rd - 1) // s + 1 for p, k, rd, s in
           zip(xp.shape[1:-1], kernel, rhs_dil, strides, strict=True)]
    groups = max(fg, bg)
    og, nb = cout // groups, n // bg
    perm = [0] * (d + 2)
    canon = {0: 0, 1: d + 1, **{2 + i: 1 + i for i in range(d)}}
    for role, axis in enumerate(os_):
        perm[axis] = canon[role]
    y = np.zeros((nb, *out, cout))
    if ct is not None:
        cty = np.transpose(np.asarray(ct, np.float64), np.argsort(perm))
        gxp, gw = np.zeros_like(xp), np.zeros_like(w)

    def group_rows(g):
        return (Ellipsis, slice(g * cin, (g + 1) * cin)) if fg > 1 else \
            (slice(g * nb, (g + 1) * nb),)

    for tap in itertools.product(*(range(k) for k in kernel)):
        idx = (slice(None), *[slice(t * rd, t * rd + (o - 1) * s + 1, s)
                              for t, rd, o, s in zip(tap, rhs_dil, out, strides, strict=True)],
               slice(None))
        patch = xp[idx]                                             # (N, out..., C)
        for g in range(groups):
            cols = slice(g * og, (g + 1) * og)
            rows = group_rows(g)
            if ct is None:
                y[..., cols] += patch[rows] @ w[tap][:, cols]
            else:
                view = gxp[idx]
                view[rows] += cty[..., cols] @ w[tap][:, cols].T
                gxp[idx] = view
                pr = patch[rows].reshape(-1, cin)
                gw[tap][:, cols] += pr.T @ cty[..., cols].reshape(-1, og)
    if ct is None:
        return np.transpose(y, perm)
    gbig = np.zeros_like(big)
    gbig[crop] = gxp
    inner = (slice(None), *[slice(max(lo, 0), max(lo, 0) + s) for (lo, _), s in
                            zip(padding, sp, strict=True)], slice(None))
    gx = gbig[inner][dil_idx]
    return np.transpose(gx, np.argsort(x_perm)), np.transpose(gw, np.argsort(w_perm))


def _pads(padding, x_shape, w_shape, dn, strides, lhs_dil, rhs_dil):
    if not isinstance(padding, str):
        return padding
    spec = lax.conv_dimension_numbers(x_shape, w_shape, dn)
    in_sp = [(x_shape[a] - 1) * ld + 1 for a, ld in zip(spec.lhs_spec[2:], lhs_dil, strict=True)]
    k = [(w_shape[a] - 1) * rd + 1 for a, rd in zip(spec.rhs_spec[2:], rhs_dil, strict=True)]
    return lax.padtype_to_pads(in_sp, k, strides, padding)


# (name, x shape, w shape, dimension numbers, strides, padding, lhs dil, rhs dil, fg, bg)
CASES = [
    ("same", (2, 7, 7, 3), (3, 3, 3, 5), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 1, 1),
    ("valid", (2, 7, 6, 3), (3, 2, 3, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), "VALID", (1, 1), (1, 1), 1, 1),
    ("stride2_same", (2, 8, 7, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), (2, 2), "SAME", (1, 1), (1, 1), 1, 1),
    ("stride21_asym", (2, 9, 8, 2), (3, 3, 2, 4), ("NHWC", "HWIO", "NHWC"), (2, 1), ((1, 2), (0, 1)), (1, 1), (1, 1), 1, 1),
    ("torch_pad1_stride2", (2, 8, 8, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), (2, 2), ((1, 1), (1, 1)), (1, 1), (1, 1), 1, 1),
    ("negative", (2, 9, 8, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), ((-1, 1), (2, -2)), (1, 1), (1, 1), 1, 1),
    ("negative_stride", (2, 10, 9, 2), (2, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (2, 3), ((-2, -1), (-1, 2)), (1, 1), (1, 1), 1, 1),
    ("rhs_dilation", (2, 9, 9, 2), (3, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (2, 2), 1, 1),
    ("lhs_dilation", (2, 5, 4, 2), (3, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), ((2, 2), (1, 2)), (2, 3), (1, 1), 1, 1),
    ("transposed_neg", (2, 5, 5, 2), (3, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), ((1, -1), (-1, 1)), (2, 2), (1, 1), 1, 1),
    ("all_dilations_stride", (2, 6, 7, 2), (2, 3, 2, 3), ("NHWC", "HWIO", "NHWC"), (2, 1), ((1, 0), (2, 1)), (2, 1), (2, 2), 1, 1),
    ("groups2", (2, 6, 6, 4), (3, 3, 2, 6), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 2, 1),
    ("depthwise", (2, 6, 6, 3), (3, 3, 1, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 3, 1),
    ("depthwise_mult2_stride", (2, 7, 7, 3), (3, 3, 1, 6), ("NHWC", "HWIO", "NHWC"), (2, 2), "SAME", (1, 1), (1, 1), 3, 1),
    ("batch_groups", (4, 6, 6, 3), (3, 3, 3, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), "VALID", (1, 1), (1, 1), 1, 2),
    ("one_by_one", (2, 5, 5, 4), (1, 1, 4, 3), ("NHWC", "HWIO", "NHWC"), (1, 1), "VALID", (1, 1), (1, 1), 1, 1),
    ("one_by_one_stride", (2, 6, 6, 4), (1, 1, 4, 3), ("NHWC", "HWIO", "NHWC"), (2, 2), "VALID", (1, 1), (1, 1), 1, 1),
    ("nchw", (2, 3, 7, 6), (4, 3, 3, 3), ("NCHW", "OIHW", "NCHW"), (2, 1), ((1, 1), (1, 0)), (1, 1), (1, 1), 1, 1),
    ("nchw_groups", (2, 4, 6, 6), (4, 2, 3, 3), ("NCHW", "OIHW", "NCHW"), (1, 1), "SAME", (1, 1), (1, 2), 2, 1),
    ("mixed_layouts", (2, 6, 5, 3), (4, 3, 3, 2), ("NHWC", "OIHW", "NCHW"), (1, 1), "SAME", (1, 1), (1, 1), 1, 1),
    ("conv1d", (2, 11, 3), (3, 3, 4), ("NWC", "WIO", "NWC"), (2,), ((1, 2),), (1,), (1,), 1, 1),
    ("conv1d_ncw_dil", (2, 3, 11), (4, 3, 3), ("NCW", "OIW", "NCW"), (1,), ((-1, 2),), (2,), (2,), 1, 1),
    ("conv3d", (2, 5, 5, 4, 2), (2, 3, 2, 2, 3), ("NDHWC", "DHWIO", "NDHWC"), (1, 2, 1), "SAME", (1, 1, 1), (1, 1, 1), 1, 1),
    ("conv3d_ncdhw_groups", (2, 4, 4, 5, 5), (4, 2, 2, 2, 3), ("NCDHW", "OIDHW", "NCDHW"), (1, 1, 2), ((0, 1), (1, 0), (-1, 1)), (1, 1, 1), (1, 1, 1), 2, 1),
    ("one_channel", (2, 7, 7, 1), (3, 3, 1, 4), ("NHWC", "HWIO", "NHWC"), (1, 1), "SAME", (1, 1), (1, 1), 1, 1),
    ("one_channel_nchw_stride_dil", (2, 1, 9, 8), (4, 1, 3, 2), ("NCHW", "OIHW", "NCHW"), (2, 1), ((1, 1), (0, 1)), (1, 1), (2, 1), 1, 1),
    ("one_channel_conv1d_lhs_dil", (2, 9, 1), (4, 1, 3), ("NWC", "WIO", "NWC"), (1,), ((2, 1),), (2,), (1,), 1, 1),
]


def _make(case):
    _, xs, ws, dn, strides, padding, ld, rd, fg, bg = case

    def conv(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, ld, rd, dn,
                                        feature_group_count=fg, batch_group_count=bg)

    pads = _pads(padding, xs, ws, dn, strides, ld, rd)
    ref = lambda x, w, ct=None: np_conv(x, w, strides, pads, ld, rd, dn, fg, bg, ct)  # noqa: E731
    rspec = lax.conv_dimension_numbers(xs, ws, dn).rhs_spec
    taps = int(np.prod([ws[a] for a in rspec[2:]]))
    # Products summed per output element (taps · input channels per group) and per
    # input-gradient element (at most taps · output channels).
    return conv, ref, (taps * ws[rspec[1]], taps * ws[rspec[0]])


def _data(case, seed=0):
    _, xs, ws, *_ = case
    kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, xs), jax.random.normal(kw, ws), kc


def _value_and_vjp(fn):
    """One compiled program: ``fn(x, w)`` and its vector-Jacobian product with ``ct``."""
    def run(x, w, ct):
        y, vjp = jax.vjp(fn, x, w)
        return (y, *vjp(ct))
    return jax.jit(run)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_equal_reference_and_native(case):
    conv, ref, (n_terms, n_grad) = _make(case)
    x, w, kc = _data(case)
    ct = jax.random.normal(kc, jax.eval_shape(conv, x, w).shape)
    lowered = lower_convs(conv, mode="gemm")
    # The rewrite really happened: no convolution is left in the lowered program or its VJP.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(_value_and_vjp(lowered))(x, w, ct))
    y, gx, gw = (np.asarray(a) for a in _value_and_vjp(lowered)(x, w, ct))
    want, bound = ref(x, w), ref(np.abs(x), np.abs(w))
    assert y.shape == want.shape
    np.testing.assert_array_less(np.abs(y - want), 2 * n_terms * EPS * bound + 1e-30)
    # Gradients: the transposed float64 loops; bounds: the same with |x|, |w|, |ct|.
    want_gx, want_gw = ref(x, w, ct)
    bound_gx, bound_gw = ref(np.abs(x), np.abs(w), np.abs(ct))
    n_w = int(np.prod(want.shape))  # at most this many products per kernel-gradient element
    np.testing.assert_array_less(np.abs(gx - want_gx), 2 * n_grad * EPS * bound_gx + 1e-30)
    np.testing.assert_array_less(np.abs(gw - want_gw), 2 * n_w * EPS * bound_gw + 1e-30)
    if "neg" not in case[0]:
        # XLA's own convolution and gradients (trusted only without negative padding).
        ny, nx, nw = (np.asarray(a) for a in _value_and_vjp(conv)(x, w, ct))
        np.testing.assert_array_less(np.abs(y - ny), 4 * n_terms * EPS * bound + 1e-30)
        np.testing.assert_array_less(np.abs(gx - nx), 4 * n_grad * EPS * bound_gx + 1e-30)
        np.testing.assert_array_less(np.abs(gw - nw), 4 * n_w * EPS * bound_gw + 1e-30)


def test_negative_padding_against_numpy_and_cropped_native():
    """Cropping padding equals cropping the input first, then convolving (both references)."""
    x = jax.random.normal(jax.random.key(3), (3, 12, 11, 4))
    w = jax.random.normal(jax.random.key(4), (3, 3, 4, 8))
    dn = ("NHWC", "HWIO", "NHWC")
    pads = ((-2, 1), (1, -3))
    f = lower_convs(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pads,
                                                          dimension_numbers=dn), mode="gemm")
    y = np.asarray(jax.jit(f)(x, w))
    cropped = lax.conv_general_dilated(x[:, 2:, :-3, :], w, (1, 1), ((0, 1), (1, 0)),
                                       dimension_numbers=dn)
    want = np_conv(x, w, (1, 1), pads, (1, 1), (1, 1), dn)
    assert y.shape == want.shape == cropped.shape == (3, 9, 7, 8)
    np.testing.assert_allclose(y, want, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(y, np.asarray(cropped), atol=1e-4, rtol=1e-5)


TANGENT_CASES = [c for c in CASES if c[0] in (
    "same", "rhs_dilation", "mixed_layouts", "conv1d_ncw_dil",      # gradient: a forward conv
    "stride21_asym", "groups2", "nchw", "lhs_dilation",                # gradient: GEMM form
    "one_channel", "one_channel_nchw_stride_dil", "one_channel_conv1d_lhs_dil",  # + "mac" value
    "negative_stride")]                                               # all of it: the GEMM form


def conv_layouts(jaxpr_text: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(rhs_spec, lhs_dilation)`` of every convolution in a printed jaxpr, in order."""
    out = []
    for block in re.findall(r"conv_general_dilated\[(.*?)\]", jaxpr_text, re.S):
        spec = re.search(r"rhs_spec=\(([\d, ]+)\)", block).group(1)
        dil = re.search(r"lhs_dilation=\(([\d, ]+)\)", block).group(1)
        out.append((tuple(int(v) for v in spec.split(",")),
                    tuple(int(v) for v in dil.split(","))))
    return out


@pytest.mark.parametrize("case", TANGENT_CASES, ids=[c[0] for c in TANGENT_CASES])
def test_tangent_form_keeps_native_values_and_runs_no_transposed_convolution(case):
    name, xs, ws, dn, strides, padding, ld, rd, fg, bg = case
    conv, ref, (n_terms, n_grad) = _make(case)
    x, w, kc = _data(case)
    ct = jax.random.normal(kc, jax.eval_shape(conv, x, w).shape)
    lowered = lower_convs(conv, mode="gemm", form="tangent")
    y = np.asarray(jax.jit(lowered)(x, w))
    layouts = conv_layouts(str(jax.make_jaxpr(_value_and_vjp(lowered))(x, w, ct)))
    forward_spec = tuple(lax.conv_dimension_numbers(xs, ws, dn).rhs_spec)
    cropping = not isinstance(padding, str) and min(min(p) for p in padding) < 0
    if cropping:
        # XLA:CPU's value is wrong for this one (see the native comparison above): everything,
        # the value included, is the GEMM form, checked against the float64 loops.
        assert layouts == []
        want, bound = ref(x, w), ref(np.abs(x), np.abs(w))
        np.testing.assert_array_less(np.abs(y - want), 2 * n_terms * EPS * bound + 1e-30)
    elif ws[lax.conv_dimension_numbers(xs, ws, dn).rhs_spec[1]] <= MAC_MAX_IN_CHANNELS \
            and fg == bg == 1:
        # One input channel: the forward pass is XLA's convolution, bit for bit; differentiated,
        # the value is the "mac" form and the derivatives the GEMM form, so the program holds no
        # convolution at all. That value is checked against the float64 loops.
        np.testing.assert_array_equal(y, np.asarray(conv(x, w)))
        assert "conv_general_dilated" in str(jax.make_jaxpr(lowered)(x, w))
        assert layouts == []
        y_vjp = np.asarray(_value_and_vjp(lowered)(x, w, ct)[0])
        want, bound = ref(x, w), ref(np.abs(x), np.abs(w))
        np.testing.assert_array_less(np.abs(y_vjp - want), 2 * n_terms * EPS * bound + 1e-30)
    else:
        # The value is XLA's own convolution, bit for bit.
        np.testing.assert_array_equal(y, np.asarray(conv(x, w)))
        assert layouts[0][0] == forward_spec
        # The VJP holds no transposed convolution (feature axes swapped in the dimension
        # numbers, or input-dilated): a unit-stride ungrouped conv's input gradient is ONE
        # forward-layout convolution when it has at least two input channels, every other
        # input gradient the GEMM form.
        in_channels = ws[lax.conv_dimension_numbers(xs, ws, dn).rhs_spec[1]]
        plain = (all(s == 1 for s in strides) and all(v == 1 for v in ld) and fg == bg == 1
                 and in_channels >= SWAPPED_MIN_IN_CHANNELS)
        assert len(layouts) == 1 + plain
        assert all(spec == forward_spec and set(dil) == {1} for spec, dil in layouts[1:])
    _, gx, gw = (np.asarray(a) for a in _value_and_vjp(lowered)(x, w, ct))
    want_gx, want_gw = ref(x, w, ct)
    bound_gx, bound_gw = ref(np.abs(x), np.abs(w), np.abs(ct))
    n_w = int(np.prod(ct.shape))
    np.testing.assert_array_less(np.abs(gx - want_gx), 2 * n_grad * EPS * bound_gx + 1e-30)
    np.testing.assert_array_less(np.abs(gw - want_gw), 2 * n_w * EPS * bound_gw + 1e-30)
    # Forward mode: the JVP in x alone (the weights' tangent a symbolic zero) is conv(dx, w).
    dx = jax.random.normal(jax.random.key(9), x.shape)
    _, t = jax.jvp(lambda z: lowered(z, w), (x,), (dx,))
    want_t, bound_t = ref(dx, w), ref(np.abs(dx), np.abs(w))
    np.testing.assert_array_less(np.abs(np.asarray(t) - want_t), 2 * n_terms * EPS * bound_t
                                 + 1e-30)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mac_form_values_and_gradients_equal_reference(case):
    """The multiply-accumulate form (every tap and input channel an elementwise product) over the
    whole configuration matrix; batch-grouped convolutions fall back to the concat form."""
    conv, ref, (n_terms, n_grad) = _make(case)
    x, w, kc = _data(case)
    ct = jax.random.normal(kc, jax.eval_shape(conv, x, w).shape)
    lowered = lower_convs(conv, mode="gemm", form="mac")
    y, gx, gw = (np.asarray(a) for a in _value_and_vjp(lowered)(x, w, ct))
    want, bound = ref(x, w), ref(np.abs(x), np.abs(w))
    np.testing.assert_array_less(np.abs(y - want), 2 * n_terms * EPS * bound + 1e-30)
    want_gx, want_gw = ref(x, w, ct)
    bound_gx, bound_gw = ref(np.abs(x), np.abs(w), np.abs(ct))
    np.testing.assert_array_less(np.abs(gx - want_gx), 2 * n_grad * EPS * bound_gx + 1e-30)
    np.testing.assert_array_less(np.abs(gw - want_gw),
                                 2 * int(np.prod(want.shape)) * EPS * bound_gw + 1e-30)


@pytest.mark.parametrize("form", ["concat", "accumulate"])
def test_forced_forms_agree(form):
    case = CASES[3]
    conv, ref, _ = _make(case)
    x, w, _ = _data(case)
    y = lower_convs(conv, mode="gemm", form=form)(x, w)
    np.testing.assert_allclose(np.asarray(y), ref(x, w), atol=1e-4, rtol=1e-5)


def test_conv_gemm_is_the_primitive_semantics():
    """conv_gemm called directly with primitive parameters (as the interpreter does)."""
    case = CASES[10]
    conv, ref, _ = _make(case)
    x, w, _ = _data(case)
    eqn = jax.make_jaxpr(conv)(x, w).jaxpr.eqns[0]
    np.testing.assert_allclose(np.asarray(conv_gemm(x, w, **eqn.params)), ref(x, w),
                               atol=1e-4, rtol=1e-5)


def test_modes_and_plan():
    conv, _, _ = _make(CASES[0])
    x, w, _ = _data(CASES[0])
    # "native" calls fn as it is; the wrapper only marks the choice (attacks keep it).
    native = lower_convs(conv, mode="native")
    assert "conv_general_dilated" in str(jax.make_jaxpr(native)(x, w))
    auto = str(jax.make_jaxpr(lower_convs(conv))(x, w))
    assert ("conv_general_dilated" in auto) == (jax.default_backend() != "cpu")
    plan = lowering_plan(conv, x, w)
    assert [r["form"] for r in plan] == ["concat"]
    one = lowering_plan(_make(CASES[15])[0], *_data(CASES[15])[:2])
    assert one[0]["form"] == "single"
    dw = lowering_plan(_make(CASES[12])[0], *_data(CASES[12])[:2])
    assert dw[0]["form"] == "depthwise"
    with pytest.raises(ValueError, match="mode"):
        lower_convs(conv, mode="fast")
    with pytest.raises(ValueError, match="form"):
        lower_convs(conv, form="im2col")


def test_integer_convolution_stays_native():
    x = jnp.ones((1, 4, 4, 1), jnp.int32)
    w = jnp.ones((2, 2, 1, 1), jnp.int32)
    f = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "VALID",  # noqa: E731
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    plan = lowering_plan(f, x, w)
    assert plan[0]["form"] == "native" and "non-float" in plan[0]["reason"]
    np.testing.assert_array_equal(lower_convs(f, mode="gemm")(x, w), f(x, w))
