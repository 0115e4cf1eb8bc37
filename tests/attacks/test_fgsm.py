"""FGSM / fast gradient method against closed forms on linear models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advjax.attacks.fgsm import fgsm
from tests.attacks.conftest import make_linear_problem


def test_linf_binary_equals_closed_form_sign_step(binary_linear_problem, maybe_jit):
    # CE gradient of a binary linear model is (1 - p_y)(w_other - w_y): the step is its sign.
    p = binary_linear_problem
    attack = maybe_jit(fgsm(p.logits_fn))
    for x, y in zip(p.xs[:4], p.labels[:4], strict=True):
        eps = 0.03
        res = attack(jnp.asarray(x), jnp.asarray(y), eps=eps)
        w = p.W[:, 1 - y] - p.W[:, y]
        expected = np.clip(x.reshape(-1) + eps * np.sign(w), 0, 1)
        np.testing.assert_allclose(np.asarray(res.x_adv).reshape(-1), expected, atol=1e-6)
        np.testing.assert_allclose(res.linf, eps, rtol=1e-5)


def test_l2_binary_equals_normalised_gradient_step(binary_linear_problem, maybe_jit):
    p = binary_linear_problem
    attack = maybe_jit(fgsm(p.logits_fn, norm="l2"))
    x, y = p.xs[0], p.labels[0]
    res = attack(jnp.asarray(x), jnp.asarray(y), eps=0.1)
    w = p.W[:, 1 - y] - p.W[:, y]
    expected = x.reshape(-1) + 0.1 * w / np.linalg.norm(w)
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(-1), expected, atol=1e-6)
    np.testing.assert_allclose(res.l2, 0.1, rtol=1e-5)


def test_targeted_multiclass_descends_target_ce(linear_problem):
    # grad_x CE(t) = W (softmax(z) - e_t); the targeted step is x - eps * sign(that).
    p = linear_problem
    attack = fgsm(p.logits_fn, targeted=True)
    x, y = p.xs[1], int(p.labels[1])
    t = (y + 1) % p.W.shape[1]
    z = x.reshape(-1).astype(np.float64) @ p.W + p.b
    prob = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grad = p.W @ (prob - np.eye(p.W.shape[1])[t])
    res = attack(jnp.asarray(x), jnp.asarray(y), eps=0.02, target=jnp.asarray(t))
    expected = x.reshape(-1) - 0.02 * np.sign(grad)
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(-1), expected, atol=1e-6)
    assert bool(res.success) == (int(np.argmax(res.logits)) == t)


_BOX_PROBLEM = make_linear_problem(seed=3, weight_scale=5.0, margin=0.0)
_BOX_ATTACK = jax.jit(fgsm(_BOX_PROBLEM.logits_fn))


@settings(max_examples=25, deadline=None)
@given(x=st.lists(st.floats(0, 1, width=32), min_size=16, max_size=16),
       eps=st.floats(0, 0.75, width=32))
def test_box_and_budget_property(x, eps):
    xv = jnp.asarray(np.asarray(x, np.float32).reshape(4, 4, 1))
    y = jnp.argmax(_BOX_PROBLEM.logits_fn(xv))
    res = _BOX_ATTACK(xv, y, eps=jnp.float32(eps))
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert float(res.linf) <= eps + 1e-6


def test_jit_vmap_matches_python_loop(linear_problem):
    p = linear_problem
    attack = fgsm(p.logits_fn, targeted=True)
    eps = np.linspace(0.01, 0.08, len(p.xs)).astype(np.float32)
    targets = ((p.labels + 1) % 4).astype(np.int32)
    batched = jax.jit(jax.vmap(attack))(jnp.asarray(p.xs), jnp.asarray(p.labels),
                                         eps=jnp.asarray(eps), target=jnp.asarray(targets))
    for i in range(len(p.xs)):
        single = attack(jnp.asarray(p.xs[i]), jnp.asarray(p.labels[i]), eps=eps[i],
                        target=jnp.asarray(targets[i]))
        np.testing.assert_allclose(batched.x_adv[i], single.x_adv, atol=1e-6)
        assert bool(batched.success[i]) == bool(single.success)


def test_already_misclassified_reported_unchanged(linear_problem):
    p = linear_problem
    x, y = jnp.asarray(p.xs[0]), int(p.labels[0])
    res = fgsm(p.logits_fn)(x, jnp.asarray((y + 1) % 4), eps=0.1)
    assert not bool(res.clean_correct) and bool(res.success)
    np.testing.assert_array_equal(res.x_adv, x)


def test_bad_inputs(linear_problem):
    p = linear_problem
    attack = fgsm(p.logits_fn)
    x, y = jnp.asarray(p.xs[0]), jnp.asarray(p.labels[0])
    with pytest.raises(ValueError, match="eps"):
        attack(x, y, eps=-0.1)
    with pytest.raises(ValueError, match="`x`"):
        attack(x.at[0, 0, 0].set(jnp.nan), y, eps=0.1)
    with pytest.raises(ValueError, match="`x`"):
        attack(x + 2.0, y, eps=0.1)
    with pytest.raises(TypeError, match="`x`"):
        attack(jnp.ones((4, 4, 1), jnp.int32), y, eps=0.1)
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray(7), eps=0.1)
    with pytest.raises(ValueError, match="label"):
        attack(x, jnp.asarray([1, 2]), eps=0.1)
    with pytest.raises(ValueError, match="target"):
        attack(x, y, eps=0.1, target=jnp.asarray(1))
    with pytest.raises(ValueError, match="target"):
        fgsm(p.logits_fn, targeted=True)(x, y, eps=0.1)
    with pytest.raises(ValueError, match="norm"):
        fgsm(p.logits_fn, norm="l1")
    with pytest.raises(ValueError, match="lo"):
        fgsm(p.logits_fn, lo=1.0, hi=0.0)


def test_reset_misclassified_false_perturbs_every_example(binary_linear_problem):
    p = binary_linear_problem
    x, y = p.xs[0], int(p.labels[0])
    res = fgsm(p.logits_fn, reset_misclassified=False)(jnp.asarray(x), jnp.asarray(1 - y), eps=0.03)
    # Ascending CE of the wrong label moves towards the true class: sign(w_y - w_{1-y}).
    expected = x.reshape(-1) + 0.03 * np.sign(p.W[:, y] - p.W[:, 1 - y])
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(-1), expected, atol=1e-6)
    assert not bool(res.clean_correct)
