"""Carlini-Wagner L2: closed forms and a QP on linear models, the objective, transforms, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.cw import cw_l2, cw_success, f6_objective
from tests.attacks.conftest import make_linear_problem, min_l2_to_class_qp

KW = {"steps": 500, "learning_rate": 1e-2, "search_steps": 9}


@pytest.fixture(scope="module")
def targeted():
    p = make_linear_problem(seed=0)
    attack = cw_l2(p.logits_fn, targeted=True, **KW)
    k = p.W.shape[1]
    targets = ((p.labels + 1 + np.arange(len(p.labels)) % (k - 1)) % k).astype(np.int32)
    fn = jax.jit(jax.vmap(attack))
    res = fn(jnp.asarray(p.xs), jnp.asarray(p.labels), target=jnp.asarray(targets))
    return p, attack, targets, res, fn


def test_targeted_linear_within_few_percent_of_qp(targeted):
    # Truth: min ||r|| s.t. class t is the argmax of the linear model (scipy SLSQP). f6 is an
    # exact penalty for a linear model, so CW reaches the QP optimum up to the Adam iterations:
    # never below it (x_adv is feasible), at most 5% above.
    p, _, targets, res, _ = targeted
    assert np.all(np.asarray(res.success))
    assert np.all(np.argmax(np.asarray(res.logits), 1) == targets)
    qp = np.array([min_l2_to_class_qp(p.W, p.b, x, t)[0]
                   for x, t in zip(p.xs, targets, strict=True)])
    ratio = np.asarray(res.l2, np.float64) / qp
    assert np.all(ratio >= 1.0 - 1e-4), ratio
    assert np.all(ratio <= 1.05), ratio
    assert np.all(np.asarray(res.aux["num_successes"]) >= 1)
    np.testing.assert_array_equal(np.asarray(res.aux["target"]), targets)


def test_untargeted_binary_with_confidence_closed_form():
    # Truth (2 classes, box inactive): reaching a logit margin kappa for the other class t needs
    # the L2 distortion (z_y - z_t + kappa) / ||w_t - w_y||. CW with confidence kappa lands within
    # 5% above it, and the margin at x_adv is at least kappa.
    kappa = 1.0
    p = make_linear_problem(seed=1, num_classes=2)
    res = jax.jit(jax.vmap(cw_l2(p.logits_fn, confidence=kappa, **KW)))(
        jnp.asarray(p.xs), jnp.asarray(p.labels))
    z = p.xs.reshape(len(p.xs), -1).astype(np.float64) @ p.W + p.b
    y = p.labels
    t = 1 - y
    truth = ((z[np.arange(len(y)), y] - z[np.arange(len(y)), t] + kappa)
             / np.linalg.norm(p.W[:, 1] - p.W[:, 0]))
    assert np.all(np.asarray(res.success))
    ratio = np.asarray(res.l2, np.float64) / truth
    assert np.all(ratio >= 1.0 - 1e-4), ratio
    assert np.all(ratio <= 1.05), ratio
    logits = np.asarray(res.logits)
    margin = logits[np.arange(len(y)), t] - logits[np.arange(len(y)), y]
    assert np.all(margin >= kappa - 1e-4), margin
    assert "target" not in res.aux


def test_jit_vmap_equals_python_loop(targeted):
    # Per-example targets and initial c under jit(vmap) = single examples, jitted or not (float32
    # round-off of the batched matmuls aside).
    p, attack, targets, _, _ = targeted
    c0 = jnp.asarray([1e-3, 1e-1, 1.0])
    xs, labels, tg = jnp.asarray(p.xs[:3]), jnp.asarray(p.labels[:3]), jnp.asarray(targets[:3])
    batched = jax.jit(jax.vmap(attack))(xs, labels, target=tg, initial_const=c0)
    single = jax.jit(attack)
    for i in range(3):
        fn = attack if i == 0 else single
        one = fn(xs[i], labels[i], target=tg[i], initial_const=c0[i])
        np.testing.assert_allclose(np.asarray(batched.x_adv[i]), np.asarray(one.x_adv), atol=1e-3)
        np.testing.assert_allclose(float(batched.l2[i]), float(one.l2), rtol=2e-3)
        assert bool(batched.success[i]) == bool(one.success)
        np.testing.assert_allclose(float(batched.aux["const"][i]), float(one.aux["const"]),
                                   rtol=2e-3)


def test_box_corners_stay_inside_and_above_box_qp(targeted):
    # Examples at the corners of [0, 1]: x_adv stays in the box (tanh change of variables) and the
    # distortion is never below the box-constrained QP.
    p, _, _, _, fn = targeted
    xs = np.where(p.xs > 0.5, 0.99, 0.01).astype(np.float32)
    labels = np.argmax(xs.reshape(len(xs), -1) @ p.W + p.b, 1).astype(np.int32)
    tg = ((labels + 2) % p.W.shape[1]).astype(np.int32)
    res = fn(jnp.asarray(xs), jnp.asarray(labels), target=jnp.asarray(tg))
    x_adv = np.asarray(res.x_adv)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    lo, hi = np.zeros(xs[0].size), np.ones(xs[0].size)
    qp = np.array([min_l2_to_class_qp(p.W, p.b, x, t, lo=lo, hi=hi)[0]
                   for x, t in zip(xs, tg, strict=True)])
    ok = np.asarray(res.success)
    assert ok.sum() >= len(xs) - 1
    assert np.all(np.asarray(res.l2)[ok] >= qp[ok] * (1.0 - 1e-4))


def test_f6_and_success_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=30).astype(np.int32)
    for kappa in (0.0, 0.5):
        for targeted_ in (False, True):
            tgt = jnp.asarray(labels) if targeted_ else None
            f = jax.vmap(lambda z, y, t=tgt, k=kappa: f6_objective(
                z, y, None if t is None else y, k))(jnp.asarray(logits), jnp.asarray(labels))
            s = jax.vmap(lambda z, y, t=tgt, k=kappa: cw_success(
                z, y, None if t is None else y, k))(jnp.asarray(logits), jnp.asarray(labels))
            z_y = logits[np.arange(30), labels]
            other = np.where(np.eye(6, dtype=bool)[labels], -np.inf, logits).max(1)
            if targeted_:  # the class "labels" is the target here
                want_f = np.maximum(other - z_y, -kappa)
                want_s = z_y - kappa > other
            else:
                want_f = np.maximum(z_y - other, -kappa)
                want_s = other > z_y + kappa
            np.testing.assert_allclose(np.asarray(f), want_f, rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(s), want_s)


def test_already_misclassified_is_reported_not_attacked(targeted):
    p, _, _, _, _ = targeted
    attack = cw_l2(p.logits_fn, steps=5, search_steps=1)
    x = jnp.asarray(p.xs[0])
    wrong = jnp.asarray((p.labels[0] + 1) % 4)
    res = attack(x, wrong)
    assert bool(res.success) and not bool(res.clean_correct) and float(res.l2) == 0.0


def test_bad_inputs(targeted):
    p, attack, _, _, _ = targeted
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    with pytest.raises(ValueError, match="target"):
        attack(x, y)  # targeted needs a target
    with pytest.raises(ValueError, match="target"):
        attack(x, y, target=jnp.asarray(4))  # 4 classes
    with pytest.raises(ValueError, match="target"):
        attack(x, y, target=jnp.asarray([1]))
    with pytest.raises(ValueError, match="`x`"):
        attack(x.at[0, 0, 0].set(jnp.nan), y, target=jnp.asarray(1))
    with pytest.raises(ValueError, match="initial_const"):
        attack(x, y, target=jnp.asarray(1), initial_const=0.0)
    untargeted = cw_l2(p.logits_fn, steps=5, search_steps=1)
    with pytest.raises(ValueError, match="target"):
        untargeted(x, y, target=jnp.asarray(1))
    with pytest.raises(ValueError, match="confidence"):
        cw_l2(p.logits_fn, confidence=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        cw_l2(p.logits_fn, learning_rate=0.0)
    with pytest.raises(ValueError, match="steps"):
        cw_l2(p.logits_fn, steps=0)
    with pytest.raises(ValueError, match="box"):
        cw_l2(p.logits_fn, lo=0.5, hi=0.5)


def _cw_trajectory(logits_fn, x, y, c, steps, lr=1e-2):
    """CW's untargeted Adam run at a fixed ``c`` written out as a loop: ``(dist2, success)`` of
    every iterate (box [0, 1], confidence 0)."""
    import optax

    from advjax.attacks.cw import _TANH_SHRINK

    opt = optax.adam(lr)
    w = jnp.arctanh((x / 0.5 - 1.0) * _TANH_SHRINK)
    state = opt.init(w)

    def loss(w):
        xa = 0.5 * (jnp.tanh(w) + 1.0)
        logits = logits_fn(xa)
        d2 = jnp.sum((xa - x) ** 2)
        return d2 + c * f6_objective(logits, y, None, 0.0), (d2, logits)

    vg = jax.jit(jax.value_and_grad(loss, has_aux=True))
    out = []
    for _ in range(steps):
        (_, (d2, logits)), g = vg(w)
        out.append((float(d2), bool(jnp.argmax(logits) != y)))
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
    return out


def test_keeps_the_closest_success_not_the_last(tiny_mlp):
    # With c = 10 Adam overshoots the boundary: the last successful iterate is twice as far as the
    # closest one, so returning the last success instead of the closest is caught.
    x, y = jnp.asarray(tiny_mlp.xs[3]), jnp.int32(tiny_mlp.labels[3])
    traj = _cw_trajectory(tiny_mlp.logits_fn, x, y, 10.0, 100)
    succ = [d for d, s in traj if s]
    closest, last = np.sqrt(min(succ)), np.sqrt(succ[-1])
    assert last > 1.5 * closest
    res = cw_l2(tiny_mlp.logits_fn, steps=100, search_steps=1, initial_const=10.0,
                abort_early=False)(x, y)
    # Same float32 operations in another program: 1e-5 relative.
    np.testing.assert_allclose(float(res.l2), closest, rtol=1e-5)


def test_early_abort_never_gives_up_on_saturated_images(tiny_mlp):
    # Binary images (every pixel at a box face): tanh is flat there, so the loss does not move for
    # many steps while Adam walks w back inside. A per-example stall test on the loss alone gives
    # up on them and c climbs to its cap; the abort must leave exactly the successes of the full
    # run, and still save iterations.
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.integers(0, 2, size=(6, 4, 4, 1)).astype(np.float32))
    ys = jnp.argmax(jax.vmap(tiny_mlp.logits_fn)(xs), -1)
    runs = {abort: jax.jit(jax.vmap(cw_l2(tiny_mlp.logits_fn, abort_early=abort)))(xs, ys)
            for abort in (True, False)}
    assert bool(jnp.all(runs[False].success))
    np.testing.assert_array_equal(runs[True].success, runs[False].success)
    np.testing.assert_allclose(runs[True].l2, runs[False].l2, rtol=0.02)
    full = 1000 * 9
    assert np.all(np.asarray(runs[False].aux["iterations"]) == full)
    assert np.all(np.asarray(runs[True].aux["iterations"]) < full)


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_early_abort_fires_with_and_without_confidence(tiny_mlp, confidence):
    # With confidence > 0 the objective is negative after success; the stall test is relative to
    # |loss| so it still fires. Without the abort every example runs steps x search_steps.
    xs, ys = jnp.asarray(tiny_mlp.xs[:4]), jnp.asarray(tiny_mlp.labels[:4])
    res = {abort: jax.jit(jax.vmap(cw_l2(tiny_mlp.logits_fn, steps=200, confidence=confidence,
                                         abort_early=abort)))(xs, ys)
           for abort in (True, False)}
    iters = np.asarray(res[True].aux["iterations"])
    assert iters.sum() < 0.95 * 4 * 200 * 9, iters
    np.testing.assert_array_equal(res[True].success, res[False].success)
    np.testing.assert_allclose(res[True].l2, res[False].l2, rtol=0.02, atol=1e-3)
