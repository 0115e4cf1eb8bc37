"""Convolutions as matrix products: a jaxpr transform for fast CNN attacks on CPU.

XLA:CPU's convolution kernels, and above all the transposed convolutions of their input
gradients, reach a fraction of the machine's matmul throughput on the small CNNs adversarial
attacks run, while one ``dot_general`` over shifted input slices computes the same convolution at
near-matmul speed (``benchmarks/attacks.py``). :func:`lower_convs` takes any function — a
``logits_fn``, a loss, a training step — traces it to a jaxpr and re-evaluates that jaxpr with

* every ``conv_general_dilated`` (any strides, padding — SAME / VALID / explicit, asymmetric and
  negative —, input and kernel dilation, feature groups incl. depthwise, batch groups, 1-D / 2-D /
  3-D, any dimension numbers such as NHWC or NCHW) rewritten as ``prod(kernel)`` strided slices of
  the padded, dilated input and matrix products (:func:`conv_gemm`);
* every ``reduce_window_max`` (what ``flax.linen.max_pool`` emits; any window, stride, padding
  and dilation) given an elementwise first-maximum derivative (:func:`window_max`) instead of
  ``select_and_scatter``, the rule of :func:`advjax.models.max_pool_2x2`; and every
  ``select_and_scatter_add`` already in the jaxpr (a max-pool gradient taken inside ``fn``)
  computed by that rule's transpose;

recursively through the sub-jaxprs of ``jit``, ``scan``, ``while``, ``cond`` and ``remat``.
Everything else is evaluated by JAX's own ``jax.core.eval_jaxpr``, so the result composes with
``jit``, ``vmap``, ``grad`` and sharding like the original, and its values equal the original's up
to float32 summation order. The module uses JAX's public API only (``jax.make_jaxpr``,
``jax.extend.core``, ``jax.core.eval_jaxpr``, ``jax.custom_jvp``). What it does not understand —
``custom_jvp`` / ``custom_vjp`` functions (their rules are user code), other higher-order
primitives (``custom_linear_solve``, ``shard_map``, primitives of later JAX versions) — holding a
convolution or pool runs natively with a one-line ``RuntimeWarning``; a rewrite that fails leaves
the whole function native, with a warning. No trace is kept across calls: every call sees the
values ``fn`` closes over now.

The GEMM form of one convolution is chosen from its shape (:func:`choose_form`): a 1×1 kernel is
one ``dot_general``; a depthwise convolution (one input channel per group) is an elementwise
multiply-accumulate over the kernel taps; otherwise the slices are concatenated on the channel
axis and contracted in one matrix product (``"concat"``, im2col), unless the concatenated
operand would exceed :data:`CONCAT_LIMIT_BYTES` or the per-tap contraction is already wide
(``in_channels_per_group >= WIDE_CHANNELS``), where the per-tap products are summed instead
(``"accumulate"``), which needs no ``prod(kernel)``-times larger buffer. The ``"mac"`` form
extends the depthwise multiply-accumulate to every input channel of a group; the ``"tangent"``
form takes the value of a differentiated convolution with one input channel that way
(:data:`MAC_MAX_IN_CHANNELS`).

The convolutions this leaves to XLA (the values, and the forward-layout input gradients of the
``"tangent"`` form) run in XLA:CPU's own multi-threaded kernels because ``import advjax`` sets one
XLA:CPU option (:mod:`advjax.xla_cpu`); jaxlib 0.10's default YNN kernels run them on one thread.

Modes: ``"gemm"`` always rewrites; ``"native"`` returns ``fn`` unchanged; ``"auto"`` (default)
rewrites when JAX's default backend is the CPU and leaves GPU/TPU programs (whose convolution
kernels are fast) untouched.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.core
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

MODES = ("auto", "native", "gemm")
FORMS = ("auto", "concat", "accumulate", "mac", "tangent")

# Shape rules of choose_form, from benchmarks/attacks.py --forms on a 2-core x86 CPU: the concat
# (im2col) form is fastest for the narrow layers of MNIST / CIFAR CNNs; per-tap accumulation
# avoids the prod(kernel)-times larger operand for wide layers.
CONCAT_LIMIT_BYTES = 256 * 2**20
WIDE_CHANNELS = 256
# The input gradient of a unit-stride, ungrouped convolution runs as a forward convolution over
# the swapped kernel ("tangent" form) only when the layer has at least this many input channels:
# with one (a greyscale first layer) that convolution has ONE output channel, which XLA:CPU runs
# as a matrix-vector product (~4 GFLOP/s); the GEMM form's transpose (one matrix product and the
# adjoint of the shifted slices) is faster there. From `python benchmarks/interleaved.py` A/B
# runs: PGD-40 on the LeNet5 +14-24 %; on the ResNet-44 (3 input channels) no gain, so 2.
SWAPPED_MIN_IN_CHANNELS = 2
# The tangent form computes the VALUE of an ungrouped convolution with at most this many input
# channels as an elementwise multiply-accumulate (``conv_gemm(form="mac")``), which XLA fuses
# with the bias and ReLU that follow; XLA:CPU's kernel for it is a K = prod(kernel) · I matrix
# product bound by writing its wide output. From A/Bs of the attack loop
# (benchmarks/results/lab_notes.md, "One-input-channel values as multiply-adds"): PGD-40 on the
# plain-Flax LeNet5 1.15x faster.
MAC_MAX_IN_CHANNELS = 1
# Kernels with more taps than this stay native: they are the weight-gradient convolutions of an
# already differentiated program (kernel = a feature map), not layers.
MAX_TAPS = 121

_PRIMS = jex.primitives
_CONV = _PRIMS.conv_general_dilated_p
_WINDOW_MAX = _PRIMS.reduce_window_max_p
_SCATTER = _PRIMS.select_and_scatter_add_p
_TARGETS = (_CONV, _WINDOW_MAX, _SCATTER)
# Higher-order primitives whose sub-jaxprs are plain functions of (some of) the equation's
# operands, so a sub-jaxpr with the same signature and values can replace them: rebound with the
# lowered sub-jaxprs. Every other primitive holding a target — custom_jvp_call and
# custom_vjp_call (their derivative rules are user code behind callables), shard_map,
# linear_solve, primitives added by later JAX versions — is evaluated natively, with a warning.
_STRUCTURAL = frozenset(getattr(_PRIMS, name) for name in
                        ("jit_p", "closed_call_p", "remat_p", "scan_p", "while_p", "cond_p")
                        if hasattr(_PRIMS, name))


# ----------------------------------------------------------------------------- public API

def lower_convs(fn: Callable[..., Any], *, mode: str = "auto",
                form: str = "auto") -> Callable[..., Any]:
    """``fn`` with its convolutions as matrix products and a fast max-pool derivative.

    Args:
      fn: any function of arrays (pytrees allowed; non-array leaves such as Python bools or
        strings are static), e.g. a per-example ``logits_fn(x) -> (K,)``, a batched model
        apply or a loss.
      mode: ``"auto"`` (rewrite on the CPU backend only), ``"gemm"`` (always) or ``"native"``
        (never: ``fn`` is called as it is; the wrapper marks the choice, so the attacks, which
        apply ``mode="auto", form="tangent"`` to a plain ``logits_fn``, keep it).
      form: ``"auto"`` (per layer by shape, :func:`choose_form`), or force ``"concat"`` /
        ``"accumulate"`` / ``"mac"`` for every convolution (for measurements); ``"tangent"``
        keeps XLA's convolution for undifferentiated values and changes the derivatives
        (:func:`conv_tangent_gemm`; under differentiation a one-input-channel convolution's
        value is the ``"mac"`` form):
        the input gradient of a unit-stride, ungrouped convolution with two or more input
        channels is a forward convolution over the flipped, physically transposed kernel,
        every other one the GEMM form (shape rule of
        ``"auto"``), so no transposed convolution runs. A convolution with negative (cropping)
        padding is computed in the GEMM form, value included (XLA:CPU's value can be wrong
        there). ``"tangent"`` applies to the convolutions of an undifferentiated ``fn`` (a
        ``logits_fn``); a gradient already inside ``fn`` stays native.

    Returns:
      A function with ``fn``'s signature, outputs and derivatives (equal up to float32 summation
      order). It traces ``fn`` on every call (no trace outlives its call, so a changed closure is
      always seen). Parts it does not rewrite — custom_jvp / custom_vjp functions, unknown
      higher-order primitives — run natively, with a one-line ``RuntimeWarning``; if the rewrite
      itself fails, the whole function runs natively, with a warning.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}; got {form!r}.")
    if not callable(fn):
        raise ValueError(f"`fn` must be callable; got {type(fn).__name__}.")
    return LoweredFunction(fn, mode, form)


