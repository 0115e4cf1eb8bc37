"""Network Lipschitz bounds by walking the jaxpr of ``logits_fn`` (jax_verify style).

``layer_bounds(logits_fn, x_example)`` traces ``logits_fn`` with ``jax.make_jaxpr`` and interprets
the jaxpr primitive by primitive. Every value is either a constant (parameters and everything
computed from them only; evaluated concretely) or a function of the input ``x`` carrying an upper
Lipschitz constant ``L`` in the L2 norm (``‖v(x) - v(x')‖ <= L ‖x - x'‖``; the input has ``L = 1``).
A registry ``{primitive name: rule}`` maps the input constants of each equation to its output
constants:

* linear maps with a parameter: ``dot_general`` (largest singular value, per batch block),
  ``conv_general_dilated`` (:func:`advjax.lipschitz.conv_norm`, Fourier bound by default),
  elementwise ``mul``/``div`` by a constant array (``max |c|``, e.g. eval-mode BatchNorm's
  ``γ/√(var+ε)``);
* structural linear maps: ``reshape``/``transpose``/``squeeze``/``slice``/``pad``/... (1),
  ``broadcast_in_dim`` (``√copies``), ``concatenate`` (``√ΣL²``), ``reduce_sum`` (``√n``),
  ``gather``
  with constant indices (``√max multiplicity``);
* translations (``add``/``sub`` of a constant: bias, BN shift) keep ``L``; a sum of two
  input-dependent values gets ``L_f + L_g`` (residual connections);
* pooling: ``reduce_window_max`` (``√(max windows covering an input)``, 1 without overlap),
  ``reduce_window_sum`` (Schur test ``√(window · max cover)``), ``reduce_max`` (1);
* elementwise nonlinearities: chains of elementwise primitives on one value (ReLU ``max(x, 0)``,
  leaky ReLU and half-Huber ReLU ``select_n`` patterns, ``logistic`` 1/4, ``tanh`` 1, softplus, ...)
  are collected into a scalar expression whose Lipschitz constant is bounded soundly by
  :mod:`advjax.lipschitz._elementwise` (piecewise interval analysis + continuity check);
* :func:`contrast_normalize` (Szegedy §4.3): ``ε^{-γ}``;
* calls (``jit``/``pjit``, ``closed_call``, ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) are
  walked recursively.

An unsupported primitive raises :class:`UnsupportedPrimitiveError` naming it; the walk never returns
a silent, unsound bound. Composition multiplies and sums add, so ``report.total`` is a sound upper
bound of the L2 Lipschitz constant of ``logits_fn`` over all of input space (Szegedy §4.3: the
product of per-layer bounds for a chain).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from jax import lax

from advjax._checks import check_choice
from advjax.lipschitz import _elementwise as ew
from advjax.lipschitz.contrast import contrast_norm_p
from advjax.lipschitz.spectral import conv_norm

Array = jax.Array
logger = logging.getLogger(__name__)


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive (or a use of it) for which no sound Lipschitz rule exists in the registry."""


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """One row of a :class:`LipschitzReport` (Szegedy Table 5 style).

    Attributes:
      name: module path from the trace (e.g. ``"MnistCNN/Conv_0"``), or the primitive and an index.
      kind: ``"dense"``, ``"conv"``, ``"activation"``, ``"scale"``, ``"pool"``, ``"reduce"``,
        ``"gather"`` or ``"contrast_norm"``.
      primitive: the jaxpr primitive(s) of the row.
      in_shape: shape of the input-dependent operand.
      out_shape: shape of the output.
      param_shape: shape of the parameter (dense kernel, conv kernel in HWIO order, scale), or
        ``None``.
      stride: conv strides, or ``None``.
      bound: upper Lipschitz constant of this layer alone (L2 -> L2).
    """

    name: str
    kind: str
    primitive: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    param_shape: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    bound: float


