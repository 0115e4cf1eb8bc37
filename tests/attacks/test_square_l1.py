"""Square-L1 (the official AutoAttack L1 step): the official code's own start and proposal on the
same inputs and draws, the L1 ball ∩ box over many random proposals, the closed-form mass of a
one-channel proposal, and a linear model broken above its closed-form minimal L1 distance."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import projections, square
from advjax.attacks._boundary import budget_slack
from advjax.attacks.square import L1_RADIUS_FACTOR, eta_window, l1_proposal, l1_start
from tests.attacks._linear_truth import min_l1_distance

FIXTURE = Path(__file__).with_name("square_l1_official.json")
_proposal = jax.jit(l1_proposal, static_argnums=(10, 11))
_start = jax.jit(l1_start, static_argnums=(3, 4))
_eta = jax.jit(eta_window, static_argnums=(0, 1, 6))


def _official_cases():
    return json.loads(FIXTURE.read_text())["cases"]


@pytest.mark.parametrize("case", _official_cases(), ids=lambda c: c["name"])
def test_start_and_proposal_equal_the_official_code(case):
    # Truth: the official autoattack/square.py (norm='L1') run by
    # benchmarks/square_l1_official_check.py with its draws replaced by these (start: the
    # transposes and signs l2_init draws from key(seed); proposal: the stored windows, transpose
    # and signs), its start and first proposal stored in the fixture. Both sides are float32 and
    # project with different algorithms (official: bisection over the sorted breakpoints; here:
    # the sorted breakpoints' cumulative sum), so the thresholds differ by rounding: measured at
    # most 1.2e-5 on a 28x28 image of L1 mass 5 (sums over 1568 breakpoints); tolerance 5e-5,
    # far below any rule change (a wrong window scale or a skipped projection moves pixels by
    # 1e-2 and more).
    x = jnp.asarray(case["x"], jnp.float32)
    eps = jnp.float32(case["eps"])
    start = _start(jax.random.key(case["seed"]), x, eps, 0.0, 1.0)
    np.testing.assert_allclose(start, case["official_start"], atol=5e-5, rtol=0)
    dr = case["draws"]
    prop = _proposal(x, jnp.asarray(case["official_start"], jnp.float32), eps, jnp.int32(dr["s"]),
                     jnp.int32(dr["vh"]), jnp.int32(dr["vw"]), jnp.int32(dr["vh2"]),
                     jnp.int32(dr["vw2"]), jnp.bool_(dr["transpose"]),
                     jnp.asarray(dr["signs"], jnp.float32), 0.0, 1.0)
    np.testing.assert_allclose(prop, case["official_proposal"], atol=5e-5, rtol=0)


def test_l1_pattern_is_the_official_rings():
    # Official eta_rectangles / eta for L1: rings of weight 1/(k+1)^4 around each block's centre,
    # each block L1-normalised, bottom block negated, the whole L1-normalised (written out here
    # from the official loop).
    def rect(a, b):
        out = np.zeros((a, b))
        for k in range(max(a // 2, b // 2) + 1):
            out[max(a // 2 - k, 0):a // 2 + k + 1, max(b // 2 - k, 0):b // 2 + k + 1] += \
                1 / (k + 1) ** 4
        return out / np.abs(out).sum()

    for s in (3, 4, 7, 25):
        ref = np.concatenate([rect(s // 2, s), -rect(s - s // 2, s)])
        ref /= np.abs(ref).sum()
        got = np.asarray(_eta(26, 27, 1, 0, jnp.int32(s), True, "l1"))
        # float32 against float64: 1e-7 absolute is ~1 ulp of the centre weight (~0.3 for s = 3)
        # and 1e-4 relative on the outermost ring at s = 25 (weights ~1e-5 after normalising).
        np.testing.assert_allclose(got[1:1 + s, :s], ref.T, atol=1e-7, rtol=1e-4)
        assert np.count_nonzero(got) == s * s


def _random_proposals(n, h, w, c, lo, hi, seed=0):
    """``n`` proposals from random feasible points (some on the ball's surface, some inside, some
    pixels on the box faces), random sides, windows, transposes and signs, and random radii."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, h, w, c))
    x[rng.uniform(size=x.shape) < 0.3] = 0.0
    eps = rng.uniform(0.05, 8.0, n)
    raw = x + rng.laplace(0, 0.3, x.shape) * (rng.uniform(size=x.shape) < 0.5)
    proj = jax.vmap(lambda a, b, e: projections.project_l1_box(a, b, e, lo, hi))
    x_best = np.asarray(proj(jnp.asarray(raw, jnp.float32), jnp.asarray(x, jnp.float32),
                             jnp.asarray(eps * rng.uniform(0.2, 1.0, n), jnp.float32)))
    s = rng.integers(3, min(h, w) + 1, n)
    draws = [jnp.asarray(s, jnp.int32)] + [
        jnp.asarray(rng.integers(0, np.maximum(lim - s, 1)), jnp.int32) for lim in (h, w, h, w)]
    trans = jnp.asarray(rng.integers(0, 2, n).astype(bool))
    signs = jnp.asarray(rng.choice([-1.0, 1.0], (n, c)), jnp.float32)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(x_best, jnp.float32),
            jnp.asarray(eps, jnp.float32), draws, trans, signs)