class LoweredFunction:
    """``fn`` wrapped by :func:`lower_convs`; equal (and hashing equal) for equal settings, so it
    can be a static field of a pytree (e.g. a ``TrainState.apply_fn``) without retracing.

    Every call traces ``fn`` afresh, as an eager JAX call does, and keeps nothing across calls:
    a trace's constants are the values ``fn`` closes over at that call (parameters in a dict, a
    global, an NNX module updated in place), so a kept trace would hand back an old model. Inside
    ``jax.jit`` the calls happen once per compilation, so the cost is trace time only.
    """

    def __init__(self, fn: Callable[..., Any], mode: str, form: str):
        functools.update_wrapper(self, fn)
        self.fn, self.mode, self.form = fn, mode, form

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not is_active(self.mode):
            return self.fn(*args, **kwargs)
        closed, out_tree, dyn = _trace(self.fn, args, kwargs)
        if not _has_target(closed.jaxpr):
            out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *dyn)
        else:
            try:
                out = _eval(closed.jaxpr, closed.consts, dyn, self.form)
            except Exception as err:  # noqa: BLE001 - the native program, never a crash
                _warn(f"kept {getattr(self.fn, '__name__', 'fn')} native "
                      f"({type(err).__name__}: {err})")
                out = jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *dyn)
        return jax.tree.unflatten(out_tree, _as_arrays(closed.jaxpr, out))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoweredFunction) and \
            (self.fn, self.mode, self.form) == (other.fn, other.mode, other.form)

    def __hash__(self) -> int:
        try:
            return hash((LoweredFunction, self.fn, self.mode, self.form))
        except TypeError:
            return hash((LoweredFunction, id(self.fn), self.mode, self.form))

    def __repr__(self) -> str:
        return f"lower_convs({self.fn!r}, mode={self.mode!r}, form={self.form!r})"


