"""Sound Lipschitz constants of scalar elementwise functions ``g: R -> R`` read from a jaxpr.

The graph walk collects chains of elementwise primitives applied to one input-dependent value
``u`` (with scalar constants) into a small expression DAG. Here the Lipschitz constant
``sup_u |g'(u)|`` of that expression is bounded soundly over all of ``R``:

1. The real line is split into pieces at the points where a comparison (``select_n`` predicates), a
   ``max``/``min``/``abs`` or a ``clamp`` switches. Those points are found on each piece from affine
   forms of the operands (``a·u + b``, kept in exact rational arithmetic, so a breakpoint such as
   ``1/3`` is located exactly); pieces are refined until nothing switches inside a piece. A
   comparison of non-affine operands is accepted only where its operands are strictly separated on
   the piece (its outcome is then constant); otherwise the analysis refuses.
2. On each piece, interval arithmetic propagates (value range, derivative range) through the DAG
   with the switches resolved; ``|g'|`` on the piece is at most the largest endpoint magnitude.
   On the unbounded end pieces ``[T, ∞)``, ``(-∞, -T]`` every node also carries growth bounds
   ``C·|u|^p·exp(-a·|u|^q)`` (see "Tail growth bounds" below), so products of a growing and a
   decaying factor (``u·sech²(u + c·u³)``, ``u/(1+|u|)²``, ``u·exp(-u²)``) stay finite where
   intervals see ``∞·0``. Finite pieces are bisected (each half is bounded soundly on its own)
   until the largest piece bound is within ``2e-3`` of the largest midpoint derivative.
3. At every breakpoint ``t`` (including isolated points from ``==``/``!=``) the function must be
   continuous. Three *point values* are computed at ``t`` through the whole DAG: the left limit (the
   switches of the left piece), the right limit (those of the right piece) and the actual value
   (comparisons evaluated at ``t``). They are exact: algebraic operations on rationals are
   rational, a transcendental function is rational only at its rational points (``exp(0) = 1``,
   ``√(p²/q²)``, ...) and otherwise an exact *expression* (one object per expression, shared by
   the three values). The three must be the same rational or the same expression; equal float64
   approximations of different expressions (``σ(40.5)`` and ``σ(40)``, 1.7e-18 apart) are not
   accepted, so any jump, however small, is refused, as is a continuity the check cannot prove.
   Orders of non-rational values at a breakpoint are read from float64 approximations only when
   they are farther than ``1e-9`` (relative) apart; otherwise the function is refused.
4. Integer intermediates (predicates cast to an integer type) are range-checked against their
   dtype on every piece and at every breakpoint: a value outside it wraps around in the executed
   program (``int8`` 300 → 44), so the exact-integer function analysed would not be the one run;
   it is refused. Integer division truncates toward zero, as executed.

Interval products and reciprocals round outward (the exact product lies inside; a product below
the smallest float is not rounded to 0), so the derivative ranges enclose the exact ones up to
the float64 rounding of sums and of the transcendental functions' values.

A continuous, piecewise C¹ function has Lipschitz constant ``sup |g'|``, so the result is a sound
bound of the exact-arithmetic function (up to the float64 rounding of the derivative ranges).
Unbounded derivative ranges (``x*x`` on an unbounded piece, ``exp``) make the function not globally
Lipschitz (or out of reach of the analysis): :class:`NotLipschitzError` is raised.

Casts: a cast of a predicate (``bool``) to a number gives the values 0/1 (a step, checked as
above); casts between floating types are the identity of the exact-arithmetic function; the walk
refuses narrowing casts of a real value to an integer or ``bool`` type before they reach this
module.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import sys
from collections.abc import Callable
from fractions import Fraction

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
        """The primitive names used in the expression."""
        out = set()
        for n in self.nodes():
            if n.op not in ("input", "const"):
                out.add(n.op)
        return out

    def nodes(self) -> list[Node]:
        """Every node of the DAG once (depth-first)."""
        seen, stack, out = set(), [self], []
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            out.append(n)
            stack.extend(n.args)
        return out


INPUT = Node("input")


def postorder(root: Node, done: Callable[[Node], bool] = lambda n: False) -> list[Node]:
    """The nodes below ``root`` once each, every node after its arguments, without recursion.

    The order is that of a left-to-right depth-first recursion, so evaluating in it is
    evaluating recursively, with no limit on the depth of the expression (a chain of thousands of
    elementwise operations). Nodes for which ``done`` is true are neither listed nor descended.
    """
    seen: set[int] = set()
    out: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            out.append(n)
            continue
        if id(n) in seen or done(n):
            continue
        seen.add(id(n))
        stack.append((n, True))
        stack.extend((a, False) for a in reversed(n.args))
    return out


def structure_key(root: Node) -> tuple:
    """A hashable key equal for structurally identical expressions (same ops, params, constants)."""
    index: dict[int, int] = {}
    rows: list[tuple] = []
    for n in postorder(root):
        rows.append((n.op, tuple(index[id(a)] for a in n.args), n.value, n.params))
        index[id(n)] = len(rows) - 1
    return tuple(rows)


def const(value: float) -> Node:
    """A constant leaf; non-finite constants are refused (they make the result NaN or infinite)."""
    value = float(value)
    if not math.isfinite(value):
        raise NotLipschitzError(f"a non-finite constant ({value}) enters the function")
    return Node("const", value=value)


COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
CASTS = ("convert_element_type", "copy", "copy_p")
UNARY = ("logistic", "tanh", "erf", "erfc", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt",
         "integer_pow", "square", "sin", "cos")
SUPPORTED = ("add", "add_any", "sub", "mul", "div", "neg", "max", "min", "abs", "select_n",
             *UNARY, *CASTS, *COMPARISONS)
LINEAR_OPS = frozenset({"add", "add_any", "sub", "mul", "div", "neg", *CASTS})


# --------------------------------------------------------------------------------------------------
# Interval helpers (closed intervals, possibly unbounded; 0 · inf = 0)
# --------------------------------------------------------------------------------------------------


_SPLIT = 134217729.0  # 2^27 + 1 (Veltkamp)


def _prod_err_sign(a: float, b: float, r: float) -> int:
    """The sign of ``a·b − r`` (exact), for ``r = fl(a·b)`` finite."""
    if abs(a) < 1e150 and abs(b) < 1e150 and (abs(r) > 1e-280 or r == 0.0 and (a == 0 or b == 0)):
        c = _SPLIT * a
        ah = c - (c - a)
        al = a - ah
        c = _SPLIT * b
        bh = c - (c - b)
        bl = b - bh
        err = ((ah * bh - r) + ah * bl + al * bh) + al * bl  # Dekker: a·b − r exactly
        return (err > 0) - (err < 0)
    d = Fraction(a) * Fraction(b) - Fraction(r)  # near under- / overflow: exact rationals
    return (d > 0) - (d < 0)


def _mul_out(a: float, b: float) -> tuple[float, float]:
    """``(lower, upper)`` float enclosure of the exact product ``a·b`` (``0·∞ = 0``): rounded
    outward, never underflowing to a zero of the wrong side."""
    if a == 0.0 or b == 0.0:
        return (0.0, 0.0)
    r = a * b
    if not math.isfinite(r):
        return (r, r) if not math.isnan(r) else (-INF, INF)
    s = _prod_err_sign(a, b, r)
    if s > 0:
        return (r, math.nextafter(r, INF))
    if s < 0:
        return (math.nextafter(r, -INF), r)
    return (r, r)


def _recip_out(x: float) -> tuple[float, float]:
    """``(lower, upper)`` enclosure of ``1/x`` (``x != 0``), rounded outward."""
    if math.isinf(x):
        return (0.0, 0.0)
    r = 1.0 / x
    if r == 0.0:  # underflow: 0 < |1/x| < the smallest subnormal
        tiny = math.ulp(0.0)
        return (0.0, tiny) if x > 0 else (-tiny, 0.0)
    if not math.isfinite(r):  # overflow
        big = sys.float_info.max
        return (big, INF) if x > 0 else (-INF, -big)
    s = (Fraction(r) * Fraction(x) > 1) - (Fraction(r) * Fraction(x) < 1)  # sign of r·x − 1
    if s == 0:
        return (r, r)
    above = (s > 0) == (x > 0)  # r > 1/x
    return (math.nextafter(r, -INF), r) if above else (r, math.nextafter(r, INF))


def imul(x, y):
    """Interval product, rounded outward."""
    p = [_mul_out(a, b) for a in x for b in y]
    return (min(q[0] for q in p), max(q[1] for q in p))


def iadd(x, y):
    lo = x[0] + y[0]
    hi = x[1] + y[1]
    return (-INF if math.isnan(lo) else lo, INF if math.isnan(hi) else hi)


def ineg(x):
    return (-x[1], -x[0])


def ihull(x, y):
    return (min(x[0], y[0]), max(x[1], y[1]))


def irecip(x):
    """Interval reciprocal, rounded outward."""
    if x[0] <= 0.0 <= x[1]:
        return (-INF, INF)
    return (_recip_out(x[1])[0], _recip_out(x[0])[1])


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


def _expm1(v: float) -> float:
    try:
        return math.expm1(v)
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
    if op == "erfc":
        return (math.erfc(hi), math.erfc(lo)), ineg(_unimodal(_derf, 0.0, lo, hi))
    if op == "exp":
        r = (_exp(lo), _exp(hi))
        return r, r
    if op == "expm1":
        return (_expm1(lo), _expm1(hi)), (_exp(lo), _exp(hi))
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
# Evaluation on one piece (interval)
# --------------------------------------------------------------------------------------------------

Point = Fraction | float  # a piece edge: an exact rational, or ±inf


@dataclasses.dataclass
class _R:
    v: tuple[float, float]                 # value range
    d: tuple[float, float]                 # derivative range
    aff: tuple[Fraction, Fraction] | None  # value = a·u + b on the piece (exact), when affine
    pred: bool | None = None               # comparison outcome (predicate nodes)
    lu: tuple | None = None                # value = p·f(a·u + b) + q: (p, q, f, a, b)
    g: _G | None = None                    # tail growth bounds (tail pieces only)


_DERIVS = {"logistic": _dsig, "tanh": _dtanh, "erf": _derf}


def _peak(fp: Callable[[float], float]) -> float:
    """Maximiser on [0, 20] of ``t·f'(t)`` (unimodal there), by golden-section search."""
    lo, hi = 0.0, 20.0
    g = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if m1 * fp(m1) < m2 * fp(m2):
            lo = m1
        else:
            hi = m2
    return 0.5 * (lo + hi)