@pytest.mark.parametrize("box", [(0.0, 1.0), (None, None)])
def test_every_proposal_stays_in_the_l1_ball_and_the_box(box):
    # Property over 256 random proposals (3 channels, so the window rescale alone, C times the
    # free budget, exceeds the ball): the projection must bring each into the ball (radius
    # eps (1 - 1e-6)) and the box. Tolerance: the ball of radius eps plus the boundary's float
    # slack (budget_slack, the check every attack result passes), the box exactly.
    lo, hi = box
    x, x_best, eps, draws, trans, signs = _random_proposals(256, 9, 8, 3, lo, hi)
    props = jax.jit(jax.vmap(lambda *a: l1_proposal(*a, lo, hi)))(
        x, x_best, eps, *draws, trans, signs)
    l1 = np.abs(np.asarray(props - x, np.float64)).reshape(256, -1).sum(1)
    slack = np.asarray(jax.vmap(lambda z: budget_slack(z, "l1"))(x))
    assert np.all(l1 <= np.asarray(eps) + slack), (l1 - np.asarray(eps)).max()
    if lo is not None:
        assert float(props.min()) >= lo and float(props.max()) <= hi
    # The proposals use the budget: most end on the sphere (the official rule fills it).
    assert np.mean(l1 >= 0.999 * np.asarray(eps) * L1_RADIUS_FACTOR) > 0.5


def test_one_channel_proposal_has_the_closed_form_mass():
    # One channel, no box: before the projection the official rule gives window 1 the L1 mass
    # max(eps - ||d||_1, 0) + (mass of d in windows 1 and 2), zeroes window 2 outside window 1 and
    # leaves the rest of d as it was, so the new perturbation has mass exactly max(eps, ||d||_1)
    # = eps; the projection onto radius eps (1 - 1e-6) then moves each coordinate by at most
    # 1e-6 eps. Window 1's content is the pattern plus the old content normalised, scaled.
    rng = np.random.default_rng(3)
    h, w = 12, 10
    x = jnp.asarray(rng.uniform(0, 1, (h, w, 1)), jnp.float32)
    d = rng.laplace(0, 0.05, (h, w, 1))
    eps = float(np.abs(d).sum()) * 1.7                      # free budget: 0.7 of the mass
    s, vh, vw, vh2, vw2 = 5, 2, 1, 6, 4
    prop = np.asarray(_proposal(x, x + jnp.asarray(d, jnp.float32), jnp.float32(eps),
                                jnp.int32(s), jnp.int32(vh), jnp.int32(vw), jnp.int32(vh2),
                                jnp.int32(vw2), jnp.bool_(False), jnp.ones((1,)), None, None))
    new = prop - np.asarray(x)
    win1 = np.zeros((h, w, 1), bool)
    win1[vh:vh + s, vw:vw + s] = True
    win2 = np.zeros((h, w, 1), bool)
    win2[vh2:vh2 + s, vw2:vw2 + s] = True
    atol = 2e-6 * eps                                       # the projection's 1e-6 eps, rounding
    np.testing.assert_allclose(np.abs(new).sum(), eps * L1_RADIUS_FACTOR, rtol=1e-5)
    outside = ~(win1 | win2)
    np.testing.assert_allclose(new[outside], d[outside], atol=atol)
    np.testing.assert_allclose(new[win2 & ~win1], 0.0, atol=atol)
    pattern = np.asarray(_eta(h, w, vh, vw, jnp.int32(s), False, "l1"))[..., None]
    direction = pattern + np.where(win1, d, 0) / np.abs(np.where(win1, d, 0)).sum()
    mass = (eps - np.abs(d).sum()) + np.abs(np.where(win1 | win2, d, 0)).sum()
    expect = direction / np.abs(direction).sum() * mass
    np.testing.assert_allclose(new[win1], expect[win1], atol=atol)


def test_square_l1_breaks_a_linear_model_above_its_minimal_l1_distance():
    # Binary linear model on 6x6 images in the box: the minimal L1 distance d to the boundary is
    # the greedy knapsack (independent truth). Below d (0.98 d) no point of the ball is
    # misclassified, so a success would be a budget violation; at 3 d the random search finds one
    # for every image within 500 queries (measured: 75-292 queries on these 8 images, while at
    # 1.5 d it finds none: its windows spread mass over >= 9 pixels, the optimum over ~1-3).
    rng = np.random.default_rng(0)
    n, h = 8, 6
    w = rng.normal(size=h * h)
    near = rng.uniform(0.05, 0.3, (n, h * h))
    xs = np.where(w > 0, near, 1 - near)
    c = 0.5 - (xs @ w).min()
    d_min = np.array([min_l1_distance(w, x, m) for x, m in zip(xs, xs @ w + c, strict=True)])
    wj = jnp.asarray(w, jnp.float32)

    def fn(z):
        return jnp.stack([z.reshape(-1) @ wj + c, jnp.zeros(())])

    attack = jax.jit(jax.vmap(square(fn, norm="l1", queries=500, layout="HWC")))
    x32 = jnp.asarray(np.tile(xs.reshape(n, h, h, 1), (2, 1, 1, 1)), jnp.float32)
    eps = jnp.asarray(np.concatenate([0.98 * d_min, 3.0 * d_min]), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2 * n)
    r = attack(x32, jnp.zeros(2 * n, jnp.int32), eps=eps, key=keys)
    success = np.asarray(r.success)
    assert not success[:n].any()
    assert success[n:].all()
    l1 = np.abs(np.asarray(r.x_adv, np.float64) - np.asarray(x32)).reshape(2 * n, -1).sum(1)
    assert np.all(l1 <= np.asarray(eps) * (1 + 1e-5))
    q = np.asarray(r.aux["queries"])
    assert np.all(q[:n] == 501) and np.all(q[n:] < 501)