def is_active(mode: str) -> bool:
    """Whether ``mode`` rewrites on the current default backend (``"auto"``: CPU only)."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
    return mode == "gemm" or (mode == "auto" and jax.default_backend() == "cpu")


def lowering_plan(fn: Callable[..., Any], *args: Any, form: str = "auto",
                  **kwargs: Any) -> list[dict[str, Any]]:
    """What :func:`lower_convs` does to each convolution / max pool of ``fn(*args, **kwargs)``.

    Returns:
      One record per rewritten-or-kept primitive, in trace order (sub-jaxprs included):
      ``{"primitive", "lhs", "rhs", "out", "form", "reason"}`` (shapes as tuples; ``form`` is
      ``"native"`` with a ``reason`` when the convolution is kept).
    """
    closed, _, _ = _trace(fn, args, kwargs)
    records: list[dict[str, Any]] = []
    _walk_plan(closed.jaxpr, form, records)
    return records


# ----------------------------------------------------------------------------- convolution

def _canonical(params: dict[str, Any], lhs_shape, rhs_shape):
    """Shapes in canonical layout: lhs (N, S..., C), rhs (K..., I, O)."""
    lspec, rspec, _ = params["dimension_numbers"]
    n, c = lhs_shape[lspec[0]], lhs_shape[lspec[1]]
    spatial = [lhs_shape[a] for a in lspec[2:]]
    kernel = [rhs_shape[a] for a in rspec[2:]]
    cin, cout = rhs_shape[rspec[1]], rhs_shape[rspec[0]]
    return n, spatial, c, kernel, cin, cout


def _out_spatial(params, spatial, kernel) -> list[int]:
    out = []
    for size, k, (lo, hi), ld, rd, s in zip(spatial, kernel, params["padding"],
                                            params["lhs_dilation"], params["rhs_dilation"],
                                            params["window_strides"], strict=True):
        padded = (size - 1) * ld + 1 + lo + hi if size > 0 else lo + hi
        eff = (k - 1) * rd + 1
        out.append((padded - eff) // s + 1 if padded >= eff else 0)
    return out


def choose_form(kernel: Sequence[int], out_spatial: Sequence[int], batch: int,
                in_per_group: int, groups: int, itemsize: int = 4) -> str:
    """The GEMM form for one convolution, by shape.

    Args:
      kernel: spatial kernel sizes ``(K_1, ..., K_d)``.
      out_spatial: output spatial sizes.
      batch: lhs batch size (per batch group).
      in_per_group: input channels per feature group (``I`` of the kernel).
      groups: feature (or batch) group count.
      itemsize: bytes per element.

    Returns:
      ``"single"`` (1×1-like: one tap, one ``dot_general``), ``"depthwise"`` (one input channel
      per group: elementwise multiply-accumulate), ``"concat"`` (im2col, one ``dot_general``) or
      ``"accumulate"`` (sum over taps of ``dot_general``).
    """
    taps = math.prod(kernel)
    if taps == 1:
        return "single"
    if in_per_group == 1 and groups > 1:
        return "depthwise"
    concat_bytes = batch * math.prod(out_spatial) * taps * in_per_group * groups * itemsize
    if in_per_group >= WIDE_CHANNELS or concat_bytes > CONCAT_LIMIT_BYTES:
        return "accumulate"
    return "concat"


def _native_reason(params: dict[str, Any], lhs_aval, rhs_aval) -> str | None:
    """Why a convolution stays native (``None``: it is lowered)."""
    if not (jnp.issubdtype(lhs_aval.dtype, jnp.inexact)
            and jnp.issubdtype(rhs_aval.dtype, jnp.inexact)):
        return f"non-float operands ({lhs_aval.dtype}, {rhs_aval.dtype})"
    n, spatial, _, kernel, _, _ = _canonical(params, lhs_aval.shape, rhs_aval.shape)
    out = _out_spatial(params, spatial, kernel)
    if min(out, default=1) <= 0 or n == 0 or min(kernel, default=1) == 0:
        return "empty output or kernel"
    if math.prod(kernel) > MAX_TAPS:
        return f"{math.prod(kernel)} kernel taps > MAX_TAPS = {MAX_TAPS}"
    return None


def conv_gemm(lhs: jax.Array, rhs: jax.Array, *, window_strides, padding, lhs_dilation,
              rhs_dilation, dimension_numbers, feature_group_count: int = 1,
              batch_group_count: int = 1, precision=None, preferred_element_type=None,
              form: str = "auto", **unused: Any) -> jax.Array:
    """``lax.conv_general_dilated`` (primitive parameters) as strided slices and matrix products.

    Args:
      lhs, rhs: the convolution's operands in the layouts of ``dimension_numbers`` (a
        ``lax.ConvDimensionNumbers``).
      window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count,
        batch_group_count, precision, preferred_element_type: as the primitive's parameters
        (``padding`` explicit ``(low, high)`` pairs, possibly negative).
      form: ``"auto"`` (:func:`choose_form`), ``"concat"``, ``"accumulate"`` or ``"mac"``
        (an elementwise multiply-accumulate over every kernel tap and input channel per group,
        ``prod(kernel) · I`` terms; no batch groups).

    Returns:
      The convolution, in the layout of ``dimension_numbers.out_spec``.
    """
    del unused
    lspec, rspec, ospec = dimension_numbers
    d = len(window_strides)
    fg, bg = feature_group_count, batch_group_count
    x = lax.transpose(lhs, (lspec[0], *lspec[2:], lspec[1]))          # (N, S..., C)
    w = lax.transpose(rhs, (*rspec[2:], rspec[1], rspec[0]))          # (K..., I, O)
    n, c = x.shape[0], x.shape[-1]
    kernel, cin, cout = w.shape[:d], w.shape[d], w.shape[d + 1]
    # Input dilation and padding: non-negative parts as one pad, negative parts as a crop.
    cfg = [(0, 0, 0)] + [(max(lo, 0), max(hi, 0), ld - 1)
                         for (lo, hi), ld in zip(padding, lhs_dilation, strict=True)] + [(0, 0, 0)]
    if any(p != (0, 0, 0) for p in cfg):
        x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        start = [0] + [max(-lo, 0) for lo, _ in padding] + [0]
        limit = [n] + [size - max(-hi, 0) for size, (_, hi) in zip(x.shape[1:-1], padding,
                                                                     strict=True)] + [c]
        x = lax.slice(x, start, limit)
    out_sp = [(p - ((k - 1) * rd + 1)) // s + 1 for p, k, rd, s in
              zip(x.shape[1:-1], kernel, rhs_dilation, window_strides, strict=True)]
    groups = max(fg, bg)
    nb = n // bg
    chosen = form if form != "auto" else choose_form(kernel, out_sp, nb, cin, groups,
                                                     jnp.dtype(x.dtype).itemsize)
    if chosen == "depthwise" and not (cin == 1 and fg > 1):
        chosen = "concat"
    if chosen == "mac" and bg > 1:
        chosen = "concat"
    if chosen == "single":
        chosen = "concat"

    def tap(offsets: Sequence[int]) -> jax.Array:               # (N, out..., C)
        start = [0] + [o * rd for o, rd in zip(offsets, rhs_dilation, strict=True)] + [0]
        limit = [n] + [st + (o - 1) * s + 1 for st, o, s in
                       zip(start[1:-1], out_sp, window_strides, strict=True)] + [c]
        return lax.slice(x, start, limit, [1, *window_strides, 1])

    taps = list(itertools.product(*(range(k) for k in kernel)))
    wt = w.reshape(len(taps), cin, cout)                             # (T, I, O)
    dtype = preferred_element_type
    dot = functools.partial(lax.dot_general, precision=precision,
                            preferred_element_type=preferred_element_type)

    if chosen in ("depthwise", "mac"):
        # Per tap and input channel of each group, (N, out..., G, 1) * (G, Om), summed in
        # (tap, channel) order: no contraction, no matmul; one elementwise fusion with
        # whatever follows (a bias, a ReLU).
        om = cout // fg
        acc = None
        for i, off in enumerate(taps):
            v = tap(off).reshape((n, *out_sp, fg, cin))
            for j in range(cin):
                term = v[..., j, None] * wt[i, j].reshape(fg, om)
                if dtype is not None:
                    term = term.astype(dtype)
                acc = term if acc is None else acc + term
        y = acc.reshape((n, *out_sp, cout))
        return _to_out(y, ospec, d)

    if groups == 1:
        if chosen == "concat":
            slices = [tap(o) for o in taps]
            patches = slices[0] if len(slices) == 1 else lax.concatenate(slices, x.ndim - 1)
            y = dot(patches, wt.reshape(len(taps) * cin, cout),
                    (((x.ndim - 1,), (0,)), ((), ())))
        else:
            y = None
            for i, off in enumerate(taps):
                term = dot(tap(off), wt[i], (((x.ndim - 1,), (0,)), ((), ())))
                y = term if y is None else y + term
        return _to_out(y, ospec, d)

    # Grouped: a batch dimension over the groups in dot_general.
    og = cout // groups
    wg = wt.reshape(len(taps), cin, groups, og)                      # (T, I, G, Og)

    def grouped(v: jax.Array) -> jax.Array:
        """(N, out..., C) → (G, Nb, out..., Cg) grouped operand."""
        if fg > 1:
            v = v.reshape((n, *out_sp, fg, cin))
            return jnp.moveaxis(v, -2, 0)
        v = v.reshape((bg, nb, *out_sp, c))
        return v

    if chosen == "concat":
        patches = jnp.stack([grouped(tap(o)) for o in taps], axis=-2)  # (G, Nb, out..., T, Cg)
        k = patches.ndim
        y = dot(patches, wg, (((k - 2, k - 1), (0, 1)), ((0,), (2,))))  # (G, Nb, out..., Og)
    else:
        y = None
        for i, off in enumerate(taps):
            k = d + 3
            term = dot(grouped(tap(off)), wg[i], (((k - 1,), (0,)), ((0,), (1,))))
            y = term if y is None else y + term
    y = jnp.moveaxis(y, 0, -2).reshape((nb, *out_sp, cout))          # o = g * Og + j
    return _to_out(y, ospec, d)


def conv_tangent_gemm(lhs: jax.Array, rhs: jax.Array, **params: Any) -> jax.Array:
    """``lax.conv_general_dilated`` (primitive parameters) with fast derivatives on XLA:CPU.

    The value is XLA's own convolution. The convolution is bilinear, ``d conv(x, w) = conv(dx, w)
    + conv(x, dw)``; the input term is, for unit strides without input dilation or groups
    and with at least :data:`SWAPPED_MIN_IN_CHANNELS` input channels, the same convolution
    over a kernel whose feature axes are swapped in memory and in the dimension numbers (so
    reverse mode's transpose is a forward convolution of the cotangent with the flipped kernel
    in its own layout), and otherwise :func:`conv_gemm` (reverse mode
    transposes strided slices and matrix products). The weight term is :func:`conv_gemm`. Either
    way XLA:CPU's transposed convolution, many times slower inside a while loop such as an
    attack's steps, never runs. A tangent that is a symbolic zero (the weights of an attacked
    model) costs nothing.

    A convolution with ONE input channel (a greyscale first layer, ungrouped) takes its value in
    the ``"mac"`` form of :func:`conv_gemm` instead of XLA's kernel: ``prod(kernel)`` broadcast
    multiply-adds that XLA fuses with the bias and ReLU after them, where XLA:CPU's convolution
    is a ``K = prod(kernel)`` matrix product bound by writing its output
    (:data:`MAC_MAX_IN_CHANNELS`).
    """
    value_form = "mac" if _mac_value(params, rhs.shape) else "native"
    return _conv_value(lhs, rhs, _freeze_conv(params), value_form)


def _freeze_conv(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _mac_value(params: dict[str, Any], rhs_shape) -> bool:
    """Whether the tangent form takes this convolution's value as a multiply-accumulate: an
    ungrouped convolution with at most :data:`MAC_MAX_IN_CHANNELS` input channels."""
    rhs_spec = params["dimension_numbers"][1]
    return (params["feature_group_count"] == 1 and params["batch_group_count"] == 1
            and rhs_shape[rhs_spec[1]] <= MAC_MAX_IN_CHANNELS)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_value(lhs, rhs, frozen, value_form):
    """XLA's convolution; under differentiation (the JVP rule) the value is taken in
    ``value_form``: ``"native"`` (the same) or ``"mac"`` (:func:`conv_gemm`'s multiply-adds, which
    XLA fuses with the bias and ReLU after them inside a gradient). An undifferentiated forward
    pass stays native: there XLA:CPU would fold the multiply-adds, with every layer after them,
    into one YNN fusion that first writes each tap's weights broadcast to the output's shape
    (3-4x slower than the native pass)."""
    del value_form
    return _CONV.bind(lhs, rhs, **dict(frozen))


def _conv_value_jvp(frozen, value_form, primals, tangents):
    lhs, rhs = primals
    t_lhs, t_rhs = tangents
    out = (conv_gemm(lhs, rhs, **dict(frozen), form="mac") if value_form == "mac"
           else _CONV.bind(lhs, rhs, **dict(frozen)))
    params = dict(frozen)
    zero = jax.custom_derivatives.SymbolicZero
    t_out = None
    if not isinstance(t_lhs, zero):
        if _transposes_as_forward_conv(params, rhs.shape):
            t_out = _conv_swapped_kernel(t_lhs, rhs, params)
        else:
            t_out = conv_gemm(t_lhs, rhs, **params)
    if not isinstance(t_rhs, zero):
        term = conv_gemm(lhs, t_rhs, **params)
        t_out = term if t_out is None else t_out + term
    if t_out is None:
        t_out = jnp.zeros_like(out)
    return out, t_out


_conv_value.defjvp(_conv_value_jvp, symbolic_zeros=True)


def _transposes_as_forward_conv(params: dict[str, Any], rhs_shape) -> bool:
    """Whether the input gradient of this convolution runs as a plain forward convolution (unit
    strides, no input dilation, one group, non-negative padding of the transpose, at least
    :data:`SWAPPED_MIN_IN_CHANNELS` input channels)."""
    if (any(s != 1 for s in params["window_strides"]) or any(s != 1 for s in params["lhs_dilation"])
            or params["feature_group_count"] != 1 or params["batch_group_count"] != 1):
        return False
    rhs_spec = params["dimension_numbers"][1]
    if rhs_shape[rhs_spec[1]] < SWAPPED_MIN_IN_CHANNELS:
        return False
    kernel = [rhs_shape[i] for i in rhs_spec[2:]]
    eff = [(k - 1) * r + 1 for k, r in zip(kernel, params["rhs_dilation"], strict=True)]
    return all(lo <= e - 1 and hi <= e - 1
               for e, (lo, hi) in zip(eff, params["padding"], strict=True))


def _conv_swapped_kernel(t_lhs: jax.Array, rhs: jax.Array, params: dict[str, Any]) -> jax.Array:
    """``conv(t_lhs, rhs)`` computed with the kernel's input and output feature axes swapped in
    memory and in the dimension numbers (the same linear map).

    JAX transposes a convolution into one whose dimension numbers swap the kernel's feature axes;
    here they swap back, so the input gradient is a FORWARD convolution in the kernel's own layout
    over a flipped, physically transposed kernel. XLA:CPU runs the primitive's own transpose
    many times slower inside a while loop (an attack's steps); this one runs at forward speed.
    """
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    o, i = rhs_spec[0], rhs_spec[1]
    spec = lax.ConvDimensionNumbers(lhs_spec, (i, o, *rhs_spec[2:]), out_spec)
    return lax.conv_general_dilated(
            t_lhs, jnp.swapaxes(rhs, o, i), window_strides=params["window_strides"],
            padding=params["padding"], lhs_dilation=params["lhs_dilation"],
            rhs_dilation=params["rhs_dilation"], dimension_numbers=spec,
            precision=params["precision"],
            preferred_element_type=params["preferred_element_type"])


def _to_out(y: jax.Array, ospec: Sequence[int], d: int) -> jax.Array:
    """(N, S..., F) canonical → the layout of ``out_spec``."""
    canonical = {0: 0, 1: d + 1, **{2 + i: 1 + i for i in range(d)}}
    perm = [0] * (d + 2)
    for role, axis in enumerate(ospec):
        perm[axis] = canonical[role]
    return lax.transpose(y, perm)


# ----------------------------------------------------------------------------- max pooling

def _window_slices(x: jax.Array, fill, window_dimensions, window_strides, padding, base_dilation,
                   window_dilation) -> tuple[list[jax.Array], tuple[int, ...]]:
    """Every window tap of ``x`` as a strided slice of the padded input (row-major taps)."""
    cfg = [(max(lo, 0), max(hi, 0), bd - 1)
           for (lo, hi), bd in zip(padding, base_dilation, strict=True)]
    v = lax.pad(x, jnp.asarray(fill, x.dtype), cfg) if any(p != (0, 0, 0) for p in cfg) else x
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        v = lax.slice(v, [max(-lo, 0) for lo, _ in padding],
                      [s - max(-hi, 0) for s, (_, hi) in zip(v.shape, padding, strict=True)])
    out = tuple((p - ((k - 1) * wd + 1)) // s + 1 for p, k, wd, s in
                zip(v.shape, window_dimensions, window_dilation, window_strides, strict=True))
    slices = []
    for off in itertools.product(*(range(k) for k in window_dimensions)):
        start = [o * wd for o, wd in zip(off, window_dilation, strict=True)]
        limit = [st + (o - 1) * s + 1 for st, o, s in zip(start, out, window_strides,
                                                          strict=True)]
        slices.append(lax.slice(v, start, limit, window_strides))
    return slices, out


def _select_first(xs: Sequence[jax.Array], ts: Sequence[jax.Array], out: jax.Array) -> jax.Array:
    """Per window, the tangent ``ts[i]`` of the first tap ``i`` (row-major) where
    ``xs[i] == out``."""
    t_out = jnp.zeros(out.shape, ts[0].dtype)
    taken = jnp.zeros(out.shape, bool)
    for xv, tv in zip(xs, ts, strict=True):
        pick = (xv == out) & ~taken
        t_out = jnp.where(pick, tv, t_out)
        taken = taken | pick
    return t_out


def _first_max_tangent(x, out, t, params) -> jax.Array:
    """The tangent of a window max: each window's tangent at its first maximal input."""
    xs, _ = _window_slices(x, -jnp.inf, **params)
    ts, _ = _window_slices(t, 0, **params)
    return _select_first(xs, ts, out)


def _freeze(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(map(tuple, v)) if k == "padding" else tuple(v))
                        for k, v in params.items()))


