"""The default Lipschitz rules of the graph walk, as an immutable :class:`RuleTable`.

Each rule maps the inputs of one equation (``Const`` or ``Dep``) to its outputs; a ``Dep``'s
constant is an upper bound of ``‖v(x) − v(x')‖₂ / ‖x − x'‖₂``. Grouped by the idea that makes each
sound (one rule per idea; several primitives share a rule where the argument is the same):

* elementwise primitives on one input-dependent value with scalar constants are collected into a
  scalar expression and bounded by :mod:`advjax.lipschitz._elementwise` (piecewise interval
  analysis with an exact continuity check); mixed operands use linear rules (``max |c|`` for a
  scaling, ``L_f + L_g`` for sums, ``√(L_f² + L_g²)`` for entrywise selections);
* casts: float ↔ float casts are the identity of the exact-arithmetic function; a predicate
  (``bool``) cast to a number is 0/1 (a step, checked by the continuity analysis); a cast of a real
  value to an integer or ``bool`` type, a narrowing integer cast and ``reduce_precision`` are steps
  (or rounding) and are refused;
* maps that move entries without repeating them (reshape, transpose, slice, pad, ...): 1;
* maps that copy every entry the same number of times (``broadcast_in_dim``, ``tile``): ``√copies``;
  ``concatenate`` / ``stack`` of values: ``√Σ L²``;
* ``gather`` with constant indices: ``√(largest number of reads of one entry)``, counted by running
  the gather itself on the entry numbers, so its real index semantics (clamping for ``clip`` and
  ``promise_in_bounds``, dropped reads for ``fill``) are the ones counted;
* linear maps with a parameter: ``dot_general`` (largest singular value per batch block),
  ``conv_general_dilated`` (:func:`advjax.lipschitz.conv_norm` for 1-/2-D convolutions;
  transposed ones (``lhs_dilation``) through their adjoint, a strided convolution; 3-D ones as
  2-D ones over (depth, channel) pairs; small ones (<= 2048 inputs) also by the explicit matrix's
  largest singular value; a Collatz–Wielandt bound of ``‖|A|‖`` for what remains
  (batch-grouped): :mod:`advjax.lipschitz._nonneg`);
* order statistics and prefix sums: ``sort`` and ``top_k`` values 1, ``cumsum`` the norm of the
  triangular matrix of ones; ``scatter-add`` with constant indices ``√(largest count)``; a
  Euclidean norm ``√(Σ_G v²)`` over disjoint groups ``L_v``; the indices of a sort are refused
  where used;
* reductions and pooling: ``reduce_sum`` ``√n``, ``reduce_max`` 1, window max/min (including the
  generic ``reduce_window`` whose computation is one ``max``/``min``) ``√(max windows covering an
  input)``, window sums (Schur test);
* :func:`advjax.lipschitz.contrast_normalize`: ``ε^{-γ}`` (parameters validated);
* calls (``jit``/``pjit``, ``custom_jvp_call`` and ``custom_vjp_call``: the primal, ``remat``, ...)
  are walked recursively; ``cond``/``switch`` with a constant index walk the selected branch;
  ``scan`` (and ``fori_loop`` with a static trip count) and ``while_loop`` whose condition depends
  only on constants are unrolled (the body composed once per iteration). An input-dependent branch
  index or loop condition is refused (the function generally jumps where the branch changes).

Products and sums of bounds round upward (:func:`advjax.lipschitz.walker.mul_up`,
``norm_up``, ``sum_up``) and a positive product never underflows to 0. Side-effecting equations
(``debug.print``, ``io_callback``) are never run; a result of one that is used is refused.
Products of two input-dependent values (attention scores, gating) are refused: they are not
globally Lipschitz. The exceptions are recognised by the walker before these rules apply
(:mod:`advjax.lipschitz._normalize`): LayerNorm / GroupNorm / RMSNorm with ``ε > 0``
(``max|γ|/√ε``), softmax (1/2), log_softmax (``√n``) and logsumexp (1) over groups of ``n``,
also with constant ``−inf`` masks (``softmax(where=)``, ``log_softmax(where=)``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax.lipschitz import _elementwise as ew
from advjax.lipschitz import _nonneg
from advjax.lipschitz._prims import CALL_PARAMS as _CALL_PARAMS
from advjax.lipschitz._prims import NORMALIZATIONS
from advjax.lipschitz.contrast import contrast_norm_p
from advjax.lipschitz.report import UnsupportedPrimitiveError
from advjax.lipschitz.spectral import conv_norm
from advjax.lipschitz.walker import (
    CALLS,
    Const,
    Deferred,
    Dep,
    Fold,
    NotApplicable,
    RuleTable,
    SumOfSquares,
    Walker,
    check_finite,
    is_float,
    mul_up,
    norm_up,
    only_dep,
    out_aval,
    sum_up,
    uniform,
)

# --------------------------------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------------------------------


def _check_cast(dep: Dep, new_dtype, name: str) -> None:
    """Refuses casts that are not exact on the values they can see (module docstring)."""
    src = np.dtype(dep.dtype)
    dst = np.dtype(new_dtype)
    if jnp.issubdtype(dst, jnp.floating):
        return
    if src == np.bool_:
        return
    if jnp.issubdtype(src, jnp.integer) and jnp.issubdtype(dst, jnp.integer):
        si, di = np.iinfo(src), np.iinfo(dst)
        if di.min <= si.min and di.max >= si.max:
            return
    raise UnsupportedPrimitiveError(
            f"a cast of an input-dependent {src} value to {dst} at {name!r} rounds or wraps: the "
            "result is a step function of the input, with no finite Lipschitz constant (a "
            "straight-through estimator changes only gradients; the function computed is still a "
            "step)")


def elementwise_rule(w: Walker, eqn, ins) -> Dep:
    prim = eqn.primitive.name
    shape, dtype = out_aval(eqn)
    name = w.name(eqn, prim)
    if prim == "convert_element_type":
        _check_cast(ins[0], eqn.params["new_dtype"], name)
    # Input-dependent operands broadcast to the output shape (size-1 dims) copy entries.
    norm_ins = []
    for a in ins:
        if isinstance(a, Dep) and a.shape != shape:
            ratio = math.prod(shape) / max(math.prod(a.shape), 1)
            a = w.fresh(mul_up(w.lip(a), math.sqrt(ratio)), shape, a.dtype, name)
        norm_ins.append(a)
    ins = norm_ins
    deps = [a for a in ins if isinstance(a, Dep)]
    consts = [a for a in ins if isinstance(a, Const)]
    identity = {"max": -np.inf, "min": np.inf}.get(prim)
    if identity is not None and len(deps) == 1 and uniform(consts[0].value) == identity:
        return deps[0]  # max(v, -inf) = v (softmax's running maximum), min(v, +inf) = v
    # A constant predicate picks each entry from one operand: a non-finite constant entry (a
    # −inf mask) is a constant of the output, it never varies with the input.
    masking = prim == "select_n" and isinstance(ins[0], Const) and uniform(ins[0].value) is None
    for c in consts:
        if jnp.issubdtype(np.asarray(c.value).dtype, jnp.inexact) and not masking:
            check_finite(c.value, f"a constant operand of {prim!r} at {name!r}")
    srcs = {id(d.src) for d in deps}
    uniforms = [uniform(c.value) for c in consts]
    if len(srcs) == 1 and all(u is not None for u in uniforms):
        src = deps[0].src
        nodes = [a.node if isinstance(a, Dep) else ew.const(uniform(a.value)) for a in ins]
        params = tuple(sorted((k, v) for k, v in eqn.params.items() if k == "y"))
        if jnp.issubdtype(dtype, jnp.integer):  # range-checked: the program wraps around
            info = np.iinfo(dtype)
            params = (*params, ("irange", (int(info.min), int(info.max))))
        if prim == "clamp":
            node = ew.Node("min", (ew.Node("max", (nodes[1], nodes[0])), nodes[2]))
        else:
            node = ew.Node(prim, tuple(nodes), params=params)
        return Dep(src, node, shape, dtype, name, seq=w.counter)
    # Mixed sources or non-uniform constant arrays: linear rules on finalised values.
    lips = [w.lip(d) for d in deps]
    if prim in ("add", "add_any", "sub"):
        # a translation by a constant keeps the increments, hence any pending scaling
        fold = w.fold(deps[0]) if len(deps) == 1 else None
        return w.fresh(sum_up(lips), shape, dtype, name, fold=fold)
    if prim in ("mul", "div") and len(deps) == 1 and (prim == "mul" or isinstance(ins[0], Dep)):
        c = np.asarray(consts[0].value, np.float64)
        if prim == "div":
            if np.any(c == 0):
                raise UnsupportedPrimitiveError(f"division by a constant containing 0 at {name!r}")
            c = 1.0 / c
        bound = float(np.abs(c).max())
        w.row(eqn, "scale", deps[0].shape, shape, bound, param_shape=np.shape(consts[0].value),
              name=name)
        f = w.fold(deps[0])
        fold = Fold(f.pre, f.scale * c, f.slope) if f is not None else Fold(lips[0], c, 1.0)
        return w.fresh(mul_up(lips[0], bound), shape, dtype, name, fold=fold)
    if prim in ("max", "min", "clamp") or (prim == "select_n" and isinstance(ins[0], Const)):
        # Each output entry is one of the operands' entries (or a constant): ‖Δ‖² <= Σ ‖Δ_k‖².
        if len(deps) == 1 and prim != "select_n":
            w.row(eqn, "activation", shape, shape, 1.0, name=name)
        return w.fresh(norm_up(lips), shape, dtype, name)
    raise UnsupportedPrimitiveError(
            f"primitive {prim!r} at {name!r} combines input-dependent values that are not "
            "elementwise functions of one common value (or uses non-uniform constants in a "
            "nonlinear way); no sound global Lipschitz rule applies"
            + (" (a product of two input-dependent values, as in attention or gating, is not "
               "globally Lipschitz)" if prim in ("mul", "div") else ""))


def _reduce_precision_rule(w, eqn, ins):
    raise UnsupportedPrimitiveError(
            f"reduce_precision at {w.name(eqn, 'reduce_precision')!r} rounds the input-dependent "
            "value: a step function with no finite Lipschitz constant (the analysis bounds the "
            "exact-arithmetic function; drop the explicit rounding to bound it)")


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def unit_rule(w: Walker, eqn, ins) -> Dep:
    """Maps that move (or drop) entries without repeating them: reshape, slice, pad, ..."""
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    if not is_float(dtype):
        raise UnsupportedPrimitiveError(f"{eqn.primitive.name!r} of a non-float input-dependent "
                                        f"value ({dtype})")
    return w.fresh(w.lip(dep), shape, dtype)


def copies_rule(w: Walker, eqn, ins) -> Dep:
    """Maps copying every entry equally often (broadcast_in_dim, tile): ``√(out / in size)``."""
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    ratio = math.prod(shape) / max(math.prod(dep.shape), 1)
    return w.fresh(mul_up(w.lip(dep), math.sqrt(ratio)), shape, dtype)


def join_rule(w: Walker, eqn, ins) -> Dep:
    """Outputs whose entries are each one entry of one operand (concatenate, stack, update)."""
    shape, dtype = out_aval(eqn)
    if eqn.primitive.name == "dynamic_update_slice" and any(isinstance(a, Dep) for a in ins[2:]):
        raise UnsupportedPrimitiveError("dynamic_update_slice with input-dependent indices")
    lips = [w.lip(a) for a in ins if isinstance(a, Dep)]
    return w.fresh(norm_up(lips), shape, dtype)


def split_rule(w: Walker, eqn, ins) -> list:
    dep = only_dep(eqn, ins)
    lip = w.lip(dep)
    return [w.fresh(lip, *out_aval(eqn, i)) for i in range(len(eqn.outvars))]


def gather_rule(w: Walker, eqn, ins) -> Dep:
    """``√(max reads of one entry)``, counted with the gather's own index semantics."""
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    params = dict(eqn.params)
    if params.get("mode") == lax.GatherScatterMode.FILL_OR_DROP:
        params["fill_value"] = -1
    numbers = jnp.arange(math.prod(dep.shape), dtype=jnp.int32).reshape(dep.shape)
    read = np.asarray(eqn.primitive.bind(numbers, jnp.asarray(ins[1].value), **params)).ravel()
    read = read[read >= 0]
    counts = np.bincount(read, minlength=1) if read.size else np.zeros(1)
    bound = math.sqrt(float(counts.max()))
    w.row(eqn, "gather", dep.shape, shape, bound)
    return w.fresh(mul_up(w.lip(dep), bound), shape, dtype)


