"""Sound Lipschitz constants of scalar elementwise functions ``g: R -> R`` read from a jaxpr.

The graph walk (``graph.py``) collects chains of elementwise primitives applied to one
input-dependent
value ``u`` (with scalar constants) into a small expression DAG. Here the Lipschitz constant
``sup_u |g'(u)|`` of that expression is bounded soundly over all of ``R``:

1. The real line is split into pieces at the points where a comparison (``select_n`` predicates), a
   ``max``/``min``/``abs`` or a ``clamp`` switches. Those points are found on each piece from affine
   forms of the operands (``a·u + b``); pieces are refined until nothing switches inside a piece.
2. On each piece, interval arithmetic propagates (value range, derivative range) through the DAG
   with the switches resolved; ``|g'|`` on the piece is at most the largest endpoint magnitude.
3. At every breakpoint the function must be continuous (left, right and actual values agree);
   otherwise (e.g. a step ``where(x > 0, 1, 0)``) it is not Lipschitz and an error is raised.

A continuous, piecewise C¹ function has Lipschitz constant ``sup |g'|``, so the result is a sound
bound (up to floating-point rounding). Unbounded derivative ranges (``x*x`` on an unbounded piece,
``exp``) make the function not globally Lipschitz: :class:`NotLipschitzError` is raised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

INF = math.inf


class NotLipschitzError(ValueError):
    """The function is not globally Lipschitz (or the analysis cannot prove it is)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    """One node of a scalar expression: ``"input"``, ``"const"`` or a primitive name."""

    op: str
    args: tuple[Node, ...] = ()
    value: float = 0.0
    params: tuple = ()

    def ops(self) -> set[str]:
        seen, stack, out = set(), [self], set()
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op not in ("input", "const"):
                out.add(n.op)
            stack.extend(n.args)
        return out


INPUT = Node("input")


def const(value: float) -> Node:
    return Node("const", value=float(value))


COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
SUPPORTED = ("add", "add_any", "sub", "mul", "div", "neg", "max", "min", "abs",
             "logistic", "tanh", "erf", "exp", "log", "log1p", "sqrt", "rsqrt", "integer_pow",
             "square", "sin", "cos", "select_n", "convert_element_type", "copy", "copy_p",
             "reduce_precision") + COMPARISONS
LINEAR_OPS = frozenset({"add", "add_any", "sub", "mul", "div", "neg", "convert_element_type",
                        "copy", "copy_p", "reduce_precision"})


# --------------------------------------------------------------------------------------------------
# Interval helpers (closed intervals, possibly unbounded; 0 · inf = 0)
# --------------------------------------------------------------------------------------------------


def _m(a: float, b: float) -> float:
    if a == 0.0 or b == 0.0:
        return 0.0
    return a * b


def imul(x, y):
    p = (_m(x[0], y[0]), _m(x[0], y[1]), _m(x[1], y[0]), _m(x[1], y[1]))
    return (min(p), max(p))


def iadd(x, y):
    lo = x[0] + y[0]
    hi = x[1] + y[1]
    return (-INF if math.isnan(lo) else lo, INF if math.isnan(hi) else hi)


def ineg(x):
    return (-x[1], -x[0])


def ihull(x, y):
    return (min(x[0], y[0]), max(x[1], y[1]))


def irecip(x):
    if x[0] <= 0.0 <= x[1]:
        return (-INF, INF)
    return (1.0 / x[1], 1.0 / x[0])


def _unimodal(f: Callable[[float], float], peak: float, lo: float, hi: float):
    """Range of a function increasing up to ``peak`` and decreasing after it, on ``[lo, hi]``."""
    top = f(min(max(peak, lo), hi))
    return (min(f(lo), f(hi)), top)


def _ipow(x, k: int):
    if k == 0:
        return (1.0, 1.0)
    if k < 0:
        return irecip(_ipow(x, -k))
    lo, hi = x
    if k % 2 == 1:
        return (_pw(lo, k), _pw(hi, k))
    if lo >= 0:
        return (_pw(lo, k), _pw(hi, k))
    if hi <= 0:
        return (_pw(hi, k), _pw(lo, k))
    return (0.0, max(_pw(lo, k), _pw(hi, k)))