def _tiles(params: dict[str, Any]) -> bool:
    """Whether the windows tile the input: stride = window, no padding, no dilation (2×2 / 2
    pooling), so a reshape exposes every window as its own axes."""
    return (tuple(params["window_strides"]) == tuple(params["window_dimensions"])
            and all(lo == hi == 0 for lo, hi in params["padding"])
            and set(params["base_dilation"]) == {1} and set(params["window_dilation"]) == {1})


def _tiled(v: jax.Array, window: Sequence[int]) -> tuple[jax.Array, tuple[int, ...]]:
    """``v`` cropped to whole windows (as VALID pooling drops a remainder) and reshaped so that
    every window axis of size ``k > 1`` is split into ``(outer, k)``; returns the reshaped array
    and the positions of its ``k`` axes.

    Axes with ``k = 1`` are merged into the outer part of the next split axis (trailing ones into
    one axis), so the rank stays as low as the windows allow: NHWC 2×2 pooling is
    ``(N·H/2, 2, W/2, 2, C)``, rank 5, and rank 6 under ``vmap``. One more axis would keep XLA:CPU
    from fusing the pool with its neighbours (its YNN fusions take at most six dimensions):
    a per-example LeNet5 under ``vmap`` ran its forward pass 2.3× slower that way.
    """
    out = [n // k for n, k in zip(v.shape, window, strict=True)]
    v = lax.slice(v, [0] * v.ndim, [o * k for o, k in zip(out, window, strict=True)])
    shape: list[int] = []
    k_axes: list[int] = []
    outer = 1
    for o, k in zip(out, window, strict=True):
        if k == 1:
            outer *= o
            continue
        shape += [outer * o, k]
        k_axes.append(len(shape) - 1)
        outer = 1
    if outer > 1 or not shape:
        shape.append(outer)
    return v.reshape(shape), tuple(k_axes)


def _tiled_max(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Max over tiling windows: a max over the window axes of :func:`_tiled`."""
    tiles, k_axes = _tiled(x, window)
    out = [n // k for n, k in zip(x.shape, window, strict=True)]
    return jnp.max(tiles, axis=k_axes).reshape(out)


def _tiled_max_jvp(x, t, window) -> tuple[jax.Array, jax.Array]:
    """Value and first-max tangent of tiling windows by reshapes and elementwise selects (no
    strided slices, no ``reduce_window``, no ``select_and_scatter``)."""
    (xs, k_axes), (ts, _) = _tiled(x, window), _tiled(t, window)
    out_shape = [n // k for n, k in zip(x.shape, window, strict=True)]
    out = jnp.max(xs, axis=k_axes)
    taps = []
    for off in itertools.product(*(range(xs.shape[a]) for a in k_axes)):
        index = [slice(None)] * xs.ndim
        for a, o in zip(k_axes, off, strict=True):
            index[a] = o
        taps.append(tuple(index))
    t_out = _select_first([xs[i] for i in taps], [ts[i] for i in taps], out)
    return out.reshape(out_shape), t_out.reshape(out_shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, frozen: tuple) -> jax.Array:
    params = dict(frozen)
    if _tiles(params):
        return _tiled_max(x, params["window_dimensions"])
    return _WINDOW_MAX.bind(x, **params)


@_window_max.defjvp
def _window_max_jvp(frozen, primals, tangents):
    (x,), (t,) = primals, tangents
    params = dict(frozen)
    if _tiles(params):
        return _tiled_max_jvp(x, t, params["window_dimensions"])
    out = _window_max(x, frozen)
    return out, _first_max_tangent(x, out, t, params)


def window_max(x: jax.Array, *, window_dimensions, window_strides, padding, base_dilation,
               window_dilation) -> jax.Array:
    """``lax.reduce_window`` max (``reduce_window_max`` parameters) with a first-max derivative.

    The value is XLA's; the JVP (linear in the tangent, so reverse mode and higher orders work)
    routes each window's tangent to its first maximal input in row-major window order — the
    convention of ``select_and_scatter`` and PyTorch — by elementwise compare-and-select over the
    window taps, whose transpose is pads and adds (no ``select_and_scatter``). Windows that tile
    the input (stride = window, no padding or dilation: ``nn.max_pool(x, (2, 2), (2, 2))``) are
    reshaped into their own axes instead, value and tangent, as :func:`advjax.models.max_pool_2x2`
    does: the same numbers (a max is exact) without ``reduce_window`` or strided slices.
    """
    params = dict(window_dimensions=tuple(window_dimensions), window_strides=tuple(window_strides),
                  padding=tuple(map(tuple, padding)), base_dilation=tuple(base_dilation),
                  window_dilation=tuple(window_dilation))
    return _window_max(x, _freeze(params))


_OWN_RULES = ("_conv_value", "_window_max")


def _scatter_first(source: jax.Array, operand: jax.Array, *, select_prim, window_dimensions,
                   window_strides, padding) -> jax.Array:
    """``select_and_scatter_add`` for ``ge`` / ``le`` selection as the transpose of the rule."""
    sign = 1 if select_prim is lax.ge_p else -1
    params = dict(window_dimensions=tuple(window_dimensions), window_strides=tuple(window_strides),
                  padding=tuple(map(tuple, padding)), base_dilation=(1,) * operand.ndim,
                  window_dilation=(1,) * operand.ndim)
    v = operand * sign if sign < 0 else operand
    out = _WINDOW_MAX.bind(v, **params)
    tangent = jax.linear_transpose(lambda t: _first_max_tangent(v, out, t, params),
                                   jax.ShapeDtypeStruct(operand.shape, source.dtype))
    (ct,) = tangent(source)
    return ct


# ----------------------------------------------------------------------------- interpreter

def _is_dynamic(leaf: Any) -> bool:
    """Arrays and tracers are traced; Python scalars, strings, None, ... are passed as they are."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.core.Tracer))


def _warn(message: str) -> None:
    """One line per distinct message (Python's default warning filter)."""
    warnings.warn(f"lower_convs: {message}", RuntimeWarning, stacklevel=3)


def _trace(fn, args, kwargs):
    leaves, treedef = jax.tree.flatten((args, kwargs))
    dyn_idx = [i for i, leaf in enumerate(leaves) if _is_dynamic(leaf)]
    dyn = [leaves[i] for i in dyn_idx]

    def flat_fn(*values):
        full = list(leaves)
        for i, v in zip(dyn_idx, values, strict=True):
            full[i] = v
        a, k = jax.tree.unflatten(treedef, full)
        return fn(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dyn)
    return closed, jax.tree.structure(out_shape), dyn


def _as_arrays(jaxpr: jex.Jaxpr, outs: Sequence[Any]) -> list:
    """An output the trace folded to a literal comes back as an array of its type, as from
    ``fn``."""
    return [lax.full((), v.val, v.aval.dtype) if isinstance(v, jex.Literal) else out
            for v, out in zip(jaxpr.outvars, outs, strict=True)]


def _own_rule(eqn: jex.JaxprEqn) -> bool:
    """Whether ``eqn`` is a rule of this module (a ``_conv_value`` or ``_window_max``
    custom_jvp: an already lowered program, e.g. a ``lower_convs`` function called inside
    another), which is kept as it is."""
    if eqn.primitive is not _PRIMS.custom_jvp_call_p:
        return False
    info = getattr(eqn.params.get("call_jaxpr"), "jaxpr", None)
    src = getattr(getattr(info, "debug_info", None), "func_src_info", None) or ""
    return any(src.startswith(f"{name} at {__file__}:") for name in _OWN_RULES)


def _has_target(jaxpr: jex.Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive in _TARGETS:
            return True
        if _own_rule(eqn):
            continue
        if any(_has_target(sub) for sub in jex.jaxprs_in_params(eqn.params)):
            return True
    return False


def _eval(jaxpr: jex.Jaxpr, consts: Sequence[Any], args: Sequence[Any], form: str) -> list:
    """``jaxpr`` evaluated with its convolutions and max pools rewritten; every other equation is
    evaluated by JAX's own ``jax.core.eval_jaxpr``."""
    env: dict[Any, Any] = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for v, val in zip(jaxpr.constvars, consts, strict=True):
        env[v] = val
    for v, val in zip(jaxpr.invars, args, strict=True):
        env[v] = val
    for eqn in jaxpr.eqns:
        outs = _eval_eqn(eqn, [read(v) for v in eqn.invars], form)
        for v, val in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jex.DropVar):
                env[v] = val
    return [read(v) for v in jaxpr.outvars]


def _eval_eqn(eqn: jex.JaxprEqn, invals: list, form: str) -> list:
    prim, params = eqn.primitive, eqn.params
    if prim is _CONV:
        lhs_aval, rhs_aval = (v.aval for v in eqn.invars)
        if _native_reason(params, lhs_aval, rhs_aval) is None:
            if form == "tangent" and min(min(p) for p in params["padding"]) >= 0:
                return [conv_tangent_gemm(*invals, **params)]
            if form == "tangent":    # XLA:CPU miscomputes some cropping (negative) paddings
                return [conv_gemm(*invals, **params)]
            return [conv_gemm(*invals, **params, form=form)]
    elif prim is _WINDOW_MAX:
        return [window_max(invals[0], **params)]
    elif prim is _SCATTER and params["select_prim"] in (lax.ge_p, lax.le_p) and \
            jnp.issubdtype(eqn.invars[1].aval.dtype, jnp.floating):
        return [_scatter_first(*invals, **params)]
    elif not _own_rule(eqn) and any(_has_target(sub) for sub in jex.jaxprs_in_params(params)):
        if prim in _STRUCTURAL:
            eqn = eqn.replace(params=_lower_params(prim, params, form))
        else:
            _warn(f"kept a {prim.name} native (its convolutions / pools are not rewritten; "
                  f"values and derivatives are unchanged)")
    return _eval_native(eqn, invals)


def _eval_native(eqn: jex.JaxprEqn, invals: list) -> list:
    """One equation evaluated by ``jax.core.eval_jaxpr`` (which binds it with its own parameters,
    source information and context)."""
    invars, vals = [], []
    for v, val in zip(eqn.invars, invals, strict=True):
        if not isinstance(v, jex.Literal) and v not in invars:
            invars.append(v)
            vals.append(val)
    outvars = [v for v in eqn.outvars if not isinstance(v, jex.DropVar)]
    info = jex.DebugInfo("lower_convs", eqn.primitive.name, ("",) * len(invars),
                         ("",) * len(outvars))
    one = jex.Jaxpr((), invars, outvars, [eqn], eqn.effects, info)
    it = iter(jax.core.eval_jaxpr(one, (), *vals))
    return [None if isinstance(v, jex.DropVar) else next(it) for v in eqn.outvars]


def _lower_closed(closed: jex.ClosedJaxpr, form: str) -> jex.ClosedJaxpr:
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=getattr(a, "weak_type", False))
             for a in closed.in_avals]
    return jax.make_jaxpr(lambda *a: _as_arrays(closed.jaxpr, _eval(
            closed.jaxpr, closed.consts, a, form)))(*avals)


