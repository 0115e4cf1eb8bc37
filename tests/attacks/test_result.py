"""The result construction: non-finite logits are never a success, nor robust."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks import checked, make_result
from tests.attacks.conftest import make_linear_problem

PROBLEM = make_linear_problem(seed=3, shape=(4, 4, 1), num_classes=4, n=4)


def _nan_beyond(threshold):
    """The linear model, but NaN logits wherever ``sum(x) > threshold`` (a model that overflows
    far from the data)."""
    def logits_fn(x):
        z = PROBLEM.logits_fn(x)
        return jnp.where(jnp.sum(x) > threshold, jnp.full_like(z, jnp.nan), z)
    return logits_fn


def test_nan_logits_at_x_adv_are_not_a_success():
    # argmax of a NaN vector is 0: for a label != 0 the argmax rule alone calls it a success.
    x = jnp.asarray(PROBLEM.xs[0])
    label = jnp.int32(PROBLEM.labels[0])
    f = _nan_beyond(float(jnp.sum(x)) + 0.5)
    x_adv = x + 0.1                                    # sum grows by 1.6 > 0.5: NaN logits
    assert np.all(np.isnan(np.asarray(f(x_adv))))
    for lab in (label, (label + 1) % 4):
        lab = jnp.int32(lab)
        if int(jnp.argmax(f(x_adv))) == int(lab):
            continue
        res = make_result(f, x, x_adv, lab, reset_misclassified=False)
        assert not bool(res.success)
    # Targeted at class 0 (the argmax of NaN) neither.
    res = make_result(f, x, x_adv, jnp.int32(1), target=jnp.int32(0), reset_misclassified=False)
    assert not bool(res.success)
    # An inf logit vector neither (inf - inf is NaN in the softmax, and any argmax is noise).
    res = make_result(lambda z: jnp.full((4,), jnp.inf), x, x_adv, jnp.int32(1),
                      reset_misclassified=False)
    assert not bool(res.success) and not bool(res.clean_correct)


def test_nan_clean_logits_are_flagged_never_robust():
    xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
    f = _nan_beyond(float(jnp.sum(xs[0])) - 1e-3)      # example 0 already has NaN logits
    assert np.isnan(np.asarray(f(xs[0]))).all()
    sums = np.asarray(jnp.sum(xs.reshape(4, -1), axis=1))
    ok = sums <= float(jnp.sum(xs[0])) - 1e-3
    attack = attacks.pgd(f, steps=2)
    keys = jax.random.split(jax.random.key(0), 4)
    eps = jnp.full((4,), 1e-3)
    res = jax.jit(jax.vmap(attack))(xs, ys, eps=eps, key=keys)
    assert not bool(res.clean_correct[0]) and not bool(res.success[0])
    assert not bool(res.aux["valid_input"][0])
    assert int(res.aux["input_errors"][0]) & (1 << 5)
    np.testing.assert_array_equal(np.asarray(res.aux["valid_input"]), ok)
    with pytest.raises(Exception, match=r"logits_fn\(x\) finite: 1"):
        checked(jax.vmap(attack))(xs[:1], ys[:1], eps=eps[:1], key=keys[:1])
    with pytest.raises(ValueError, match="logits_fn"):
        attack(xs[0], ys[0], eps=1e-3, key=keys[0])
    # make_result alone: clean_correct False, also for label 0 (the argmax of NaN), for which
    # the argmax rule alone would count the example clean-correct, hence robust.
    for lab in (0, 1):
        res = make_result(f, xs[0], xs[0], jnp.int32(lab))
        assert not bool(res.clean_correct) and not bool(res.success), lab
