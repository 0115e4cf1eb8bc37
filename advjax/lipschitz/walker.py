"""The jaxpr walker of the Lipschitz analysis: values, the interpreter loop and the rule table.

Every value of the walk is either a :class:`Const` (parameters and everything computed from them
only; evaluated concretely) or a :class:`Dep`, a function of the input carrying an upper Lipschitz
constant in the L2 norm. A :class:`RuleTable` maps primitive names to rules
``rule(walker, eqn, inputs) -> output | [outputs]``; it is immutable, and
:meth:`RuleTable.extend` returns a new table, so a user adds or overrides rules without touching
global state and passes the table to :func:`advjax.lipschitz.layer_bounds` (``rules=``).

Helpers a rule uses: :meth:`Walker.lip` (the Lipschitz constant of an input-dependent value,
finalising a pending elementwise expression), :meth:`Walker.fresh` (a new input-dependent value of
a given constant), :meth:`Walker.row` (a report row) and :meth:`Walker.run` (walk a sub-jaxpr).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from advjax.lipschitz import _elementwise as ew
from advjax.lipschitz import _normalize, _prims
from advjax.lipschitz._prims import CALLS  # noqa: F401  (re-exported)
from advjax.lipschitz.report import LayerBound, UnsupportedPrimitiveError


@dataclasses.dataclass(eq=False)
class Const:
    """A value that does not depend on the input (its concrete ``value``)."""

    value: Any


@dataclasses.dataclass(frozen=True, eq=False)
class Fold:
    """A pending diagonal scaling: ``Δv = T · diag(scale) · Δu`` for every pair of inputs.

    ``T`` is diagonal with entries in ``[-slope, slope]`` (it depends on the pair: the secant slopes
    of elementwise functions applied after the scaling) and ``‖Δu‖ <= pre · ‖Δx‖``. Diagonal
    matrices commute, so a linear map ``W`` applied next satisfies
    ``‖W Δv‖ = ‖W diag(scale) T Δu‖ <= ‖W diag(scale)‖ · slope · pre · ‖Δx‖``: the scaling
    (eval-mode BatchNorm's ``γ/√(var+ε)``, any per-channel factor) is folded into ``W``'s norm
    instead of costing its own factor ``max |scale|``.
    """

    pre: float
    scale: np.ndarray
    slope: float


@dataclasses.dataclass(eq=False)
class Src:
    """A finalised input-dependent value with a known Lipschitz constant (and pending scaling)."""

    lip: float
    fold: Fold | None = None


@dataclasses.dataclass(eq=False)
class Dep:
    """Input-dependent value: an elementwise expression ``node`` of ``src`` (or ``src`` itself)."""

    src: Src
    node: ew.Node
    shape: tuple[int, ...]
    dtype: Any
    name: str = ""
    final: float | None = None
    seq: int = 0
    final_fold: Fold | None = None


Rule = Callable[["Walker", Any, list], Any]


class RuleTable(Mapping):
    """Immutable mapping ``primitive name -> rule``.

    Args:
      rules: the initial ``{name: rule}`` entries.
    """

    def __init__(self, rules: Mapping[str, Rule] | None = None):
        self._rules = MappingProxyType(dict(rules or {}))

    def __getitem__(self, name: str) -> Rule:
        return self._rules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def extend(self, rules: Mapping[str, Rule]) -> RuleTable:
        """A new table with ``rules`` added (overriding entries of the same name)."""
        return RuleTable({**self._rules, **rules})

    def without(self, *names: str) -> RuleTable:
        """A new table without the rules ``names``."""
        return RuleTable({k: v for k, v in self._rules.items() if k not in names})


def mul_up(*factors: float) -> float:
    """The product of non-negative bounds, rounded upward; it never underflows to 0 (a product
    below the smallest float is the smallest positive float) and is 0 only with a zero factor."""
    out = 1.0
    for f in factors:
        f = float(f)
        if out == 0.0 or f == 0.0:
            out = 0.0
            continue
        out = ew.imul((out, out), (f, f))[1]
    return out


def sum_up(values) -> float:
    """``Σ v`` of non-negative bounds, rounded upward."""
    vals = [float(v) for v in values]
    r = math.fsum(vals)  # correctly rounded
    return math.nextafter(r, math.inf) if sum(v > 0 for v in vals) > 1 and math.isfinite(r) \
        else r


def norm_up(values) -> float:
    """``√(Σ v²)`` of non-negative bounds, rounded upward and without under- or overflow of the
    squares (scaled by the largest value)."""
    vals = [float(v) for v in values]
    if not vals:
        return 0.0
    m = max(vals)
    if m == 0.0 or not math.isfinite(m) or sum(v > 0 for v in vals) == 1:
        return m
    r = m * math.sqrt(math.fsum((v / m) ** 2 for v in vals))
    for _ in range(4):  # fsum, the quotients, sqrt and the product each round by <= 1 ulp
        r = math.nextafter(r, math.inf)
    return r


def is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


class Walker:
    """Interprets a jaxpr with a :class:`RuleTable` (see the module docstring).

    Args:
      rules: the rule table.
      options: read-only settings the rules consult (e.g. ``conv_method``, ``conv_kwargs``).
    """

    def __init__(self, rules: RuleTable, options: Mapping[str, Any] | None = None):
        self.rules = rules
        self.options = MappingProxyType(dict(options or {}))
        self.rows: list[tuple[int, LayerBound]] = []
        self.counter = 0
        self.prefix: tuple[str, ...] = ()

    # ---- helpers for rules ---------------------------------------------------------------------

    def name(self, eqn, default: str) -> str:
        parts = [*self.prefix, str(eqn.source_info.name_stack)]
        stack = "/".join(p for p in parts if p)
        return stack if stack else f"{default}_{self.counter}"

    def sorted_rows(self) -> tuple[LayerBound, ...]:
        return tuple(r for _, r in sorted(self.rows, key=lambda t: t[0]))

    def row(self, eqn, kind, in_shape, out_shape, bound, *, param_shape=None, stride=None,
            name=None, primitive=None) -> None:
        """Adds a report row for ``eqn``."""
        self.rows.append((self.counter, LayerBound(
                name=name or self.name(eqn, eqn.primitive.name), kind=kind,
                primitive=primitive or eqn.primitive.name, in_shape=tuple(in_shape),
                out_shape=tuple(out_shape), param_shape=None if param_shape is None else
                tuple(param_shape), stride=None if stride is None else tuple(stride),
                bound=float(bound))))

    def lip(self, dep: Dep) -> float:
        """Lipschitz constant of an input-dependent value (finalises its elementwise expression)."""
        if dep.node is ew.INPUT:
            return dep.src.lip
        if dep.final is None:
            if not is_float(dep.dtype):
                raise UnsupportedPrimitiveError(
                        f"a non-float value ({dep.dtype}) computed from the input at {dep.name!r} "
                        "is used outside an elementwise function (comparisons / integer casts of "
                        "the input are piecewise constant, not Lipschitz)")
            cache = self.options.get("cache")
            key = ("elementwise", ew.structure_key(dep.node))
            try:
                if cache is not None and key in cache:
                    g = cache[key]
                else:
                    g = ew.lipschitz_constant(dep.node)
                    if cache is not None:
                        cache[key] = g
            except ew.NotLipschitzError as err:
                raise UnsupportedPrimitiveError(
                        f"the elementwise function ({'+'.join(sorted(dep.node.ops()))}) at "
                        f"{dep.name!r} has no global Lipschitz bound: {err}") from None
            ops = dep.node.ops()
            kind = "scale" if ops <= ew.LINEAR_OPS else "activation"
            if not (kind == "scale" and g == 1.0):
                self.rows.append((dep.seq, LayerBound(dep.name, kind, "+".join(sorted(ops)),
                                                      dep.shape, dep.shape, None, None, g)))
            dep.final = mul_up(g, dep.src.lip)
            f = dep.src.fold
            # an elementwise function is diagonal: its secant slopes (<= g) join T
            dep.final_fold = None if f is None else Fold(f.pre, f.scale, mul_up(f.slope, g))
        return dep.final

    def fold(self, dep: Dep) -> Fold | None:
        """The pending scaling of an input-dependent value (``None`` without, or when disabled)."""
        if not self.options.get("fold", True):
            return None
        self.lip(dep)
        return dep.src.fold if dep.node is ew.INPUT else dep.final_fold

    def fresh(self, lip: float, shape, dtype, name: str = "", fold: Fold | None = None) -> Dep:
        """A new input-dependent value with Lipschitz constant ``lip`` (and pending ``fold``)."""
        lip = float(lip)
        if math.isnan(lip):
            raise UnsupportedPrimitiveError(f"the bound at {name!r} is NaN (a parameter or "
                                            "constant contains NaN)")
        return Dep(Src(lip, fold), ew.INPUT, tuple(shape), dtype, name)

    # ---- walk ----------------------------------------------------------------------------------

    def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
        """Walks ``jaxpr`` with constants ``consts`` and arguments ``args`` (Const / Dep).

        Normalisations (LayerNorm, GroupNorm, RMSNorm with ε > 0) and the softmax family are
        recognised first (:mod:`advjax.lipschitz._normalize`); the equations needed only inside
        them are walked with their errors deferred (a value that reaches anything else re-raises
        its error), and the matched equation dispatches through the rule table as the synthetic
        primitive of its kind (``layer_norm``, ``rms_norm``, ``softmax``, ``log_softmax``,
        ``logsumexp``: :data:`advjax.lipschitz._prims.NORMALIZATIONS`) applied to its base and
        factors.
        """
        env: dict[Any, Any] = {}
        known = {v: a.value if isinstance(a, Const) else a
                 for v, a in zip((*jaxpr.constvars, *jaxpr.invars), (*consts, *args), strict=True)
                 if not isinstance(a, Dep | Deferred)}
        matches = _normalize.find(jaxpr, known=known) if self.options.get("normalize", True) \
            else {}
        live = _normalize.live_eqns(jaxpr, matches) if matches else None

        def read(v):
            if isinstance(v, jcore.Literal):
                return Const(v.val)
            return env[v]

        for var, c in zip(jaxpr.constvars, consts, strict=True):
            env[var] = c if isinstance(c, Const | Dep) else Const(c)
        for var, a in zip(jaxpr.invars, args, strict=True):
            env[var] = a
        for i, eqn in enumerate(jaxpr.eqns):
            self.counter += 1
            ins = [read(v) for v in eqn.invars]
            if i in matches and (outs := self._normalization(eqn, matches[i], read)) is not None:
                pass
            elif live is not None and not live[i]:
                n_rows = len(self.rows)
                try:
                    outs = self._apply(eqn, ins)
                except UnsupportedPrimitiveError as err:
                    outs = [_Deferred(err)] * len(eqn.outvars)
                del self.rows[n_rows:]  # rows of a recognised normalisation's inside
            else:
                outs = self._apply(eqn, ins)
            for var, out in zip(eqn.outvars, outs, strict=True):
                env[var] = out
        outs = [read(v) for v in jaxpr.outvars]
        for o in outs:
            if isinstance(o, _Deferred):
                raise o.error
        return outs

    def _apply(self, eqn, ins) -> list:
        prim = eqn.primitive.name
        if prim == "sqrt" and len(ins) == 1 and isinstance(ins[0], SumOfSquares):
            shape, dtype = out_aval(eqn)
            self.row(eqn, "norm", shape, shape, 1.0)
            return [self.fresh(ins[0].lip, shape, dtype)]
        for a in ins:
            if isinstance(a, _Deferred):
                raise a.error
        if eqn.effects:
            return self._effect(eqn, ins)
        if all(isinstance(a, Const) for a in ins):
            vals = eqn.primitive.bind(*[a.value for a in ins], **eqn.params)
            vals = vals if eqn.primitive.multiple_results else [vals]
            return [Const(v) for v in vals]
        if prim in self.rules:
            outs = self.rules[prim](self, eqn, ins)
            return outs if isinstance(outs, list) else [outs]
        raise UnsupportedPrimitiveError(
                f"no Lipschitz rule for primitive {prim!r} (at "
                f"{str(eqn.source_info.name_stack) or 'top level'}) applied to a value "
                f"that depends on the input; supported: {sorted(self.rules)}")

    def _effect(self, eqn, ins) -> list:
        """An equation with a side effect (``debug.print``, ``io_callback``, ...) is never run:
        the analysis reads the program, it does not execute the user's effects. Its outputs (if
        any) are unknown; using one refuses, naming the primitive."""
        name = f"{eqn.primitive.name!r} (at {str(eqn.source_info.name_stack) or 'top level'})"
        if eqn.primitive.name in self.rules and any(isinstance(a, Dep) for a in ins):
            outs = self.rules[eqn.primitive.name](self, eqn, ins)
            return outs if isinstance(outs, list) else [outs]
        err = UnsupportedPrimitiveError(
                f"the result of the side-effecting primitive {name} is used: the analysis does "
                "not run a program's side effects, so the value is unknown")
        return [_Deferred(err)] * len(eqn.outvars)

    def _normalization(self, eqn, match: _normalize.Match, read) -> list | None:
        """The recognised normalisation, dispatched through the rule table as the synthetic
        primitive ``match.kind`` applied to its base and factors; None when the table has no
        such rule or the rule finds the walk-time values unfit (:class:`NotApplicable`): then
        the equation is walked as is."""
        if match.kind not in self.rules:
            return None
        syn = jcore.new_jaxpr_eqn([match.base, *match.factor_vars], list(eqn.outvars),
                                  _prims.SYNTHETIC[match.kind], {"match": match}, set(),
                                  eqn.source_info)
        ins = [read(match.base), *(read(v) for v in match.factor_vars)]
        if any(isinstance(a, _Deferred) for a in ins):
            return None
        try:
            outs = self.rules[match.kind](self, syn, ins)
        except NotApplicable:
            return None
        return outs if isinstance(outs, list) else [outs]


class NotApplicable(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a rule of a synthetic primitive whose walk-time values do not fit it."""