# --------------------------------------------------------------------------------------------------
# Reductions and pooling
# --------------------------------------------------------------------------------------------------


def _square_of(dep: Dep) -> Dep | None:
    """``v`` when ``dep`` is the pending elementwise ``v·v`` or ``v²`` of an input-dependent
    ``v``."""
    n = dep.node
    square = n.op == "mul" and len(n.args) == 2 and n.args[0] is n.args[1] or \
        n.op == "square" or n.op == "integer_pow" and dict(n.params).get("y") == 2
    if not square or not is_float(dep.dtype):
        return None
    return Dep(dep.src, n.args[0], dep.shape, dep.dtype, dep.name, seq=dep.seq)


def reduce_sum_rule(w, eqn, ins):
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    v = _square_of(dep)
    if v is not None:  # Σ v² over groups: bounded where its square root is taken
        return SumOfSquares(UnsupportedPrimitiveError(
                f"a sum of squares of an input-dependent value (at {w.name(eqn, 'reduce_sum')!r}) "
                "is used other than under a square root (a Euclidean norm): a sum of squares is "
                "not globally Lipschitz"),
                w.lip(v))
    bound = math.sqrt(math.prod(dep.shape[a] for a in eqn.params["axes"]))
    w.row(eqn, "reduce", dep.shape, shape, bound)
    return w.fresh(mul_up(w.lip(dep), bound), shape, dtype)


