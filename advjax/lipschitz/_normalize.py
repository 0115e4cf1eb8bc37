"""Recognising LayerNorm / GroupNorm / RMSNorm (ε > 0) and softmax / log_softmax / logsumexp in a
jaxpr, with their Lipschitz constants.

A normalisation multiplies two input-dependent values (the centred input and ``1/√(var + ε)``),
which the walk refuses in general. :func:`find` matches, before the walk, every ``mul``/``div``
equation whose output is *exactly* one of

* ``(x − μ_G(x)) · (k·Σ_G (x − μ_G(x))² + ε)^{-1/2} · γ``   (LayerNorm, GroupNorm, ``jnp.var``),
* ``(x − μ_G(x)) · ((1/n)Σ_G x² − μ_G(x)² + ε)^{-1/2} · γ``  (the fast variance, also under
  ``max(0, ·)``; equal to the above with ``k = 1/n`` in exact arithmetic),
* ``x · (k·Σ_G x² + ε)^{-1/2} · γ``                           (RMSNorm),

where ``G`` ranges over a partition of the entries of one value ``x`` into groups of ``n``
entries (the axes of a ``reduce_sum``, after any reshape / transpose of ``x``), ``μ_G`` is the
group sum divided by ``n`` exactly, ``k > 0`` and ``ε > 0`` are constants, and ``γ`` is any product
of constant factors (the scale ``(1/√(·))·γ`` of Flax). The division form ``(x − μ)/√(var + ε)`` and
``1/√`` are accepted too. Every step is checked structurally: the group of each statistic is
tracked entry by entry (an index probe through every reshape and broadcast), so a statistic used
at an entry of another group, a mean that is not exactly ``Σ/n``, a different ``x`` in the centring
and the variance, an uncentred variance with a centred numerator, ``ε <= 0`` or an input-dependent
``γ`` is not matched (the walk then refuses the product as before).

Bound (proved per group; the Jacobian is block diagonal over groups after a permutation, so its
norm is the largest block's). With ``c = P x`` (``P = I − 11ᵀ/n`` the centring, ``‖P‖ = 1``, or
``P = I`` for RMSNorm) and ``s = √(k‖c‖² + ε)``, the output is ``y = c / s`` and

    ∂y/∂x = (1/s) (I − k c cᵀ / s²) P.

The symmetric matrix ``I − k c cᵀ/s²`` has eigenvalue 1 on ``c^⊥`` and ``1 − k‖c‖²/s² = ε/s² ∈
(0, 1]`` along ``c``, so ``‖∂y/∂x‖ <= 1/s <= 1/√ε`` (attained at ``c = 0``). For the fast variance
``(1/n)Σx² − μ² = (1/n)‖Px‖²`` exactly. Multiplying by ``diag(γ)`` adds the factor ``max |γ|``. The
map is C¹ (``s >= √ε > 0``), so its Lipschitz constant is ``sup ‖∂y/∂x‖ <= max|γ| / √ε`` times that
of ``x``. As everywhere in the walk, this bounds the exact-arithmetic function.

The softmax family is matched the same way, per group of ``n`` entries, with ``e = exp(x − s)``
for one per-group shift ``s`` (a ``reduce_max``/``reduce_min`` of ``x`` over the groups, possibly
through ``max(-inf, ·)``, ``where(isfinite(·), ·, 0)``, ``stop_gradient``); numerator and
denominator must use the same shift (the same reduction of the same value), and the shift cancels
exactly, so its own (discontinuous) derivative never enters:

* softmax ``e / Σ_G e``: ``J = diag(p) − ppᵀ`` and ``vᵀJv = Var_p(v) <= (max v − min v)²/4 <=
  ‖v‖²/2`` (Popoviciu), so ``‖J‖ <= 1/2`` (attained at two equal top logits);
* log_softmax ``(x − s) − log Σ_G e``: ``J = I − 1pᵀ`` and ``‖Jv‖² = Σ_i (v_i − m)²`` with ``m =
  pᵀv`` between ``min v`` and ``max v``; convex in ``m``, so at most ``Σ_i (v_i − v_k)² <=
  (√Q + √(n−1)|v_k|)² <= n‖v‖²`` (``Q = Σ_{i≠k} v_i²``, Cauchy–Schwarz twice): ``‖J‖ <= √n``,
  approached as ``p → e_k``;
* logsumexp ``log Σ_G e + s``: the gradient is ``p`` with ``‖p‖₂ <= ‖p‖₁ = 1``; groups are
  disjoint, so ``1`` per output copy of a group's value (``√copies`` when broadcast).

Masks: ``x`` may be ``where(P, x, −inf)`` with a constant ``P`` (the same ``P`` wherever ``x``
is used; ``where(P, e, 0)`` on ``e`` is then the identity, ``e`` being 0 at the masked entries).
Masked entries of the output are exact constants (0, or ``−inf`` for log_softmax) and the others
the same map of the unmasked logits, so its Jacobian is the unmasked one padded with zeros and
the constants above hold. The matcher evaluates only the literal-only values it asks for, with
pure, real-valued equations (never an effect, a key or a complex value), and knows the constant
arguments of the walked call (a literal ``ε`` passed into an inner ``jit``).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import jax.extend.core as jcore
import numpy as np

from advjax.lipschitz._prims import CALL_PARAMS as _CALL_PARAMS
from advjax.lipschitz._prims import CALLS as _CALLS

_SHAPE = ("reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim",
          "convert_element_type", "copy", "copy_p", "stop_gradient")


class _NoMatch(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Match:
    """A recognised normalisation: ``out = N_ε(base) · Π factors`` (module docstring).

    Attributes:
      base: the normalised variable (of the walked jaxpr).
      eps: ``ε > 0``.
      factor_vars: variables of the walked jaxpr that must be constants at walk time (``γ``).
      factor_consts: constant factors known from the jaxpr itself.
      centred: LayerNorm/GroupNorm (True) or RMSNorm (False).
      group: the number of entries per group.
      kind: ``layer_norm``, ``rms_norm``, ``softmax``, ``log_softmax`` or ``logsumexp``.
      constant: the constant of the map before the factors (``1/√ε`` for the norms).
    """

    base: Any
    eps: float
    factor_vars: tuple
    factor_consts: tuple
    centred: bool
    group: int
    kind: str = "layer_norm"
    constant: float = 0.0

    def bound(self, factor_values) -> float:
        """``constant · Π max|γ|`` (rounded up), from the walk-time values of ``factor_vars``."""
        b = self.constant
        for f in (*factor_values, *self.factor_consts):
            b *= float(np.max(np.abs(np.asarray(f, np.float64)))) if np.size(f) else 0.0
        return b * (1 + 1e-12)


@dataclasses.dataclass(frozen=True, eq=False)
class _Scope:
    jaxpr: Any
    consts: tuple
    parent: tuple | None  # (call eqn, parent scope)
    producers: dict


def _scope(jaxpr, consts=(), parent=None) -> _Scope:
    prods = {v: e for e in jaxpr.eqns for v in e.outvars}
    return _Scope(jaxpr, tuple(consts), parent, prods)


@dataclasses.dataclass(frozen=True, eq=False)
class _Full:
    """An input-shaped value: ``x``, ``c = x − μ_G(x)``, or their squares (``x2``, ``c2``)."""

    kind: str
    base: Any
    probe: np.ndarray           # base flat index of each entry
    groups: np.ndarray | None   # for c / c2: label (smallest member) of each base index's group
    token: Any = None           # for xs / e: the shift ``s``'s token
    mask: bytes | None = None   # float64 weights of the base entries (0: masked); None: all 1


@dataclasses.dataclass(frozen=True, eq=False)
class _Stat:
    """A per-group value. kind: s1 ``coef·Σx``, s1sq ``coef·(Σx)²``, s2 ``coef·Σx²``, c2
    ``coef·Σc²``, var ``k‖Pc‖²`` (or ``kΣx²`` uncentred), vareps, sd ``√vareps``, inv
    ``Πγ/sd``."""

    kind: str
    base: Any
    groups: np.ndarray
    n: int
    coef: Fraction
    probe: np.ndarray           # group label of each entry
    centred: bool = True
    eps: float = 0.0
    fvars: tuple = ()
    fconsts: tuple = ()
    token: Any = None           # pg / se / lse0: the variable where the shift ``s`` was made
    mask: bytes | None = None   # the masked base entries of the value reduced


class _Matcher:
    def __init__(self, jaxpr, consts, known=None):
        self.root = _scope(jaxpr)
        self.root_consts = consts
        self.known = dict(known or {})  # variables of the walked jaxpr with known values
        self.memo: dict = {}
        self.smemo: dict = {}
        self.scopes: dict = {}  # keeps every scope alive, so the ids in the memo keys are unique
        # which values of the walked jaxpr are computed from literals only (structurally: nothing
        # is evaluated here; :meth:`static` evaluates the few a match asks for, on demand)
        self.root_static: set = set(self.known)
        for eqn in jaxpr.eqns:
            if _evaluable(eqn) and all(isinstance(v, jcore.Literal) or v in self.root_static
                                       for v in eqn.invars):
                self.root_static.update(eqn.outvars)

    # ---- references --------------------------------------------------------------------------

    def node(self, var, scope: _Scope):
        """("lit", value) | ("eqn", eqn, scope, var) | ("leaf", var), through calls."""
        if isinstance(var, jcore.Literal):
            return ("lit", var.val)
        if var in scope.producers:
            eqn = scope.producers[var]
            if eqn.primitive.name in _CALLS:
                sub = next((eqn.params[k] for k in _CALL_PARAMS if k in eqn.params), None)
                if isinstance(sub, jcore.ClosedJaxpr):
                    key = (id(eqn), id(scope))
                    if key not in self.scopes:
                        self.scopes[key] = _scope(sub.jaxpr, sub.consts, (eqn, scope))
                    inner = self.scopes[key]
                    return self.node(sub.jaxpr.outvars[eqn.outvars.index(var)], inner)
                raise _NoMatch
            return ("eqn", eqn, scope, var)
        if scope.parent is not None:
            eqn, outer = scope.parent
            if var in scope.jaxpr.invars:
                n_in = len(scope.jaxpr.invars)
                i = scope.jaxpr.invars.index(var)
                return self.node(eqn.invars[len(eqn.invars) - n_in + i], outer)
            if var in scope.jaxpr.constvars:
                return ("lit", scope.consts[scope.jaxpr.constvars.index(var)])
            raise _NoMatch
        return ("leaf", var)

    def static(self, var, scope) -> np.ndarray | None:
        """The value of ``var`` when it is computed from literals only by pure, real-valued
        equations (never an effect, a key or a complex value; evaluated on demand, once)."""
        if isinstance(var, jcore.Literal):
            return _real(var.val)
        key = (id(var), id(scope))
        if key in self.smemo:
            return self.smemo[key][1]
        stack = [(var, scope, False)]
        while stack:  # post-order without recursion (a long chain of constants)
            v, sc, expanded = stack.pop()
            k = (id(v), id(sc))
            if k in self.smemo:
                continue
            if isinstance(v, jcore.Literal):
                self.smemo[k] = (v, _real(v.val))
                continue
            if sc is self.root and (v not in self.root_static or v in self.known):
                self.smemo[k] = (v, _real(self.known[v]) if v in self.known else None)
                continue
            try:
                nd = self.node(v, sc)
            except _NoMatch:
                nd = ("leaf", None)
            if nd[0] == "leaf" and nd[1] is not None and nd[1] in self.known:
                self.smemo[k] = (v, _real(self.known[nd[1]]))  # an argument of a call
                continue
            if nd[0] != "eqn" or not _evaluable(nd[1]):
                self.smemo[k] = (v, _real(nd[1]) if nd[0] == "lit" else None)
                continue
            eqn, esc = nd[1], nd[2]
            pending = [(u, esc, False) for u in eqn.invars
                       if not isinstance(u, jcore.Literal) and (id(u), id(esc)) not in self.smemo]
            if pending and not expanded:
                stack.append((v, sc, True))
                stack.extend(pending)
                continue
            vals = [_real(u.val) if isinstance(u, jcore.Literal) else
                    self.smemo[(id(u), id(esc))][1] for u in eqn.invars]
            if any(x is None for x in vals):
                self.smemo[k] = (v, None)
                continue
            out = eqn.primitive.bind(*vals, **eqn.params)
            out = out[eqn.outvars.index(nd[3])] if eqn.primitive.multiple_results else out
            self.smemo[k] = (v, _real(out))
        return self.smemo[key][1]

    def scalar(self, var, scope) -> float | None:
        v = self.static(var, scope)
        if v is None or v.size == 0 or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            return None
        first = float(v.ravel()[0])
        return first if np.all(v == v.ravel()[0]) and not math.isnan(first) else None

    # ---- forms -------------------------------------------------------------------------------

    def form(self, var, scope):
        key = (id(var), id(scope))
        if key not in self.memo:
            try:
                self.memo[key] = (var, self._form(var, scope))
            except _NoMatch:
                # any other value of the walked jaxpr may be the normalised one (also when
                # reached as an argument of a call)
                target = var if scope is self.root else self._root_alias(var, scope)
                leaf = target is not None and not isinstance(target, jcore.Literal) \
                    and np.issubdtype(target.aval.dtype, np.floating)
                self.memo[key] = (var, _leaf(target) if leaf else None)
        return self.memo[key][1]

    def _form(self, var, scope):
        nd = self.node(var, scope)
        if nd[0] == "lit":
            raise _NoMatch
        if nd[0] == "leaf":
            if not np.issubdtype(nd[1].aval.dtype, np.floating):
                raise _NoMatch
            return _leaf(nd[1])  # the variable of the walked jaxpr (through calls)
        eqn, sc = nd[1], nd[2]
        if nd[3] is not var or sc is not scope:  # reached through a call: its own memo entry
            return self.need(nd[3], sc)
        prim = eqn.primitive.name
        out_shape = tuple(eqn.outvars[0].aval.shape)
        ins = eqn.invars
        if prim in _SHAPE:
            if prim == "convert_element_type" and not np.issubdtype(eqn.params["new_dtype"],
                                                                    np.floating):
                raise _NoMatch
            f = self.need(ins[0], sc)
            probe = _shape_op(prim, eqn.params, f.probe, out_shape)
            if isinstance(f, _Full) and prim == "broadcast_in_dim" and probe.size != f.probe.size:
                raise _NoMatch  # an input-shaped value is never copied
            return dataclasses.replace(f, probe=probe)
        if prim in ("reduce_max", "reduce_min"):
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Full) and f.kind == "x"):
                raise _NoMatch
            r = _reduce(dataclasses.replace(f, kind="x"), tuple(eqn.params["axes"]), True)
            # the same reduction of the same value over the same groups: the same shift
            return dataclasses.replace(r, kind="pg",
                                       token=(prim, id(f.base), r.groups.tobytes(), f.mask))
        if prim == "is_finite":
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Stat) and f.kind == "pg"):
                raise _NoMatch
            return dataclasses.replace(f, token=var)
        if prim == "exp":
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Full) and f.kind == "xs"):
                raise _NoMatch
            return dataclasses.replace(f, kind="e")
        if prim == "sign":
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Stat) and f.kind == "se"):
                raise _NoMatch
            return dataclasses.replace(f, kind="sgn")  # Σ w·e >= 0: sign 0 or 1
        if prim == "lt" and self.scalar(ins[1], sc) == 0.0:
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Stat) and f.kind == "sgn"):
                raise _NoMatch
            return dataclasses.replace(f, kind="never")  # sign(Σ w·e) < 0 is always false
        if prim in ("log", "abs"):
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Stat) and f.kind == "se"):  # Σ exp > 0: abs is the identity
                raise _NoMatch
            return f if prim == "abs" else dataclasses.replace(f, kind="lse0")
        if prim == "select_n" and len(ins) == 3 and isinstance(
                p := self.form(ins[0], sc), _Stat) and p.kind == "never":
            f = self.need(ins[1], sc)  # the case of a false predicate, always taken
            if isinstance(f, Match):
                if tuple(ins[1].aval.shape) != out_shape:
                    raise _NoMatch
                return f
            return dataclasses.replace(f, probe=_bcast(f.probe, out_shape))
        if prim == "select_n" and self.scalar(ins[0], sc) is None:
            masked = self._masked(ins, sc, out_shape)
            if masked is not None:
                return masked
            return self._per_group(var, ins, sc, out_shape)
        if prim == "select_n":
            p = self.scalar(ins[0], sc)
            if p is None:
                raise _NoMatch
            f = self.need(ins[1 + int(p)], sc)
            return dataclasses.replace(f, probe=_bcast(f.probe, out_shape))
        if prim == "reduce_sum":
            return _reduce(self.need(ins[0], sc), tuple(eqn.params["axes"]))
        if prim in ("square", "integer_pow") or (prim == "mul" and _same_var(ins[0], ins[1])):
            if prim == "integer_pow" and int(eqn.params["y"]) != 2:
                raise _NoMatch
            return _square(self.need(ins[0], sc))
        if prim in ("mul", "div"):
            return self._product(prim, ins, sc, out_shape)
        if prim in ("add", "add_any", "sub"):
            return self._sum(prim, ins, sc, out_shape)
        if prim == "max" and any(self.scalar(v, sc) == -math.inf for v in ins):
            return self._per_group(var, ins, sc, out_shape)  # max(-inf, m) = m
        if prim == "max":
            for i in (0, 1):
                z = self.scalar(ins[i], sc)
                if z == 0.0:
                    f = self.need(ins[1 - i], sc)
                    if isinstance(f, _Stat) and f.kind == "var":  # var >= 0 in exact arithmetic
                        return dataclasses.replace(f, probe=_bcast(f.probe, out_shape))
            raise _NoMatch
        if prim in ("sqrt", "rsqrt"):
            f = self.need(ins[0], sc)
            if not (isinstance(f, _Stat) and f.kind == "vareps"):
                raise _NoMatch
            return dataclasses.replace(f, kind="sd" if prim == "sqrt" else "inv")
        raise _NoMatch

    def _root_alias(self, var, scope):
        """The variable of the walked jaxpr that ``var`` (an argument of nested calls) is."""
        while scope is not self.root:
            if isinstance(var, jcore.Literal) or scope.parent is None \
                    or var not in scope.jaxpr.invars:
                return None
            eqn, outer = scope.parent
            n_in = len(scope.jaxpr.invars)
            var = eqn.invars[len(eqn.invars) - n_in + scope.jaxpr.invars.index(var)]
            scope = outer
        return var

    def need(self, var, scope):
        f = self.form(var, scope)
        if f is None:
            raise _NoMatch
        return f

    def _masked(self, ins, sc, out_shape):
        """``where(P, v, c)`` with a constant mask ``P``: ``c = −inf`` where it is chosen and ``v``
        an input-shaped value: the masked value (its masked entries are constants ``−inf`` that
        the softmax family turns into exact zeros); or, on ``e = exp(x − s)`` of a masked ``x``,
        ``c = 0`` exactly at the masked entries: the identity (``e`` is 0 there already)."""
        if len(ins) != 3:
            return None
        pred = self.static(ins[0], sc)
        if pred is None or pred.dtype != np.bool_:
            return None
        for ci, vi in ((1, 2), (2, 1)):
            c = self.static(ins[ci], sc)
            if c is None:
                continue
            f = self.form(ins[vi], sc)
            if not (isinstance(f, _Full) and f.kind in ("x", "e") and f.probe.shape == out_shape):
                return None
            try:
                chosen = np.broadcast_to(pred if ci == 2 else ~pred, out_shape)
                cval = np.broadcast_to(c, out_shape)
            except ValueError:
                return None
            if not np.array_equal(np.sort(f.probe.ravel()), np.arange(f.probe.size)):
                return None
            weights = _weights(f)
            weights[f.probe[chosen]] = 0.0
            if f.kind == "x" and np.all(cval[chosen] == -math.inf):
                return dataclasses.replace(f, mask=_pack(weights))
            if f.kind == "e" and np.all(cval[chosen] == 0):
                return dataclasses.replace(f, mask=_pack(weights))
            return None
        return None

    def _per_group(self, var, ins, sc, out_shape):
        """An elementwise function of per-group values of one partition (finite constants
        allowed) is a per-group value: ``max(-inf, m)``, ``where(isfinite(m), m, 0)``."""
        stats = []
        for v in ins:
            c = self.scalar(v, sc)
            if c is not None:
                continue
            f = self.need(v, sc)
            if not (isinstance(f, _Stat) and f.kind == "pg"):
                raise _NoMatch
            stats.append(f)
        if not stats:
            raise _NoMatch
        first = stats[0]
        for f in stats[1:]:
            if not (f.base is first.base and np.array_equal(f.groups, first.groups)
                    and np.array_equal(_bcast(f.probe, out_shape),
                                       _bcast(first.probe, out_shape))):
                raise _NoMatch
        return dataclasses.replace(first, token=var, probe=_bcast(first.probe, out_shape))

    def _sum(self, prim, ins, sc, out_shape):
        zs = [self.scalar(v, sc) for v in ins]
        if any(z is not None and not math.isfinite(z) for z in zs):
            raise _NoMatch
        for i in (0, 1):
            if zs[i] is not None and (i == 1 or prim != "sub"):
                f = self.need(ins[1 - i], sc)
                if zs[i] == 0.0 and isinstance(f, _Full) and f.probe.shape == out_shape:
                    return f  # x ± 0
                if isinstance(f, _Stat) and zs[i] > 0 and prim != "sub":
                    var = _as_var(f)
                    return dataclasses.replace(var, kind="vareps", eps=float(zs[i]),
                                               probe=_bcast(var.probe, out_shape))
                raise _NoMatch
        a, b = self.need(ins[0], sc), self.need(ins[1], sc)
        if prim != "sub" and isinstance(a, _Stat) and isinstance(b, _Stat) and \
                {a.kind, b.kind} == {"lse0", "pg"}:
            lse, shift = (a, b) if a.kind == "lse0" else (b, a)
            return _softmax_family("logsumexp", lse, shift, out_shape)
        if prim != "sub":
            raise _NoMatch
        if isinstance(a, _Full) and isinstance(b, _Stat) and a.kind == "x" and b.kind == "pg":
            if not (a.base is b.base and a.probe.shape == out_shape
                    and (a.mask is None or a.mask == b.mask)
                    and _aligned(a.probe, b, out_shape)):
                raise _NoMatch
            return _Full("xs", a.base, a.probe, b.groups, b.token, a.mask)
        if isinstance(a, _Full) and isinstance(b, _Stat) and a.kind == "xs" and b.kind == "lse0":
            return _softmax_family("log_softmax", b, a, out_shape)
        if isinstance(a, _Full) and isinstance(b, _Stat):
            if not (a.kind == "x" and b.kind == "s1" and b.base is a.base and a.mask is None
                    and b.coef == Fraction(1, b.n) and a.probe.shape == out_shape
                    and _aligned(a.probe, b, out_shape)):
                raise _NoMatch
            return _Full("c", a.base, a.probe, b.groups)
        if isinstance(a, _Stat) and isinstance(b, _Stat):
            if not (a.kind == "s2" and b.kind == "s1sq" and a.base is b.base
                    and np.array_equal(a.groups, b.groups) and a.n == b.n
                    and a.coef == Fraction(1, a.n) and b.coef == Fraction(1, a.n * a.n)
                    and np.array_equal(_bcast(a.probe, out_shape), _bcast(b.probe, out_shape))):
                raise _NoMatch
            return dataclasses.replace(a, kind="var", centred=True,
                                       probe=_bcast(a.probe, out_shape))
        raise _NoMatch

    def _product(self, prim, ins, sc, out_shape):
        fs = [self.form(v, sc) for v in ins]
        if prim == "mul":
            for i in (0, 1):
                f, w = fs[i], self.static(ins[1 - i], sc)
                if isinstance(f, _Full) and f.kind == "e" and w is not None \
                        and f.probe.shape == out_shape and np.issubdtype(w.dtype, np.floating):
                    try:
                        wb = np.broadcast_to(np.asarray(w, np.float64), out_shape)
                    except ValueError:
                        raise _NoMatch from None
                    if not (np.all(np.isfinite(wb)) and np.all(wb >= 0)) or not np.array_equal(
                            np.sort(f.probe.ravel()), np.arange(f.probe.size)):
                        raise _NoMatch
                    weights = _weights(f)
                    weights[f.probe] = weights[f.probe] * wb  # logsumexp(b=): Σ b·e
                    return dataclasses.replace(f, mask=_pack(weights))
        if prim == "div":
            num, den = fs
            one = self.scalar(ins[0], sc)
            c = self.scalar(ins[1], sc)
            if isinstance(den, _Stat) and den.kind == "sd":
                if one == 1.0:
                    return dataclasses.replace(den, kind="inv", probe=_bcast(den.probe, out_shape))
                if isinstance(num, _Full):
                    return _norm(num, den, out_shape)
                raise _NoMatch
            if isinstance(num, _Full) and num.kind == "e" and isinstance(den, _Stat) \
                    and den.kind == "se":
                return _softmax_family("softmax", den, num, out_shape)
            if isinstance(num, _Stat) and num.kind in ("s1", "s2", "c2") and c not in (None, 0.0):
                return dataclasses.replace(num, coef=num.coef / Fraction(c))
            raise _NoMatch
        for i in (0, 1):
            f, g = fs[i], fs[1 - i]
            c = self.scalar(ins[1 - i], sc)
            if isinstance(f, _Stat) and f.kind in ("s1", "s2", "c2", "s1sq") and c is not None:
                if c == 0.0:
                    raise _NoMatch
                return dataclasses.replace(f, coef=f.coef * Fraction(c))
            if isinstance(f, _Stat) and f.kind == "inv":
                if isinstance(g, _Full) and g.base is f.base:
                    return _norm(g, f, out_shape)
                if isinstance(g, _Stat):
                    raise _NoMatch
                other = ins[1 - i]
                value = self.static(other, sc)
                if value is not None:
                    return dataclasses.replace(f, fconsts=(*f.fconsts, value),
                                               probe=_bcast(f.probe, out_shape))
                if sc is not self.root or isinstance(other, jcore.Literal):
                    raise _NoMatch
                return dataclasses.replace(f, fvars=(*f.fvars, other),
                                           probe=_bcast(f.probe, out_shape))
        raise _NoMatch


def _real_dtype(dtype) -> bool:
    try:
        dt = np.dtype(dtype)
    except TypeError:  # extended dtypes (PRNG keys)
        return False
    return dt == np.bool_ or np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)


def _evaluable(eqn) -> bool:
    """An equation the matcher may evaluate: pure (no effects, not a call) and real-valued."""
    return not eqn.effects and eqn.primitive.name not in _CALLS and all(
            _real_dtype(v.aval.dtype) for v in (*eqn.invars, *eqn.outvars)
            if hasattr(v.aval, "dtype"))


def _real(value) -> np.ndarray | None:
    """``value`` as a NumPy array when it is real (bool, integer, float), else None."""
    if not _real_dtype(getattr(value, "dtype", np.asarray(value).dtype)):
        return None
    return np.asarray(value)


def _weights(f) -> np.ndarray:
    """The per-base-entry weights of a masked / weighted value (1 without a mask)."""
    n = f.probe.size if isinstance(f, _Full) else f.groups.size
    return np.ones(n) if f.mask is None else np.frombuffer(f.mask, np.float64).copy()


def _pack(weights: np.ndarray) -> bytes | None:
    return None if np.all(weights == 1.0) else np.asarray(weights, np.float64).tobytes()


def _leaf(var) -> _Full:
    shape = tuple(var.aval.shape)
    return _Full("x", var, np.arange(math.prod(shape)).reshape(shape), None)


def _same_var(a, b) -> bool:
    return not isinstance(a, jcore.Literal) and a is b


def _bcast(probe: np.ndarray, shape) -> np.ndarray:
    if probe.ndim != len(shape) and probe.ndim != 0:
        raise _NoMatch
    try:
        return np.broadcast_to(probe, shape)
    except ValueError:
        raise _NoMatch from None


def _shape_op(prim, params, probe, out_shape) -> np.ndarray:
    if prim in ("convert_element_type", "copy", "copy_p", "stop_gradient"):
        return probe
    if prim == "reshape":
        if params.get("dimensions") is not None:
            raise _NoMatch
        return probe.reshape(out_shape)
    if prim == "transpose":
        return np.transpose(probe, params["permutation"])
    if prim == "squeeze":
        return np.squeeze(probe, tuple(params["dimensions"]))
    if prim == "expand_dims":
        return np.expand_dims(probe, tuple(params["dimensions"])).reshape(out_shape)
    bd = tuple(params["broadcast_dimensions"])
    if list(bd) != sorted(bd) or len(bd) != probe.ndim:
        raise _NoMatch
    shp = [1] * len(out_shape)
    for k, d in enumerate(bd):
        shp[d] = probe.shape[k]
    return _bcast(probe.reshape(shp), out_shape)


def _reduce(f, axes, allow_mask: bool = False) -> _Stat:
    if not (isinstance(f, _Full) and f.kind in ("x", "x2", "c2", "e")):
        raise _NoMatch
    if f.mask is not None and not (allow_mask or f.kind == "e"):
        raise _NoMatch  # only the softmax family's shift and sum accept masked (-inf) entries
    p = f.probe
    if not np.array_equal(np.sort(p.ravel()), np.arange(p.size)):
        raise _NoMatch  # not a permutation of the base entries
    rest = [a for a in range(p.ndim) if a not in axes]
    n = math.prod(p.shape[a] for a in axes)
    if n == 0:
        raise _NoMatch
    rows = np.transpose(p, (*rest, *axes)).reshape(-1, n)
    labels = rows.min(axis=1)
    groups = np.empty(p.size, np.int64)
    groups[rows] = labels[:, None]
    if f.kind in ("c2", "e") and not np.array_equal(groups, f.groups):
        raise _NoMatch  # a sum over other groups than the centring / the shift
    kind = {"x": "s1", "x2": "s2", "c2": "c2", "e": "se"}[f.kind]
    return _Stat(kind, f.base, groups, n, Fraction(1), labels.reshape([p.shape[a] for a in rest]),
                 token=f.token, mask=f.mask)


def _square(f):
    if isinstance(f, _Full) and f.mask is not None:
        raise _NoMatch
    if isinstance(f, _Full) and f.kind in ("x", "c"):
        return dataclasses.replace(f, kind=f.kind + "2")
    if isinstance(f, _Stat) and f.kind == "s1":
        return dataclasses.replace(f, kind="s1sq", coef=f.coef * f.coef)
    raise _NoMatch


def _as_var(f: _Stat) -> _Stat:
    """The statistic as a variance ``k·‖Pc‖²`` (centred) or ``k·Σx²`` (uncentred), ``k > 0``."""
    if f.kind == "var":
        return f
    if f.kind in ("c2", "s2") and f.coef > 0:
        return dataclasses.replace(f, kind="var", centred=f.kind == "c2")
    raise _NoMatch


def _aligned(full_probe, stat: _Stat, out_shape) -> bool:
    """Each entry meets the statistic of its own group."""
    return np.array_equal(stat.groups[full_probe], _bcast(stat.probe, out_shape))


def _norm(num: _Full, inv: _Stat, out_shape) -> Match:
    ok = num.mask is None and num.base is inv.base and num.probe.shape == out_shape \
        and _aligned(num.probe, inv, out_shape)
    if num.kind == "c":
        ok = ok and inv.centred and np.array_equal(num.groups, inv.groups)
    elif num.kind == "x":
        ok = ok and not inv.centred
    else:
        ok = False
    if not ok or not (inv.eps > 0 and math.isfinite(inv.eps)):
        raise _NoMatch
    return Match(num.base, inv.eps, inv.fvars, inv.fconsts, inv.centred, inv.n,
                 "layer_norm" if inv.centred else "rms_norm", 1.0 / math.sqrt(inv.eps))


def _same_token(a, b) -> bool:
    return a == b if isinstance(a, tuple) and isinstance(b, tuple) else a is b


def _softmax_family(kind: str, stat: _Stat, other, out_shape) -> Match:
    """softmax ``e / Σe``, log_softmax ``(x − s) − log Σe`` or logsumexp ``log Σe + s``, with
    ``e = exp(x − s)`` and ``s`` one per-group value: all three equal the shift-free map exactly
    for any finite ``s`` (the shift cancels), so ``s`` itself needs no bound."""
    ok = other.base is stat.base and other.token is not None \
        and _same_token(stat.token, other.token) \
        and (kind == "logsumexp" or other.mask == stat.mask) \
        and np.array_equal(other.groups, stat.groups)
    if kind == "logsumexp":
        ok = ok and np.array_equal(_bcast(other.probe, out_shape), _bcast(stat.probe, out_shape))
        copies = np.bincount(_bcast(stat.probe, out_shape).ravel()).max() if ok else 0
        constant = math.sqrt(float(copies))  # ‖∇ LSE‖₂ = ‖p‖₂ <= 1 per copy of a group's value
    else:
        ok = ok and other.probe.shape == out_shape and _aligned(other.probe, stat, out_shape)
        constant = 0.5 if kind == "softmax" else math.sqrt(stat.n)
    if not ok:
        raise _NoMatch
    return Match(stat.base, 0.0, (), (), False, stat.n, kind, constant)


def find(jaxpr, consts=(), known=None) -> dict[int, Match]:
    """``{equation index: Match}`` for the normalisations in ``jaxpr`` (module docstring).

    ``known`` maps variables of ``jaxpr`` (arguments of a call, constants) to their values at
    this walk (a literal ``ε`` passed into an inner ``jit``, as in ``jax.nn.standardize``)."""
    m = _Matcher(jaxpr, consts, known)
    found = {}
    for i, eqn in enumerate(jaxpr.eqns):
        if eqn.primitive.name in ("mul", "div", "add", "sub", "select_n", *_CALLS) \
                and len(eqn.outvars) == 1:
            try:
                f = m.form(eqn.outvars[0], m.root)
            except RecursionError:  # a very long chain: not matched (the walk decides)
                f = None
            if isinstance(f, Match):
                found[i] = f
    return found


def live_eqns(jaxpr, matches: dict[int, Match]) -> list[bool]:
    """Which equations the outputs need when every matched equation is computed from its base
    (and factors) only; the others are needed only inside recognised normalisations."""
    needed = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    live = [False] * len(jaxpr.eqns)
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        if eqn.effects or any(v in needed for v in eqn.outvars):
            live[i] = True
            if i in matches:
                used = [matches[i].base, *matches[i].factor_vars]
            else:
                used = eqn.invars
            needed |= {v for v in used if not isinstance(v, jcore.Literal)}
    return live
