"""APGD: checkpoint schedule, strength relative to PGD, budget, keys, vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import losses, projections
from advjax.attacks.apgd import apgd, checkpoints
from advjax.attacks.pgd import pgd
from tests.attacks.conftest import linear_min_l2


def test_checkpoints_match_the_paper_recursion():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (steps of max(prev - 0.03, 0.06)) -> ceil(pN).
    np.testing.assert_array_equal(checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99])
    assert checkpoints(1000)[0] == 220 and checkpoints(1000)[1] == 410
    w = checkpoints(37)
    assert np.all(np.diff(w) > 0) and w[0] > 0 and w[-1] < 37


def test_dlr_loss_closed_form():
    z = jnp.array([3.0, 1.0, 2.0, -1.0, 0.5])
    # untargeted, y = 0: -(z_y - max_other) / (z_pi1 - z_pi3) = -(3 - 2) / (3 - 1)
    np.testing.assert_allclose(losses.dlr_loss(z, 0), -0.5, rtol=1e-6)
    # targeted, y = 0, t = 3: -(3 - (-1)) / (3 - (1 + 0.5) / 2)
    np.testing.assert_allclose(losses.targeted_dlr_loss(z, 0, 3), -4 / 2.25, rtol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_at_least_as_strong_as_pgd(tiny_mlp, loss):
    # Same budget (50 gradient steps, one run): APGD robust accuracy <= PGD robust accuracy.
    p = tiny_mlp
    n = len(p.xs)
    xs, ys = jnp.asarray(p.xs), jnp.asarray(p.labels)
    keys = jax.random.split(jax.random.key(0), n)
    a_apgd = jax.jit(jax.vmap(apgd(p.logits_fn, loss=loss, steps=50)))
    a_pgd = jax.jit(jax.vmap(pgd(p.logits_fn, steps=50)))
    for eps in (0.05, 0.1):
        e = jnp.full((n,), eps)
        ra, rp = a_apgd(xs, ys, eps=e, key=keys), a_pgd(xs, ys, eps=e, key=keys)
        assert int(jnp.sum(~ra.success)) <= int(jnp.sum(~rp.success)), eps
        assert float(jnp.max(ra.linf)) <= eps + 1e-6
        assert float(ra.x_adv.min()) >= 0 and float(ra.x_adv.max()) <= 1


def test_l2_linear_success_boundary(linear_problem):
    p = linear_problem
    d = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    attack = jax.jit(jax.vmap(apgd(p.logits_fn, norm="l2", loss="dlr", steps=30)))
    keys = jax.random.split(jax.random.key(1), len(p.xs))
    xs, ys = jnp.asarray(p.xs), jnp.asarray(p.labels)
    above = attack(xs, ys, eps=jnp.asarray(1.1 * d, jnp.float32), key=keys)
    below = attack(xs, ys, eps=jnp.asarray(0.95 * d, jnp.float32), key=keys)
    assert bool(jnp.all(above.success)) and not bool(jnp.any(below.success))
    assert bool(jnp.all(above.l2 <= 1.1 * d * (1 + 1e-5)))
    # The step size only ever halves from 2 eps.
    m = np.log2(np.asarray(2.0 * 1.1 * d / above.aux["eta"], np.float64))
    np.testing.assert_allclose(m, np.round(m), atol=1e-4)


def test_keys_and_targeted(tiny_mlp, maybe_jit):
    p = tiny_mlp
    attack = apgd(p.logits_fn, steps=4, targeted=True, loss="dlr")
    attack = maybe_jit(attack)
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    t = jnp.asarray((int(p.labels[0]) + 1) % 5)
    a = attack(x, y, eps=0.3, key=jax.random.key(0), target=t)
    b = attack(x, y, eps=0.3, key=jax.random.key(0), target=t)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert bool(a.success) == (int(jnp.argmax(a.logits)) == int(t))


def test_jit_vmap_matches_loop_and_restarts(tiny_mlp):
    p = tiny_mlp
    attack = apgd(p.logits_fn, steps=8, n_restarts=2)
    n = 4
    eps = jnp.asarray([0.02, 0.05, 0.1, 0.2])
    keys = jax.random.split(jax.random.key(3), n)
    xs, ys = jnp.asarray(p.xs[:n]), jnp.asarray(p.labels[:n])
    batched = jax.jit(jax.vmap(attack))(xs, ys, eps=eps, key=keys)
    single = jax.jit(attack)
    for i in range(n):
        r = single(xs[i], ys[i], eps=eps[i], key=keys[i])
        np.testing.assert_allclose(batched.x_adv[i], r.x_adv, atol=1e-5)
    # Two restarts keep the better of the two single runs.
    one = jax.jit(apgd(p.logits_fn, steps=8))
    for i in range(n):
        runs = [one(xs[i], ys[i], eps=eps[i], key=k) for k in jax.random.split(keys[i], 2)]
        if not any(bool(r.success) for r in runs):
            best = max(float(r.aux["loss"]) for r in runs)
            np.testing.assert_allclose(batched.aux["loss"][i], best, rtol=1e-5)
        else:
            assert bool(batched.success[i])


def test_bad_inputs(linear_problem):
    p = linear_problem
    attack = apgd(p.logits_fn, steps=2)
    x, y, key = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0]), jax.random.key(0)
    with pytest.raises(ValueError, match="eps"):
        attack(x, y, eps=-0.1, key=key)
    with pytest.raises(ValueError, match="key"):
        attack(x, y, eps=0.1)
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray(4), eps=0.1, key=key)
    with pytest.raises(ValueError, match="`x`"):
        attack(x * jnp.nan, y, eps=0.1, key=key)
    with pytest.raises(ValueError, match="dlr"):
        apgd(lambda z: z.reshape(-1)[:2], loss="dlr", steps=2)(x, y, eps=0.1, key=key)
    with pytest.raises(ValueError, match="rho"):
        apgd(p.logits_fn, rho=1.5)
    with pytest.raises(ValueError, match="loss"):
        apgd(p.logits_fn, loss="margin")


@pytest.mark.slow
@pytest.mark.data
def test_advertorch_lenet5_apgd_not_weaker_than_published_pgd():
    # PGD-trained advertorch LeNet5, L-infinity eps 0.3: APGD-CE (40 steps) robust accuracy on the
    # first 64 MNIST test images is at most that of advertorch's PGD setting (40 x 0.01, no
    # random start) and within 3 binomial sigma of the published 93.2 %.
    from advjax.data.local import load_mnist_all
    from advjax.models.adapters import linen_logits_fn
    from advjax.models.advertorch import load_lenet5
    from tests.conftest import require_data

    path = require_data("advertorch-lenet5", "lenet5_mnist.npz")
    require_data("mnist-test")
    data = load_mnist_all()
    n = 64
    xs, ys = jnp.asarray(data.images[:n]), jnp.asarray(data.labels[:n])
    logits_fn = linen_logits_fn(*load_lenet5(path, "advtrained"))
    eps = jnp.full((n,), 0.3)
    r_pgd = jax.jit(jax.vmap(pgd(logits_fn, steps=40, step_size=0.01, random_start=False)))(
            xs, ys, eps=eps)
    r_apgd = jax.jit(jax.vmap(apgd(logits_fn, steps=40)))(
            xs, ys, eps=eps, key=jax.random.split(jax.random.key(0), n))
    acc_pgd = float(jnp.mean(r_pgd.clean_correct & ~r_pgd.success))
    acc_apgd = float(jnp.mean(r_apgd.clean_correct & ~r_apgd.success))
    assert acc_apgd <= acc_pgd
    assert abs(acc_apgd - 0.932) <= 0.1
    assert float(jnp.max(r_apgd.linf)) <= 0.3 + 1e-6


def apgd_reference(logits_fn, x, y, eps, key, steps, norm="l2", rho=0.75, alpha=0.75,
                   start=None):
    """Algorithm 1 of Croce & Hein (2020), one untargeted CE run, as a plain Python loop.

    ``start``: the random start ``x^(0)`` before projection (default: ``x`` plus a uniform point
    of the ball drawn with ``key``, as :func:`advjax.attacks.apgd` does).

    Returns ``(x_max, f_max, eta, log)`` with ``log`` counting the checkpoints that halved the
    step, kept it, and halvings whose restart from ``x_max`` moved the iterate.
    """
    f = jax.jit(lambda z: losses.ce_loss(logits_fn(z), y))
    grad = jax.jit(jax.grad(lambda z: losses.ce_loss(logits_fn(z), y)))

    def proj(z):
        return projections.project(z, x, eps, norm, 0.0, 1.0)

    def d(g):
        return projections.steepest_direction(g, norm)

    ckpts = [int(w) for w in checkpoints(steps)]
    if start is None:
        start = x + projections.sample_ball(key, x.shape, eps, norm, x.dtype)
    x0 = proj(start)
    eta = 2.0 * eps
    x1 = proj(x0 + eta * d(grad(x0)))
    f0, f1 = float(f(x0)), float(f(x1))
    x_max, f_max = (x1, f1) if f1 > f0 else (x0, f0)
    x_prev, x_k, f_k = x0, x1, f1
    n_inc, f_max_ckpt, reduced, w_prev = int(f1 > f0), f0, True, 0
    log = {"halved": 0, "kept": 0, "restart_moved": 0}
    for k in range(1, steps):
        z = proj(x_k + eta * d(grad(x_k)))
        x_new = proj(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_prev))
        f_new = float(f(x_new))
        n_inc += f_new > f_k
        if f_new > f_max:
            x_max, f_max = x_new, f_new
        x_prev, x_k, f_k = x_k, x_new, f_new
        if k + 1 in ckpts:
            halve = n_inc < rho * (k + 1 - w_prev) or (not reduced and f_max_ckpt >= f_max)
            if halve:
                eta = 0.5 * eta
                log["restart_moved"] += int(not np.array_equal(np.asarray(x_k), np.asarray(x_max)))
                x_k, f_k = x_max, f_max
            log["halved" if halve else "kept"] += 1
            reduced, f_max_ckpt, n_inc, w_prev = halve, f_max, 0, k + 1
    return x_max, f_max, eta, log


def test_matches_plain_loop_of_algorithm_1(tiny_mlp):
    # L2, eps 0.1 on the tiny MLP: no success (so the result is the max-loss point), and the
    # run exercises every branch: checkpoints that halve and one that keeps the step, and
    # restarts from x_max that move the iterate. So dropping the halving, halving always,
    # dropping momentum or the restart from the best point all change loss, eta or x_adv.
    attack = apgd(tiny_mlp.logits_fn, norm="l2", steps=40)
    for i in (0, 2):
        x, y = jnp.asarray(tiny_mlp.xs[i]), jnp.int32(tiny_mlp.labels[i])
        key = jax.random.key(i)
        x_max, f_max, eta, log = apgd_reference(tiny_mlp.logits_fn, x, y, jnp.float32(0.1), key,
                                                40)
        assert log["halved"] >= 1 and log["kept"] >= 1 and log["restart_moved"] >= 1, log
        res = attack(x, y, eps=jnp.float32(0.1), key=key)
        assert not bool(res.success)
        # float32 rounding of the same operations in another order: 1e-5 relative on the loss.
        np.testing.assert_allclose(float(res.aux["loss"]), f_max, rtol=1e-5)
        np.testing.assert_allclose(float(res.aux["eta"]), eta, rtol=1e-6)
        np.testing.assert_allclose(res.x_adv, x_max, atol=1e-4)


@pytest.mark.parametrize("steps", [6, 12])
def test_momentum_and_best_point_on_an_interior_maximum(steps):
    # A concave loss with its maximum INSIDE the ball and the box (the second logit peaks at
    # x = a, 0.6 eps from x) and no success possible (z_0 = 5 > 0 >= z_1 always wins; a much
    # larger z_0 would round the loss to 0): the iterates circle the maximum, so the momentum
    # term and the restarts from x_max decide where the short run ends. Plain Algorithm 1 is the
    # independent truth; dropping the momentum or the restart from the best point changes x_adv
    # by far more than float32 rounding (1e-4).
    x = jnp.full((4, 4, 1), 0.5)
    direction = jax.random.normal(jax.random.key(3), x.shape)
    eps = jnp.float32(0.5)
    a = x + 0.6 * eps * direction / jnp.linalg.norm(direction)

    def logits_fn(z):
        return jnp.stack([jnp.float32(5.0), -10.0 * jnp.sum((z - a) ** 2)])

    y, key = jnp.int32(0), jax.random.key(5)
    x_max, f_max, eta, _ = apgd_reference(logits_fn, x, y, eps, key, steps)
    res = apgd(logits_fn, norm="l2", steps=steps)(x, y, eps=eps, key=key)
    assert not bool(res.success)
    np.testing.assert_allclose(float(res.aux["loss"]), f_max, rtol=1e-5)
    np.testing.assert_allclose(res.x_adv, x_max, atol=1e-4)
