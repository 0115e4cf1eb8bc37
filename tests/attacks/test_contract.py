"""The contract every attack constructor keeps, checked once for all of them.

* ``jax.jit(jax.vmap(attack))`` equals the eager per-example loop;
* :class:`AttackResult` fields and shapes; ``x_adv`` inside the box;
* invalid input (label ``K``, ``-1``, ``1000``; budget ``< 0`` or NaN; an image in ``[0, 255]``
  or with a NaN) is never a success under ``jit(vmap)`` (``success=False``, NaN distortions,
  ``x_adv = x``, ``aux["valid_input"] = False``) and raises a ``ValueError`` eagerly, and does
  not change the other rows of the batch;
* already-misclassified examples are returned unchanged under the default policy;
* the compiled program does not grow with the number of steps (loops, not unrolling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks import AttackResult, checked
from tests.attacks.conftest import make_linear_problem

PROBLEM = make_linear_problem(seed=3, shape=(4, 4, 1), num_classes=4, n=4)
K = 4

# name -> (constructor(steps), per-example budget name or None, needs key, targeted)
CASES = {
    "fgsm": (lambda f, s: attacks.fgsm(f), "eps", False, False),
    "pgd_linf": (lambda f, s: attacks.pgd(f, steps=s), "eps", True, False),
    "pgd_l2": (lambda f, s: attacks.pgd(f, norm="l2", steps=s), "eps", True, False),
    "apgd": (lambda f, s: attacks.apgd(f, steps=s), "eps", True, False),
    "deepfool": (lambda f, s: attacks.deepfool(f, steps=s), None, False, False),
    "cw_l2": (lambda f, s: attacks.cw_l2(f, steps=s, search_steps=2), None, False, False),
    "lbfgs": (lambda f, s: attacks.lbfgs(f, search_steps=2, max_iterations=s), None, False,
              True),
    "woods_l2": (lambda f, s: attacks.woods_l2(f, steps=s, criterion="l2_min", clip=True),
                 "eps", False, False),
    "gaussian_noise": (lambda f, s: attacks.gaussian_noise(f), "rms", True, False),
}
BUDGET = {"eps": 0.3, "rms": 0.05}
STEPS = 6


def _kwargs(name, i, eps=None, key=True):
    _, budget, needs_key, _ = CASES[name]
    kw = {}
    if budget is not None:
        kw[budget] = jnp.float32(BUDGET[budget] if eps is None else eps)
    if needs_key and key:
        kw["key"] = jax.random.fold_in(jax.random.key(0), i)
    return kw


def _batch_kwargs(name, eps):
    _, budget, needs_key, _ = CASES[name]
    n = len(eps)
    kw = {}
    if budget is not None:
        kw[budget] = jnp.asarray(eps, jnp.float32)
    if needs_key:
        kw["key"] = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(n))
    return kw


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    attack = CASES[name][0](PROBLEM.logits_fn, STEPS)
    return name, attack


def _invalid_rows(name):
    """(description, x, label, budget) of the invalid cases that apply to ``name``."""
    x0 = PROBLEM.xs[0]
    y0 = int(PROBLEM.labels[0])
    budget = CASES[name][1]
    b = BUDGET.get(budget, 0.0)
    rows = [("label K", x0, K, b), ("label -1", x0, -1, b), ("label 1000", x0, 1000, b),
            ("x in [0, 255]", x0 * 255.0, y0, b), ("x with NaN", _with_nan(x0), y0, b)]
    if budget is not None:
        rows += [("budget < 0", x0, y0, -b), ("budget NaN", x0, y0, np.nan)]
    return rows


def _with_nan(x):
    x = np.array(x)
    x.flat[3] = np.nan
    return x


def test_jit_vmap_equals_eager_loop_and_fields(case):
    name, attack = case
    xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
    n = xs.shape[0]
    eps = [BUDGET.get(CASES[name][1], 0.0)] * n
    res = jax.jit(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps))
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == xs.shape and res.logits.shape == (n, K)
    for field in ("success", "l2", "linf", "rmse", "clean_correct"):
        assert getattr(res, field).shape == (n,), field
    assert res.success.dtype == jnp.bool_
    assert bool(jnp.all(res.aux["valid_input"]))
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    # Distortions are the norms of x_adv - x (independent recomputation in float64).
    delta = (np.asarray(res.x_adv, np.float64) - PROBLEM.xs).reshape(n, -1)
    np.testing.assert_allclose(res.l2, np.linalg.norm(delta, axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.linf, np.abs(delta).max(axis=1), rtol=1e-4, atol=1e-6)
    for i in range(2):
        one = attack(xs[i], ys[i], **_kwargs(name, i))
        np.testing.assert_allclose(one.x_adv, res.x_adv[i], atol=2e-5, err_msg=name)
        assert bool(one.success) == bool(res.success[i])


def test_invalid_input_is_never_a_success_under_jit_vmap(case):
    name, attack = case
    rows = _invalid_rows(name)
    x_ok, y_ok = PROBLEM.xs[1], int(PROBLEM.labels[1])
    b_ok = BUDGET.get(CASES[name][1], 0.0)
    xs = jnp.asarray(np.stack([x_ok] + [r[1] for r in rows]), jnp.float32)
    ys = jnp.asarray([y_ok] + [r[2] for r in rows], jnp.int32)
    eps = [b_ok] + [r[3] for r in rows]
    res = jax.jit(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps))
    valid = np.asarray(res.aux["valid_input"])
    assert valid[0], name
    for j, (desc, *_rest) in enumerate(rows, start=1):
        assert not valid[j], (name, desc)
        assert not bool(res.success[j]), (name, desc)
        assert not bool(res.clean_correct[j]), (name, desc)
        assert np.isnan(float(res.l2[j])) and np.isnan(float(res.rmse[j])), (name, desc)
        np.testing.assert_array_equal(res.x_adv[j], xs[j], err_msg=f"{name}: {desc}")
        assert int(res.aux["input_errors"][j]) != 0
    # The valid row is what it would be alone.
    alone = jax.jit(jax.vmap(attack))(xs[:1], ys[:1], **_batch_kwargs(name, eps[:1]))
    np.testing.assert_allclose(res.x_adv[0], alone.x_adv[0], atol=1e-6)
    # The opt-in checked call raises, naming the failed checks and the counts.
    with pytest.raises(Exception, match=rf"invalid input in {len(rows)} of {len(rows) + 1}"):
        checked(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps))


def test_invalid_input_raises_eagerly(case):
    name, attack = case
    for desc, x, y, b in _invalid_rows(name):
        kw = _kwargs(name, 0, eps=b)
        with pytest.raises(ValueError, match="label|`x`|eps|rms"):
            attack(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), **kw)
        del desc


def test_batch_and_per_example_arguments_are_explained(case):
    name, attack = case
    xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
    with pytest.raises(ValueError, match=r"attacks take ONE example; batch with jax.vmap"):
        attack(xs, ys, **_kwargs(name, 0))
    _, budget, needs_key, _ = CASES[name]
    if budget is not None:
        with pytest.raises(ValueError, match=rf"`{budget}` must be a scalar.*jax.vmap"):
            attack(xs[0], ys[0], **{**_kwargs(name, 0), budget: jnp.full((4,), 0.1)})
    if needs_key:
        one_key = jax.random.key(1)
        with pytest.raises(ValueError, match="one key per example"):
            jax.vmap(lambda x, y: attack(x, y, **{**_kwargs(name, 0), "key": one_key}))(xs, ys)


def test_already_misclassified_is_returned_unchanged(case):
    name, attack = case
    x = jnp.asarray(PROBLEM.xs[2])
    pred = int(PROBLEM.labels[2])
    wrong = (pred + 1) % K
    kw = _kwargs(name, 0)
    if CASES[name][3]:  # targeted (lbfgs): already predicted as the target
        res = attack(x, jnp.int32(wrong), target=jnp.int32(pred), **kw)
    else:
        res = attack(x, jnp.int32(wrong), **kw)
    np.testing.assert_array_equal(res.x_adv, x)
    assert bool(res.success) and float(res.l2) == 0.0 and not bool(res.clean_correct)


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n not in ("fgsm",
                                                                          "gaussian_noise")])
def test_compiled_program_is_flat_in_the_step_count(name):
    # Loops must stay loops: the lowered program for 4x the steps is (nearly) the same size.
    # Unrolling would multiply it; 1.2 leaves room for constants such as schedule tables.
    def hlo_size(steps):
        attack = CASES[name][0](PROBLEM.logits_fn, steps)
        xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
        eps = [BUDGET.get(CASES[name][1], 0.0)] * xs.shape[0]
        lowered = jax.jit(jax.vmap(attack)).lower(xs, ys, **_batch_kwargs(name, eps))
        return len(lowered.as_text())

    assert hlo_size(4 * STEPS) <= 1.2 * hlo_size(STEPS)
