"""Norms, steepest-ascent directions, projections onto a norm ball ∩ the box, and ball sampling.

Everything works on ONE example (no batch axis) and is a pure function of arrays and static
settings, so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

Conventions: ``x`` is the clean example (any shape, inside the box ``[lo, hi]``); norms are over all
elements of an example; ``lo = hi = None`` means no box. RMSE(v) = ``||v||_2 / sqrt(v.size)`` (the
distortion unit of Szegedy et al. §4.1 and of Woods et al. Algorithm 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NORMS = ("linf", "l2")
# The balls with a projection here: ``NORMS`` and the L1 ball (APGD-L1, FAB-L1, Square-L1,
# AutoAttack L1, FMN). The attacks without an L1 step (FGSM, PGD) accept ``NORMS`` only.
BALL_NORMS = ("linf", "l2", "l1")
L2_PROJECTIONS = ("exact", "clip")
# The random-start distributions of the package (:func:`sample_start`), one per documented choice.
STARTS = ("ball", "surface")

__all__ = [
    "BALL_NORMS",
    "L2_PROJECTIONS",
    "NORMS",
    "clip_box",
    "l0_norm",
    "l1_norm",
    "l2_norm",
    "linf_norm",
    "norm_of",
    "normalize_l2",
    "normalize_rmse",
    "project",
    "project_l1_box",
    "project_l2",
    "project_l2_box",
    "project_linf",
    "project_linf_box",
    "rmse",
    "sample_ball",
    "sample_l1_ball",
    "sample_l2_ball",
    "sample_linf_ball",
    "sample_start",
    "sample_surface",
    "STARTS",
    "steepest_direction",
]


def _check_norm(norm: str, norms: tuple[str, ...] = NORMS) -> None:
    if norm not in norms:
        raise ValueError(f"`norm` must be one of {list(norms)}; got {norm!r}.")


# ----------------------------------------------------------------------------------------------
# Norms and normalised directions
# ----------------------------------------------------------------------------------------------


def l2_norm(v: Array) -> Array:
    """L2 norm of ``v`` over all elements (scalar)."""
    return jnp.sqrt(jnp.sum(jnp.square(v)))


def l1_norm(v: Array) -> Array:
    """L1 norm of ``v`` over all elements (scalar)."""
    return jnp.sum(jnp.abs(v))


def l0_norm(v: Array) -> Array:
    """Number of non-zero elements of ``v`` (scalar, ``v``'s float dtype)."""
    return jnp.sum(v != 0).astype(jnp.result_type(v, jnp.float32))


def norm_of(v: Array, norm: str) -> Array:
    """``||v||_norm`` for ``norm`` in ``"linf"``, ``"l2"``, ``"l1"``, ``"l0"`` (scalar)."""
    _check_norm(norm, BALL_NORMS + ("l0",))
    return {"linf": linf_norm, "l2": l2_norm, "l1": l1_norm, "l0": l0_norm}[norm](v)


def linf_norm(v: Array) -> Array:
    """L-infinity norm of ``v`` over all elements (scalar)."""
    return jnp.max(jnp.abs(v))


def rmse(v: Array) -> Array:
    """Root-mean-square of ``v`` over all elements: ``||v||_2 / sqrt(v.size)`` (scalar)."""
    return jnp.sqrt(jnp.mean(jnp.square(v)))


def normalize_l2(g: Array, eps: float = 1e-12) -> Array:
    """``g / ||g||_2`` (zero stays zero): the steepest-ascent direction of unit L2 norm."""
    return g / jnp.maximum(l2_norm(g), eps)


def normalize_rmse(g: Array, eps: float = 1e-8) -> Array:
    """``g / (eps + RMSE(g))``: Woods et al. Algorithm 1 normalisation (papers.md §2.9)."""
    return g / (eps + rmse(g))


def steepest_direction(g: Array, norm: str) -> Array:
    """Steepest-ascent direction of unit ``norm`` for the gradient ``g`` (shape of ``g``).

    Args:
      g: gradient, any shape.
      norm: ``"linf"`` (``sign(g)``, L-infinity norm 1) or ``"l2"`` (``g / ||g||_2``).

    Returns:
      An array of the shape of ``g``.
    """
    _check_norm(norm)
    return jnp.sign(g) if norm == "linf" else normalize_l2(g)


# ----------------------------------------------------------------------------------------------
# Projections
# ----------------------------------------------------------------------------------------------


def clip_box(x: Array, lo: float | None, hi: float | None) -> Array:
    """``clip(x, lo, hi)``; ``lo = hi = None`` means no box (identity)."""
    if lo is None and hi is None:
        return x
    return jnp.clip(x, lo, hi)


def project_linf(delta: Array, eps: Array) -> Array:
    """Euclidean projection of ``delta`` onto the L-infinity ball of radius ``eps`` (a clip)."""
    return jnp.clip(delta, -eps, eps)


def project_l2(delta: Array, eps: Array) -> Array:
    """Euclidean projection of ``delta`` onto the L2 ball of radius ``eps`` (radial rescale)."""
    n = l2_norm(delta)
    return delta * jnp.where(n > eps, eps / jnp.maximum(n, 1e-30), 1.0)


def project_linf_box(x_adv: Array, x: Array, eps: Array, lo: float | None,
                     hi: float | None) -> Array:
    """Exact Euclidean projection of ``x_adv`` onto ``{z : ||z - x||_inf <= eps} ∩ [lo, hi]``.

    Both sets are coordinate-wise intervals, so the projection is the coordinate-wise clip to
    ``[max(x - eps, lo), min(x + eps, hi)]`` (non-empty when ``x`` is inside the box).
    """
    lower, upper = x - eps, x + eps
    if lo is not None:
        lower = jnp.maximum(lower, lo)
    if hi is not None:
        upper = jnp.minimum(upper, hi)
    return jnp.clip(x_adv, lower, upper)


def _l2_box_scale(v: Array, x: Array, eps: Array, lo: float, hi: float) -> Array:
    """The ``t`` in ``[0, 1]`` of the exact L2 ∩ box projection ``clip(x + t v, lo, hi)``.

    Coordinate ``i`` moves as ``t v_i`` until it reaches its face at ``tau_i = c_i / v_i``
    (``c_i`` the signed distance from ``x_i`` to the face ``v_i`` points to) and then stays at
    ``c_i``, so ``phi(t) = ||clip(x + t v) - x||^2 = t^2 V(t) + C(t)`` with
    ``V(t) = sum_{tau_i > t} v_i^2`` and ``C(t) = sum_{tau_i <= t} c_i^2`` is continuous and
    non-decreasing. The root of ``phi(t) = eps^2`` is found by the active-set iteration
    ``t_{k+1} = sqrt((eps^2 - C(t_k)) / V(t_k))`` from ``t_0 = 0``: the quadratic model with the
    coordinates capped at ``t_k`` over-estimates ``phi`` beyond ``t_k``, so the ``t_k`` increase,
    stay feasible (``phi(t_k) <= eps^2``) and stop, exactly at the root, as soon as no new
    coordinate reaches its face: at most ``d`` passes, in practice 2-3 (each two masked sums).
    """
    v = v.reshape(-1)
    x = x.reshape(-1)
    cap = jnp.where(v > 0, hi - x, lo - x)
    moving = v != 0
    tau = jnp.where(moving, cap / jnp.where(moving, v, 1.0), jnp.inf)
    tau = jnp.maximum(tau, 0.0)  # x on (or numerically past) a face: capped at once
    c2 = jnp.where(moving, jnp.square(cap), 0.0)
    v2 = jnp.square(v)
    eps2 = jnp.square(eps).astype(v.dtype)

    def next_t(t):
        capped = tau <= t
        c_sum = jnp.sum(jnp.where(capped, c2, 0.0))
        v_sum = jnp.sum(jnp.where(capped, 0.0, v2))
        return jnp.sqrt(jnp.maximum(eps2 - c_sum, 0.0) / jnp.maximum(v_sum, 1e-30))

    def cond(state):
        t, t_new, i = state
        return (t_new > t) & (i <= v.size)

    def body(state):
        _, t_new, i = state
        return t_new, next_t(t_new), i + 1

    t0 = jnp.zeros((), v.dtype)
    t, _, _ = jax.lax.while_loop(cond, body, (t0, next_t(t0), jnp.zeros((), jnp.int32)))
    return jnp.clip(t, 0.0, 1.0)


def project_l2_box(x_adv: Array, x: Array, eps: Array, lo: float | None, hi: float | None,
                   *, method: str = "exact") -> Array:
    """Euclidean projection of ``x_adv`` onto ``{z : ||z - x||_2 <= eps} ∩ [lo, hi]``.

    Args:
      x_adv: the point to project, shape of ``x``.
      x: centre of the ball (the clean example), inside the box.
      eps: ball radius (scalar, >= 0, input units).
      lo, hi: the box (``None`` for no box).
      method: ``"exact"`` or ``"clip"``.

        * ``"exact"``: the true projection. With ``v = x_adv - x`` the KKT conditions of
          ``min ||z - x_adv||^2 s.t. ||z - x|| <= eps, lo <= z <= hi`` give
          ``z = clip(x + t v, lo, hi)`` with ``t = 1 / (1 + lambda)`` in ``(0, 1]`` (``lambda``
          the ball's multiplier); ``t`` is found exactly by an active-set iteration that stops
          when no further coordinate reaches its face (2-3 passes of two sums in practice, see
          ``_l2_box_scale``). A final radial rescale (a no-op up to rounding) keeps the result
          inside the ball despite float rounding.
        * ``"clip"``: the common "rescale onto the L2 ball, then clip to the box". Feasible
          (clipping towards ``x``'s box only shrinks ``|z - x|`` coordinate-wise) but not always
          the nearest feasible point.

    Returns:
      The projected point, shape of ``x``.
    """
    if method not in L2_PROJECTIONS:
        raise ValueError(f"`method` must be one of {list(L2_PROJECTIONS)}; got {method!r}.")
    v = x_adv - x
    if method == "clip" or (lo is None and hi is None):
        return clip_box(x + project_l2(v, eps), lo, hi)
    inside = l2_norm(clip_box(x_adv, lo, hi) - x) <= eps
    t = jnp.where(inside, 1.0, _l2_box_scale(v, x, eps, lo, hi)).astype(v.dtype)
    z = clip_box(x + t * v, lo, hi)
    return x + project_l2(z - x, eps)


def project_l1_box(x_adv: Array, x: Array, eps: Array, lo: float | None,
                   hi: float | None) -> Array:
    """Exact Euclidean projection of ``x_adv`` onto ``{z : ||z - x||_1 <= eps} ∩ [lo, hi]``.

    With ``v = x_adv - x`` and ``u_i`` the room of coordinate ``i`` in the box towards
    ``sign(v_i)`` (``hi - x_i`` or ``x_i - lo``; no box: ``|v_i|``), the KKT conditions of
    ``min ||z - x_adv||^2 s.t. ||z - x||_1 <= eps, lo <= z <= hi`` separate per coordinate:
    ``z_i = x_i + sign(v_i) clip(|v_i| - lam, 0, u_i)`` (soft-thresholding, then the box), with
    ``lam = 0`` if that point is inside the ball, else the root of
    ``f(lam) = sum_i clip(|v_i| - lam, 0, u_i) = eps``. ``f`` is piecewise linear and
    non-increasing with breakpoints ``|v_i| - u_i`` (coordinate leaves its face) and ``|v_i|``
    (coordinate reaches 0); the breakpoints are sorted, ``f`` is evaluated at all of them with a
    cumulative sum of the slopes, and the root is interpolated on its piece: exact, no
    iteration, ``O(d log d)`` (the official AutoAttack ``L1_projection`` solves the same
    problem by a bisection over the same sorted breakpoints). A final rescale towards ``x`` (a
    no-op up to rounding; it stays in the box) keeps the result inside the ball.

    Args:
      x_adv: the point to project, shape of ``x``.
      x: centre of the ball (the clean example), inside the box.
      eps: ball radius (scalar, >= 0, input units).
      lo, hi: the box (``None`` for no box).

    Returns:
      The projected point, shape of ``x``.
    """
    shape = x.shape
    v = (x_adv - x).reshape(-1)
    xf = x.reshape(-1)
    av = jnp.abs(v)
    if lo is None and hi is None:
        room = av
    else:
        room = jnp.maximum(jnp.where(v >= 0, hi - xf, xf - lo), 0.0)
    eps = jnp.asarray(eps, v.dtype)
    # Breakpoints: slope of f changes by -1 at |v| - u (a coordinate leaves its face) and by +1
    # at |v| (it reaches 0). Below the smallest one every coordinate sits on its face.
    brk = jnp.concatenate([av - room, av])
    dslope = jnp.concatenate([jnp.ones_like(av), -jnp.ones_like(av)])
    order = jnp.argsort(brk)
    bs, ds = brk[order], dslope[order]
    active = jnp.cumsum(ds)                       # coordinates moving with lam on (b_j, b_j+1)
    widths = jnp.diff(bs)
    f_at = jnp.sum(room) - jnp.concatenate(
        [jnp.zeros((1,), v.dtype), jnp.cumsum(active[:-1] * widths)])   # f(b_j), non-increasing
    j = jnp.clip(jnp.sum(f_at > eps) - 1, 0, bs.shape[0] - 1)  # root on [b_j, b_j+1]
    lam = bs[j] + (f_at[j] - eps) / jnp.maximum(active[j], 1.0)
    lam = jnp.maximum(lam, 0.0)
    d = jnp.sign(v) * jnp.clip(av - lam, 0.0, room)
    inside = jnp.sum(jnp.minimum(av, room)) <= eps
    d = jnp.where(inside, jnp.sign(v) * jnp.minimum(av, room), d)
    size = jnp.sum(jnp.abs(d))
    d = d * jnp.where(size > eps, eps / jnp.maximum(size, 1e-30), 1.0)
    return x + d.reshape(shape)


def project(x_adv: Array, x: Array, eps: Array, norm: str, lo: float | None,
            hi: float | None, *, l2_method: str = "exact") -> Array:
    """Projection onto the ``norm`` ball of radius ``eps`` around ``x`` intersected with the box.

    ``"linf"``: :func:`project_linf_box` (exact); ``"l2"``: :func:`project_l2_box` with
    ``method=l2_method`` (``"exact"`` or ``"clip"``); ``"l1"``: :func:`project_l1_box` (exact).
    """
    _check_norm(norm, BALL_NORMS)
    if norm == "linf":
        return project_linf_box(x_adv, x, eps, lo, hi)
    if norm == "l1":
        return project_l1_box(x_adv, x, eps, lo, hi)
    return project_l2_box(x_adv, x, eps, lo, hi, method=l2_method)


# ----------------------------------------------------------------------------------------------
# Random starts
# ----------------------------------------------------------------------------------------------


def sample_linf_ball(key: Array, shape, eps: Array, dtype=jnp.float32) -> Array:
    """A point uniform in the L-infinity ball of radius ``eps`` (each coordinate U[-eps, eps])."""
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * eps


def sample_l2_ball(key: Array, shape, eps: Array, dtype=jnp.float32) -> Array:
    """A point uniform in the L2 ball of radius ``eps`` in ``d = prod(shape)`` dimensions.

    Direction: a normalised standard Gaussian (uniform on the sphere); radius ``eps * U^(1/d)``,
    ``U ~ U[0, 1]``, which makes the point uniform in volume.
    """
    k_dir, k_rad = jax.random.split(key)
    g = jax.random.normal(k_dir, shape, dtype)
    d = int(np.prod(shape)) if len(shape) else 1
    u = jax.random.uniform(k_rad, (), dtype)
    return normalize_l2(g) * eps * u ** (1.0 / d)


def sample_l1_ball(key: Array, shape, eps: Array, dtype=jnp.float32) -> Array:
    """A point uniform in the L1 ball of radius ``eps`` in ``d = prod(shape)`` dimensions.

    Direction: independent Laplace coordinates normalised to L1 norm 1 (uniform on the L1
    sphere); radius ``eps * U^(1/d)`` (uniform in volume).
    """
    k_dir, k_rad = jax.random.split(key)
    g = jax.random.laplace(k_dir, shape, dtype)
    d = int(np.prod(shape)) if len(shape) else 1
    u = jax.random.uniform(k_rad, (), dtype)
    return g / jnp.maximum(l1_norm(g), 1e-12) * eps * u ** (1.0 / d)


def sample_ball(key: Array, shape, eps: Array, norm: str, dtype=jnp.float32) -> Array:
    """Uniform sample in the ``norm`` ball of radius ``eps`` (shape ``shape``)."""
    _check_norm(norm, BALL_NORMS)
    if norm == "linf":
        return sample_linf_ball(key, shape, eps, dtype)
    if norm == "l1":
        return sample_l1_ball(key, shape, eps, dtype)
    return sample_l2_ball(key, shape, eps, dtype)


def sample_surface(key: Array, shape, eps: Array, norm: str, dtype=jnp.float32) -> Array:
    """The official AutoAttack start (``autopgd_base.attack_single_run``, FAB's restarts): a point
    at ``norm``-distance exactly ``eps``.

    L2: ``eps * g / ||g||_2`` with ``g`` standard Gaussian (uniform on the sphere). L-infinity:
    ``eps * t / max|t|`` with ``t`` uniform in ``[-1, 1]^d`` (a uniform cube point rescaled so
    that its largest coordinate touches the cube's surface). L1 (FAB-L1's restart):
    ``eps * g / ||g||_1`` with ``g`` standard Gaussian.
    """
    _check_norm(norm, BALL_NORMS)
    if norm == "l1":
        g = jax.random.normal(key, shape, dtype)
        return eps * g / jnp.maximum(l1_norm(g), 1e-12)
    if norm == "linf":
        t = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
        return eps * t / jnp.maximum(jnp.max(jnp.abs(t)), 1e-12)
    return eps * normalize_l2(jax.random.normal(key, shape, dtype))


def sample_start(key: Array, shape, eps: Array, norm: str, start: str = "ball",
                 dtype=jnp.float32) -> Array:
    """A random start offset of shape ``shape`` for a ``norm`` ball of radius ``eps``.

    Args:
      start: ``"ball"`` (uniform in the ball, :func:`sample_ball`; PGD, the public ``apgd``) or
        ``"surface"`` (at distance ``eps``, :func:`sample_surface`; the AutoAttack stages and
        FAB's restarts, as in the official code).

    Returns:
      The offset (add it to ``x``, then project onto the ball ∩ box).
    """
    if start not in STARTS:
        raise ValueError(f"`start` must be one of {list(STARTS)}; got {start!r}.")
    if start == "ball":
        return sample_ball(key, shape, eps, norm, dtype)
    return sample_surface(key, shape, eps, norm, dtype)