_PEAKS = {k: _peak(f) for k, f in _DERIVS.items()}


def _tfp_range(op: str, lo: float, hi: float) -> tuple[float, float]:
    """Range of ``h(t) = t·f'(t)`` on ``[lo, hi]`` (f = logistic, tanh, erf).

    ``h`` is odd, ``0`` at ``0`` and ``±∞``, and unimodal on each half-line with its extremum at
    ``±t*``: the range is spanned by the end values and ``±t*`` where inside; the peak value is
    enlarged by a relative 1e-9 (``t*`` is located numerically; the error is second order).
    """
    fp = _DERIVS[op]

    def h(t):
        return 0.0 if math.isinf(t) else t * fp(t)

    ts = _PEAKS[op]
    vals = [h(lo), h(hi)]
    for c in (ts, -ts):
        if lo <= c <= hi:
            vals.append(h(c) * (1 + 1e-9))
    return (min(vals), max(vals))


def _lu_affine(r: _R, k: float, add: float) -> tuple | None:
    """``lu`` of ``k·r + add``."""
    if r.lu is None:
        return None
    p, q, f, a, b = r.lu
    return (k * p, k * q + add, f, a, b)


def _const_of(r: _R) -> float | None:
    return float(r.aff[1]) if r.aff is not None and r.aff[0] == 0 else None


def _affine_times_lu(x: _R, y: _R) -> tuple[float, float] | None:
    """Derivative range of ``x·y`` with ``x = c·u + d`` and ``y = p·f(a·u + b) + q``.

    ``(x·y)' = c·y + x·y'`` and ``x·y' = p·(c·t·f'(t) + (a·d − c·b)·f'(t))`` with ``t = a·u + b``:
    the product of a growing and a decaying factor is bounded through ``t·f'(t)`` itself, which
    keeps ``u·σ'(u)`` (SiLU, exact GELU) finite on unbounded pieces.
    """
    if x.aff is None or x.aff[0] == 0 or y.lu is None:
        return None
    c, d = float(x.aff[0]), float(x.aff[1])
    p, _, f, a, b = y.lu
    t = sorted((a * x_ + b if math.isfinite(x_) else math.copysign(INF, a * x_))
               for x_ in (float(x.v[0] - d) / c if c else 0.0, float(x.v[1] - d) / c if c else 0.0))
    lo, hi = t
    fp = _unimodal(_DERIVS[f], 0.0, lo, hi)
    term = iadd(imul((p * c, p * c), _tfp_range(f, lo, hi)), imul((p * (a * d - c * b),) * 2, fp))
    return iadd(imul((c, c), y.v), term)