def _pw(v: float, k: int) -> float:
    try:
        return v ** k
    except OverflowError:
        return math.copysign(INF, v) if k % 2 else INF


def _sig(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def _dsig(v: float) -> float:
    if math.isinf(v):
        return 0.0
    s = _sig(v)
    return s * (1.0 - s)


def _dtanh(v: float) -> float:
    return 0.0 if math.isinf(v) else 1.0 - math.tanh(v) ** 2


def _derf(v: float) -> float:
    return 0.0 if math.isinf(v) else 2.0 / math.sqrt(math.pi) * math.exp(-v * v)


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return INF


def _unary(op: str, v, params):
    """``(value range, derivative range)`` of a unary function on the value range ``v``."""
    lo, hi = v
    if op == "logistic":
        return (_sig(lo), _sig(hi)), _unimodal(_dsig, 0.0, lo, hi)
    if op == "tanh":
        return (math.tanh(lo), math.tanh(hi)), _unimodal(_dtanh, 0.0, lo, hi)
    if op == "erf":
        return (math.erf(lo), math.erf(hi)), _unimodal(_derf, 0.0, lo, hi)
    if op == "exp":
        r = (_exp(lo), _exp(hi))
        return r, r
    if op in ("log", "log1p"):
        shift = 1.0 if op == "log1p" else 0.0
        if lo + shift <= 0:
            return (-INF, INF), (-INF, INF)
        return (math.log(lo + shift), math.log(hi + shift) if hi < INF else INF), \
            (0.0 if hi == INF else 1.0 / (hi + shift), 1.0 / (lo + shift))
    if op == "sqrt":
        if lo < 0:
            return (-INF, INF), (-INF, INF)
        dhi = INF if lo == 0 else 0.5 / math.sqrt(lo)
        return (math.sqrt(lo), math.sqrt(hi)), (0.0 if hi == INF else 0.5 / math.sqrt(hi), dhi)
    if op == "rsqrt":
        if lo <= 0:
            return (-INF, INF), (-INF, INF)
        val = (0.0 if hi == INF else hi ** -0.5, lo ** -0.5)
        return val, (-0.5 * lo ** -1.5, 0.0 if hi == INF else -0.5 * hi ** -1.5)
    if op in ("integer_pow", "square"):
        k = 2 if op == "square" else int(dict(params)["y"])
        return _ipow(v, k), imul((float(k), float(k)), _ipow(v, k - 1))
    if op in ("sin", "cos"):
        return (-1.0, 1.0), (-1.0, 1.0)
    raise NotLipschitzError(f"unsupported elementwise primitive {op!r}")


# --------------------------------------------------------------------------------------------------
# Evaluation on one piece (interval) or at one point
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _R:
    v: tuple[float, float]           # value range
    d: tuple[float, float]           # derivative range
    aff: tuple[float, float] | None  # value = a·u + b on the piece, when affine
    pred: bool | None = None         # comparison outcome (predicate nodes)


class _Evaluator:
    """Evaluates the DAG on ``[lo, hi]`` with switches resolved by ``forced`` or from the ranges."""

    def __init__(self, lo: float, hi: float, forced: dict[int, object] | None = None):
        self.lo, self.hi = lo, hi
        self.forced = forced
        self.memo: dict[int, _R] = {}
        self.decisions: dict[int, object] = {}
        self.breakpoints: set[float] = set()
        self.undecided = False

    def mid(self) -> float:
        lo, hi = self.lo, self.hi
        if lo == -INF and hi == INF:
            return 0.0
        if lo == -INF:
            return hi - 1.0
        if hi == INF:
            return lo + 1.0
        return 0.5 * (lo + hi)

    def _order(self, node: Node, x: _R, y: _R) -> int | None:
        """0 if ``x >= y`` on the piece interior, 1 if ``x <= y``, None if it switches inside."""
        if self.forced is not None:
            return self.forced.get(id(node))  # type: ignore[return-value]
        if self.lo == self.hi:  # a point
            return 0 if x.v[0] >= y.v[0] else 1
        if x.v[0] >= y.v[1]:
            return 0
        if x.v[1] <= y.v[0]:
            return 1
        if x.aff is not None and y.aff is not None:
            da, db = x.aff[0] - y.aff[0], x.aff[1] - y.aff[1]
            if da != 0.0:
                t = -db / da
                if self.lo < t < self.hi:
                    self.breakpoints.add(t)
                    self.undecided = True
                    return None
            m = self.mid()
            return 0 if da * m + db >= 0 else 1
        self.undecided = True
        return None

    def ev(self, node: Node) -> _R:
        key = id(node)
        if key not in self.memo:
            self.memo[key] = self._ev(node)
        return self.memo[key]

    def _ev(self, n: Node) -> _R:
        op = n.op
        if op == "input":
            return _R((self.lo, self.hi), (1.0, 1.0), (1.0, 0.0))
        if op == "const":
            return _R((n.value, n.value), (0.0, 0.0), (0.0, n.value))
        a = [self.ev(x) for x in n.args]
        if op in ("convert_element_type", "copy", "copy_p", "reduce_precision"):
            r = a[0]
            if r.pred is not None:
                b = float(r.pred)
                return _R((b, b), (0.0, 0.0), (0.0, b))
            return r
        if op in ("add", "add_any", "sub"):
            y = a[1] if op != "sub" else _R(ineg(a[1].v), ineg(a[1].d),
                                            None if a[1].aff is None else
                                            (-a[1].aff[0], -a[1].aff[1]))
            aff = None if a[0].aff is None or y.aff is None else \
                (a[0].aff[0] + y.aff[0], a[0].aff[1] + y.aff[1])
            return _R(iadd(a[0].v, y.v), iadd(a[0].d, y.d), aff)
        if op == "neg":
            aff = None if a[0].aff is None else (-a[0].aff[0], -a[0].aff[1])
            return _R(ineg(a[0].v), ineg(a[0].d), aff)
        if op == "mul":
            x, y = a
            aff = None
            if x.aff is not None and y.aff is not None:
                if x.aff[0] == 0.0:
                    aff = (x.aff[1] * y.aff[0], x.aff[1] * y.aff[1])
                elif y.aff[0] == 0.0:
                    aff = (y.aff[1] * x.aff[0], y.aff[1] * x.aff[1])
            return _R(imul(x.v, y.v), iadd(imul(x.d, y.v), imul(x.v, y.d)), aff)
        if op == "div":
            x, y = a
            rv = irecip(y.v)
            rd = imul(ineg(y.d), imul(rv, rv))
            aff = None
            if x.aff is not None and y.aff is not None and y.aff[0] == 0.0 and y.aff[1] != 0.0:
                aff = (x.aff[0] / y.aff[1], x.aff[1] / y.aff[1])
            return _R(imul(x.v, rv), iadd(imul(x.d, rv), imul(x.v, rd)), aff)
        if op in ("max", "min"):
            x, y = a
            order = self._order(n, x, y)
            self.decisions[id(n)] = order
            if order is None:
                f = max if op == "max" else min
                return _R((f(x.v[0], y.v[0]), f(x.v[1], y.v[1])), ihull(x.d, y.d), None)
            pick = (order == 0) == (op == "max")
            return x if pick else y
        if op == "abs":
            x = a[0]
            nx = _R(ineg(x.v), ineg(x.d), None if x.aff is None else (-x.aff[0], -x.aff[1]))
            order = self._order(n, x, nx)
            self.decisions[id(n)] = order
            if order is None:
                return _R((0.0, max(abs(x.v[0]), abs(x.v[1]))), ihull(x.d, nx.d), None)
            return x if order == 0 else nx
        if op in COMPARISONS:
            x, y = a
            if self.forced is not None and id(n) in self.forced:
                p = self.forced[id(n)]
            elif self.lo == self.hi:
                p = _compare(op, x.v[0], y.v[0])
            elif x.aff is not None and y.aff is not None:
                # Affine operands: the switch point is located exactly (a breakpoint, where the
                # continuity of the whole function is then checked).
                order = self._order(n, x, y) if op not in ("eq", "ne") else self._eq(x, y)
                if order is None:
                    p = None
                else:
                    m = self.mid()
                    p = _compare(op, x.aff[0] * m + x.aff[1], y.aff[0] * m + y.aff[1])
            elif x.v[0] > y.v[1] or x.v[1] < y.v[0]:
                # Strictly separated on the closed piece: the outcome is constant on it.
                p = _compare(op, x.v[0], y.v[0])
            else:
                raise NotLipschitzError(
                        "a comparison between non-affine functions of the input cannot be "
                        "located (only comparisons of affine expressions, or of strictly "
                        "separated values, are supported)")
            self.decisions[id(n)] = p
            return _R((0.0, 1.0), (0.0, 0.0), None, pred=p)
        if op == "select_n":
            which = a[0]
            cases = a[1:]
            if which.pred is None and which.v[0] != which.v[1]:
                if not self.undecided:
                    raise NotLipschitzError("a select_n predicate that is not a comparison")
                out = cases[0]
                for c in cases[1:]:
                    out = _R(ihull(out.v, c.v), ihull(out.d, c.d), None)
                return out
            idx = int(which.pred) if which.pred is not None else int(which.v[0])
            return cases[idx]
        v, fd = _unary(op, a[0].v, n.params)
        return _R(v, imul(fd, a[0].d), None)

    def _eq(self, x: _R, y: _R) -> int | None:
        if x.aff is not None and y.aff is not None:
            da, db = x.aff[0] - y.aff[0], x.aff[1] - y.aff[1]
            if da != 0.0:
                t = -db / da
                if self.lo <= t <= self.hi and self.lo < self.hi:
                    if self.lo < t < self.hi:
                        self.breakpoints.add(t)
                        self.undecided = True
                        return None
            return 0
        if x.v[1] < y.v[0] or y.v[1] < x.v[0]:
            return 0
        self.undecided = True
        return None


def _compare(op: str, x: float, y: float) -> bool:
    return {"lt": x < y, "le": x <= y, "gt": x > y, "ge": x >= y, "eq": x == y, "ne": x != y}[op]


def _mag(d: tuple[float, float]) -> float:
    m = max(abs(d[0]), abs(d[1]))
    return INF if math.isnan(m) else m


def lipschitz_constant(root: Node, *, max_rounds: int = 64, rtol: float = 1e-6) -> float:
    """Sound upper bound of ``sup_u |g'(u)|`` for the scalar expression ``root`` of ``INPUT``.

    Arguments:
      root: expression DAG built from :data:`INPUT`, :func:`const` and primitive nodes.
      max_rounds: maximum piece refinements.
      rtol: relative tolerance of the continuity check at breakpoints.

    Returns:
      A float ``L >= 0`` with ``|g(u) - g(v)| <= L |u - v|`` for all real ``u, v``.

    Raises:
      NotLipschitzError: when the function is discontinuous, has an unbounded derivative, or uses a
        construct the analysis cannot bound.
    """
    unsupported = root.ops() - set(SUPPORTED)
    if unsupported:
        raise NotLipschitzError(f"unsupported elementwise primitive(s) {sorted(unsupported)}")
    bps: list[float] = []
    for _ in range(max_rounds):
        edges = [-INF, *bps, INF]
        pieces = list(zip(edges[:-1], edges[1:], strict=True))
        new: set[float] = set()
        results = []
        for lo, hi in pieces:
            ev = _Evaluator(lo, hi)
            r = ev.ev(root)
            new |= {t for t in ev.breakpoints if lo < t < hi}
            results.append((r, ev.decisions))
        if not new:
            break
        bps = sorted(set(bps) | new)
    else:
        raise NotLipschitzError("the piecewise structure did not settle")
    bound = max(_mag(r.d) for r, _ in results)
    if not math.isfinite(bound):
        raise NotLipschitzError("its derivative is unbounded on "
                                + ", ".join(f"({lo:g}, {hi:g})" for (lo, hi), (r, _) in
                                            zip(pieces, results, strict=True)
                                            if not math.isfinite(_mag(r.d))))
    for i, t in enumerate(bps):
        left = _Evaluator(t, t, results[i][1]).ev(root).v[0]
        right = _Evaluator(t, t, results[i + 1][1]).ev(root).v[0]
        actual = _Evaluator(t, t).ev(root).v[0]
        vals = np.array([left, right, actual])
        scale = 1.0 + float(np.max(np.abs(vals)))
        if not np.all(np.isfinite(vals)) or np.ptp(vals) > rtol * scale:
            raise NotLipschitzError(
                    f"it is discontinuous at u = {t:g} (left {left:g}, right {right:g}, "
                    f"value {actual:g})")
    return float(bound)