def _lower_params(prim: jex.Primitive, params: dict[str, Any], form: str) -> dict[str, Any]:
    """Sub-jaxpr parameters of a structural primitive with their convolutions / pools lowered
    (kept native, with a warning, where the lowered one would not fit the parameter)."""
    new = dict(params)
    for key, val in params.items():
        try:
            if isinstance(val, jex.ClosedJaxpr) and _has_target(val.jaxpr):
                new[key] = _same_signature(val, _lower_closed(val, form))
            elif isinstance(val, jex.Jaxpr) and _has_target(val):
                if val.constvars:
                    raise ValueError("an open sub-jaxpr with constants")
                lowered = _lower_closed(jex.ClosedJaxpr(val, ()), form)
                if lowered.consts:
                    raise ValueError("the lowered sub-jaxpr holds constants")
                new[key] = _same_signature(jex.ClosedJaxpr(val, ()), lowered).jaxpr
            elif isinstance(val, tuple) and val and all(isinstance(v, jex.ClosedJaxpr)
                                                         for v in val):
                new[key] = tuple(_same_signature(v, _lower_closed(v, form))
                                 if _has_target(v.jaxpr) else v for v in val)
        except Exception as err:  # noqa: BLE001 - keep the native sub-program, say why
            new[key] = val
            _warn(f"kept {prim.name}'s {key} native ({type(err).__name__}: {err})")
    return new