# --------------------------------------------------------------------------------------------------
# Tail growth bounds (unbounded pieces)
# --------------------------------------------------------------------------------------------------
#
# On a tail piece ``[T, ∞)`` or ``(-∞, -T]`` (``T > 0``) write ``s = |u| ≥ T``. Next to its
# intervals every node carries bounds valid for all ``s ≥ T``:
#   U = (C, p, a, q): |value| ≤ C·s^p·exp(-a·s^q)      (a ≥ 0, q > 0; None: none known)
#   L = (c, q):       |value| ≥ c·s^q                   (c > 0;        None: none known)
#   D = (C, p, a, q): |derivative| ≤ C·s^p·exp(-a·s^q)
# Products multiply such bounds; a sum is bounded after rewriting both terms to a common form
# with the exact supremum ``S(m, a, q) = sup_{s ≥ T} s^m·exp(-a·s^q)`` (attained at
# ``s* = (m/(a·q))^{1/q}`` or at ``T``), e.g. ``C·s^p·e^{-a s^q} ≤ C·S(p - r, a, q)·s^r``. A growing
# factor times a decaying one (``u·sech²(p(u))``, ``u/(1+|u|)²``, ``u·exp(-u²)``) thus stays finite
# where interval arithmetic sees ``∞·0``. The decay of transcendental factors comes from elementary
# inequalities on their argument ``x`` with ``|x| ≥ c·s^q``: ``tanh'(x) ≤ 4e^{-2|x|}``,
# ``σ'(x) ≤ e^{-|x|}``, ``σ(x) ≤ e^{x}``, ``erf'(x) ≤ (2/√π)e^{-x²}``, ``erfc(x) ≤ e^{-x²}``
# (x ≥ 0), ``exp(x) ≤ e^{-|x|}`` (x ≤ 0), ``|tanh x| ≤ |x|``, ``|erf x| ≤ (2/√π)|x|``,
# ``log1p(x) ≤ x`` (x ≥ 0). Bounds are magnitudes (sign-blind, sums of suprema): loose near
# ``T`` (``x²/(1+|x|)`` gets 3, not 1), tight where the tail is flat (``T = 64`` for inputs of
# unit scale; a function whose derivative peaks beyond ``64`` gets a sound, looser bound). The
# derivative magnitude on the tail is then at most ``sup_{s ≥ T} D``, a real argument over the
# whole unbounded piece (no sampling, no float range cut-off).

_UNIT = (1.0, 0.0, 0.0, 1.0)


def _sup(m: float, a: float, q: float, t: float) -> float:
    """``sup_{s >= t} s^m·exp(-a·s^q)`` for ``t > 0``."""
    if a <= 0.0:
        return INF if m > 0 else t ** m
    s = t
    if m > 0:
        s = max(t, (m / (a * q)) ** (1.0 / q))
    with_log = m * math.log(s) - a * s ** q
    return _exp(with_log) * (1 + 1e-12)


def _gsup(b, t: float) -> float:
    if b is None:
        return INF
    c, p, a, q = b
    return 0.0 if c == 0 else c * _sup(p, a, q, t)


def _gpoly(b, r: float, t: float):
    """``b`` rewritten as ``K·s^r`` (no exponential factor)."""
    c, p, a, q = b
    return (0.0 if c == 0 else c * _sup(p - r, a, q, t), r, 0.0, 1.0)


def _gadd(x, y, t: float):
    if x is None or y is None:
        return None
    if x[0] == 0:
        return y
    if y[0] == 0:
        return x
    if x[2] > 0 and y[2] > 0 and x[3] == y[3]:
        a, p, q = min(x[2], y[2]), max(x[1], y[1]), x[3]
        c = sum(b[0] * _sup(b[1] - p, b[2] - a, q, t) for b in (x, y))
        return (c, p, a, q)
    if x[2] > 0 and y[2] == 0:
        x, y = y, x
    if y[2] > 0 and x[2] == 0:  # x polynomial, y decaying
        return (x[0] + _gpoly(y, x[1], t)[0], x[1], 0.0, 1.0)
    r = max(x[1], y[1])
    return (_gpoly(x, r, t)[0] + _gpoly(y, r, t)[0], r, 0.0, 1.0)


def _gmul(x, y):
    if x is None or y is None:
        if (x is not None and x[0] == 0) or (y is not None and y[0] == 0):
            return (0.0, 0.0, 0.0, 1.0)
        return None
    c, p = x[0] * y[0], x[1] + y[1]
    if x[2] > 0 and y[2] > 0 and x[3] == y[3]:
        return (c, p, x[2] + y[2], x[3])
    e = max((x, y), key=lambda b: (b[3] if b[2] > 0 else 0.0, b[2]))
    return (c, p, e[2], e[3])


def _grecip(lo):
    """Upper bound of ``1/|x|`` from the lower bound ``lo`` of ``|x|``."""
    return None if lo is None else (1.0 / lo[0], -lo[1], 0.0, 1.0)


def _gpow(b, k: float):
    """``b^k`` for ``k > 0``."""
    return None if b is None else (b[0] ** k, b[1] * k, b[2] * k, b[3])


def _decays(b) -> bool:
    return b is not None and (b[1] < 0 or b[2] > 0 or b[0] == 0)


def _gbest(x, y):
    """The more useful of two valid upper bounds (faster decay, then smaller)."""
    if x is None or y is None:
        return y if x is None else x

    def key(b):
        return (b[0] == 0, b[3] if b[2] > 0 else 0.0, b[2], -b[1], -b[0])
    return max(x, y, key=key)


def _lbest(x, y):
    if x is None or y is None:
        return y if x is None else x
    return max(x, y, key=lambda b: (b[1], b[0]))


def _from_interval(v):
    """(U, L) from a value interval: constants."""
    m = max(abs(v[0]), abs(v[1]))
    u = (m, 0.0, 0.0, 1.0) if math.isfinite(m) else None
    lo = min(abs(v[0]), abs(v[1])) if (v[0] > 0 or v[1] < 0) else 0.0
    return u, ((lo, 0.0) if lo > 0 else None)


@dataclasses.dataclass
class _G:
    u: tuple | None
    lo: tuple | None
    d: tuple | None


