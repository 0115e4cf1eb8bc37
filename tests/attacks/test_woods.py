"""Woods et al. Algorithm 1 (papers.md §2.9) against a step-by-step NumPy reference, closed forms
on linear models, the track-best rule and the sanity flag."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.woods import step_sizes, woods_l2
from tests.attacks.conftest import linear_logits_fn, linear_min_l2, make_linear_problem


def reference_algorithm1(logits_fn, x, label, eps, *, steps, criterion, momentum=0.0,
                         eps_overshoot=1.0, track_best=False, encourage=False, target=None,
                         affected=1.0):
    """Plain Python/NumPy transcription of Algorithm 1 (one example, float64 bookkeeping)."""
    x = np.asarray(x, np.float64)
    t = label if target is None else target
    k = int(np.shape(logits_fn(jnp.asarray(x, jnp.float32)))[0])

    def ce(d):
        z = logits_fn(jnp.asarray(x, jnp.float32) + d)
        return -jax.nn.log_softmax(z)[t], z

    grad_fn = jax.grad(ce, has_aux=True)
    delta = np.zeros_like(x)
    mom = np.zeros_like(x)
    size = eps * eps_overshoot
    best, best_r = None, np.inf
    for step in range(steps + (1 if track_best else 0)):
        g, z = grad_fn(jnp.asarray(delta, jnp.float32))
        g, z = np.asarray(g, np.float64), np.asarray(z, np.float64)
        r = np.sqrt(np.mean(delta ** 2))
        if criterion == "l2":
            follow = r < eps
        elif criterion == "l2_min":
            follow = (np.argmax(z) != t) if encourage else (np.argmax(z) == t)
        else:
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            follow = (p[t] <= 1 / k) if encourage else (p[t] > 1 / k)
        if track_best and not follow and r < best_r:
            best, best_r = delta.copy(), r
        if step == steps:
            break
        if encourage:
            g = -g
        ss = size * (steps - step) / (steps * (steps + 1) / 2)
        sdir = g if follow else -delta
        sdir = sdir / (1e-8 + np.sqrt(np.mean(sdir ** 2)))
        if momentum > 0:
            mom = momentum * mom + (1 - momentum) * sdir
            sdir = mom.copy()
        delta = delta + ss * sdir * affected
    if track_best:
        return x + (best if best is not None else 0.0)
    return x + delta


def test_step_sizes_ramp_and_sum():
    for steps, eps, over in [(7, 0.01, 1.0), (35, 0.1, 5.0), (450, 20.0, 1.0)]:
        ss = np.asarray(step_sizes(jnp.float32(eps), steps, over), np.float64)
        np.testing.assert_allclose(ss.sum(), eps * over, rtol=1e-5)
        np.testing.assert_allclose(ss[0] / ss[-1], steps, rtol=1e-4)
        assert np.all(np.diff(ss) < 0)


@pytest.mark.parametrize("criterion,momentum,track", [
    ("l2", 0.0, False), ("l2_min", 0.0, True), ("btr", 0.5, True), ("l2", 0.9, True)])
def test_matches_numpy_reference(tiny_mlp, criterion, momentum, track):
    p = tiny_mlp
    steps, eps = 12, 0.05
    attack = jax.jit(woods_l2(p.logits_fn, steps=steps, criterion=criterion, momentum=momentum,
                              track_best=track))
    for i in range(2):
        res = attack(jnp.asarray(p.xs[i]), jnp.asarray(p.labels[i]), eps=eps)
        ref = reference_algorithm1(p.logits_fn, p.xs[i], int(p.labels[i]), eps, steps=steps,
                                   criterion=criterion, momentum=momentum, track_best=track)
        np.testing.assert_allclose(np.asarray(res.x_adv), ref, atol=2e-5)


def test_encourage_matches_reference_and_keeps_explanation(tiny_mlp):
    # Explanation settings (papers.md §2.11): l2 criterion, overshoot 5, descent towards target.
    p = tiny_mlp
    attack = woods_l2(p.logits_fn, steps=10, criterion="l2", eps_overshoot=5.0, encourage=True)
    x, y = p.xs[2], int(p.labels[2])
    for t in (y, (y + 1) % 5):
        res = attack(jnp.asarray(x), jnp.asarray(y), eps=0.1, target=jnp.asarray(t))
        ref = reference_algorithm1(p.logits_fn, x, y, 0.1, steps=10, criterion="l2",
                                   eps_overshoot=5.0, encourage=True, target=t)
        np.testing.assert_allclose(np.asarray(res.x_adv), ref, atol=2e-5)
        assert float(res.rmse) > 0  # never reset to x, even when target == clean prediction
        assert bool(res.success) == (int(jnp.argmax(res.logits)) == t)


def test_straight_path_length_is_the_budget(binary_linear_problem):
    # Binary linear model: the CE gradient always points along w_other - w_y, so with a boundary
    # never reached (criterion l2, eps huge relative to the path) delta is a straight line of
    # RMSE length exactly S = eps * eps_overshoot.
    p = binary_linear_problem
    attack = woods_l2(p.logits_fn, steps=9, criterion="l2", eps_overshoot=0.5)
    res = attack(jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0]), eps=0.04)
    np.testing.assert_allclose(float(res.rmse), 0.02, rtol=1e-5)


def test_l2_criterion_ends_near_the_sphere(tiny_mlp):
    p = tiny_mlp
    steps, eps = 20, 0.02
    res = jax.jit(jax.vmap(woods_l2(p.logits_fn, steps=steps, criterion="l2", eps_overshoot=3.0)))(
            jnp.asarray(p.xs), jnp.asarray(p.labels), eps=jnp.full(len(p.xs), eps))
    max_step = float(step_sizes(jnp.float32(eps), steps, 3.0)[0])
    assert np.all(np.abs(np.asarray(res.rmse) - eps) <= max_step + 1e-6)


@pytest.mark.parametrize("num_classes,scale,tol", [(2, 1.0, 1.01), (4, 10.0, 1.05)])
def test_l2_min_close_to_closed_form_never_below(num_classes, scale, tol):
    # With two classes the CE gradient is normal to the boundary and Algorithm 1 settles on the
    # nearest boundary point. With more classes the gradient mixes the other classes' directions
    # (weighted by their softmax), so the point found can sit a little off the nearest one; sharp
    # logits (scale 10) keep that within a few percent. Never below the closed form.
    p = make_linear_problem(seed=2, num_classes=num_classes, weight_scale=scale)
    d = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    d_rmse = d / np.sqrt(p.xs[0].size)
    attack = jax.jit(jax.vmap(woods_l2(p.logits_fn, steps=100, criterion="l2_min")))
    eps = jnp.asarray(3 * d_rmse, jnp.float32)
    res = attack(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=eps)
    ratio = np.asarray(res.rmse) / d_rmse
    assert np.all(res.success)
    assert np.all(ratio >= 1 - 1e-4) and np.all(ratio <= tol), ratio
    assert np.all(res.aux["boundary_by_half"])
    np.testing.assert_allclose(res.aux["best_rmse"], res.rmse, rtol=1e-5)


def test_track_best_returns_smallest_rmse_crossing(tiny_mlp):
    # Re-run the iterates (no track-best, T = 0..steps) and pick the smallest-RMSE misclassified
    # one by hand: it must be what track-best returns.
    p = tiny_mlp
    steps, eps = 10, 0.2
    x, y = jnp.asarray(p.xs[3]), jnp.asarray(p.labels[3])
    best = woods_l2(p.logits_fn, steps=steps, criterion="l2_min")(x, y, eps=eps)
    iterates = _iterates(p.logits_fn, p.xs[3], int(p.labels[3]), eps, steps)
    crossed = [(np.sqrt(np.mean((it - p.xs[3]) ** 2)), it) for it in iterates
               if np.argmax(np.asarray(p.logits_fn(jnp.asarray(it, jnp.float32)))) != int(y)]
    assert crossed, "the test example must cross the boundary"
    r_min, it_min = min(crossed, key=lambda c: c[0])
    np.testing.assert_allclose(float(best.rmse), r_min, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(best.x_adv), it_min, atol=2e-5)
    assert int(best.aux["best_step"]) == [i for i, it in enumerate(iterates)
                                          if np.array_equal(it, it_min)][0]


def _iterates(logits_fn, x, label, eps, steps):
    """All iterates x + delta_i, i = 0..steps, of the l2_min rule (plain loop)."""
    x64 = np.asarray(x, np.float64)
    x32 = jnp.asarray(x, jnp.float32)
    grad = jax.grad(lambda d: -jax.nn.log_softmax(logits_fn(x32 + d))[label])
    delta = np.zeros_like(x64)
    out = [x64.copy()]
    for i in range(steps):
        on = np.argmax(np.asarray(logits_fn(jnp.asarray(x64 + delta, jnp.float32)))) == label
        sdir = np.asarray(grad(jnp.asarray(delta, jnp.float32)), np.float64) if on else -delta
        sdir = sdir / (1e-8 + np.sqrt(np.mean(sdir ** 2)))
        delta = delta + eps * (steps - i) / (steps * (steps + 1) / 2) * sdir
        out.append(x64 + delta)
    return out


def test_no_crossing_returns_clean_and_flags(tiny_mlp):
    p = tiny_mlp
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    res = woods_l2(p.logits_fn, steps=6, criterion="l2_min")(x, y, eps=1e-5)
    assert not bool(res.aux["boundary_by_half"]) and not bool(res.aux["crossed"])
    assert int(res.aux["cross_step"]) == -1 and np.isinf(float(res.aux["best_rmse"]))
    np.testing.assert_array_equal(res.x_adv, x)
    with pytest.raises(ValueError, match="floor"):
        woods_l2(p.logits_fn, steps=6, criterion="l2_min", sanity_check=True)(x, y, eps=1e-5)


def test_late_crossing_flagged(binary_linear_problem):
    # Straight path (binary linear model): RMSE after i steps = S * cumsum(ramp)_i exactly. With
    # overshoot 1.1 and T = 6 the RMSE sphere is first reached at evaluation 5 > floor(6/2).
    p = binary_linear_problem
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    late = woods_l2(p.logits_fn, steps=6, criterion="l2", track_best=True, eps_overshoot=1.1)
    res = late(x, y, eps=0.05)
    assert int(res.aux["cross_step"]) == 5 and not bool(res.aux["boundary_by_half"])
    early = woods_l2(p.logits_fn, steps=6, criterion="l2", track_best=True, eps_overshoot=2.0)
    res = early(x, y, eps=0.05)
    assert int(res.aux["cross_step"]) == 2 and bool(res.aux["boundary_by_half"])


def test_affected_mask_half_half_and_keys(tiny_mlp):
    p = tiny_mlp
    n = len(p.xs)
    attack = woods_l2(p.logits_fn, steps=4, criterion="l2", half_half=True,
                      reset_misclassified=False)
    keys = jax.random.split(jax.random.key(0), n)
    batched = jax.jit(jax.vmap(attack))
    res = batched(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=jnp.full(n, 0.05), key=keys)
    again = batched(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=jnp.full(n, 0.05), key=keys)
    np.testing.assert_array_equal(res.x_adv, again.x_adv)
    moved = np.asarray(res.rmse) > 0
    expected = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys))
    np.testing.assert_array_equal(moved, expected)
    plain = woods_l2(p.logits_fn, steps=4)
    off = plain(jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0]), eps=0.05, affected=False)
    np.testing.assert_array_equal(off.x_adv, p.xs[0])


def test_no_clip_by_default_clip_on_request(linear_problem):
    p = linear_problem
    x = jnp.full((4, 4, 1), 0.999, jnp.float32)
    y = jnp.argmax(p.logits_fn(x))
    free = woods_l2(p.logits_fn, steps=5, criterion="l2")(x, y, eps=0.2)
    boxed = woods_l2(p.logits_fn, steps=5, criterion="l2", clip=True)(x, y, eps=0.2)
    assert float(free.x_adv.max()) > 1.0
    assert float(boxed.x_adv.max()) <= 1.0 and float(boxed.x_adv.min()) >= 0.0


def test_jit_vmap_matches_loop_with_targets(tiny_mlp):
    p = tiny_mlp
    attack = woods_l2(p.logits_fn, steps=6, criterion="l2", eps_overshoot=5.0, encourage=True)
    n = 4
    eps = jnp.asarray([0.01, 0.05, 0.1, 0.2])
    targets = jnp.asarray((p.labels[:n] + 2) % 5)
    xs, ys = jnp.asarray(p.xs[:n]), jnp.asarray(p.labels[:n])
    batched = jax.jit(jax.vmap(attack))(xs, ys, eps=eps, target=targets)
    single = jax.jit(attack)
    for i in range(n):
        r = single(xs[i], ys[i], eps=eps[i], target=targets[i])
        np.testing.assert_allclose(batched.x_adv[i], r.x_adv, atol=1e-5)
        assert bool(batched.success[i]) == bool(r.success)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name="batch")(x)
        return nn.Dense(3)(nn.relu(x))


def test_batch_statistics_under_named_vmap():
    # Training-mode BN: statistics over the vmapped axis; the attack adds no collectives.
    net = _BNNet()
    xs = jax.random.uniform(jax.random.key(0), (6, 2, 2, 1))
    variables = jax.jit(lambda k: net.init(k, xs[:1], train=False))(jax.random.key(1))

    def logits_fn(x):
        out, _ = net.apply(variables, x[None], train=True, mutable=["batch_stats"])
        return out[0]

    attack = woods_l2(logits_fn, steps=3, criterion="l2", reset_misclassified=False)
    fn = jax.jit(jax.vmap(lambda x, y: attack(x, y, eps=0.05), axis_name="batch"))
    labels = jnp.zeros(6, jnp.int32)
    res = fn(xs, labels)
    assert bool(jnp.all(jnp.isfinite(res.x_adv)))
    np.testing.assert_allclose(res.rmse, 0.05 * np.ones(6), rtol=0.2)


def test_bad_inputs(tiny_mlp):
    p = tiny_mlp
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    attack = woods_l2(p.logits_fn, steps=2)
    with pytest.raises(ValueError, match="eps"):
        attack(x, y, eps=-1.0)
    with pytest.raises(ValueError, match="target"):
        attack(x, y, eps=0.1, target=jnp.asarray(1))
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray(5), eps=0.1)
    with pytest.raises(ValueError, match="`x`"):
        attack(x.at[0, 0, 0].set(jnp.nan), y, eps=0.1)
    with pytest.raises(ValueError, match="affected"):
        attack(x, y, eps=0.1, affected=jnp.ones(2))
    with pytest.raises(ValueError, match="key"):
        woods_l2(p.logits_fn, steps=2, half_half=True)(x, y, eps=0.1)
    with pytest.raises(ValueError, match="criterion"):
        woods_l2(p.logits_fn, criterion="linf")
    with pytest.raises(ValueError, match="momentum"):
        woods_l2(p.logits_fn, momentum=1.0)


def test_invalid_values_flagged_under_jit(tiny_mlp):
    p = tiny_mlp
    attack = jax.jit(woods_l2(p.logits_fn, steps=2))
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    assert bool(attack(x, y, eps=0.1).aux["valid_input"])
    assert not bool(attack(x, y, eps=-0.1).aux["valid_input"])
    assert not bool(attack(x, jnp.asarray(-1), eps=0.1).aux["valid_input"])


def test_saturated_softmax_stalls_with_ce_and_margin_variant_moves():
    # Logits scaled by 1e4: p(label) rounds to exactly 1 in float32, the CE gradient is exactly 0,
    # and Algorithm 1's step g / (1e-8 + RMSE(g)) is 0: the reference attack never moves
    # ("stalled"). The margin's gradient is w_j - w_y whatever the scale, so the margin variant
    # reaches the boundary, at no less than the closed-form minimal distance (scale-free).
    from advjax.metrics import attack_ara

    p = make_linear_problem(seed=5, num_classes=3, n=4)
    scale = 1e4
    f = linear_logits_fn(p.W * scale, p.b * scale, p.shape)
    ce = jax.jit(jax.vmap(woods_l2(f, steps=30, criterion="l2_min")))
    mg = jax.jit(jax.vmap(woods_l2(f, steps=30, criterion="l2_min", loss="margin")))
    eps = jnp.full((4,), 0.5)
    r_ce = ce(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=eps)
    r_mg = mg(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=eps)
    assert bool(jnp.all(r_ce.aux["stalled"])) and not bool(jnp.any(r_ce.success))
    assert not bool(jnp.any(r_mg.aux["stalled"])) and bool(jnp.all(r_mg.success))
    truth = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels,
                                                                       strict=True)])
    assert np.all(np.asarray(r_mg.l2) >= truth * (1 - 1e-4))
    # Every ARA result reports the stalled examples.
    res = attack_ara(f, p.xs, p.labels, num_classes=3, steps=30, eps=0.5, momentum=0.0)
    assert res.num_stalled == 4 and res.num_failed == 4 and res.to_dict()["num_stalled"] == 4
    res_m = attack_ara(f, p.xs, p.labels, num_classes=3, steps=30, eps=0.5, momentum=0.0,
                       loss="margin")
    assert res_m.num_stalled == 0 and res_m.num_failed == 0
    np.testing.assert_allclose(res_m.distortions, np.asarray(r_mg.rmse), rtol=1e-5)


@pytest.mark.parametrize("steps,overshoot,cross", [(6, 1.6, 3), (6, 1.3, 4), (7, 1.8, 3),
                                                   (7, 1.4, 4)])
def test_sanity_check_boundary_is_floor_half_inclusive(binary_linear_problem, steps, overshoot,
                                                       cross):
    # ensure_proper_minimization (papers.md §2.9): crossed within the first floor(T/2) steps.
    # Straight path (binary linear model, criterion "l2"): RMSE after i steps is
    # eps * overshoot * sum_{j<i} (T - j) / (T (T + 1) / 2), so the sphere is first reached
    # after exactly `cross` steps (closed form below); floor(6/2) = floor(7/2) = 3. Crossing at
    # 3 passes, at 4 fails: `< half`, `<= half + 1` or half = ceil(T/2) each flip a row.
    p = binary_linear_problem
    ramp = np.cumsum(np.arange(steps, 0, -1)) / (steps * (steps + 1) / 2)
    assert int(np.argmax(overshoot * ramp >= 1.0)) + 1 == cross      # the closed form
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    attack = woods_l2(p.logits_fn, steps=steps, criterion="l2", track_best=True,
                      eps_overshoot=overshoot)
    res = attack(x, y, eps=0.05)
    assert int(res.aux["cross_step"]) == cross
    assert bool(res.aux["boundary_by_half"]) == (cross <= steps // 2)
    checked_attack = woods_l2(p.logits_fn, steps=steps, criterion="l2", track_best=True,
                              eps_overshoot=overshoot, sanity_check=True)
    if cross <= steps // 2:
        checked_attack(x, y, eps=0.05)
    else:
        with pytest.raises(ValueError, match="sanity check"):
            checked_attack(x, y, eps=0.05)
