"""Square Attack (Andriushchenko et al. 2020): score-based random search, L-infinity, L2 and L1, for
ONE example, forward passes only.

Each query changes one random square window of side ``s`` (the paper's schedule: ``s`` shrinks as
the query count grows) and keeps the change when the margin loss ``z_y - max_{j != y} z_j``
decreases; the search stops as soon as the example is misclassified (per example; a batch stops
when all of its examples have stopped). The L1 step is the official AutoAttack one
(``autoattack/square.py``, ``norm='L1'``; not in the paper): the L2 step's window moves with a
``1/(k+1)^4`` ring pattern, L1 masses, and the L1 ball ∩ box projection
(:func:`l1_proposal`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, passes, projections
from advjax.attacks._restarts import best_of_runs
from advjax.attacks.result import AttackResult

Array = jax.Array

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(i: Array, p_init: float, n_queries: int, rescale: bool) -> Array:
    """Fraction ``p`` of pixels changed at query ``i`` (the paper's piecewise-constant schedule,
    halved at queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10 000-query budget;
    ``rescale=True`` maps ``i`` onto that budget first, AutoAttack uses ``rescale=False``)."""
    it = (i * 10000) // n_queries if rescale else i
    halvings = sum((it > t).astype(jnp.int32) for t in _SCHEDULE)
    return p_init / (2.0 ** halvings)


def _side(p: Array, n_pixels: int, min_side: int, max_side: int, odd: bool) -> Array:
    s = jnp.maximum(jnp.round(jnp.sqrt(p * n_pixels)).astype(jnp.int32), min_side)
    if odd:
        s = s + (s % 2 == 0)
    return jnp.minimum(s, max_side)


def _window(h: int, w: int, vh: Array, vw: Array, s: Array) -> Array:
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    return (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)


def eta_window(h: int, w: int, vh: Array, vw: Array, s: Array, transpose: Array,
               norm: str = "l2") -> Array:
    """The L2 (or L1) Square Attack's window pattern, placed at ``(vh, vw)`` in an ``(h, w)``
    image.

    Within the ``s x s`` window: the top ``s // 2`` rows hold the "rectangles" pattern
    ``sum_{k >= max(|i - a//2|, |j - s//2|)}^{k_max} 1 / (k + 1)^q`` of an ``a x s`` block
    (``a = s // 2``, ``k_max = max(a // 2, s // 2)``), the bottom rows minus the same pattern of
    an ``(s - a) x s`` block; each block has unit norm, the whole window then unit norm;
    ``transpose`` swaps rows and columns. Zero outside the window. ``norm="l2"``: ``q = 2`` and
    L2 norms (the paper); ``norm="l1"``: ``q = 4`` and L1 norms (the official code's
    ``eta_rectangles`` / ``eta`` for ``norm='L1'``; each block then holds mass 1/2).
    """
    rows = jnp.arange(h)[:, None] - vh
    cols = jnp.arange(w)[None, :] - vw
    r = jnp.where(transpose, cols, rows)
    q = jnp.where(transpose, rows, cols)
    inside = (rows >= 0) & (rows < s) & (cols >= 0) & (cols < s)
    a = s // 2
    top = r < a
    i = jnp.where(top, r, r - a)
    height = jnp.where(top, a, s - a)
    rho = jnp.maximum(jnp.abs(i - height // 2), jnp.abs(q - s // 2))
    k_max = jnp.maximum(height // 2, s // 2)
    if norm == "l1":
        # Tail sums t[n] = sum_{k >= n} 1/(k+1)^4, smallest terms first: the outer rings'
        # weights (1/15^4 ~ 2e-5 at s = 28) are below the rounding of a float32 prefix sum.
        terms = 1.0 / jnp.arange(1, h + w + 3) ** 4
        tail = jnp.concatenate([jnp.cumsum(terms[::-1])[::-1], jnp.zeros(1)])
        ring = tail[jnp.clip(rho, 0, h + w + 2)] - tail[jnp.clip(k_max + 1, 0, h + w + 2)]
    else:
        table = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1, h + w + 3) ** 2)])
        ring = table[jnp.clip(k_max + 1, 0, h + w + 2)] - table[jnp.clip(rho, 0, h + w + 2)]
    value = jnp.where(inside & (rho <= k_max), ring, 0.0)

    def size(v):
        return jnp.sum(jnp.abs(v)) if norm == "l1" else jnp.sqrt(jnp.sum(v ** 2))

    n_top = size(jnp.where(top & inside, value, 0.0))
    n_bot = size(jnp.where(~top & inside, value, 0.0))
    value = jnp.where(top, value / jnp.maximum(n_top, 1e-12), -value / jnp.maximum(n_bot, 1e-12))
    return value / jnp.maximum(size(value), 1e-12)


def l2_init(key: Array, h: int, w: int, c: int, norm: str = "l2") -> Array:
    """The L2 (or L1) Square Attack's initial direction ``(h, w, c)`` (not yet normalised or
    projected): a grid of disjoint ``s0 x s0`` windows (``s0 = max(h // 5, 1)``, starting at
    ``sp + i * s0`` with ``sp = (h - 5 s0) // 2``), window ``n`` (row-major) holding
    :func:`eta_window` (of ``norm``) transposed with probability 1/2 and a random sign per
    channel, from ``split(key, n_windows)[n]``. With ``norm="l1"`` every window and channel
    has L1 mass 1 (the official L1 start, projected onto the ball by the caller).

    The windows are built by one ``vmap`` (one copy in the program, not one per window: a
    Python loop here unrolled 25 copies and made the L2 program ~5x the L-infinity one to
    compile); they are disjoint, so their sum is exact in any order.
    """
    s0 = max(h // 5, 1)
    sp = (h - s0 * 5) // 2
    starts_h = [sp + i * s0 for i in range(h // s0) if sp + i * s0 < h]
    starts_w = [sp + j * s0 for j in range(w // s0) if sp + j * s0 < w]
    vh = jnp.repeat(jnp.asarray(starts_h, jnp.int32), len(starts_w))
    vw = jnp.tile(jnp.asarray(starts_w, jnp.int32), len(starts_h))
    keys = jax.random.split(key, len(starts_h) * len(starts_w))

    def one(k, a, b):
        k_t, k_s = jax.random.split(k)
        pattern = eta_window(h, w, a, b, jnp.int32(s0), jax.random.bernoulli(k_t), norm)
        return pattern[:, :, None] * _signs(k_s, (c,))

    return jnp.sum(jax.vmap(one)(keys, vh, vw), axis=0)


def _signs(key: Array, shape) -> Array:
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


# The official L1 branch projects onto a ball of radius eps (1 - 1e-6), a hair inside eps, so
# that rounding never puts a point outside the budget.
L1_RADIUS_FACTOR = 1.0 - 1e-6


def l1_start(key: Array, x: Array, eps: Array, lo: float | None, hi: float | None) -> Array:
    """The official Square-L1 starting point for ONE image ``x (H, W, C)``: the grid of L1
    windows :func:`l2_init` (``norm="l1"``; mass 1 per window and channel, NOT rescaled to
    ``eps``) added to ``x``, then projected onto ``{z : ||z - x||_1 <= eps (1 - 1e-6)} ∩ [lo,
    hi]`` (official: ``x + delta_init + L1_projection(x, delta_init, eps * (1 - 1e-6))``)."""
    h, w, c = x.shape
    delta = l2_init(key, h, w, c, "l1").astype(x.dtype)
    return projections.project_l1_box(x + delta, x, eps * L1_RADIUS_FACTOR, lo, hi)


def l1_proposal(x: Array, x_best: Array, eps: Array, s: Array, vh: Array, vw: Array,
                vh2: Array, vw2: Array, transpose: Array, signs: Array, lo: float | None,
                hi: float | None) -> Array:
    """One Square-L1 proposal (official ``autoattack/square.py``, ``norm='L1'``), given its
    random draws, for ONE image.

    With ``d = x_best - x``, window 1 (side ``s`` at ``(vh, vw)``) and window 2 (at
    ``(vh2, vw2)``), per channel ``ch``: ``m1_ch`` the L1 mass of ``d`` in window 1,
    ``mw_ch`` its mass in the union of the two windows, ``M = ||d||_1`` (all channels). The new
    window-1 content is ``eta * sign_ch + d_w1 / (1e-12 + m1_ch)`` (``eta`` the L1 pattern
    :func:`eta_window`, transposed if ``transpose``) rescaled to L1 mass
    ``(max(eps - M, 0) / C + mw_ch) * C`` per channel (the official rule, factor ``C``
    included); window 2 is zeroed, window 1 set to it, and the result projected onto
    ``{z : ||z - x||_1 <= eps (1 - 1e-6)} ∩ [lo, hi]``. The window rescale alone can exceed the
    budget (mass ``C`` times the free budget); the projection is what keeps the point feasible.

    Args:
      x: the clean image ``(H, W, C)``, inside the box.
      x_best: the current point ``(H, W, C)``.
      eps: L1 radius (scalar, input units).
      s: window side (int scalar, ``3 <= s <= min(H, W)``).
      vh, vw, vh2, vw2: top-left corners of windows 1 and 2 (int scalars).
      transpose: bool scalar, the pattern is transposed.
      signs: ``(C,)`` of ``+-1``, the pattern's sign per channel.
      lo, hi: the box (``None``: no box).

    Returns:
      The proposed point ``(H, W, C)``, inside the ball of radius ``eps (1 - 1e-6)`` and the box.
    """
    h, w, c = x.shape
    win1 = _window(h, w, vh, vw, s)[:, :, None]
    win2 = _window(h, w, vh2, vw2, s)[:, :, None]
    d = x_best - x
    ad = jnp.abs(d)
    m_win1 = jnp.sum(jnp.where(win1, ad, 0.0), axis=(0, 1))                      # (C,)
    m_image = jnp.sum(ad)
    m_windows = jnp.sum(jnp.where(win1 | win2, ad, 0.0), axis=(0, 1))            # (C,)
    pattern = eta_window(h, w, vh, vw, s, transpose, "l1")[:, :, None]
    new = pattern * signs.astype(x.dtype) + jnp.where(win1, d, 0.0) / (1e-12 + m_win1)
    m_new = jnp.sum(jnp.abs(new), axis=(0, 1))
    mass = (jnp.maximum(eps - m_image, 0.0) / c + m_windows) * c
    new = new / (1e-12 + m_new) * mass
    d = jnp.where(win2, 0.0, d)
    d = jnp.where(win1, new, d)
    return projections.project_l1_box(x + d, x, eps * L1_RADIUS_FACTOR, lo, hi)


def square_search(logits_fn: Callable[[Array], Array], x: Array, label: Array, eps: Array,
                  key: Array, *, norm: str, n_queries: int, p_init: float, lo: float | None,
                  hi: float | None, rescale_schedule: bool = False,
                  active: Array | bool = True) -> tuple[Array, Array, Array]:
    """Square Attack on ONE image ``x`` of shape ``(H, W, C)``, ``norm`` ``"linf"``, ``"l2"``
    or ``"l1"`` (ball of radius ``eps``; L1: the official code's radius ``eps (1 - 1e-6)``).

    Returns:
      ``(x_best, success, passes)``: the point of smallest margin found (the first
      misclassified one once found), whether it is misclassified, and the model passes spent
      (:mod:`advjax.attacks.passes`): ``[queries, 0]``, the queries including the initial one,
      ``[0, 0]`` when not ``active``.
    """
    h, w, c = x.shape
    n_pixels = h * w

    def clip(z):
        return projections.clip_box(z, lo, hi)

    def score(z):
        return -losses.margin_loss(logits_fn(z), label)

    k_init, k_loop = jax.random.split(key)
    if norm == "linf":
        # Vertical stripes of +-eps (one sign per column and channel).
        x_best = clip(x + eps * _signs(k_init, (1, w, c)).astype(x.dtype))
    elif norm == "l1":
        x_best = l1_start(k_init, x, eps, lo, hi)
    else:
        x_best = clip(x + eps * projections.normalize_l2(l2_init(k_init, h, w, c)).astype(
            x.dtype))
    active = jnp.asarray(active, bool)
    # The start's query runs only for an example being attacked (its passes say so; under vmap
    # both branches run for the batch, uncounted); an inactive one keeps margin +inf.
    m0 = jax.lax.cond(active, score, lambda z: jnp.full((), jnp.inf, z.dtype), x_best)

    def cond(st):
        return (st["i"] < n_queries) & (st["margin"] > 0) & active

    def body(st):
        i = st["i"]
        kk = jax.random.fold_in(k_loop, i)
        k1, k2, k3, k4, k5, k6 = jax.random.split(kk, 6)
        p = p_schedule(i, p_init, n_queries, rescale_schedule)
        xb = st["x"]
        if norm == "linf":
            s = _side(p, n_pixels, 1, min(h, w), odd=False)
            vh = jax.random.randint(k1, (), 0, h - s + 1)
            vw = jax.random.randint(k2, (), 0, w - s + 1)
            win = _window(h, w, vh, vw, s)[:, :, None]
            x_new = jnp.where(win, xb + 2.0 * eps * _signs(k3, (c,)).astype(x.dtype), xb)
            x_new = clip(jnp.clip(x_new, x - eps, x + eps))
        elif norm == "l1":
            s = _side(p, n_pixels, 3, min(h, w), odd=True)
            # The official windows: random_int(0, h - s) = floor(U (h - s)), in [0, h - s)
            # (the last position is never drawn; 0 when s = h).
            vh = jax.random.randint(k1, (), 0, jnp.maximum(h - s, 1))
            vw = jax.random.randint(k2, (), 0, jnp.maximum(w - s, 1))
            vh2 = jax.random.randint(k3, (), 0, jnp.maximum(h - s, 1))
            vw2 = jax.random.randint(k4, (), 0, jnp.maximum(w - s, 1))
            x_new = l1_proposal(x, xb, eps, s, vh, vw, vh2, vw2, jax.random.bernoulli(k5),
                                _signs(k6, (c,)), lo, hi)
        else:
            s = _side(p, n_pixels, 3, min(h, w), odd=True)
            vh = jax.random.randint(k1, (), 0, h - s + 1)
            vw = jax.random.randint(k2, (), 0, w - s + 1)
            vh2 = jax.random.randint(k3, (), 0, h - s + 1)
            vw2 = jax.random.randint(k4, (), 0, w - s + 1)
            win1 = _window(h, w, vh, vw, s)[:, :, None]
            win2 = _window(h, w, vh2, vw2, s)[:, :, None]
            d = xb - x
            n_win1 = jnp.sqrt(jnp.sum(jnp.where(win1, d * d, 0.0), axis=(0, 1)))      # (C,)
            n_image = jnp.sqrt(jnp.sum(d * d))
            n_windows = jnp.sqrt(jnp.sum(jnp.where(win1 | win2, d * d, 0.0), axis=(0, 1)))
            pattern = eta_window(h, w, vh, vw, s, jax.random.bernoulli(k5))[:, :, None]
            new = pattern * _signs(k6, (c,)) + jnp.where(win1, d, 0.0) / (1e-12 + n_win1)
            n_new = jnp.sqrt(jnp.sum(new * new, axis=(0, 1)))
            scale = jnp.sqrt(jnp.maximum(eps ** 2 - n_image ** 2, 0.0) / c + n_windows ** 2)
            new = new / (1e-12 + n_new) * scale
            d = jnp.where(win2, 0.0, d)
            d = jnp.where(win1, new, d)
            x_new = clip(x + eps * d / (1e-12 + jnp.sqrt(jnp.sum(d * d))))
        m_new = score(x_new)
        take = (m_new < st["margin"]) | (m_new <= 0)
        return dict(i=i + 1, x=jnp.where(take, x_new, xb), margin=jnp.where(take, m_new,
                                                                         st["margin"]))

    st = jax.lax.while_loop(cond, body, dict(i=jnp.zeros((), jnp.int32), x=x_best, margin=m0))
    return (st["x"], (st["margin"] <= 0) & active,
            passes.gated(active, passes.count(forward=st["i"] + 1)))


def square(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    n_restarts: int = 1,
    rescale_schedule: bool = False,
    layout: str | None = None,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """Square Attack (Andriushchenko et al. 2020, score-based; no gradients).

    Args:
      logits_fn: per-example ``x (H, W, C) -> logits (K,)``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (the official AutoAttack L1 step, :func:`l1_proposal`).
      queries: model queries per restart (5000 in AutoAttack).
      p_init: initial fraction of pixels per square (0.8 in AutoAttack).
      n_restarts: independent searches; later ones run only while the example is robust.
      rescale_schedule: map the square-size schedule onto ``queries`` (the paper's schedule is
        for 10 000 queries; AutoAttack does not rescale).
      layout: ``"HWC"`` or ``"CHW"``: which axes of ``x`` are the image rows, columns and
        channels (the squares are spatial windows, shared by all channels). ``None`` infers it
        only when unambiguous (:func:`image_layout`) and refuses other images.
      lo, hi: the box.

    Returns:
      ``attack(x, label, *, eps, key) -> AttackResult``; ``aux["queries"]`` counts the model
      queries spent.
    """
    _checks.check_choice(norm, "norm", projections.BALL_NORMS)
    _checks.check_positive_int(queries, "queries")
    _checks.check_positive_int(n_restarts, "n_restarts")
    p_init = _boundary.check_positive_float(p_init, "p_init")
    if p_init > 1:
        raise ValueError(f"`p_init` must lie in (0, 1]; got {p_init}.")
    lo, hi = _boundary.check_box_setting(lo, hi)

    if layout is not None:
        _checks.check_choice(layout, "layout", LAYOUTS)

    def search(logits_fn, ex: _boundary.Example):
        lay = image_layout(ex.x.shape, layout)
        x = ex.x
        f = logits_fn
        if lay == "CHW":
            x = jnp.moveaxis(x, 0, -1)

            def f(z):
                return logits_fn(jnp.moveaxis(z, -1, 0))

        def run(run_key, run_active):
            z, s, spent = square_search(f, x, ex.label, ex.budget, run_key, norm=norm,
                                        n_queries=queries, p_init=p_init, lo=lo, hi=hi,
                                        rescale_schedule=rescale_schedule, active=run_active)
            return z, s, jnp.zeros((), x.dtype), spent

        keys = _boundary.example_keys(ex.key, n_restarts)
        x_adv, _, _, used = best_of_runs(run, keys, x, (passes.zero(),),
                                         rule="first_success", accumulate=(3,))
        if lay == "CHW":
            x_adv = jnp.moveaxis(x_adv, -1, 0)
        return x_adv, {"queries": used[passes.FORWARD], "passes": used}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps",
                                 budget_norm=norm, needs_key=True)


LAYOUTS = ("HWC", "CHW")


def image_layout(shape, layout: str | None = None) -> str:
    """The layout of an image of ``shape`` (one example): ``layout`` when given (checked against
    the rank), else inferred only when unambiguous: ``HWC`` when the last axis has 1 or 3
    channels and the first does not, ``CHW`` the other way round. Raises a ``ValueError``
    naming ``layout`` otherwise (a batch, a flat vector, a 3x32x3 image...)."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"`x` must be one image of rank 3 ((H, W, C) or (C, H, W), see "
                         f"`layout`); got shape {shape}.")
    if layout is not None:
        return layout
    last, first = shape[-1] in (1, 3), shape[0] in (1, 3)
    if last and not first:
        return "HWC"
    if first and not last:
        return "CHW"
    raise ValueError(f"`layout` cannot be inferred for an image of shape {shape}: pass "
                     "layout='HWC' or layout='CHW' to square(...).")