def _glower_sum(x: _R, y: _R, t: float):
    """Lower bound of ``|x + y|`` on the tail."""
    gx, gy = x.g, y.g
    same = (x.v[0] >= 0 and y.v[0] >= 0) or (x.v[1] <= 0 and y.v[1] <= 0)
    if same:
        if gx.lo is not None and gy.lo is not None and gx.lo[1] == gy.lo[1]:
            return (gx.lo[0] + gy.lo[0], gx.lo[1])
        return _lbest(gx.lo, gy.lo)
    out = None
    for a, b in ((gx, gy), (gy, gx)):
        if a.lo is not None and b.u is not None:
            c = a.lo[0] - _gpoly(b.u, a.lo[1], t)[0]
            if c > 0:
                out = _lbest(out, (c, a.lo[1]))
    return out


def _grow_unary(op: str, x: _R, params, t: float) -> tuple:
    """``(U, F)`` on the tail: a bound of ``|f(x)|`` and of ``|f'(x)|``."""
    gx = x.g
    lx = gx.lo
    c, q = lx if lx is not None else (0.0, 0.0)
    growing = lx is not None and q > 0
    neg = x.v[1] <= 0
    small = gx.u if _decays(gx.u) else None
    if op == "logistic":
        u = (1.0, 0.0, c, q) if neg and growing else _UNIT
        return u, ((1.0, 0.0, c, q) if growing else (0.25, 0.0, 0.0, 1.0))
    if op == "tanh":
        return _gbest(_UNIT, small), ((4.0, 0.0, 2 * c, q) if growing else _UNIT)
    if op in ("erf", "erfc"):
        k = 2.0 / math.sqrt(math.pi)
        f = (k, 0.0, c * c, 2 * q) if growing else (k, 0.0, 0.0, 1.0)
        if op == "erf":
            return _gbest(_UNIT, _gmul((k, 0.0, 0.0, 1.0), small)), f
        return ((1.0, 0.0, c * c, 2 * q) if x.v[0] >= 0 and growing else (2.0, 0.0, 0.0, 1.0)), f
    if op in ("exp", "expm1"):
        e = (1.0, 0.0, c, q) if neg and growing else None
        return (e if op == "exp" else None), e
    if op in ("log", "log1p"):
        shift = 1.0 if op == "log1p" else 0.0
        if x.v[0] + shift >= 1.0:  # log(y) <= y - 1 <= |x| and 1/y <= 1
            return gx.u, _gbest(_UNIT, _grecip(lx) if x.v[0] >= 0 else None)
        return None, (_grecip(lx) if x.v[0] >= 0 else None)
    if op == "sqrt":
        return _gpow(gx.u, 0.5), (None if lx is None else (0.5 * c ** -0.5, -q / 2, 0.0, 1.0))
    if op == "rsqrt":
        if lx is None:
            return None, None
        return (c ** -0.5, -q / 2, 0.0, 1.0), (0.5 * c ** -1.5, -1.5 * q, 0.0, 1.0)
    if op in ("integer_pow", "square"):
        k = 2 if op == "square" else int(dict(params)["y"])
        if k == 0:
            return _UNIT, (0.0, 0.0, 0.0, 1.0)
        if k > 0:
            f = (float(k), 0.0, 0.0, 1.0) if k == 1 else _gmul((float(k), 0.0, 0.0, 1.0),
                                                              _gpow(gx.u, k - 1))
            return _gpow(gx.u, k), f
        r = _grecip(lx)
        return _gpow(r, -k), _gmul((float(-k), 0.0, 0.0, 1.0), _gpow(r, 1 - k))
    return _UNIT, _UNIT  # sin, cos


def _faff(a: Fraction, b: Fraction) -> tuple[Fraction, Fraction]:
    return (Fraction(a), Fraction(b))


