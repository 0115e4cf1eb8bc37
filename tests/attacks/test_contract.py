"""The contract every attack constructor keeps, checked once for ALL of them (``CASES``).

* every constructor exported from :mod:`advjax.attacks` is in ``CASES`` (or explicitly not a
  constructor): a new attack cannot skip this file;
* ``jax.jit(jax.vmap(attack))`` equals the eager per-example loop; :class:`AttackResult` fields
  and shapes; distortions are the norms of ``x_adv - x``; ``x_adv`` inside the box and, for a
  fixed-budget attack, inside the budget;
* invalid input (label ``K``, ``-1``, ``1000``; budget ``< 0`` or NaN; an image in ``[0, 255]``
  or with a NaN -- with the label equal to the clean prediction, so that a missing flag would
  count it robust; a bad target) is never robust nor a success under ``jit(vmap)``
  (``success=False``, ``clean_correct=False``, NaN distortions, ``x_adv = x``,
  ``aux["valid_input"] = False``), ``checked`` raises the documented error, an eager call raises
  a ``ValueError`` naming the argument, and the other rows of the batch are unchanged;
* already-misclassified examples are returned unchanged under the default policy;
* restarts are never worse than one run (run 0 of ``R`` runs is the single run);
* the compiled program does not grow with the number of steps (loops, not unrolling).

(Lowered gradients equal to native ones are covered by the lowering tests.)
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
STEPS = 6


def _aa(f, s):
    return attacks.autoattack(f, steps=s, queries=4 * s, n_targets=2)


# name -> (constructor(logits_fn, steps), budget name or None, budget norm or None, needs key,
#          targeted, constructor name in advjax.attacks)
CASES = {
    "fgsm": (lambda f, s: attacks.fgsm(f), "eps", "linf", False, False, "fgsm"),
    "pgd_linf": (lambda f, s: attacks.pgd(f, steps=s), "eps", "linf", True, False, "pgd"),
    "pgd_l2": (lambda f, s: attacks.pgd(f, norm="l2", steps=s), "eps", "l2", True, False, "pgd"),
    "apgd": (lambda f, s: attacks.apgd(f, steps=s), "eps", "linf", True, False, "apgd"),
    "apgd_targeted": (lambda f, s: attacks.apgd_targeted(f, steps=s, n_targets=2), "eps", "linf",
                      True, False, "apgd_targeted"),
    "fab": (lambda f, s: attacks.fab(f, steps=s), None, None, True, False, "fab"),
    "fab_eps": (lambda f, s: attacks.fab(f, norm="l2", steps=s), "eps", "l2", True, False, "fab"),
    "square": (lambda f, s: attacks.square(f, queries=4 * s), "eps", "linf", True, False,
               "square"),
    "autoattack": (_aa, "eps", "linf", True, False, "autoattack"),
    "deepfool": (lambda f, s: attacks.deepfool(f, steps=s), None, None, False, False,
                 "deepfool"),
    "apgd_l1": (lambda f, s: attacks.apgd(f, norm="l1", steps=s), "eps", "l1", True, False,
                "apgd"),
    "fab_l1": (lambda f, s: attacks.fab(f, norm="l1", steps=s), "eps", "l1", True, False, "fab"),
    "square_l1": (lambda f, s: attacks.square(f, norm="l1", queries=4 * s), "eps", "l1", True,
                  False, "square"),
    "autoattack_l1": (lambda f, s: attacks.autoattack(f, norm="l1", steps=s, queries=4 * s,
                                                      n_targets=2), "eps", "l1", True, False,
                      "autoattack"),
    "fmn": (lambda f, s: attacks.fmn(f, steps=s), None, None, False, False, "fmn"),
    "fmn_l1": (lambda f, s: attacks.fmn(f, norm="l1", steps=s), None, None, False, False, "fmn"),
    "fmn_l0": (lambda f, s: attacks.fmn(f, norm="l0", steps=s), None, None, False, False, "fmn"),
    "ddn": (lambda f, s: attacks.ddn(f, steps=s), None, None, False, False, "ddn"),
    "cw_l2": (lambda f, s: attacks.cw_l2(f, steps=s, search_steps=2), None, None, False, False,
              "cw_l2"),
    "lbfgs": (lambda f, s: attacks.lbfgs(f, search_steps=2, max_iterations=s), None, None, False,
              True, "lbfgs"),
    "woods_l2": (lambda f, s: attacks.woods_l2(f, steps=s, criterion="l2_min", clip=True),
                 "eps", None, False, False, "woods_l2"),
    "gaussian_noise": (lambda f, s: attacks.gaussian_noise(f), "rms", None, True, False,
                       "gaussian_noise"),
}
# Exports of advjax.attacks that are not attack constructors (results, helpers, batch drivers
# assembled from constructors). Anything else exported must be a constructor listed in CASES.
NOT_CONSTRUCTORS = {
    "AttackResult", "bpda", "checked", "distortions", "is_success", "make_result", "losses",
    "projections", "random_wrong_target", "second_most_likely_target", "AutoAttackEvaluator",
    "Evaluation", "evaluate", "min_eps", "accuracy_vs_eps",
}
# Budgets large enough that the linear problem is broken by most attacks (minimal L2 ~0.05-0.3).
BUDGET = {"eps": 0.3, "rms": 0.05}
# Box and budget: the box exactly (clipping), the budget up to the boundary's float slack.
BUDGET_ATOL = 1e-5


def _case(name):
    return CASES[name]


def _kwargs(name, i, eps=None, key=True):
    _, budget, _, needs_key, _, _ = CASES[name]
    kw = {}
    if budget is not None:
        kw[budget] = jnp.float32(BUDGET[budget] if eps is None else eps)
    if needs_key and key:
        kw["key"] = jax.random.fold_in(jax.random.key(0), i)
    return kw


def _batch_kwargs(name, eps):
    _, budget, _, needs_key, _, _ = CASES[name]
    n = len(eps)
    kw = {}
    if budget is not None:
        kw[budget] = jnp.asarray(eps, jnp.float32)
    if needs_key:
        kw["key"] = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(n))
    return kw


def _targets(name, ys, bad=None):
    """Targets for a targeted case: the next class (valid), or the given bad targets."""
    if not CASES[name][4]:
        return {}
    t = (np.asarray(ys) + 1) % K if bad is None else np.asarray(bad)
    return {"target": jnp.asarray(t, jnp.int32)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    attack = CASES[name][0](PROBLEM.logits_fn, STEPS)
    return name, attack


def test_every_exported_constructor_is_in_the_contract():
    listed = {c[5] for c in CASES.values()}
    exported = set(attacks.__all__)
    missing = exported - listed - NOT_CONSTRUCTORS
    assert not missing, f"constructors exported from advjax.attacks but not in CASES: {missing}"
    assert listed <= exported
    # A name classified as "not a constructor" must not build a per-example attack from a model.
    for name in NOT_CONSTRUCTORS:
        assert name in exported, name


def _invalid_rows(name):
    """(description, x, label, budget, target) of the invalid cases that apply to ``name``.

    The out-of-box and NaN images keep the clean prediction as label: without the flag they
    would be counted robust (clean-correct and not broken)."""
    x0 = PROBLEM.xs[0]
    y0 = int(PROBLEM.labels[0])
    _, budget, _, _, targeted, _ = CASES[name]
    b = BUDGET.get(budget, 0.0)
    t0 = (y0 + 1) % K
    rows = [("label K", x0, K, b, t0), ("label -1", x0, -1, b, t0),
            ("label 1000", x0, 1000, b, t0),
            ("x in [0, 255]", x0 * 255.0, y0, b, t0), ("x with NaN", _with_nan(x0), y0, b, t0)]
    if budget is not None:
        rows += [("budget < 0", x0, y0, -b, t0), ("budget NaN", x0, y0, np.nan, t0)]
    if targeted:
        rows += [("target == label", x0, y0, b, y0), ("target K", x0, y0, b, K),
                 ("target -1", x0, y0, b, -1)]
    return rows


def _with_nan(x):
    x = np.array(x)
    x.flat[3] = np.nan
    return x


def test_jit_vmap_equals_eager_loop_fields_box_and_budget(case):
    name, attack = case
    _, budget, norm, _, _, _ = CASES[name]
    xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
    n = xs.shape[0]
    eps = [BUDGET.get(budget, 0.0)] * n
    res = jax.jit(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps), **_targets(name, ys))
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == xs.shape and res.logits.shape == (n, K)
    for field in ("success", "l2", "linf", "rmse", "clean_correct"):
        assert getattr(res, field).shape == (n,), field
    assert res.success.dtype == jnp.bool_ and res.clean_correct.dtype == jnp.bool_
    assert bool(jnp.all(res.aux["valid_input"])) and not np.any(res.aux["input_errors"])
    assert bool(jnp.all(res.clean_correct))        # labels are the clean predictions
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    # Distortions are the norms of x_adv - x (independent recomputation in float64).
    delta = (np.asarray(res.x_adv, np.float64) - PROBLEM.xs).reshape(n, -1)
    np.testing.assert_allclose(res.l2, np.linalg.norm(delta, axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.linf, np.abs(delta).max(axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.rmse, np.linalg.norm(delta, axis=1) / 4.0, rtol=1e-4,
                               atol=1e-6)
    # Success is the argmax rule at x_adv (independent recomputation).
    pred = np.argmax(np.asarray(res.logits), axis=1)
    if CASES[name][4]:
        np.testing.assert_array_equal(res.success, pred == (np.asarray(ys) + 1) % K)
    else:
        np.testing.assert_array_equal(res.success, pred != np.asarray(ys))
    if norm is not None:
        size = {"linf": np.abs(delta).max(axis=1), "l2": np.linalg.norm(delta, axis=1),
                "l1": np.abs(delta).sum(axis=1)}[norm]
        assert np.all(size <= BUDGET[budget] + BUDGET_ATOL), (name, size)
    for i in range(2):
        one = attack(xs[i], ys[i], **_kwargs(name, i), **_targets(name, ys[i]))
        np.testing.assert_allclose(one.x_adv, res.x_adv[i], atol=2e-5, err_msg=name)
        assert bool(one.success) == bool(res.success[i])


def test_invalid_input_is_never_robust_nor_a_success_under_jit_vmap(case):
    name, attack = case
    rows = _invalid_rows(name)
    x_ok, y_ok = PROBLEM.xs[1], int(PROBLEM.labels[1])
    b_ok = BUDGET.get(CASES[name][1], 0.0)
    xs = jnp.asarray(np.stack([x_ok] + [r[1] for r in rows]), jnp.float32)
    ys = jnp.asarray([y_ok] + [r[2] for r in rows], jnp.int32)
    eps = [b_ok] + [r[3] for r in rows]
    tgt = _targets(name, ys, bad=[(y_ok + 1) % K] + [r[4] for r in rows])
    res = jax.jit(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps), **tgt)
    valid = np.asarray(res.aux["valid_input"])
    assert valid[0], name
    for j, (desc, *_rest) in enumerate(rows, start=1):
        assert not valid[j], (name, desc)
        assert not bool(res.success[j]), (name, desc)
        assert not bool(res.clean_correct[j]), (name, desc)     # never counted robust
        assert np.isnan(float(res.l2[j])) and np.isnan(float(res.rmse[j])), (name, desc)
        np.testing.assert_array_equal(res.x_adv[j], xs[j], err_msg=f"{name}: {desc}")
        assert int(res.aux["input_errors"][j]) != 0
        for key, flag in res.aux.items():       # no stage / sanity flag of a stand-in leaks out
            if key != "valid_input" and np.asarray(flag).dtype == np.bool_:
                assert not np.any(np.asarray(flag)[j]), (name, desc, key)
    # The valid row is what it would be alone.
    alone = jax.jit(jax.vmap(attack))(xs[:1], ys[:1], **_batch_kwargs(name, eps[:1]),
                                      **({k: v[:1] for k, v in tgt.items()}))
    np.testing.assert_allclose(res.x_adv[0], alone.x_adv[0], atol=1e-6)
    # The opt-in checked call raises the documented error, naming the failed checks and counts.
    with pytest.raises(Exception, match=rf"invalid input in {len(rows)} of {len(rows) + 1}"):
        checked(jax.vmap(attack))(xs, ys, **_batch_kwargs(name, eps), **tgt)


def test_invalid_input_raises_eagerly_naming_the_argument(case):
    name, attack = case
    for desc, x, y, b, t in _invalid_rows(name):
        kw = _kwargs(name, 0, eps=b)
        arg = ("target" if desc.startswith("target") else "label" if desc.startswith("label")
               else "`x`" if desc.startswith("x ") else CASES[name][1])
        with pytest.raises(ValueError, match=arg):
            attack(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), **kw,
                   **_targets(name, y, bad=t))


def test_batch_and_per_example_arguments_are_explained(case):
    name, attack = case
    xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
    with pytest.raises(ValueError, match=r"attacks take ONE example; batch with jax.vmap"):
        attack(xs, ys, **_kwargs(name, 0), **_targets(name, ys))
    _, budget, _, needs_key, _, _ = CASES[name]
    if budget is not None:
        with pytest.raises(ValueError, match=rf"`{budget}` must be a scalar.*jax.vmap"):
            attack(xs[0], ys[0], **{**_kwargs(name, 0), budget: jnp.full((4,), 0.1)},
                   **_targets(name, ys[0]))
    if needs_key:
        one_key = jax.random.key(1)
        with pytest.raises(ValueError, match="one key per example"):
            jax.vmap(lambda x, y: attack(x, y, **{**_kwargs(name, 0), "key": one_key},
                                         **_targets(name, y)))(xs, ys)


def test_already_misclassified_is_returned_unchanged(case):
    name, attack = case
    x = jnp.asarray(PROBLEM.xs[2])
    pred = int(PROBLEM.labels[2])
    wrong = (pred + 1) % K
    kw = _kwargs(name, 0)
    if CASES[name][4]:  # targeted (lbfgs): already predicted as the target
        res = attack(x, jnp.int32(wrong), target=jnp.int32(pred), **kw)
    else:
        res = attack(x, jnp.int32(wrong), **kw)
    np.testing.assert_array_equal(res.x_adv, x)
    assert bool(res.success) and float(res.l2) == 0.0 and not bool(res.clean_correct)
    assert bool(res.aux["valid_input"])


# name -> constructor(logits_fn, runs): the attacks with restarts.
RESTARTS = {
    "pgd_linf": lambda f, r: attacks.pgd(f, steps=3, restarts=r),
    "apgd": lambda f, r: attacks.apgd(f, steps=3, n_restarts=r),
    "apgd_targeted": lambda f, r: attacks.apgd_targeted(f, steps=3, n_targets=1, n_restarts=r),
    "fab": lambda f, r: attacks.fab(f, steps=2, n_restarts=r),
    "square": lambda f, r: attacks.square(f, queries=3, n_restarts=r),
    "autoattack": lambda f, r: attacks.autoattack(f, steps=3, attacks=("apgd-ce",),
                                                  apgd_restarts=r),
}


@pytest.mark.parametrize("name", sorted(RESTARTS))
def test_restarts_are_never_worse_than_one_run(name):
    # Small budgets so that single runs fail on some examples: a run-0 success must survive,
    # and (minimum-norm FAB) the size found never grows with more runs.
    n = 8
    prob = make_linear_problem(seed=5, shape=(4, 4, 1), num_classes=4, n=n)
    xs, ys = jnp.asarray(prob.xs), jnp.asarray(prob.labels)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(jnp.arange(n))
    kw = {} if name == "fab" else {"eps": jnp.full((n,), 0.04, jnp.float32)}
    one = jax.jit(jax.vmap(RESTARTS[name](prob.logits_fn, 1)))(xs, ys, key=keys, **kw)
    many = jax.jit(jax.vmap(RESTARTS[name](prob.logits_fn, 3)))(xs, ys, key=keys, **kw)
    assert np.all(np.asarray(many.success) >= np.asarray(one.success)), name
    if name == "fab":
        size1 = np.where(one.success, one.aux["size"], np.inf)
        size3 = np.where(many.success, many.aux["size"], np.inf)
        assert np.all(size3 <= size1 + 1e-6)


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n not in (
    "fgsm", "gaussian_noise", "autoattack", "autoattack_l1")])
def test_compiled_program_is_flat_in_the_step_count(name):
    # Loops must stay loops: the lowered program for 4x the steps is (nearly) the same size.
    # Unrolling would multiply it; 1.2 leaves room for constants such as schedule tables.
    # (AutoAttack is its stages, each covered here.)
    def hlo_size(steps):
        attack = CASES[name][0](PROBLEM.logits_fn, steps)
        xs, ys = jnp.asarray(PROBLEM.xs), jnp.asarray(PROBLEM.labels)
        eps = [BUDGET.get(CASES[name][1], 0.0)] * xs.shape[0]
        lowered = jax.jit(jax.vmap(attack)).lower(xs, ys, **_batch_kwargs(name, eps),
                                                  **_targets(name, ys))
        return len(lowered.as_text())

    assert hlo_size(4 * STEPS) <= 1.2 * hlo_size(STEPS)


def test_typed_keys_keep_their_implementation():
    # The one per-example key helper: key i is fold_in(key, i), independent of n, and an rbg key
    # stays rbg (never rewrapped with the default implementation); attacks accept it.
    from advjax.attacks._boundary import example_keys

    key = jax.random.key(0, impl="rbg")
    keys = example_keys(key, 3)
    assert keys.dtype == key.dtype and str(jax.random.key_impl(keys)) == str(
        jax.random.key_impl(key))
    np.testing.assert_array_equal(jax.random.key_data(keys[2]),
                                  jax.random.key_data(jax.random.fold_in(key, 2)))
    np.testing.assert_array_equal(jax.random.key_data(example_keys(key, 5)[:3]),
                                  jax.random.key_data(keys))
    xs, ys = jnp.asarray(PROBLEM.xs[:3]), jnp.asarray(PROBLEM.labels[:3])
    attack = attacks.apgd(PROBLEM.logits_fn, steps=2, n_restarts=2)
    batched = jax.jit(jax.vmap(attack))(xs, ys, eps=jnp.full((3,), 0.1), key=keys)
    one = attack(xs[1], ys[1], eps=0.1, key=jax.random.fold_in(key, 1))
    np.testing.assert_allclose(batched.x_adv[1], one.x_adv, atol=2e-5)