def reduce_max_rule(w, eqn, ins):
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    w.row(eqn, "pool", dep.shape, shape, 1.0)
    return w.fresh(w.lip(dep), shape, dtype)


def _window_counts(params, shape) -> tuple[float, float]:
    """(max inputs per window, max windows per input) of a window pattern."""

    def window_sum(x):
        return lax.reduce_window(x, jnp.zeros((), jnp.float32), lax.add,
                                 params["window_dimensions"], params["window_strides"],
                                 params["padding"], params["base_dilation"],
                                 params["window_dilation"])

    ones = jnp.ones(shape, jnp.float32)
    per_window = window_sum(ones)
    per_input = jax.linear_transpose(window_sum, ones)(jnp.ones_like(per_window))[0]
    return float(per_window.max()), float(per_input.max())


def window_rule(w, eqn, ins):
    """Window max/min (each output moves by at most its window's largest change) and sums."""
    prim = eqn.primitive.name
    if prim == "reduce_window":
        ops = [e.primitive.name for e in eqn.params["jaxpr"].eqns]
        if len(ins) != 2 or ops not in (["max"], ["min"]):
            raise UnsupportedPrimitiveError(
                    f"reduce_window with the computation {ops} (only one max or min is bounded)")
        if isinstance(ins[1], Dep):
            raise UnsupportedPrimitiveError("reduce_window with an input-dependent init value")
        if np.isnan(np.asarray(ins[1].value)).any():
            raise UnsupportedPrimitiveError("reduce_window with a NaN init value")
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    per_window, cover = _window_counts(eqn.params, dep.shape)
    bound = math.sqrt(per_window * cover) if prim == "reduce_window_sum" else math.sqrt(cover)
    w.row(eqn, "pool", dep.shape, shape, bound, param_shape=eqn.params["window_dimensions"],
          stride=eqn.params["window_strides"])
    return w.fresh(mul_up(w.lip(dep), bound), shape, dtype)