class _Evaluator:
    """Evaluates the DAG on the piece ``[lo, hi]`` with switches resolved from the ranges."""

    def __init__(self, lo: Point, hi: Point):
        self.lo, self.hi = lo, hi
        self.flo, self.fhi = float(lo), float(hi)
        self.memo: dict[int, _R] = {}
        self.decisions: dict[int, object] = {}
        self.breakpoints: set[Fraction] = set()
        # tail pieces [T, inf) / (-inf, -T], T > 0: growth bounds in s = |u| >= T
        self.t: float | None = None
        if self.fhi == INF and self.flo > 0:
            self.t = self.flo
        elif self.flo == -INF and self.fhi < 0:
            self.t = -self.fhi

    def mid(self) -> Fraction:
        lo, hi = self.lo, self.hi
        if lo == -INF and hi == INF:
            return Fraction(0)
        if lo == -INF:
            return Fraction(hi) - 1
        if hi == INF:
            return Fraction(lo) + 1
        return (Fraction(lo) + Fraction(hi)) / 2

    def _switch(self, x: _R, y: _R, *, point_only: bool = False) -> int | None:
        """0 if ``x >= y`` on the piece interior, 1 if ``x < y``; None if it switches inside.

        With ``point_only`` (``==``/``!=``), 0 means "never equal inside", 1 "always equal".
        """
        if x.aff is not None and y.aff is not None:
            da, db = x.aff[0] - y.aff[0], x.aff[1] - y.aff[1]
            if da != 0:
                t = -db / da
                if self.lo < t < self.hi:
                    self.breakpoints.add(t)
                    return None
            if point_only:
                return 1 if (da == 0 and db == 0) else 0
            m = self.mid()
            return 0 if da * m + db >= 0 else 1
        if point_only:
            if x.v[1] < y.v[0] or y.v[1] < x.v[0]:
                return 0
        elif x.v[0] > y.v[1]:
            return 0
        elif x.v[1] < y.v[0]:
            return 1
        return None

    def _touching(self, xn: Node, yn: Node, x: _R, y: _R) -> int | None:
        """The order of ``x`` and a constant ``y`` on the piece interior when ``x``'s range only
        touches ``y`` (``elu(u) >= 0`` on ``(-∞, 0]``): each part of the piece either keeps ``x``
        strictly on one side, or ``x`` is strictly monotone on it (derivative range excluding 0)
        and strictly on that side at its end inside the piece, so ``x = y`` at most at an end of
        the piece. 0 (``x > y``) / 1 (``x < y``), or None."""
        if y.v[0] != y.v[1]:
            if x.v[0] == x.v[1]:
                order = self._touching(yn, xn, y, x)
                return None if order is None else 1 - order
            return None
        c = y.v[0]
        if x.v[1] == c:
            side = 1
        elif x.v[0] == c:
            side = 0
        else:
            return None
        lo, hi = self.lo, self.hi
        if lo == -INF and hi == INF:
            return None
        if lo == -INF:
            parts = [(-INF, Fraction(hi) - 1, None), (Fraction(hi) - 1, hi, Fraction(hi) - 1)]
        elif hi == INF:
            parts = [(lo, Fraction(lo) + 1, Fraction(lo) + 1), (Fraction(lo) + 1, INF, None)]
        else:
            mid = (Fraction(lo) + Fraction(hi)) / 2
            parts = [(lo, mid, mid), (mid, hi, mid)]
        for a, b, inner in parts:
            ev = _Evaluator(a, b)
            r = ev.ev(xn)
            if ev.breakpoints:
                return None
            if (r.v[1] < c) if side == 1 else (r.v[0] > c):
                continue
            if not (r.d[0] > 0 or r.d[1] < 0) or inner is None:
                return None
            p = _Evaluator(inner, inner).ev(xn)
            if not ((p.v[1] < c) if side == 1 else (p.v[0] > c)):
                return None
        return side

    def ev(self, node: Node) -> _R:
        if id(node) not in self.memo:     # arguments first: no recursion below ``_ev``
            for n in postorder(node, lambda n: id(n) in self.memo):
                r = self._ev(n)
                if self.t is not None and r.g is None and r.pred is None:
                    r.g = self._grow(n, r)
                self.memo[id(n)] = r
        return self.memo[id(node)]

    def tail_bound(self, r: _R) -> float:
        """``sup |g'|`` on the piece: the interval bound, or the growth bound on a tail."""
        m = _mag(r.d)
        if self.t is not None and r.g is not None:
            m = min(m, _gsup(r.g.d, self.t))
        return m

    def _grow(self, n: Node, r: _R) -> _G:
        t = self.t
        iu, ilo = _from_interval(r.v)
        idd = _from_interval(r.d)[0]
        op = n.op
        u = lo = d = None
        if op == "input":
            u, lo, d = (1.0, 1.0, 0.0, 1.0), (1.0, 1.0), _UNIT
        elif op == "const":
            d = (0.0, 0.0, 0.0, 1.0)
        else:
            a = [self.memo[id(x)] for x in n.args]
            # a predicate argument (max/min of comparisons) has no growth record: the
            # node's own intervals are its only bound
            gs = None if any(x.g is None for x in a) else [x.g for x in a]
            if gs is None:
                pass
            elif op in ("add", "add_any", "sub"):
                x, y = a
                if op == "sub":
                    y = _R(ineg(y.v), y.d, None, g=y.g)
                u, d = _gadd(gs[0].u, gs[1].u, t), _gadd(gs[0].d, gs[1].d, t)
                lo = _glower_sum(x, y, t)
            elif op in ("neg", "abs"):
                u, lo, d = gs[0].u, gs[0].lo, gs[0].d
            elif op == "mul":
                u = _gmul(gs[0].u, gs[1].u)
                d = _gadd(_gmul(gs[0].d, gs[1].u), _gmul(gs[0].u, gs[1].d), t)
                if gs[0].lo is not None and gs[1].lo is not None:
                    lo = (gs[0].lo[0] * gs[1].lo[0], gs[0].lo[1] + gs[1].lo[1])
            elif op == "div":
                rl = _grecip(gs[1].lo)
                u = _gmul(gs[0].u, rl)
                d = _gadd(_gmul(gs[0].d, rl), _gmul(_gmul(gs[0].u, gs[1].d), _gmul(rl, rl)), t)
                uy = gs[1].u
                if gs[0].lo is not None and uy is not None and uy[2] == 0 and uy[0] > 0:
                    lo = (gs[0].lo[0] / uy[0], gs[0].lo[1] - uy[1])
            elif op in ("max", "min"):  # undecided: |max(x, y)| <= |x| + |y|
                u, d = _gadd(gs[0].u, gs[1].u, t), _gadd(gs[0].d, gs[1].d, t)
            elif op in UNARY:
                u, f = _grow_unary(op, a[0], n.params, t)
                f = _gbest(f, _from_interval(_unary(op, a[0].v, n.params)[1])[0])
                d = _gmul(f, gs[0].d)
                if op in ("integer_pow", "square", "sqrt") and gs[0].lo is not None:
                    k = 0.5 if op == "sqrt" else (2 if op == "square" else
                                                  int(dict(n.params)["y"]))
                    if k > 0:
                        lo = (gs[0].lo[0] ** k, gs[0].lo[1] * k)
        return _G(_gbest(u, iu), _lbest(lo, ilo), _gbest(d, idd))

    def _ev(self, n: Node) -> _R:
        op = n.op
        if op == "input":
            return _R((self.flo, self.fhi), (1.0, 1.0), _faff(1, 0))
        if op == "const":
            return _R((n.value, n.value), (0.0, 0.0), _faff(0, Fraction(n.value)))
        a = [self.ev(x) for x in n.args]
        if op in CASTS:
            r = a[0]
            if r.pred is not None:
                b = float(r.pred)
                return _R((b, b), (0.0, 0.0), _faff(0, Fraction(b)))
            return r
        if op in ("add", "add_any", "sub"):
            y = a[1] if op != "sub" else _R(ineg(a[1].v), ineg(a[1].d),
                                            None if a[1].aff is None else
                                            (-a[1].aff[0], -a[1].aff[1]))
            if op == "sub":
                y.lu = _lu_affine(a[1], -1.0, 0.0)
            aff = None if a[0].aff is None or y.aff is None else \
                (a[0].aff[0] + y.aff[0], a[0].aff[1] + y.aff[1])
            lu = None
            if _const_of(y) is not None:
                lu = _lu_affine(a[0], 1.0, _const_of(y))
            elif _const_of(a[0]) is not None:
                lu = _lu_affine(y, 1.0, _const_of(a[0]))
            return _R(iadd(a[0].v, y.v), iadd(a[0].d, y.d), aff, lu=lu)
        if op == "neg":
            aff = None if a[0].aff is None else (-a[0].aff[0], -a[0].aff[1])
            return _R(ineg(a[0].v), ineg(a[0].d), aff, lu=_lu_affine(a[0], -1.0, 0.0))
        if op == "mul":
            x, y = a
            aff = None
            if x.aff is not None and y.aff is not None:
                if x.aff[0] == 0:
                    aff = (x.aff[1] * y.aff[0], x.aff[1] * y.aff[1])
                elif y.aff[0] == 0:
                    aff = (y.aff[1] * x.aff[0], y.aff[1] * x.aff[1])
            d = _affine_times_lu(x, y) or _affine_times_lu(y, x) or \
                iadd(imul(x.d, y.v), imul(x.v, y.d))
            lu = None
            if _const_of(x) is not None:
                lu = _lu_affine(y, _const_of(x), 0.0)
            elif _const_of(y) is not None:
                lu = _lu_affine(x, _const_of(y), 0.0)
            return _R(imul(x.v, y.v), d, aff, lu=lu)
        if op == "div" and _irange(n) is not None:  # integer division truncates toward 0
            x, y = a
            if x.aff is None or y.aff is None or x.aff[0] != 0 or y.aff[0] != 0:
                return _R((-INF, INF), (0.0, 0.0), None)  # settled once the predicates are
            if y.aff[1] == 0:
                raise NotLipschitzError("an integer division by zero")
            q = Fraction(int(x.aff[1] / y.aff[1]))
            return _R((float(q), float(q)), (0.0, 0.0), _faff(0, q))
        if op == "div":
            x, y = a
            rv = irecip(y.v)
            rd = imul(ineg(y.d), imul(rv, rv))
            aff = None
            if x.aff is not None and y.aff is not None and y.aff[0] == 0 and y.aff[1] != 0:
                aff = (x.aff[0] / y.aff[1], x.aff[1] / y.aff[1])
            return _R(imul(x.v, rv), iadd(imul(x.d, rv), imul(x.v, rd)), aff)
        if op in ("max", "min"):
            x, y = a
            if x.pred is not None and y.pred is not None:  # or / and of decided predicates
                p = (max if op == "max" else min)(x.pred, y.pred)
                return _R((0.0, 1.0), (0.0, 0.0), None, pred=p)
            order = self._switch(x, y)
            if order is None:  # continuous in any case: hull of both
                f = max if op == "max" else min
                return _R((f(x.v[0], y.v[0]), f(x.v[1], y.v[1])), ihull(x.d, y.d), None)
            pick = (order == 0) == (op == "max")
            return x if pick else y
        if op == "abs":
            x = a[0]
            nx = _R(ineg(x.v), ineg(x.d), None if x.aff is None else (-x.aff[0], -x.aff[1]))
            order = self._switch(x, nx)
            if order is None:
                return _R((0.0, max(abs(x.v[0]), abs(x.v[1]))), ihull(x.d, nx.d), None)
            return x if order == 0 else nx
        if op in COMPARISONS:
            x, y = a
            point_only = op in ("eq", "ne")
            if n.args[0] is n.args[1]:  # v ⋈ v (a NaN test): v is finite wherever it is defined
                p = op in ("eq", "le", "ge")
                self.decisions[id(n)] = p
                return _R((0.0, 1.0), (0.0, 0.0), None, pred=p)
            order = self._switch(x, y, point_only=point_only)
            if order is None and not point_only and (x.aff is None or y.aff is None):
                order = self._touching(n.args[0], n.args[1], x, y)
            if order is None:
                if (x.aff is None or y.aff is None) and not self.breakpoints:
                    # (with a switch found inside this piece, the piece is split first: values
                    # computed from predicates are constants on the parts)
                    raise NotLipschitzError(
                            "a comparison between non-affine functions of the input cannot be "
                            "located (only comparisons of affine expressions, or of values "
                            "strictly separated on a piece, are supported)")
                p = None  # an affine switch inside the piece: refined next round
            elif point_only:
                p = (order == 1) == (op == "eq")
            else:
                m = self.mid()
                if x.aff is not None and y.aff is not None:
                    p = _compare(op, x.aff[0] * m + x.aff[1], y.aff[0] * m + y.aff[1])
                else:
                    p = _compare(op, 1.0 if order == 0 else 0.0, 0.5)
            self.decisions[id(n)] = p
            return _R((0.0, 1.0), (0.0, 0.0), None, pred=p)
        if op == "select_n":
            which = a[0]
            cases = a[1:]
            if which.pred is None and which.v[0] != which.v[1]:
                # undecided predicate: only while the piece is being refined
                out = cases[0]
                for c in cases[1:]:
                    out = _R(ihull(out.v, c.v), ihull(out.d, c.d), None)
                return out
            idx = int(which.pred) if which.pred is not None else int(which.v[0])
            return cases[idx]
        v, fd = _unary(op, a[0].v, n.params)
        lu = None
        if op in (*_DERIVS, "erfc") and a[0].aff is not None and a[0].aff[0] != 0:
            # erfc = 1 - erf
            p, q, f = (-1.0, 1.0, "erf") if op == "erfc" else (1.0, 0.0, op)
            lu = (p, q, f, float(a[0].aff[0]), float(a[0].aff[1]))
        return _R(v, imul(fd, a[0].d), None, lu=lu)