@dataclasses.dataclass(frozen=True)
class LipschitzReport:
    """Result of :func:`layer_bounds`.

    Attributes:
      rows: one :class:`LayerBound` per layer in execution order.
      total: sound upper bound of the L2 Lipschitz constant of the whole ``logits_fn`` (per-value
        propagation: products along paths, sums at residual additions).
      input_shape: shape of the analysed input.
      output_shape: shape of the output (logits).
    """

    rows: tuple[LayerBound, ...]
    total: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def product(self) -> float:
        """Product of all row bounds (Szegedy's ``∏ L_k``; a bound only for plain chains)."""
        return float(np.prod([r.bound for r in self.rows])) if self.rows else 1.0

    def to_markdown(self) -> str:
        """Markdown table of the rows (:func:`advjax.lipschitz.report.table5`) and the total."""
        from advjax.lipschitz.report import table5

        return table5(self)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Const:
    value: Any


@dataclasses.dataclass(eq=False)
class _Src:
    """A finalised input-dependent value with a known Lipschitz constant."""

    lip: float


@dataclasses.dataclass(eq=False)
class _Dep:
    """Input-dependent value: an elementwise expression ``node`` of ``src`` (or ``src`` itself)."""

    src: _Src
    node: ew.Node
    shape: tuple[int, ...]
    dtype: Any
    name: str = ""
    final: float | None = None
    seq: int = 0


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def _uniform(value) -> float | None:
    """The common value of a constant array whose entries are all equal (a scalar), else None."""
    arr = np.asarray(value)
    if arr.size == 0:
        return None
    first = arr.flat[0]
    return float(first) if np.all(arr == first) else None


_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _sub_jaxpr(eqn) -> tuple[Any, Sequence[Any]]:
    for key in _CALL_PARAMS:
        if key in eqn.params:
            j = eqn.params[key]
            if isinstance(j, jcore.ClosedJaxpr):
                return j.jaxpr, j.consts
            if isinstance(j, jcore.Jaxpr):
                return j, ()
    raise UnsupportedPrimitiveError(f"call primitive {eqn.primitive.name!r} without a sub-jaxpr")


_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint",
                    "custom_lin", "named_call"})

_ELEMENTWISE = frozenset(ew.SUPPORTED) | {"clamp"}

_UNIT = frozenset({"reshape", "squeeze", "expand_dims", "transpose", "rev", "copy", "copy_p",
                   "reduce_precision", "convert_element_type", "sharding_constraint",
                   "slice"})