@dataclasses.dataclass(eq=False)
class Deferred:
    """A value that must not be used: its use raises ``error`` (a value computed only inside a
    recognised normalisation whose own rule refused it, the result of a side effect, the indices
    of a sort)."""

    error: UnsupportedPrimitiveError


_Deferred = Deferred


@dataclasses.dataclass(eq=False)
class SumOfSquares(Deferred):
    """``Σ_G v²`` over disjoint groups ``G`` of an input-dependent ``v`` with constant ``lip``:
    only its square root (the groups' Euclidean norms, a ``lip``-Lipschitz map by the reverse
    triangle inequality per group) may use it."""

    lip: float = 0.0


def uniform(value) -> float | None:
    """The common value of a constant array whose entries are all equal (a scalar), else None."""
    arr = np.asarray(value)
    if arr.size == 0:
        return None
    first = arr.flat[0]
    return float(first) if np.all(arr == first) else None


def out_aval(eqn, i: int = 0) -> tuple[tuple[int, ...], Any]:
    """(shape, dtype) of output ``i`` of ``eqn``."""
    aval = eqn.outvars[i].aval
    return tuple(aval.shape), aval.dtype


def only_dep(eqn, ins, positions=(0,)) -> Dep:
    """The input-dependent operand at ``positions[0]``; refuses input dependence elsewhere."""
    for i, a in enumerate(ins):
        if isinstance(a, Dep) and i not in positions:
            raise UnsupportedPrimitiveError(
                    f"primitive {eqn.primitive.name!r} with an input-dependent operand at position "
                    f"{i} (indices, padding values, ... must be constants)")
    return ins[positions[0]]


def check_finite(value, what: str) -> np.ndarray:
    """``value`` as a float64 array; refuses NaN / inf entries."""
    arr = np.asarray(value, np.float64)
    if not np.all(np.isfinite(arr)):
        raise UnsupportedPrimitiveError(f"{what} contains NaN or inf; no finite bound")
    return arr