def _compare(op: str, x, y) -> bool:
    return {"lt": x < y, "le": x <= y, "gt": x > y, "ge": x >= y, "eq": x == y, "ne": x != y}[op]


# --------------------------------------------------------------------------------------------------
# Exact point values (continuity check)
# --------------------------------------------------------------------------------------------------


_POINT_FNS: dict[str, Callable[[float], float]] = {
        "logistic": _sig, "tanh": math.tanh, "erf": math.erf, "erfc": math.erfc, "exp": math.exp,
        "expm1": math.expm1, "log": math.log, "log1p": math.log1p, "sqrt": math.sqrt,
        "sin": math.sin, "cos": math.cos, "rsqrt": lambda v: 1.0 / math.sqrt(v)}


@dataclasses.dataclass(frozen=True, eq=False)
class _Sym:
    """An exact real number that is not (known to be) rational: a transcendental function of an
    exact argument, or an arithmetic expression of such numbers. Built through :class:`_Exact`,
    which makes one object per expression, so two are equal (``is``) exactly when they are the
    same expression, never by their float64 values. ``f`` is a float64 approximation and ``m`` a
    rough size of its terms (the scale of the approximation's error)."""

    op: str
    args: tuple
    f: float
    m: float

    def __float__(self) -> float:
        return self.f


# exact values of the functions at the rational points where they are rational
_EXACT_AT = {"logistic": {0: Fraction(1, 2)}, "tanh": {0: 0}, "erf": {0: 0}, "erfc": {0: 1},
             "exp": {0: 1}, "expm1": {0: 0}, "log": {1: 0}, "log1p": {0: 0}, "sin": {0: 0},
             "cos": {0: 1}}