class _Walker:
    def __init__(self, conv_method: str, conv_kwargs: dict):
        self.rows: list[tuple[int, LayerBound]] = []
        self.conv_method = conv_method
        self.conv_kwargs = conv_kwargs
        self.counter = 0
        self.prefix: tuple[str, ...] = ()

    # ---- helpers -------------------------------------------------------------------------------

    def name(self, eqn, default: str) -> str:
        parts = [*self.prefix, str(eqn.source_info.name_stack)]
        stack = "/".join(p for p in parts if p)
        return stack if stack else f"{default}_{self.counter}"

    def sorted_rows(self) -> tuple[LayerBound, ...]:
        return tuple(r for _, r in sorted(self.rows, key=lambda t: t[0]))

    def row(self, eqn, kind, in_shape, out_shape, bound, *, param_shape=None, stride=None,
            name=None, primitive=None):
        self.rows.append((self.counter, LayerBound(
                name=name or self.name(eqn, eqn.primitive.name), kind=kind,
                primitive=primitive or eqn.primitive.name, in_shape=tuple(in_shape),
                out_shape=tuple(out_shape), param_shape=None if param_shape is None else
                tuple(param_shape), stride=None if stride is None else tuple(stride),
                bound=float(bound))))

    def lip(self, dep: _Dep) -> float:
        """Finalise an expression: its Lipschitz constant w.r.t. the input (adds a row)."""
        if dep.node is ew.INPUT:
            return dep.src.lip
        if dep.final is None:
            if not _is_float(dep.dtype):
                raise UnsupportedPrimitiveError(
                        f"a non-float value ({dep.dtype}) computed from the input at {dep.name!r} "
                        "is used outside an elementwise function (comparisons / integer casts of "
                        "the input are piecewise constant, not Lipschitz)")
            try:
                g = ew.lipschitz_constant(dep.node)
            except ew.NotLipschitzError as err:
                raise UnsupportedPrimitiveError(
                        f"the elementwise function ({'+'.join(sorted(dep.node.ops()))}) at "
                        f"{dep.name!r} has no global Lipschitz bound: {err}") from None
            ops = dep.node.ops()
            kind = "scale" if ops <= ew.LINEAR_OPS else "activation"
            if not (kind == "scale" and g == 1.0):
                self.rows.append((dep.seq, LayerBound(dep.name, kind, "+".join(sorted(ops)),
                                                      dep.shape, dep.shape, None, None, g)))
            dep.final = g * dep.src.lip
        return dep.final

    def fresh(self, lip: float, shape, dtype, name="") -> _Dep:
        return _Dep(_Src(float(lip)), ew.INPUT, tuple(shape), dtype, name)

    # ---- walk ----------------------------------------------------------------------------------

    def run(self, jaxpr, consts, args) -> list:
        env: dict[Any, Any] = {}

        def read(v):
            if isinstance(v, jcore.Literal):
                return _Const(v.val)
            return env[v]

        for var, c in zip(jaxpr.constvars, consts, strict=True):
            env[var] = _Const(c)
        for var, a in zip(jaxpr.invars, args, strict=True):
            env[var] = a
        for eqn in jaxpr.eqns:
            self.counter += 1
            ins = [read(v) for v in eqn.invars]
            prim = eqn.primitive.name
            if prim in _CALLS:
                sub, sub_consts = _sub_jaxpr(eqn)
                n_in = len(sub.invars)
                saved = self.prefix
                self.prefix = (*saved, str(eqn.source_info.name_stack),
                               str(eqn.params.get("name", "")))
                try:
                    outs = self.run(sub, sub_consts, ins[len(ins) - n_in:])
                finally:
                    self.prefix = saved
            elif all(isinstance(a, _Const) for a in ins):
                vals = eqn.primitive.bind(*[a.value for a in ins], **eqn.params)
                vals = vals if eqn.primitive.multiple_results else [vals]
                outs = [_Const(v) for v in vals]
            elif prim in _ELEMENTWISE:
                outs = [self.elementwise(eqn, ins)]
            elif prim in _RULES:
                outs = _RULES[prim](self, eqn, ins)
                outs = outs if isinstance(outs, list) else [outs]
            else:
                raise UnsupportedPrimitiveError(
                        f"no Lipschitz rule for primitive {prim!r} (at "
                        f"{str(eqn.source_info.name_stack) or 'top level'}) applied to a value "
                        "that depends on the input; supported: "
                        f"{sorted(_ELEMENTWISE | set(_RULES) | _CALLS)}")
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
        return [read(v) for v in jaxpr.outvars]

    # ---- elementwise -----------------------------------------------------------------------------

    def elementwise(self, eqn, ins) -> _Dep:
        prim = eqn.primitive.name
        aval = eqn.outvars[0].aval
        shape, dtype = tuple(aval.shape), aval.dtype
        name = self.name(eqn, prim)
        # Input-dependent operands broadcast to the output shape (size-1 dims) copy entries.
        norm_ins = []
        for a in ins:
            if isinstance(a, _Dep) and a.shape != shape:
                ratio = math.prod(shape) / max(math.prod(a.shape), 1)
                a = self.fresh(self.lip(a) * math.sqrt(ratio), shape, a.dtype, name)
            norm_ins.append(a)
        ins = norm_ins
        deps = [a for a in ins if isinstance(a, _Dep)]
        consts = [a for a in ins if isinstance(a, _Const)]
        srcs = {id(d.src) for d in deps}
        uniform = [_uniform(c.value) for c in consts]
        if len(srcs) == 1 and all(u is not None for u in uniform):
            src = deps[0].src
            nodes = [a.node if isinstance(a, _Dep) else ew.const(_uniform(a.value)) for a in ins]
            params = tuple(sorted((k, v) for k, v in eqn.params.items() if k == "y"))
            if prim == "clamp":
                node = ew.Node("min", (ew.Node("max", (nodes[1], nodes[0])), nodes[2]))
            else:
                node = ew.Node(prim, tuple(nodes), params=params)
            return _Dep(src, node, shape, dtype, name, seq=self.counter)
        # Mixed sources or non-uniform constant arrays: linear rules on finalised values.
        lips = [self.lip(d) for d in deps]
        if prim in ("add", "add_any", "sub"):
            return self.fresh(sum(lips), shape, dtype, name)
        if prim == "mul" and len(deps) == 1:
            c = np.abs(np.asarray(consts[0].value, np.float64)).max()
            self.row(eqn, "scale", deps[0].shape, shape, c, param_shape=np.shape(consts[0].value),
                     name=name)
            return self.fresh(lips[0] * c, shape, dtype, name)
        if prim == "div" and len(deps) == 1 and isinstance(ins[0], _Dep):
            d = np.abs(np.asarray(consts[0].value, np.float64))
            if np.any(d == 0):
                raise UnsupportedPrimitiveError(f"division by a constant containing 0 at {name!r}")
            c = float((1.0 / d).max())
            self.row(eqn, "scale", deps[0].shape, shape, c, param_shape=d.shape, name=name)
            return self.fresh(lips[0] * c, shape, dtype, name)
        if prim in ("max", "min") or (prim == "clamp" and isinstance(ins[1], _Dep)
                                      and len(deps) == 1):
            if len(deps) == 1:
                self.row(eqn, "activation", shape, shape, 1.0, name=name)
                return self.fresh(lips[0], shape, dtype, name)
            return self.fresh(math.sqrt(sum(v * v for v in lips)), shape, dtype, name)
        if prim == "select_n" and isinstance(ins[0], _Const):
            return self.fresh(math.sqrt(sum(v * v for v in lips)), shape, dtype, name)
        if prim == "neg":
            return self.fresh(lips[0], shape, dtype, name)
        raise UnsupportedPrimitiveError(
                f"primitive {prim!r} at {name!r} combines input-dependent values that are not "
                "elementwise functions of one common value (or uses non-uniform constants in a "
                "nonlinear way); no sound global Lipschitz rule applies"
                + (" (a product of two input-dependent values is not globally Lipschitz)"
                   if prim in ("mul", "div") else ""))


