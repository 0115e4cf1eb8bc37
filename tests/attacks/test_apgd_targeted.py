"""APGD-T: only one wrong class reachable (closed form), target order, budget, vmap/shard."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import losses
from advjax.attacks.apgd_targeted import _start, apgd_search, apgd_targeted, eot_value_and_grad
from tests.attacks.conftest import linear_logits_fn
from tests.attacks.test_apgd import apgd_reference


def _one_reachable(norm: str):
    """A linear 5-class model on 4x4x1 inputs, label 0 for x = 0.5: classes 1, 2, 4 have big
    clean logits (ranked 2nd-4th) but tiny weight differences (unreachable within eps <= 0.2);
    class 3 has the lowest clean logit (ranked 5th) and a large weight difference, so it is the
    only reachable wrong class, at the closed-form distance
    ``(z_0 - z_3) / ||w_3 - w_0||_dual`` (dual = L1 for linf, L2 for l2)."""
    rng = np.random.default_rng(3)
    d = 16
    W = np.zeros((d, 5))
    W[:, 1] = 0.01 * rng.normal(size=d)
    W[:, 2] = 0.01 * rng.normal(size=d)
    W[:, 4] = 0.01 * rng.normal(size=d)
    W[:, 3] = rng.normal(size=d)
    x = np.full((4, 4, 1), 0.5, np.float32)
    z_no_b = x.reshape(-1) @ W
    b = np.array([3.0, 2.9, 2.8, 2.0, 2.7]) - z_no_b
    z = x.reshape(-1) @ W + b
    w = W[:, 3] - W[:, 0]
    dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
    return linear_logits_fn(W, b, x.shape), x, (z[0] - z[3]) / dual


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_only_one_wrong_class_reachable(norm):
    logits_fn, x, dist = _one_reachable(norm)
    assert 0.01 < dist < 0.2 if norm == "linf" else dist < 1.0
    key = jax.random.key(0)
    full = jax.jit(apgd_targeted(logits_fn, norm=norm, steps=20, n_targets=4))
    above = full(x, jnp.int32(0), eps=1.05 * dist, key=key)
    below = full(x, jnp.int32(0), eps=0.95 * dist, key=key)
    assert bool(above.success) and int(jnp.argmax(above.logits)) == 3
    assert not bool(below.success)
    # The reachable class is ranked 5th: attacking the top 3 others only cannot succeed.
    top3 = jax.jit(apgd_targeted(logits_fn, norm=norm, steps=20, n_targets=3))
    assert not bool(top3(x, jnp.int32(0), eps=1.05 * dist, key=key).success)
    size = above.linf if norm == "linf" else above.l2
    assert float(size) <= 1.05 * dist * (1 + 1e-5)


def test_vmap_shard_and_invalid_flags(tiny_mlp):
    from advjax.parallel import shard_attack

    p = tiny_mlp
    xs, ys = jnp.asarray(p.xs), jnp.asarray(p.labels)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(len(ys)))
    attack = apgd_targeted(p.logits_fn, steps=10, n_targets=3)
    eps = jnp.full((len(ys),), 0.1)
    batched = jax.jit(jax.vmap(attack))
    a = batched(xs, ys, eps=eps, key=keys)
    b = shard_attack(attack)(xs, ys, eps=eps, key=keys)
    np.testing.assert_array_equal(np.asarray(a.success), np.asarray(b.success))
    np.testing.assert_allclose(np.asarray(a.x_adv), np.asarray(b.x_adv), atol=1e-6)
    assert float(jnp.max(a.linf)) <= 0.1 + 1e-6
    # Under jit an invalid label / eps is flagged, not attacked.
    bad = batched(xs, ys.at[0].set(99), eps=eps.at[1].set(-1.0), key=keys)
    assert not np.any(np.asarray(bad.success[:2]))
    assert not np.any(np.asarray(bad.aux["valid_input"][:2]))
    assert np.all(np.asarray(bad.aux["valid_input"][2:]))
    assert np.all(np.isnan(np.asarray(bad.l2[:2])))
    np.testing.assert_array_equal(np.asarray(bad.x_adv[:2]), np.asarray(xs[:2]))
    with pytest.raises(ValueError, match="label"):
        attack(xs[0], jnp.int32(7), eps=0.1, key=keys[0])
    with pytest.raises(ValueError, match="eps"):
        attack(xs[0], ys[0], eps=-0.1, key=keys[0])


def test_eot_average_equals_monte_carlo_reference():
    # Randomised linear model: logits = W^T (x + sigma n), n ~ N(0, I). The EOT loss/gradient
    # over S draws equals the plain mean over the same draws (computed independently with numpy),
    # and with many draws approaches the expectation, here in closed form for the linear loss
    # L = z_1 - z_0: E[L] = (w_1 - w_0).x + b_1 - b_0, E[grad] = w_1 - w_0.
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.uniform(size=6).astype(np.float32)
    sigma = 0.5

    def loss_fn(z, key):
        noise = sigma * jax.random.normal(key, z.shape)
        logits = (z + noise) @ W + b
        return jnp.tanh(logits[1] - logits[0]), logits

    key = jax.random.key(3)
    v, _, g = eot_value_and_grad(loss_fn, jnp.asarray(x), key, 16)
    noises = [sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, i), (6,)))
              for i in range(16)]
    w = W[:, 1] - W[:, 0]
    m = [np.tanh((x + n) @ w + b[1] - b[0]) for n in noises]
    np.testing.assert_allclose(float(v), np.mean(m), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.mean([(1 - t * t) * w for t in m], 0),
                               rtol=1e-4, atol=1e-6)


def _interior_maximum():
    # The concave loss of test_apgd's interior-maximum case: the second logit peaks inside the
    # ball and the box, and z_0 = 5 always wins, so no run can succeed.
    x = jnp.full((4, 4, 1), 0.5)
    direction = jax.random.normal(jax.random.key(3), x.shape)
    a = x + 0.3 * direction / jnp.linalg.norm(direction)

    def logits_fn(z):
        return jnp.stack([jnp.float32(5.0), -10.0 * jnp.sum((z - a) ** 2)])

    return logits_fn, x, jnp.int32(0), jnp.float32(0.5)


@pytest.mark.parametrize("case,steps", [("mlp0", 40), ("mlp2", 40), ("interior", 6),
                                        ("interior", 12)])
def test_search_matches_plain_loop_of_algorithm_1(tiny_mlp, case, steps):
    # apgd_search is the APGD run of every AutoAttack stage (APGD-CE, APGD-T, the EOT version).
    # Plain Algorithm 1 (test_apgd.apgd_reference, from the same start) is the independent truth
    # for one untargeted CE run with no success: the result is the max-loss point. The MLP runs
    # go through checkpoints that halve, keep and restart from x_max. On the interior maximum
    # the momentum term decides where a short run ends: there, dropping the momentum, the
    # halving or the restart from x_max moves x_adv by far more than float32 rounding (1e-4)
    # (each tried: both interior cases fail; the two MLP runs reach the same best point anyway).
    if case == "interior":
        logits_fn, x, y, eps = _interior_maximum()
    else:
        i = int(case[-1])
        logits_fn, eps = tiny_mlp.logits_fn, jnp.float32(0.1)
        x, y = jnp.asarray(tiny_mlp.xs[i]), jnp.int32(tiny_mlp.labels[i])
    key = jax.random.key(11)
    start = _start(jax.random.fold_in(key, 0), x, eps, "l2")
    x_max, f_max, _, log = apgd_reference(logits_fn, x, y, eps, key, steps, start=start)
    if case != "interior":
        assert log["halved"] >= 1 and log["kept"] >= 1 and log["restart_moved"] >= 1, log

    def loss_fn(z, _key):
        logits = logits_fn(z)
        return losses.ce_loss(logits, y), logits

    z, success, loss, _ = jax.jit(lambda x: apgd_search(loss_fn, x, y, eps, key, norm="l2",
                                                        steps=steps, lo=0.0, hi=1.0))(x)
    assert not bool(success)
    np.testing.assert_allclose(float(loss), f_max, rtol=1e-5)
    np.testing.assert_allclose(z, x_max, atol=1e-4)


@pytest.mark.parametrize("i,eps", [(0, 0.02), (1, 0.05), (3, 0.02)])
def test_official_options_match_the_official_run(tiny_mlp, i, eps):
    # The APGD-T run of AutoAttack (targeted DLR towards the 2nd class, 100 steps, official
    # options) against a plain-Python transliteration of autopgd_base.attack_single_run from the
    # same start: the same best loss and final step size (8 halvings at the official
    # checkpoints 22, 41, 57, 70, 80, 87, 93, 99) and the same max-loss point, float32 rounding
    # only. No iterate succeeds here, so the kept point is x_max.
    from advjax.attacks import projections
    from advjax.attacks.apgd import apgd_run
    from advjax.attacks.apgd_targeted import OFFICIAL
    from tests.attacks._apgd_official import apgd_official

    p = tiny_mlp
    x, y = jnp.asarray(p.xs[i]), jnp.int32(p.labels[i])
    t = jnp.argsort(-p.logits_fn(x))[1]

    def lf(z):
        return losses.targeted_dlr_loss(p.logits_fn(z), y, t)

    key = jax.random.key(4)
    eps = jnp.float32(eps)
    start = x + projections.sample_surface(jax.random.fold_in(key, 0), x.shape, eps, "linf")
    x_best, f_best, step, log = apgd_official(jax.jit(lf), jax.jit(jax.grad(lf)), x, eps, start,
                                              100)
    assert sum(log.values()) == 8, log
    z, s, f, eta, _ = jax.jit(lambda x: apgd_run(
        lambda z, _k: (lf(z), p.logits_fn(z)), lambda logits: jnp.argmax(logits) != y, x, eps,
        key, norm="linf", steps=100, lo=0.0, hi=1.0, **OFFICIAL))(x)
    assert not bool(s)
    np.testing.assert_allclose(float(f), f_best, rtol=1e-5)
    np.testing.assert_allclose(float(eta), step, rtol=1e-6)
    np.testing.assert_allclose(z, x_best, atol=1e-5)


def test_checkpoint_decision_truth_table():
    # Both conditions of the step-size rule, as the official check_oscillation and
    # fl_reduce_no_impr compute them (autopgd_base.py): (1) n_inc <= rho * k (official; the
    # paper writes <), (2) not reduced at the previous checkpoint AND no improvement of the best
    # loss since. Every row below decides differently from an inverted condition (2) or a strict
    # condition (1).
    from advjax.attacks.apgd import checkpoint_halves

    rows = [  # n_inc, k, f_max, f_max_ckpt, reduced_ckpt -> official, paper
        (12, 16, 1.0, 0.5, True, True, False),     # (1) at equality: official halves, paper not
        (13, 16, 1.0, 0.5, True, False, False),    # improved, reduced before: keep
        (13, 16, 1.0, 1.0, False, True, True),     # (2): not reduced, no improvement: halve
        (13, 16, 1.0, 2.0, False, True, True),     # (2) with f_max_ckpt > f_max (rounding)
        (13, 16, 1.0, 0.5, False, False, False),   # not reduced but improved: keep
        (13, 16, 1.0, 1.0, True, False, False),    # reduced before, no improvement: keep
        (3, 16, 1.0, 0.5, True, True, True),       # (1)
    ]
    for n_inc, k, f_max, f_ckpt, red, official, paper in rows:
        args = (jnp.float32(n_inc), jnp.float32(k), jnp.float32(f_max), jnp.float32(f_ckpt),
                jnp.bool_(red))
        assert bool(checkpoint_halves(*args, rho=0.75, schedule="official")) == official, rows
        assert bool(checkpoint_halves(*args, rho=0.75, schedule="paper")) == paper, rows