class _Exact:
    """Exact arithmetic on rationals and :class:`_Sym` expressions (one table per continuity
    check, shared by its left limit, right limit and value)."""

    def __init__(self):
        self.table: dict = {}

    def sym(self, op: str, args: tuple, f: float):
        key = (op, tuple(("q", a) if isinstance(a, Fraction | int) else id(a) for a in args))
        if key not in self.table:
            m = max([abs(f), *(abs(float(a)) if isinstance(a, Fraction | int) else a.m
                               for a in args)])
            self.table[key] = _Sym(op, args, f, m)
        return self.table[key]

    def transcendental(self, op: str, x):
        if isinstance(x, Fraction):
            exact = _EXACT_AT.get(op, {})
            if x in exact:
                return Fraction(exact[x])
            if op in ("sqrt", "rsqrt") and x > 0:
                num, den = math.isqrt(x.numerator), math.isqrt(x.denominator)
                if num * num == x.numerator and den * den == x.denominator:
                    return Fraction(num, den) if op == "sqrt" else Fraction(den, num)
        val = _POINT_FNS[op](float(x))
        if not math.isfinite(val):
            raise OverflowError(f"{op} is not finite")
        return self.sym(op, (x,), val)

    def add(self, x, y):
        if isinstance(x, Fraction) and isinstance(y, Fraction):
            return x + y
        if isinstance(x, Fraction) and x == 0:
            return y
        if isinstance(y, Fraction) and y == 0:
            return x
        if isinstance(y, _Sym) and y.op == "neg" and y.args[0] is x or \
                isinstance(x, _Sym) and x.op == "neg" and x.args[0] is y:
            return Fraction(0)  # v − v
        return self.sym("add", (x, y), float(x) + float(y))

    def neg(self, x):
        if isinstance(x, Fraction):
            return -x
        if x.op == "neg":
            return x.args[0]
        return self.sym("neg", (x,), -x.f)

    def mul(self, x, y):
        if isinstance(x, Fraction) and isinstance(y, Fraction):
            return x * y
        for a, b in ((x, y), (y, x)):
            if isinstance(a, Fraction) and a == 0:
                return Fraction(0)
            if isinstance(a, Fraction) and a == 1:
                return b
        return self.sym("mul", (x, y), float(x) * float(y))

    def div(self, x, y):
        if self.sign(y) == 0:
            raise ZeroDivisionError("division by zero")
        if isinstance(x, Fraction) and isinstance(y, Fraction):
            return x / y
        if isinstance(y, Fraction) and y == 1:
            return x
        if isinstance(x, Fraction) and x == 0:
            return Fraction(0)
        return self.sym("div", (x, y), float(x) / float(y))

    def pow(self, x, k: int):
        if isinstance(x, Fraction):
            return x ** k
        return self.sym("pow", (x, k), float(x) ** k)

    @staticmethod
    def sign(x) -> int:
        """The sign of an exact value; refuses when a non-rational value is too close to 0 to
        tell from its float64 approximation."""
        if not isinstance(x, _Sym):  # rational (or a predicate)
            return (x > 0) - (x < 0)
        if abs(x.f) <= 1e-9 * (1 + x.m):
            raise NotLipschitzError(f"the sign of {x.op}(...) at a breakpoint cannot be decided "
                                    "in float64 (a value within 1e-9 of zero)")
        return 1 if x.f > 0 else -1

    def cmp(self, x, y) -> int:
        """The sign of ``x − y`` (exact, or refused when undecidable in float64)."""
        if x is y:
            return 0
        if not isinstance(x, _Sym) and not isinstance(y, _Sym):
            return (x > y) - (x < y)
        return self.sign(self.add(x, self.neg(y)))


def point_value(root: Node, t: Fraction, forced: dict[int, object] | None = None,
                exact: _Exact | None = None):
    """Value of the expression at ``u = t``: exact rationals for algebraic operations.

    Args:
      root: the expression.
      t: the point.
      forced: comparison outcomes by node id (a one-sided limit: the outcomes on the adjacent
        piece); comparisons not in it are evaluated at ``t``.
      exact: the expression table (share one between values that are compared).

    Returns:
      A :class:`Fraction`, a :class:`_Sym` (an exact expression of transcendental values: two are
      equal only when they are the same expression, never by their float64 values) or a
      ``bool`` for a predicate.

    Raises:
      NotLipschitzError: when the value is undefined (log of a non-positive number, division by
        zero, overflow).
    """
    memo: dict[int, object] = {}
    ex = exact if exact is not None else _Exact()

    def ev(n: Node):
        if id(n) not in memo:             # arguments first: no recursion below ``_pv``
            for m in postorder(n, lambda m: id(m) in memo):
                memo[id(m)] = _pv(m)
        return memo[id(n)]

    def _pv(n: Node):
        op = n.op
        if op == "input":
            return t
        if op == "const":
            return Fraction(n.value)
        a = [ev(x) for x in n.args]
        try:
            if op in CASTS:
                return Fraction(int(a[0])) if isinstance(a[0], bool) else a[0]
            if op in ("add", "add_any"):
                return ex.add(a[0], a[1])
            if op == "sub":
                return ex.add(a[0], ex.neg(a[1]))
            if op == "neg":
                return ex.neg(a[0])
            if op == "mul":
                return ex.mul(a[0], a[1])
            if op == "div":
                q = ex.div(a[0], a[1])
                return Fraction(int(q)) if _irange(n) is not None else q
            if op in ("max", "min"):
                c = ex.cmp(a[0], a[1])
                return a[0] if (c >= 0) == (op == "max") else a[1]
            if op == "abs":
                return a[0] if ex.sign(a[0]) >= 0 else ex.neg(a[0])
            if op in ("integer_pow", "square"):
                return ex.pow(a[0], 2 if op == "square" else int(dict(n.params)["y"]))
            if op in COMPARISONS:
                if forced is not None and forced.get(id(n)) is not None:
                    return bool(forced[id(n)])
                return _compare(op, ex.cmp(a[0], a[1]), 0)
            if op == "select_n":
                which = a[0]
                return a[1 + int(which)]
            return ex.transcendental(op, a[0])
        except (ZeroDivisionError, ValueError, OverflowError, KeyError) as err:
            raise NotLipschitzError(f"{op} is undefined at a breakpoint ({err})") from None

    value = ev(root)
    for n in root.nodes():
        _check_irange(n, memo.get(id(n)), f"at u = {float(t):g}")
    return value


def _same(x, y) -> bool:
    """Exact equality of two point values (rationals, one :class:`_Exact` table's expressions, or
    predicates)."""
    if isinstance(x, _Sym) or isinstance(y, _Sym):
        return x is y
    return x == y


