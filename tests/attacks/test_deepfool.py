"""DeepFool against the closed-form minimal L2 perturbation of linear models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.deepfool import deepfool
from tests.attacks.conftest import linear_min_l2, linear_min_l2_delta, make_linear_problem


def test_linear_model_one_step_to_closed_form(linear_problem, maybe_jit):
    # Affine classifier, box inactive: one step reaches (1 + overshoot) * the minimal perturbation
    # (plus the 1e-4 logit margin), never less than the closed form.
    p = linear_problem
    attack = deepfool(p.logits_fn, overshoot=0.02)
    attack = maybe_jit(attack)
    for i in range(3):
        x, y = p.xs[i], p.labels[i]
        res = attack(jnp.asarray(x), jnp.asarray(y))
        d = linear_min_l2(p.W, p.b, x, y)
        assert bool(res.success) and int(res.aux["steps"]) == 1
        assert d <= float(res.l2) <= 1.03 * d + 1e-4
        r = linear_min_l2_delta(p.W, p.b, x, y)
        cos = np.dot(np.asarray(res.x_adv - x).reshape(-1), r) / (float(res.l2) * np.linalg.norm(r))
        assert cos > 1 - 1e-4  # the same direction as the exact minimal perturbation


def test_batched_within_percent_of_closed_form(linear_problem):
    p = linear_problem
    res = jax.jit(jax.vmap(deepfool(p.logits_fn)))(jnp.asarray(p.xs), jnp.asarray(p.labels))
    d = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    ratio = np.asarray(res.l2) / d
    assert np.all(res.success)
    assert np.all(ratio >= 1.0 - 1e-5) and np.all(ratio <= 1.03), ratio


def test_candidate_classes_restricted(linear_problem):
    # num_classes=2: only the runner-up class of the clean logits is a candidate.
    p = linear_problem
    x, y = p.xs[0], int(p.labels[0])
    z = x.reshape(-1).astype(np.float64) @ p.W + p.b
    j = int(np.argsort(-z)[1])
    expected = (z[y] - z[j] + 1e-4) / np.linalg.norm(p.W[:, y] - p.W[:, j]) * 1.02
    res = deepfool(p.logits_fn, num_classes=2)(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(res.l2), expected, rtol=1e-3)


def test_nonlinear_model_masked_stop_and_box(tiny_cnn):
    p = tiny_cnn
    attack = deepfool(p.logits_fn, steps=50)
    res = jax.jit(jax.vmap(attack))(jnp.asarray(p.xs), jnp.asarray(p.labels))
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    pred = np.argmax(np.asarray(res.logits), -1)
    np.testing.assert_array_equal(np.asarray(res.success), pred != p.labels)
    assert np.mean(np.asarray(res.success)) >= 0.75
    # Under vmap the loop runs until every example stops, but finished ones are frozen:
    # per-example results equal the single-example runs.
    single = jax.jit(attack)
    for i in range(3):
        r = single(jnp.asarray(p.xs[i]), jnp.asarray(p.labels[i]))
        np.testing.assert_allclose(res.x_adv[i], r.x_adv, atol=1e-5)
        assert int(res.aux["steps"][i]) == int(r.aux["steps"])


def test_already_misclassified_and_errors():
    p = make_linear_problem(seed=0)
    attack = deepfool(p.logits_fn)
    x, y = jnp.asarray(p.xs[0]), int(p.labels[0])
    res = attack(x, jnp.asarray((y + 1) % 4))
    assert not bool(res.clean_correct) and int(res.aux["steps"]) == 0
    np.testing.assert_array_equal(res.x_adv, x)
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray(9))
    with pytest.raises(ValueError, match="`x`"):
        attack(x.at[0, 0, 0].set(jnp.nan), jnp.asarray(y))
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(p.logits_fn, overshoot=-1)
    with pytest.raises(ValueError, match="num_classes"):
        deepfool(p.logits_fn, num_classes=1)


def _wide_linear(k, d=32, seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(d, k)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(k,)), jnp.float32)
    return (lambda x: x.reshape(-1) @ w + b), w, b


def test_cost_scales_with_candidates_not_classes():
    # XLA's cost analysis of one compiled DeepFool on a K-class linear model: with k = 10
    # candidates, going from K = 100 to K = 1000 may grow the FLOPs about linearly (the forward
    # pass and the k vector-Jacobian products are O(K d)), not quadratically as the full
    # Jacobian (K products of cost O(K d)) does; and at K = 1000, k = 10 is far cheaper than all.
    def flops(k_classes, candidates):
        f, *_ = _wide_linear(k_classes)
        attack = deepfool(f, candidates=candidates, steps=3, lo=None, hi=None)
        x = jnp.full((32,), 0.5, jnp.float32)
        compiled = jax.jit(attack).lower(x, jnp.int32(0)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost["flops"])

    small, large, full = flops(100, 10), flops(1000, 10), flops(1000, None)
    assert large < 20 * small, (small, large)
    assert full > 20 * large, (large, full)


def _deepfool_reference(logits_fn, x, y, overshoot, steps, lo=0.0, hi=1.0):
    """Algorithm 2 of Moosavi-Dezfooli et al. (2016) as a plain loop, all classes candidates:
    the overshoot scales the ACCUMULATED perturbation, ``x_{i+1} = clip(x + (1 + o) r_tot)``
    (the reference's ``pert_image = image + (1 + overshoot) * r_tot``)."""
    jac_fn = jax.jit(jax.jacrev(logits_fn))
    r_tot = np.zeros(x.size)
    x_i = np.asarray(x)
    for i in range(steps):
        z = np.asarray(logits_fn(jnp.asarray(x_i)), np.float64)
        if np.argmax(z) != y:
            return x_i, i
        jac = np.asarray(jac_fn(jnp.asarray(x_i)), np.float64).reshape(z.size, -1)
        best = None
        for k in range(z.size):
            if k == y:
                continue
            w = jac[k] - jac[y]
            f = z[k] - z[y]
            d = abs(f) / max(np.linalg.norm(w), 1e-12)
            if best is None or d < best[0]:
                best = (d, (abs(f) + 1e-4) / max(np.dot(w, w), 1e-24) * w)
        r_tot = r_tot + best[1]
        x_i = np.clip(np.asarray(x).reshape(-1) + (1 + overshoot) * r_tot, lo,
                      hi).reshape(x.shape).astype(np.float32)
    return x_i, steps


def test_overshoot_scales_the_accumulated_perturbation(tiny_mlp):
    # A non-linear model where DeepFool needs several steps and a large overshoot (0.5), on
    # images with many pixels at the bounds (so the box clips): the overshoot applied to each
    # step's increment (compounded into r_tot, or stepping from the current clipped iterate)
    # lands elsewhere than the reference loop by far more than float32 rounding (1e-4).
    p = tiny_mlp
    attack = jax.jit(deepfool(p.logits_fn, candidates=None, overshoot=0.5, steps=20))
    xs = np.clip(2.0 * p.xs - 0.5, 0.0, 1.0)
    ys = np.asarray(jnp.argmax(jax.vmap(p.logits_fn)(jnp.asarray(xs)), -1))
    multi = 0
    for i in range(16):
        x, y = jnp.asarray(xs[i]), int(ys[i])
        res = attack(x, jnp.int32(y))
        ref_x, ref_steps = _deepfool_reference(p.logits_fn, x, y, 0.5, 20)
        assert int(res.aux["steps"]) == ref_steps
        np.testing.assert_allclose(res.x_adv, ref_x, atol=1e-4)
        multi += ref_steps >= 2
    assert multi >= 2