# --------------------------------------------------------------------------------------------------
# Linear maps with a parameter
# --------------------------------------------------------------------------------------------------


def _per_axis_scale(fold: Fold | None, shape, axes) -> np.ndarray | None:
    """The pending scaling as a vector over ``axes`` (flattened in that order), or ``None``.

    ``None`` when there is no pending scaling or it varies along the other axes.
    """
    if fold is None:
        return None
    try:
        sc = np.broadcast_to(np.asarray(fold.scale, np.float64), shape)
    except ValueError:
        return None
    rest = [a for a in range(len(shape)) if a not in axes]
    sc = np.transpose(sc, (*rest, *axes)).reshape(-1, math.prod(shape[a] for a in axes))
    return sc[0] if np.all(sc == sc[0]) else None


def _folded(w, dep: Dep, unfolded: float, norm_of_scaled) -> float:
    """``min(L_dep · ‖W‖, pre · slope · ‖W diag(s)‖)`` (see :class:`Fold`); both are sound."""
    fold = w.fold(dep)
    vec = norm_of_scaled(fold) if fold is not None else None
    if vec is None:
        return mul_up(w.lip(dep), unfolded)
    return min(mul_up(w.lip(dep), unfolded), mul_up(fold.pre, fold.slope, vec))


def dot_rule(w, eqn, ins):
    shape, dtype = out_aval(eqn)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if isinstance(ins[0], Dep) and isinstance(ins[1], Dep):
        raise UnsupportedPrimitiveError(
                "dot_general of two input-dependent operands (a product of two input-dependent "
                "values, as in attention, is bilinear and not globally Lipschitz)")
    if isinstance(ins[1], Const):
        dep, mat, contract, batch, dcon = ins[0], check_finite(ins[1].value, "a dense kernel"), \
            rc, rb, lc
    else:
        dep, mat, contract, batch, dcon = ins[1], check_finite(ins[0].value, "a dense kernel"), \
            lc, lb, rc
    free = [a for a in range(mat.ndim) if a not in contract and a not in batch]
    b = math.prod(mat.shape[a] for a in batch)
    k = math.prod(mat.shape[a] for a in contract)
    f = math.prod(mat.shape[a] for a in free)
    blocks = np.transpose(mat, (*batch, *contract, *free)).reshape(b, k, f)

    def sigma(m) -> float:  # host-side (the kernel is concrete): LAPACK in float64
        return float(np.linalg.svd(m, compute_uv=False).max()) if m.size else 0.0

    plain = sigma(blocks)
    w.row(eqn, "dense", dep.shape, shape, plain, param_shape=mat.shape)

    def scaled(fold):
        vec = _per_axis_scale(fold, dep.shape, tuple(dcon)) if b == 1 else None
        return None if vec is None else sigma(blocks * vec[None, :, None])

    return w.fresh(_folded(w, dep, plain, scaled), shape, dtype)