def _irange(n: Node) -> tuple[int, int] | None:
    """The (min, max) of the integer dtype of an integer-valued node, else None."""
    for k, v in n.params:
        if k == "irange":
            return v
    return None


def _check_irange(n: Node, value, where: str) -> None:
    """Refuses an integer intermediate outside its dtype: the program wraps around there, so the
    exact-integer function analysed is not the one executed."""
    rng = _irange(n)
    if rng is None or value is None:
        return
    lo, hi = (value, value) if not isinstance(value, tuple) else value
    if lo < rng[0] or hi > rng[1]:
        raise NotLipschitzError(
                f"the integer intermediate {n.op} takes values in [{float(lo):g}, {float(hi):g}] "
                f"{where}, outside its dtype's range [{rng[0]}, {rng[1]}] (it wraps around)")


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _mag(d: tuple[float, float]) -> float:
    m = max(abs(d[0]), abs(d[1]))
    return INF if math.isnan(m) else m


def _point_slope(root: Node, t: Fraction) -> float:
    """``|g'(t)|`` (derivative interval of the degenerate piece ``[t, t]``): a lower estimate."""
    m = _mag(_Evaluator(t, t).ev(root).d)
    return m if math.isfinite(m) else 0.0


def _refine(root: Node, edges: list[Point], *, rel: float = 2e-3, max_splits: int = 1500) -> float:
    """Sound ``sup |g'|`` over pieces with no switch inside, tightened by bisection.

    Each piece's bound is sound by itself; the piece with the largest finite bound is halved
    (halves have no switch inside either) until that bound is within ``rel`` of the largest
    derivative value seen at a piece midpoint, or ``max_splits`` halvings. The result is the
    largest bound over all pieces: bisection only ever replaces a piece by two sound sub-bounds.
    """
    heap: list[tuple[float, Fraction, Fraction]] = []
    fixed = 0.0  # tail pieces and unbounded pieces
    seen = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ev = _Evaluator(lo, hi)
        m = ev.tail_bound(ev.ev(root))
        if lo == -INF or hi == INF or not math.isfinite(m):
            fixed = max(fixed, m)
        else:
            heapq.heappush(heap, (-m, Fraction(lo), Fraction(hi)))
            seen = max(seen, _point_slope(root, (Fraction(lo) + Fraction(hi)) / 2))
    for _ in range(max_splits):
        if not heap or -heap[0][0] <= max(fixed, seen * (1 + rel)):
            break
        _, lo, hi = heapq.heappop(heap)
        mid = (lo + hi) / 2
        for a, b in ((lo, mid), (mid, hi)):
            heapq.heappush(heap, (-_mag(_Evaluator(a, b).ev(root).d), a, b))
            seen = max(seen, _point_slope(root, (a + b) / 2))
    return max(fixed, -heap[0][0] if heap else 0.0)


def lipschitz_constant(root: Node, *, max_rounds: int = 64) -> float:
    """Sound upper bound of ``sup_u |g'(u)|`` for the scalar expression ``root`` of ``INPUT``.

    Args:
      root: expression DAG built from :data:`INPUT`, :func:`const` and primitive nodes.
      max_rounds: maximum piece refinements.

    Returns:
      A float ``L >= 0`` with ``|g(u) - g(v)| <= L |u - v|`` for all real ``u, v``.

    Raises:
      NotLipschitzError: when the function is discontinuous, has an unbounded derivative, or uses a
        construct the analysis cannot bound.
    """
    unsupported = root.ops() - set(SUPPORTED)
    if unsupported:
        raise NotLipschitzError(f"unsupported elementwise primitive(s) {sorted(unsupported)}")
    bps: list[Fraction] = []
    for _ in range(max_rounds):
        edges: list[Point] = [-INF, *bps, INF]
        pieces = list(zip(edges[:-1], edges[1:], strict=True))
        new: set[Fraction] = set()
        results = []
        evaluators = []
        for lo, hi in pieces:
            ev = _Evaluator(lo, hi)
            r = ev.ev(root)
            new |= {t for t in ev.breakpoints if lo < t < hi}
            results.append((r, ev.decisions, ev.tail_bound(r)))
            evaluators.append(ev)
        if not new:
            for ev, (lo, hi) in zip(evaluators, pieces, strict=True):
                for n in root.nodes():
                    r = ev.memo.get(id(n))
                    _check_irange(n, None if r is None else r.v,
                                  f"on ({float(lo):g}, {float(hi):g})")
            break
        bps = sorted(set(bps) | new)
    else:
        raise NotLipschitzError("the piecewise structure did not settle")
    bound = max(m for _, _, m in results)
    if root.ops() & set(UNARY) or not math.isfinite(bound):
        # tighten: the derivative ranges on finer pieces (no switch lies inside any of them)
        grid = {Fraction(k, 4) for k in range(-32, 33)} | {Fraction(v) for v in (-64, -32, -16,
                                                                                   16, 32, 64)}
        edges = [-INF, *sorted(set(bps) | grid), INF]
        bound = min(bound, _refine(root, edges))
        # a shifted function (gelu(u + 70), squareplus(u − 56)) reaches its asymptotic regime
        # only far out: tails from ±2^16 on, finite pieces doubling in length up to there
        far = {Fraction(s * 2 ** k) for k in range(6, 17) for s in (-1, 1)}
        wide = min(_refine(root, [-INF, *sorted(set(bps) | grid | far), INF]), INF)
        bound = min(bound, wide)
    if not math.isfinite(bound):
        raise NotLipschitzError("its derivative is unbounded on "
                                + ", ".join(f"({float(lo):g}, {float(hi):g})"
                                            for (lo, hi), (_, _, m) in
                                            zip(pieces, results, strict=True)
                                            if not math.isfinite(m)))
    for i, t in enumerate(bps):
        ex = _Exact()
        left = point_value(root, t, results[i][1], ex)
        right = point_value(root, t, results[i + 1][1], ex)
        actual = point_value(root, t, exact=ex)
        if not _same(left, right) or not _same(right, actual):
            if isinstance(left, _Sym | Fraction) and all(
                    float(v) == float(left) for v in (right, actual)):
                raise NotLipschitzError(
                        f"it may be discontinuous at u = {float(t):g}: its left limit, right limit "
                        f"and value agree in float64 ({float(left)!r}) but are different exact "
                        "expressions, so continuity of the exact-arithmetic function is not "
                        "proved")
            raise NotLipschitzError(
                    f"it is discontinuous at u = {float(t):g} (left limit {float(left)!r}, right "
                    f"limit {float(right)!r}, value {float(actual)!r})")
    return float(bound)