# --------------------------------------------------------------------------------------------------
# Rules for non-elementwise primitives
# --------------------------------------------------------------------------------------------------

Rule = Callable[[_Walker, Any, list], Any]
_RULES: dict[str, Rule] = {}


def register(*names: str) -> Callable[[Rule], Rule]:
    """Decorator adding ``rule(walker, eqn, inputs) -> output(s)`` for the primitives ``names``."""

    def deco(fn: Rule) -> Rule:
        for n in names:
            _RULES[n] = fn
        return fn

    return deco


def _out(eqn, i=0):
    aval = eqn.outvars[i].aval
    return tuple(aval.shape), aval.dtype


def _only_dep(eqn, ins, positions=(0,)) -> _Dep:
    for i, a in enumerate(ins):
        if isinstance(a, _Dep) and i not in positions:
            raise UnsupportedPrimitiveError(
                    f"primitive {eqn.primitive.name!r} with an input-dependent operand at position "
                    f"{i} (indices, padding values, ... must be constants)")
    return ins[positions[0]]


@register(*_UNIT)
def _unit_rule(w: _Walker, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    if not _is_float(dtype):
        raise UnsupportedPrimitiveError(f"{eqn.primitive.name!r} casts an input-dependent value to "
                                        f"{dtype}; integer values are not Lipschitz")
    return w.fresh(w.lip(dep), shape, dtype)


@register("dynamic_slice")
def _dynamic_slice_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    return w.fresh(w.lip(dep), shape, dtype)


@register("pad")
def _pad_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    return w.fresh(w.lip(dep), shape, dtype)


@register("broadcast_in_dim")
def _broadcast_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    ratio = math.prod(shape) / max(math.prod(dep.shape), 1)
    return w.fresh(w.lip(dep) * math.sqrt(ratio), shape, dtype)


@register("concatenate")
def _concat_rule(w, eqn, ins):
    shape, dtype = _out(eqn)
    lips = [w.lip(a) for a in ins if isinstance(a, _Dep)]
    return w.fresh(math.sqrt(sum(v * v for v in lips)), shape, dtype)


@register("split")
def _split_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    lip = w.lip(dep)
    return [w.fresh(lip, *_out(eqn, i)) for i in range(len(eqn.outvars))]


@register("dynamic_update_slice")
def _dus_rule(w, eqn, ins):
    shape, dtype = _out(eqn)
    if any(isinstance(a, _Dep) for a in ins[2:]):
        raise UnsupportedPrimitiveError("dynamic_update_slice with input-dependent indices")
    lips = [w.lip(a) for a in ins[:2] if isinstance(a, _Dep)]
    return w.fresh(math.sqrt(sum(v * v for v in lips)), shape, dtype)


@register("reduce_sum")
def _reduce_sum_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    n = math.prod(dep.shape[a] for a in eqn.params["axes"])
    bound = math.sqrt(n)
    w.row(eqn, "reduce", dep.shape, shape, bound)
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register("reduce_max", "reduce_min")
def _reduce_max_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    w.row(eqn, "pool", dep.shape, shape, 1.0)
    return w.fresh(w.lip(dep), shape, dtype)


def _window_counts(eqn, shape, dtype) -> tuple[float, float]:
    """(max inputs per window, max windows per input) of the window pattern of ``eqn``."""
    p = eqn.params

    def window_sum(x):
        return lax.reduce_window(x, jnp.zeros((), dtype), lax.add, p["window_dimensions"],
                                 p["window_strides"], p["padding"], p["base_dilation"],
                                 p["window_dilation"])

    ones = jnp.ones(shape, dtype)
    per_window = window_sum(ones)
    per_input = jax.linear_transpose(window_sum, ones)(jnp.ones_like(per_window))[0]
    return float(per_window.max()), float(per_input.max())


@register("reduce_window_max", "reduce_window_min")
def _max_pool_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    _, cover = _window_counts(eqn, dep.shape, jnp.float32)
    bound = math.sqrt(cover)
    w.row(eqn, "pool", dep.shape, shape, bound, param_shape=eqn.params["window_dimensions"],
          stride=eqn.params["window_strides"])
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register("reduce_window_sum")
def _sum_pool_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    per_window, cover = _window_counts(eqn, dep.shape, jnp.float32)
    bound = math.sqrt(per_window * cover)
    w.row(eqn, "pool", dep.shape, shape, bound, param_shape=eqn.params["window_dimensions"],
          stride=eqn.params["window_strides"])
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register("gather")
def _gather_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    idx = ins[1].value
    params = eqn.params

    def g(op):
        return eqn.primitive.bind(op, idx, **params)

    ones = jnp.ones(dep.shape, jnp.float32)
    counts = jax.linear_transpose(g, ones)(jnp.ones(shape, jnp.float32))[0]
    bound = math.sqrt(max(float(counts.max()), 0.0))
    w.row(eqn, "gather", dep.shape, shape, bound)
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register("dot_general")
def _dot_rule(w, eqn, ins):
    shape, dtype = _out(eqn)
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if isinstance(ins[0], _Dep) and isinstance(ins[1], _Dep):
        raise UnsupportedPrimitiveError("dot_general of two input-dependent operands (bilinear, "
                                        "not globally Lipschitz)")
    if isinstance(ins[1], _Const):
        dep, mat, contract, batch = ins[0], np.asarray(ins[1].value), rc, rb
    else:
        dep, mat, contract, batch = ins[1], np.asarray(ins[0].value), lc, lb
    free = [a for a in range(mat.ndim) if a not in contract and a not in batch]
    b = math.prod(mat.shape[a] for a in batch)
    k = math.prod(mat.shape[a] for a in contract)
    f = math.prod(mat.shape[a] for a in free)
    blocks = np.transpose(mat, (*batch, *contract, *free)).reshape(b, k, f)
    # Host-side (the kernel is concrete): LAPACK in float64.
    sigma = float(np.linalg.svd(blocks.astype(np.float64), compute_uv=False).max()) \
        if blocks.size else 0.0
    w.row(eqn, "dense", dep.shape, shape, sigma, param_shape=mat.shape)
    return w.fresh(w.lip(dep) * sigma, shape, dtype)


@register("conv_general_dilated")
def _conv_rule(w, eqn, ins):
    shape, dtype = _out(eqn)
    p = eqn.params
    if not (isinstance(ins[0], _Dep) and isinstance(ins[1], _Const)):
        raise UnsupportedPrimitiveError("conv_general_dilated with an input-dependent kernel "
                                        "(only convolutions with a constant kernel are linear)")
    if any(d != 1 for d in p["lhs_dilation"]):
        raise UnsupportedPrimitiveError("conv_general_dilated with lhs_dilation (transposed conv)")
    if p["batch_group_count"] != 1:
        raise UnsupportedPrimitiveError("conv_general_dilated with batch_group_count > 1")
    dep = ins[0]
    dn = p["dimension_numbers"]
    kernel = np.asarray(ins[1].value)
    lhs = dep.shape
    nsp = len(lhs) - 2
    if nsp not in (1, 2):
        raise UnsupportedPrimitiveError(f"conv_general_dilated with {nsp} spatial dimensions")
    spatial = tuple(lhs[d] for d in dn.lhs_spec[2:])
    # kernel to (spatial..., I, O), i.e. HWIO
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

    def one(kk):
        return conv_norm(kk, in_shape, strides=strides, padding=pads, method=w.conv_method,
                         **w.conv_kwargs)

    norms = jax.vmap(one)(kg) if groups > 1 else one(kg[0])[None]
    bound = float(jnp.max(norms))
    w.row(eqn, "conv", dep.shape, shape, bound, param_shape=hwio_shape, stride=strides[-nsp:])
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register(contrast_norm_p.name)
def _contrast_rule(w, eqn, ins):
    dep = _only_dep(eqn, ins)
    shape, dtype = _out(eqn)
    bound = float(eqn.params["eps"]) ** (-float(eqn.params["gamma"]))
    w.row(eqn, "contrast_norm", dep.shape, shape, bound)
    return w.fresh(w.lip(dep) * bound, shape, dtype)


@register("stop_gradient")
def _stop_gradient_rule(w, eqn, ins):
    # The identity on values (only derivatives are cut): the bound is that of the function computed.
    dep = _only_dep(eqn, ins)
    return w.fresh(w.lip(dep), *_out(eqn))


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def layer_bounds(
    logits_fn: Callable[[Array], Array],
    x_example: Array,
    *,
    conv_method: str = "fft",
    conv_kwargs: dict | None = None,
) -> LipschitzReport:
    """Per-layer upper Lipschitz bounds and a sound network bound, read from the jaxpr.

    Follows Szegedy et al. (2013) §4.3 (papers.md §1.6): per-layer operator norms (dense: largest
    singular value; conv: Fourier formula (1) with the ``1/Δ`` stride factor), contractive
    nonlinearities and max pooling, combined through the computation graph (products along paths,
    sums at additions of input-dependent values). See the module docstring for the rule table.
    It runs on the host, outside ``jit``: it reads the concrete parameter values that
    ``logits_fn`` closes over (the per-layer norms themselves are jitted computations).

    Arguments:
      logits_fn: ``x -> logits`` for ONE example, closing over its parameters (e.g.
        :func:`advjax.models.linen_logits_fn`); models with BatchNorm must be in eval mode.
      x_example: an input ``(...)`` of the right shape and dtype (values unused).
      conv_method: ``"fft"`` (default; sound upper bound for every padding) or ``"exact"`` (power
        iteration: the true norm to ``tol``, approached from below; tighter for zero padding but
        only as sound as its convergence).
      conv_kwargs: extra keyword arguments of :func:`conv_norm` (``iters``, ``tol``, ``key``).

    Returns:
      :class:`LipschitzReport` with one row per layer and ``.total``, an upper bound of
      ``sup ‖logits_fn(x) - logits_fn(x')‖₂ / ‖x - x'‖₂`` over all inputs.

    Raises:
      UnsupportedPrimitiveError: for a primitive without a sound rule (named in the message).
    """
    check_choice(conv_method, "conv_method", ("fft", "exact"))
    x_example = jnp.asarray(x_example)
    if not _is_float(x_example.dtype):
        raise TypeError(f"`x_example` must be a floating-point array; got {x_example.dtype}.")
    closed = jax.make_jaxpr(logits_fn)(x_example)
    walker = _Walker(conv_method, dict(conv_kwargs or {}))
    x = walker.fresh(1.0, x_example.shape, x_example.dtype, "input")
    outs = walker.run(closed.jaxpr, closed.consts, [x])
    lips = [walker.lip(o) for o in outs if isinstance(o, _Dep)]
    total = math.sqrt(sum(v * v for v in lips))
    out_shape = tuple(np.shape(outs[0].value)) if isinstance(outs[0], _Const) else outs[0].shape
    logger.debug("layer_bounds: %d rows, total %.6g", len(walker.rows), total)
    return LipschitzReport(walker.sorted_rows(), float(total), tuple(x_example.shape), out_shape)