def _same_signature(old: jex.ClosedJaxpr, new: jex.ClosedJaxpr) -> jex.ClosedJaxpr:
    """``new`` if its input and output types equal ``old``'s (else an error: keep ``old``)."""
    def types(avals):
        return [(tuple(a.shape), a.dtype, getattr(a, "weak_type", False)) for a in avals]

    if types(old.in_avals) != types(new.in_avals) or types(old.out_avals) != types(new.out_avals):
        raise ValueError("the lowered sub-jaxpr changed its signature")
    if old.effects != new.effects:
        raise ValueError("the lowered sub-jaxpr changed its effects")
    return new


def _walk_plan(jaxpr: jex.Jaxpr, form: str, records: list[dict[str, Any]],
               kept: str | None = None) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive is _CONV:
            lhs, rhs = (v.aval for v in eqn.invars)
            reason = kept or _native_reason(eqn.params, lhs, rhs)
            chosen = "native"
            if reason is None:
                n, spatial, _, kernel, cin, _ = _canonical(eqn.params, lhs.shape, rhs.shape)
                groups = max(eqn.params["feature_group_count"], eqn.params["batch_group_count"])
                chosen = form if form != "auto" else choose_form(
                        kernel, _out_spatial(eqn.params, spatial, kernel),
                        n // eqn.params["batch_group_count"], cin, groups,
                        jnp.dtype(lhs.dtype).itemsize)
            records.append({"primitive": "conv_general_dilated", "lhs": tuple(lhs.shape),
                            "rhs": tuple(rhs.shape), "out": tuple(eqn.outvars[0].aval.shape),
                            "form": chosen, "reason": reason})
        elif eqn.primitive in (_WINDOW_MAX, _SCATTER):
            records.append({"primitive": eqn.primitive.name,
                            "lhs": tuple(eqn.invars[-1].aval.shape), "rhs": None,
                            "out": tuple(eqn.outvars[0].aval.shape),
                            "form": "native" if kept else "first-max", "reason": kept})
        if _own_rule(eqn):
            continue
        inner = kept
        if inner is None and eqn.primitive not in _STRUCTURAL:
            inner = f"inside {eqn.primitive.name} (evaluated natively)"
        for sub in jex.jaxprs_in_params(eqn.params):
            _walk_plan(sub, form, records, inner)