def _conv_fourier(w, eqn, dep, kernel) -> tuple[float, tuple, tuple]:
    """Bound of a 1-/2-D conv with :func:`conv_norm` (kernel HWIO shape, strides)."""
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs = dep.shape
    nsp = len(lhs) - 2
    spatial = tuple(lhs[d] for d in dn.lhs_spec[2:])
    k = np.transpose(kernel, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
    hwio_shape = k.shape
    rd = tuple(p["rhs_dilation"])
    if any(d != 1 for d in rd):
        ksz = tuple((s - 1) * d + 1 for s, d in zip(k.shape[:nsp], rd, strict=True))
        kd = np.zeros((*ksz, *k.shape[nsp:]), k.dtype)
        kd[tuple(slice(None, None, d) for d in rd)] = k
        k = kd
    strides = tuple(p["window_strides"])
    pads = tuple(tuple(int(v) for v in pp) for pp in p["padding"])
    if nsp == 1:
        k = k[None]
        spatial = (1, *spatial)
        strides = (1, *strides)
        pads = ((0, 0), *pads)
    groups = p["feature_group_count"]
    i_per, o_total = k.shape[2], k.shape[3]
    o_per = o_total // groups
    kg = jnp.asarray(k.reshape(*k.shape[:3], groups, o_per).transpose(3, 0, 1, 2, 4), jnp.float32)
    in_shape = (*spatial, i_per)
    method = w.options.get("conv_method", "fft")
    kwargs = dict(w.options.get("conv_kwargs") or {})

    def one(kk):
        return conv_norm(kk, in_shape, strides=strides, padding=pads, method=method, **kwargs)

    norms = jax.vmap(one)(kg) if groups > 1 else one(kg[0])[None]
    return float(jnp.max(norms)), hwio_shape, strides[-nsp:]


def _hwio_dilated(eqn, kernel) -> np.ndarray:
    """The kernel as (spatial..., I, O), dilated by ``rhs_dilation`` (zeros between taps)."""
    p = eqn.params
    dn = p["dimension_numbers"]
    nsp = len(dn.rhs_spec) - 2
    k = np.transpose(kernel, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
    rd = tuple(p["rhs_dilation"])
    if any(d != 1 for d in rd):
        ksz = tuple((s - 1) * d + 1 for s, d in zip(k.shape[:nsp], rd, strict=True))
        kd = np.zeros((*ksz, *k.shape[nsp:]), k.dtype)
        kd[tuple(slice(None, None, d) for d in rd)] = k
        k = kd
    return k


def _conv_norm_call(w, k, in_shape, strides, pads) -> float:
    method = w.options.get("conv_method", "fft")
    kwargs = dict(w.options.get("conv_kwargs") or {})
    return float(conv_norm(jnp.asarray(k, jnp.float32), in_shape, strides=strides, padding=pads,
                           method=method, **kwargs))


def _conv_transposed(w, eqn, dep, kernel, out_shape) -> float | None:
    """A transposed (input-dilated, unit window stride) 1-/2-D convolution ``A`` through its
    adjoint, a strided convolution: ``‖A‖ = ‖Aᵀ‖``. With input dilation ``s``, padding
    ``(lo, hi)`` and (dilated) kernel size ``K`` per axis, ``y[o] = Σ_j K[j] x_s[o + j − lo]``, so
    ``(Aᵀy)[i] = Σ_j K[K−1−j] y[s·i − (K−1−lo) + j]``: stride ``s``, the kernel flipped with its
    in/out channels swapped, padding ``(K−1−lo, (n_x−1)s + K − n_y − (K−1−lo))``; bounded by
    :func:`conv_norm`. None when a padding is negative (the caller's fallback applies)."""
    p = eqn.params
    dn = p["dimension_numbers"]
    nsp = len(dep.shape) - 2
    if p["feature_group_count"] != 1 or any(v != 1 for v in p["window_strides"]) or nsp > 2:
        return None
    k = _hwio_dilated(eqn, kernel)
    n_x = [dep.shape[d] for d in dn.lhs_spec[2:]]
    n_y = [out_shape[d] for d in dn.out_spec[2:]]
    s = [int(v) for v in p["lhs_dilation"]]
    pads = []
    for a in range(nsp):
        ka, lo = k.shape[a], int(p["padding"][a][0])
        plo = ka - 1 - lo
        phi = (n_x[a] - 1) * s[a] + ka - n_y[a] - plo
        if plo < 0 or phi < 0:
            return None
        pads.append((plo, phi))
    adj = np.flip(k, tuple(range(nsp))).swapaxes(-1, -2)
    c_out = adj.shape[-2]
    if nsp == 1:
        adj, n_y, s, pads = adj[None], [1, *n_y], [1, *s], [(0, 0), *pads]
    return _conv_norm_call(w, adj, (*n_y, c_out), tuple(s), tuple(pads))


def _conv_3d(w, eqn, dep, kernel, out_shape) -> float | None:
    """A 3-D convolution as the 2-D one over (H, W) whose channels are (depth, channel) pairs:
    ``K2[h, w, (d, ci), (e, co)] = K3[d − (e·s_D − lo_D), h, w, ci, co]`` (zero outside the
    kernel) is the same linear map up to a permutation of entries, so the 2-D Fourier bound of
    ``K2`` (exact in the channel direction) bounds it."""
    p = eqn.params
    dn = p["dimension_numbers"]
    if len(dep.shape) != 5 or p["feature_group_count"] != 1 or any(
            v != 1 for v in p["lhs_dilation"]):
        return None
    k = _hwio_dilated(eqn, kernel)
    n_d, n_h, n_w = (dep.shape[d] for d in dn.lhs_spec[2:])
    m_d = out_shape[dn.out_spec[2]]
    s_d = int(p["window_strides"][0])
    lo_d = int(p["padding"][0][0])
    kd, kh, kw, ci, co = k.shape
    if n_d * ci * m_d * co > 4096 * 4096:
        return None
    k2 = np.zeros((kh, kw, n_d, ci, m_d, co), np.float64)
    for e in range(m_d):
        for j in range(kd):
            d = e * s_d - lo_d + j
            if 0 <= d < n_d:
                k2[:, :, d, :, e, :] += k[j]
    k2 = k2.reshape(kh, kw, n_d * ci, m_d * co)
    pads = tuple(tuple(int(v) for v in pp) for pp in p["padding"][1:])
    return _conv_norm_call(w, k2, (n_h, n_w, n_d * ci), tuple(p["window_strides"][1:]), pads)


_EXPLICIT_MAX = 2048  # inputs of a small convolution whose matrix is formed explicitly


def _conv_explicit(in_shape, kernel, conv_params) -> float | None:
    """The largest singular value of a small convolution's explicit matrix, in float64 (like a
    dense layer's), rounded up by a relative ``1e-12`` (far above LAPACK's backward error for
    these sizes). Each column is the image of a unit vector: every entry is one kernel tap or 0,
    exact. None above :data:`_EXPLICIT_MAX` inputs."""
    n = math.prod(in_shape)
    if n > _EXPLICIT_MAX:
        return None
    k = jnp.asarray(kernel, jnp.float32)
    basis = jnp.eye(n, dtype=jnp.float32).reshape(n, *in_shape)
    cols = jax.vmap(lambda e: lax.conv_general_dilated(e, k, **conv_params).ravel())(basis)
    sigma = float(np.linalg.svd(np.asarray(cols, np.float64), compute_uv=False)[0])
    return mul_up(sigma, 1 + 1e-12)


def conv_rule(w, eqn, ins):
    shape, dtype = out_aval(eqn)
    p = eqn.params
    if not (isinstance(ins[0], Dep) and isinstance(ins[1], Const)):
        raise UnsupportedPrimitiveError("conv_general_dilated with an input-dependent kernel "
                                        "(a product of two input-dependent values; only "
                                        "convolutions with a constant kernel are linear)")
    dep = ins[0]
    kernel = check_finite(ins[1].value, "a conv kernel")
    nsp = len(dep.shape) - 2
    fourier = nsp in (1, 2) and all(d == 1 for d in p["lhs_dilation"]) \
        and p["batch_group_count"] == 1
    conv_params = {k: v for k, v in p.items() if k != "preferred_element_type"}

    def norm(k) -> tuple[float, tuple, tuple]:
        key = (k.tobytes(), k.shape, dep.shape, str(sorted(p.items(), key=lambda kv: kv[0])),
               str(w.options.get("conv_method")), str(w.options.get("conv_kwargs")))
        cache = w.options.get("cache")
        if cache is not None and key in cache:
            return cache[key]
        special = None
        if not fourier and p["batch_group_count"] == 1:
            if any(d != 1 for d in p["lhs_dilation"]):
                special = _conv_transposed(w, eqn, dep, k, shape)
            elif nsp == 3:
                special = _conv_3d(w, eqn, dep, k, shape)
        if not fourier:
            explicit = _conv_explicit(dep.shape, k, conv_params)
            if explicit is not None:
                special = explicit if special is None else min(special, explicit)
        if fourier:
            out = _conv_fourier(w, eqn, dep, k)
        elif special is not None:
            out = (special, k.shape, tuple(p["window_strides"]))
        else:
            # Transposed (lhs_dilation), 3-D or batch-grouped: ‖A‖ <= ‖|A|‖ <= Collatz–Wielandt.
            absk = np.abs(k)

            def apply(x):
                return lax.conv_general_dilated(x, jnp.asarray(absk, x.dtype), **conv_params)

            out = (_nonneg.norm_upper_bound(apply, dep.shape), k.shape, tuple(p["window_strides"]))
        if cache is not None:
            cache[key] = out
        return out

    plain, param_shape, stride = norm(kernel)
    w.row(eqn, "conv", dep.shape, shape, plain, param_shape=param_shape, stride=stride)

    def scaled(fold):
        dn = p["dimension_numbers"]
        vec = _per_axis_scale(fold, dep.shape, (dn.lhs_spec[1],))
        if vec is None:
            return None
        groups = p["feature_group_count"] * p["batch_group_count"]
        i_per, o_total = kernel.shape[dn.rhs_spec[1]], kernel.shape[dn.rhs_spec[0]]
        if p["batch_group_count"] != 1 or vec.size != i_per * p["feature_group_count"]:
            return None
        o_per = o_total // groups
        factor = vec[(np.arange(o_total)[None, :] // o_per) * i_per + np.arange(i_per)[:, None]]
        kk = np.moveaxis(kernel, (dn.rhs_spec[1], dn.rhs_spec[0]), (-2, -1)) * factor
        return norm(np.moveaxis(kk, (-2, -1), (dn.rhs_spec[1], dn.rhs_spec[0])))[0]

    return w.fresh(_folded(w, dep, plain, scaled), shape, dtype)


def normalization_rule(w, eqn, ins):
    """A recognised normalisation ``kind(base, *factors)`` (:mod:`advjax.lipschitz._normalize`):
    ``L_base · constant · Π max|γ|``; not applicable (walked as is) for a constant base, an
    input-dependent or non-finite factor."""
    match = eqn.params["match"]
    base, factors = ins[0], ins[1:]
    if not (isinstance(base, Dep) and is_float(base.dtype)
            and all(isinstance(f, Const) for f in factors)):
        raise NotApplicable
    values = [np.asarray(f.value, np.float64) for f in factors]
    if not all(np.all(np.isfinite(v)) for v in [*values, *map(np.asarray, match.factor_consts)]):
        raise NotApplicable
    bound = match.bound(values)
    shape, dtype = out_aval(eqn)
    name = w.name(eqn, "norm")
    w.row(eqn, "norm", base.shape, shape, bound, name=name, primitive=match.kind)
    return w.fresh(mul_up(w.lip(base), bound), shape, dtype, name)


def contrast_rule(w, eqn, ins):
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    eps, gamma = float(eqn.params["eps"]), float(eqn.params["gamma"])
    if not (math.isfinite(eps) and eps > 0 and 0.0 <= gamma <= 1.0):
        raise UnsupportedPrimitiveError(
                f"contrast normalisation with eps={eps!r}, gamma={gamma!r}: the bound eps^-gamma "
                "holds for eps > 0 and gamma in [0, 1] only")
    bound = eps ** (-gamma)
    w.row(eqn, "contrast_norm", dep.shape, shape, bound)
    return w.fresh(mul_up(w.lip(dep), bound), shape, dtype)


# --------------------------------------------------------------------------------------------------
# Order statistics, prefix sums, scatter-add, Euclidean norms
# --------------------------------------------------------------------------------------------------


def _index_output(eqn, what: str) -> Deferred:
    where = str(eqn.source_info.name_stack) or "top level"
    return Deferred(UnsupportedPrimitiveError(
            f"the {what} of {eqn.primitive.name!r} (at {where}) depend on the input and are used: "
            "indices are piecewise constant, not Lipschitz"))


def sort_rule(w, eqn, ins):
    """``sort`` of an input-dependent key along one axis: 1 (sorting is 1-Lipschitz in L2: for
    sorted ``a``, ``b`` and any permutation ``π``, ``Σ a_i b_i >= Σ a_i b_π(i)`` (rearrangement), so
    ``‖sort(x) − sort(y)‖² <= ‖x − y‖²``). Operands carried along with the keys (argsort's iota)
    are permuted by an input-dependent permutation: refused where used."""
    nk = int(eqn.params["num_keys"])
    if nk != 1 or not isinstance(ins[0], Dep) or any(isinstance(a, Dep) for a in ins[1:]):
        raise UnsupportedPrimitiveError(
                "sort with several keys, or with an input-dependent operand that is not the key "
                "(a value permuted by another value's order jumps where the order changes)")
    shape, dtype = out_aval(eqn, 0)
    if not is_float(dtype):
        raise UnsupportedPrimitiveError(f"sort of a non-float input-dependent value ({dtype})")
    w.row(eqn, "sort", shape, shape, 1.0)
    return [w.fresh(w.lip(ins[0]), shape, dtype),
            *[_index_output(eqn, "permuted operands") for _ in eqn.outvars[1:]]]


def top_k_rule(w, eqn, ins):
    """``top_k`` values: the first ``k`` entries of the descending sort along the last axis, a
    coordinate projection of a 1-Lipschitz map: 1. The indices are refused where used."""
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn, 0)
    w.row(eqn, "sort", dep.shape, shape, 1.0)
    return [w.fresh(w.lip(dep), shape, dtype), _index_output(eqn, "indices")]


def cumsum_norm(n: int) -> float:
    """The spectral norm of the ``n×n`` lower-triangular matrix of ones (a prefix sum): its
    singular values are ``1 / (2 sin((2k − 1)π / (4n + 2)))``, ``k = 1..n`` (its inverse is the
    first difference, ``LᵀL``'s inverse the tridiagonal ``[−1, 2, −1]`` with a 1 in a corner), so
    ``1 / (2 sin(π / (4n + 2)))``, rounded up."""
    if n <= 1:
        return float(n)
    return math.nextafter(math.nextafter(0.5 / math.sin(math.pi / (4 * n + 2)), math.inf),
                          math.inf)


def cumsum_rule(w, eqn, ins):
    """``cumsum`` (either direction) along one axis: the norm of the triangular matrix of ones
    (the other axes are independent copies)."""
    dep = only_dep(eqn, ins)
    shape, dtype = out_aval(eqn)
    bound = cumsum_norm(int(dep.shape[eqn.params["axis"]]))
    w.row(eqn, "linear", dep.shape, shape, bound)
    return w.fresh(mul_up(w.lip(dep), bound), shape, dtype)


def scatter_add_rule(w, eqn, ins):
    """``scatter-add`` with constant indices: ``out = operand + S·updates`` with ``S`` a 0/1 matrix
    with at most one 1 per column (each update lands on one entry, or is dropped), so ``SSᵀ`` is
    diagonal with the number of updates per entry and ``‖S‖ = √(largest count)``; counted by
    running the scatter itself on ones (its own index semantics: clipping, dropping)."""
    operand, indices, updates = ins[0], ins[1], ins[2]
    if isinstance(indices, Dep):
        raise UnsupportedPrimitiveError("scatter-add with input-dependent indices")
    shape, dtype = out_aval(eqn)
    jaxpr = eqn.params.get("update_jaxpr")
    body = [e.primitive.name for e in jaxpr.eqns] if jaxpr is not None else ["add"]
    if body != ["add"]:
        raise UnsupportedPrimitiveError(f"scatter-add whose update computation is {body}")
    counts = eqn.primitive.bind(jnp.zeros(shape, jnp.float32), jnp.asarray(indices.value),
                                jnp.ones(updates.shape if isinstance(updates, Dep) else
                                         np.shape(updates.value), jnp.float32), **eqn.params)
    bound = math.sqrt(float(np.max(np.asarray(counts)))) if np.size(counts) else 0.0
    lips = []
    if isinstance(operand, Dep):
        lips.append(w.lip(operand))
    if isinstance(updates, Dep):
        w.row(eqn, "scatter", updates.shape, shape, bound)
        lips.append(mul_up(w.lip(updates), bound))
    return w.fresh(sum_up(lips), shape, dtype)


# --------------------------------------------------------------------------------------------------
# Calls and control flow
# --------------------------------------------------------------------------------------------------



def _closed(j) -> tuple[Any, tuple]:
    if isinstance(j, jcore.ClosedJaxpr):
        return j.jaxpr, tuple(j.consts)
    if isinstance(j, jcore.Jaxpr):
        return j, ()
    raise UnsupportedPrimitiveError(f"expected a jaxpr, got {type(j).__name__}")


def _walk(w: Walker, closed, args, label: str) -> list:
    jaxpr, consts = _closed(closed)
    saved = w.prefix
    w.prefix = (*saved, label) if label else saved
    try:
        return w.run(jaxpr, consts, args)
    finally:
        w.prefix = saved


def call_rule(w, eqn, ins):
    """Calls (jit, custom_jvp/vjp: the primal, remat, ...): walk the sub-jaxpr."""
    for key in _CALL_PARAMS:
        if key in eqn.params:
            sub = eqn.params[key]
            n_in = len(_closed(sub)[0].invars)
            label = "/".join(p for p in (str(eqn.source_info.name_stack),
                                         str(eqn.params.get("name", ""))) if p)
            return _walk(w, sub, ins[len(ins) - n_in:], label)
    raise UnsupportedPrimitiveError(f"call primitive {eqn.primitive.name!r} without a sub-jaxpr")


def cond_rule(w, eqn, ins):
    """``cond``/``switch`` with a constant index: the selected branch (clamped like lax)."""
    index, ops = ins[0], ins[1:]
    if isinstance(index, Dep):
        raise UnsupportedPrimitiveError(
                "cond/switch on an input-dependent predicate selects a different function where "
                "the predicate changes (generally a jump); write the selection with jnp.where so "
                "the elementwise analysis can check continuity")
    branches = eqn.params["branches"]
    i = int(np.clip(int(np.asarray(index.value)), 0, len(branches) - 1))
    return _walk(w, branches[i], ops, f"branch{i}")


_MAX_TRIPS = 100_000


def while_rule(w, eqn, ins):
    """``while_loop`` whose condition depends on constants only: the body composed per trip."""
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cconsts, bconsts, carry = ins[:cn], ins[cn:cn + bn], list(ins[cn + bn:])
    for trip in range(_MAX_TRIPS):
        (flag,) = _walk(w, p["cond_jaxpr"], [*cconsts, *carry], "")
        if isinstance(flag, Dep):
            raise UnsupportedPrimitiveError(
                    "while_loop whose condition depends on the input (the trip count changes "
                    "with the input: a jump in general)")
        if not bool(np.asarray(flag.value)):
            return carry
        carry = _walk(w, p["body_jaxpr"], [*bconsts, *carry], f"while{trip}")
    raise UnsupportedPrimitiveError(f"while_loop ran more than {_MAX_TRIPS} trips")


def scan_rule(w, eqn, ins):
    """``scan`` unrolled: carries composed per step; each ``xs`` slice is at most ``L_xs``;
    the stacked ``ys`` of one output have ``√Σ_t L_t²``."""
    p = eqn.params
    nc, nk, length = p["num_consts"], p["num_carry"], int(p["length"])
    consts, carry, xs = ins[:nc], list(ins[nc:nc + nk]), ins[nc + nk:]
    body = p["jaxpr"]
    n_ys = len(eqn.outvars) - nk
    ys: list[list] = [[] for _ in range(n_ys)]
    for step in range(length):
        t = length - 1 - step if p["reverse"] else step
        x_t = [Const(np.asarray(x.value)[t]) if isinstance(x, Const) else
               w.fresh(w.lip(x), x.shape[1:], x.dtype) for x in xs]
        outs = _walk(w, body, [*consts, *carry, *x_t], f"scan{t}")
        carry = list(outs[:nk])
        for j, y in enumerate(outs[nk:]):
            ys[j].append((t, y))
    stacked = []
    for j in range(n_ys):
        shape, dtype = out_aval(eqn, nk + j)
        items = sorted(ys[j], key=lambda ty: ty[0])
        if all(isinstance(y, Const) for _, y in items):
            stacked.append(Const(np.stack([np.asarray(y.value) for _, y in items])
                                 if items else np.zeros(shape, dtype)))
        else:
            lips = [w.lip(y) for _, y in items if isinstance(y, Dep)]
            stacked.append(w.fresh(norm_up(lips), shape, dtype))
    return [*carry, *stacked]


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

UNIT = ("reshape", "squeeze", "expand_dims", "transpose", "rev", "copy", "copy_p",
        "sharding_constraint", "slice", "dynamic_slice", "pad", "stop_gradient",
        "optimization_barrier")


def _table() -> RuleTable:
    rules: dict[str, Any] = {}
    rules.update(dict.fromkeys((*ew.SUPPORTED, "clamp"), elementwise_rule))
    rules.update(dict.fromkeys(UNIT, unit_rule))
    rules.update(dict.fromkeys(("broadcast_in_dim", "tile"), copies_rule))
    rules.update(dict.fromkeys(("concatenate", "stack", "dynamic_update_slice"), join_rule))
    rules.update(dict.fromkeys(CALLS, call_rule))
    rules.update(dict.fromkeys(("reduce_max", "reduce_min"), reduce_max_rule))
    rules.update(dict.fromkeys(("reduce_window_max", "reduce_window_min", "reduce_window_sum",
                                "reduce_window"), window_rule))
    rules.update({"reduce_precision": _reduce_precision_rule, "split": split_rule,
                  "gather": gather_rule, "reduce_sum": reduce_sum_rule, "dot_general": dot_rule,
                  "conv_general_dilated": conv_rule, contrast_norm_p.name: contrast_rule,
                  "cond": cond_rule, "while": while_rule, "scan": scan_rule,
                  "sort": sort_rule, "top_k": top_k_rule, "cumsum": cumsum_rule,
                  "scatter-add": scatter_add_rule, "scatter_add": scatter_add_rule})
    rules.update(dict.fromkeys(NORMALIZATIONS, normalization_rule))
    return RuleTable(rules)


DEFAULT_RULES: RuleTable = _table()
