"""Square Attack: closed-form minimal distances of a linear model, the official window pattern,
the schedule, the query budget, forward passes only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.square import eta_window, l2_init, p_schedule, square
from tests.attacks.conftest import linear_min_l2, linear_min_linf, make_linear_problem


@pytest.fixture(scope="module")
def binary():
    return make_linear_problem(seed=1, num_classes=2, n=8)


def _keys(n, seed=0):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_closed_form_distance(binary, norm):
    # Binary linear model, box inactive: no point within eps < d = margin / ||w||_dual can be
    # misclassified (independent truth), so eps = 0.98 d never succeeds; above d the random search
    # must find it (Linf: the vertex eps sign(w) at 1.3 d; L2: within 1.6 d on 4x4 images, where
    # its 3x3-minimum windows are coarse).
    p = binary
    dist = linear_min_linf if norm == "linf" else linear_min_l2
    d = np.array([dist(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    attack = jax.jit(jax.vmap(square(p.logits_fn, norm=norm, queries=600)))
    xs, ys = jnp.asarray(p.xs), jnp.asarray(p.labels)
    factors = np.array([0.98] * 8 + [1.3 if norm == "linf" else 2.0] * 8, np.float32)
    r = attack(jnp.concatenate([xs, xs]), jnp.concatenate([ys, ys]),
               eps=jnp.asarray(np.tile(d, 2) * factors, jnp.float32), key=_keys(16))
    success = np.asarray(r.success)
    assert not success[:8].any()
    assert success[8:].all()
    size = np.asarray(r.linf if norm == "linf" else r.l2)
    assert np.all(size[8:] <= np.tile(d, 2)[8:] * factors[8:] * (1 + 1e-5))
    # Queries: the budget + 1 where it failed, fewer where it succeeded (early stop per example).
    q = np.asarray(r.aux["queries"])
    assert np.all(q[:8] == 601) and np.all(q[8:] < 601)


@pytest.mark.parametrize("s", [3, 5, 6, 7])
def test_window_pattern_matches_the_paper(s):
    # Written out from the definition (Andriushchenko et al. 2020, L2 update, as in the official
    # code): top s//2 rows: rings of weight 1/(k+1)^2 around the block centre, normalised; bottom
    # rows: minus the same for the other block; then the whole window normalised.
    def rect(a, b):
        out = np.zeros((a, b))
        for k in range(max(a // 2, b // 2) + 1):
            out[max(a // 2 - k, 0):a // 2 + k + 1, max(b // 2 - k, 0):b // 2 + k + 1] += \
                1 / (k + 1) ** 2
        return out / np.linalg.norm(out)

    ref = np.concatenate([rect(s // 2, s), -rect(s - s // 2, s)])
    ref /= np.linalg.norm(ref)
    window = jax.jit(eta_window, static_argnums=(0, 1))
    got = np.asarray(window(s + 2, s + 3, 1, 2, jnp.int32(s), False))
    np.testing.assert_allclose(got[1:1 + s, 2:2 + s], ref, atol=1e-6)
    assert np.count_nonzero(got) == np.count_nonzero(ref)
    got_t = np.asarray(window(s, s, 0, 0, jnp.int32(s), True))
    np.testing.assert_allclose(got_t, ref.T, atol=1e-6)


def test_schedule_halves_at_the_published_queries():
    p = [float(p_schedule(jnp.int32(i), 0.8, 5000, False)) for i in (0, 10, 11, 51, 201, 4001)]
    np.testing.assert_allclose(p, [0.8, 0.8, 0.4, 0.2, 0.1, 0.8 / 128])
    # Rescaled: query 2500 of 5000 is query 5000 of the 10 000-query schedule.
    assert float(p_schedule(jnp.int32(2500), 0.8, 5000, True)) == pytest.approx(0.8 / 128)


def test_forward_passes_only_and_invalid_input(binary):
    # A model without a usable gradient (stop_gradient everywhere) is attacked just as well.
    p = binary
    d = np.array([linear_min_linf(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])

    def blind(x):
        return jax.lax.stop_gradient(p.logits_fn(x))

    attack = jax.jit(jax.vmap(square(blind, queries=300)))
    eps = jnp.asarray(2.0 * d, jnp.float32)
    r = attack(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=eps.at[0].set(jnp.nan), key=_keys(8))
    assert np.asarray(r.success)[1:].all()
    assert not bool(r.success[0]) and not bool(r.aux["valid_input"][0])
    assert np.isnan(float(r.linf[0]))
    with pytest.raises(ValueError, match="x"):
        square(blind)(jnp.zeros((16,)), jnp.int32(0), eps=0.1, key=jax.random.key(0))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_side_is_rounded_as_the_official_code(norm):
    # Official square.py: s = max(int(round(sqrt(p * n_features / c))), 1) (L-infinity) or
    # max(..., 3) made odd (L2), capped at min(h, w). 32x32 images and the p schedule from 0.8:
    # sqrt(0.8 * 1024) = 28.6 rounds to 29 (floor: 28), and several later p do the same.
    from advjax.attacks.square import _side

    h = w = 32
    floor_differs = 0
    for halvings in range(10):
        p = 0.8 / 2 ** halvings
        root = np.sqrt(p * h * w)
        s = max(int(round(root)), 1 if norm == "linf" else 3)
        if norm == "l2" and s % 2 == 0:
            s += 1
        s = min(s, min(h, w))
        got = int(_side(jnp.float32(p), h * w, 1 if norm == "linf" else 3, min(h, w),
                        odd=norm == "l2"))
        assert got == s, (p, got, s)
        floor_differs += int(round(root)) != int(np.floor(root))
    assert floor_differs >= 3                   # the cases where flooring would be wrong


def test_layout_is_explicit_or_unambiguous():
    # The same linear model behind a transpose: fed CHW with layout="CHW" it must give exactly
    # the HWC result (the squares are spatial windows over all channels); an image whose layout
    # cannot be told (3 x 4 x 3) is refused, naming `layout`.
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6 * 5 * 3, 4))
    b = rng.normal(size=4) * 0.1

    def hwc_fn(x):
        return x.reshape(-1) @ jnp.asarray(W, jnp.float32) + jnp.asarray(b, jnp.float32)

    def chw_fn(x):
        return hwc_fn(jnp.moveaxis(x, 0, -1))

    xs = jnp.asarray(rng.uniform(0.2, 0.8, size=(6, 6, 5, 3)), jnp.float32)
    ys = jnp.argmax(jax.vmap(hwc_fn)(xs), -1)
    keys = jax.random.split(jax.random.key(0), 6)
    eps = jnp.full((6,), 0.05)
    r_hwc = jax.jit(jax.vmap(square(hwc_fn, queries=40)))(xs, ys, eps=eps, key=keys)
    xs_chw = jnp.moveaxis(xs, -1, 1)
    r_chw = jax.jit(jax.vmap(square(chw_fn, queries=40, layout="CHW")))(xs_chw, ys, eps=eps,
                                                                        key=keys)
    np.testing.assert_array_equal(r_chw.success, r_hwc.success)
    np.testing.assert_allclose(jnp.moveaxis(r_chw.x_adv, 1, -1), r_hwc.x_adv, atol=1e-6)
    # Inferred: (3, 6, 5) is CHW, (6, 5, 3) is HWC: the same results again.
    r_inf = jax.jit(jax.vmap(square(chw_fn, queries=40)))(xs_chw, ys, eps=eps, key=keys)
    np.testing.assert_array_equal(r_inf.success, r_hwc.success)
    with pytest.raises(ValueError, match="layout"):
        square(lambda x: x.reshape(-1)[:4], queries=4)(jnp.full((3, 4, 3), 0.5), jnp.int32(0),
                                                       eps=0.1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="layout"):
        square(hwc_fn, layout="NHWC")


def _l2_init_unrolled(key, h, w, c):
    """The L2 initial direction as the Python loop over the windows built it before (one
    unrolled copy per window): the reference the vectorised :func:`l2_init` must equal."""
    s0 = max(h // 5, 1)
    sp = (h - s0 * 5) // 2
    delta = jnp.zeros((h, w, c))
    starts_h = [sp + i * s0 for i in range(h // s0) if sp + i * s0 < h]
    starts_w = [sp + j * s0 for j in range(w // s0) if sp + j * s0 < w]
    keys = jax.random.split(key, len(starts_h) * len(starts_w))
    for n, (vh, vw) in enumerate((a, b) for a in starts_h for b in starts_w):
        k_t, k_s = jax.random.split(keys[n])
        pattern = eta_window(h, w, vh, vw, jnp.int32(s0), jax.random.bernoulli(k_t))
        delta = delta + pattern[:, :, None] * jnp.where(
            jax.random.bernoulli(k_s, 0.5, (c,)), 1.0, -1.0)
    return delta


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (7, 9, 2), (4, 4, 1)])
def test_l2_init_equals_the_unrolled_loop(shape):
    # Same keys, same windows, same signs: equal up to float rounding. The windows are disjoint
    # (the sum adds each pixel's one non-zero term to zeros, exactly), but the unit-norm
    # scaling of each window reduces over a differently batched (vmapped) array; the old loop
    # itself differs by 1 ulp between eager and jitted runs for that reason. Tolerance: 2 ulp,
    # with the zero pattern and every sign identical.
    for seed in range(3):
        key = jax.random.key(seed)
        ref = np.asarray(_l2_init_unrolled(key, *shape))
        for got in (l2_init(key, *shape), jax.jit(l2_init, static_argnums=(1, 2, 3))(key, *shape)):
            got = np.asarray(got)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            np.testing.assert_array_equal(np.sign(got), np.sign(ref))
            np.testing.assert_array_max_ulp(got, ref, maxulp=2)
        assert np.count_nonzero(ref) > 0


def test_l2_program_has_one_copy_of_the_window_pattern():
    # The loop unrolled one eta_window (one 1/(k+1)^2 table) per window: 25 on 28x28 images.
    text = jax.jit(l2_init, static_argnums=(1, 2, 3)).lower(jax.random.key(0), 28, 28, 1).as_text()
    ref = jax.jit(_l2_init_unrolled, static_argnums=(1, 2, 3)).lower(
        jax.random.key(0), 28, 28, 1).as_text()
    assert text.count("\n") * 5 < ref.count("\n")
