"""``evaluate``'s own numbers: the state names the model, masking checks, non-finite logits,
flat inputs, PRNG implementations, and the same validation as ``autoattack``."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.autoattack import autoattack
from advjax.attacks.evaluate import AutoAttackEvaluator, evaluate

KW = dict(steps=4, queries=30, n_targets=2)
ONE = dict(KW, attacks=["apgd-ce"], batch_size=16)


def _by_name(checks):
    return {c.name: c for c in checks}


def test_a_model_with_the_same_predictions_but_other_logits_is_refused(tiny_mlp, tmp_path,
                                                                        caplog):
    # 2 * logits has the same argmax everywhere: only the logits digest tells the models apart
    # (before, a PGD-trained model got a plain model's numbers from the same state_path).
    p, key, state = tiny_mlp, jax.random.key(0), tmp_path / "state.npz"
    first = evaluate(p.logits_fn, p.xs, p.labels, eps=0.08, key=key, state_path=state, **ONE)
    with pytest.raises(ValueError, match="another model") as err:
        evaluate(lambda x: 2.0 * p.logits_fn(x), p.xs, p.labels, eps=0.08, key=key,
                 state_path=state, **ONE)
    assert "SHA-256" in str(err.value)
    with pytest.raises(ValueError, match="(?s)other budgets `eps`.*another model"):
        evaluate(lambda x: 2.0 * p.logits_fn(x), p.xs, p.labels, eps=0.07, key=key,
                 state_path=state, **ONE)
    with caplog.at_level(logging.INFO, logger="advjax.attacks.evaluate"):
        again = evaluate(p.logits_fn, p.xs, p.labels, eps=0.08, key=key, state_path=state,
                         **ONE)
    lines = [r for r in caplog.records if "resumed" in r.getMessage()]
    assert len(lines) == 1 and "['apgd-ce']" in lines[0].getMessage(), lines
    assert lines[0].levelno >= logging.WARNING   # shown without any logging set-up
    np.testing.assert_array_equal(again.broken_by, first.broken_by)


def test_masking_checks_are_run_recorded_and_warned(tiny_mlp):
    p, key = tiny_mlp, jax.random.key(1)
    clean = evaluate(p.logits_fn, p.xs, p.labels, eps=0.05, key=key, **ONE)
    checks = _by_name(clean.checks)
    assert {"softmax_output", "zero_gradients", "randomness", "nonfinite_logits",
            "square_beats_white_box"} <= set(checks)
    assert not [c.name for c in clean.checks if c.tripped]

    def saturated(x):                    # probabilities, not logits
        return jax.nn.softmax(1e4 * p.logits_fn(x))

    def blocked(x):                      # every input gradient is zero
        return p.logits_fn(jax.lax.stop_gradient(x))

    rng = np.random.default_rng(0)

    def flaky(x):                        # a new constant each trace: two calls differ
        return p.logits_fn(x) + jnp.asarray(rng.normal(size=5), jnp.float32)

    for fn, name in ((saturated, "softmax_output"), (blocked, "zero_gradients"),
                     (flaky, "randomness")):
        with pytest.warns(RuntimeWarning, match=name):
            ev = evaluate(fn, p.xs, p.labels, eps=0.05, key=key, **ONE)
        assert _by_name(ev.checks)[name].tripped, name
        assert f"{name} (warning)" in ev.table()


def test_nonfinite_logits_are_invalid_never_a_success(tiny_mlp):
    p = tiny_mlp
    xs = np.asarray(p.xs)
    labels = np.zeros(len(xs), np.int32)          # argmax(NaN) == 0 would look "correct"
    nan_clean = np.arange(len(xs)) < 3
    xs = xs.copy()
    xs[nan_clean, 0, 0, 0] = 1.0                  # the model is NaN where x[0, 0, 0] > 0.99
    labels[~nan_clean] = np.asarray(p.labels)[~nan_clean]
    top = float(xs[~nan_clean].max())

    def model(x):
        # NaN at the clean marked points, and wherever an attack pushes a pixel above `top`.
        bad = (x[0, 0, 0] > 0.99) | jnp.any(x > top + 1e-3)
        return jnp.where(bad, jnp.nan, p.logits_fn(x))

    with pytest.warns(RuntimeWarning, match="nonfinite_logits"):
        ev = evaluate(model, xs, labels, eps=0.08, key=jax.random.key(2), **ONE)
    assert not ev.clean_correct[nan_clean].any() and ev.invalid[nan_clean].all()
    assert not ev.robust[ev.invalid].any() and (ev.broken_by[ev.invalid] == -1).all()
    broken = ev.broken_by >= 0
    logits = np.asarray(jax.vmap(model)(jnp.asarray(ev.x_adv[broken])))
    assert np.isfinite(logits).all()              # a success is a finite misclassification
    assert ev.num_invalid == int(ev.invalid.sum()) > int(nan_clean.sum())  # some at x_adv too
    assert _by_name(ev.checks)["nonfinite_logits"].value == ev.num_invalid


def test_flat_inputs_are_refused_up_front_for_square(tiny_mlp):
    p = tiny_mlp
    flat = np.asarray(p.xs).reshape(len(p.xs), -1)
    fn = lambda v: p.logits_fn(v.reshape(4, 4, 1))  # noqa: E731
    ev = AutoAttackEvaluator(fn, **KW)
    ran = []
    ev._run_chunked = lambda *a, **k: ran.append(a[0])
    with pytest.raises(ValueError, match=r"`xs` has shape \(16, 16\).*'square'"):
        ev(flat, p.labels, eps=0.05, key=jax.random.key(0))
    assert ran == []                               # no stage ran before the refusal
    out = evaluate(fn, flat, p.labels, eps=0.05, key=jax.random.key(0),
                   **dict(KW, attacks=["apgd-ce", "apgd-t"]))
    assert out.x_adv.shape == flat.shape


def test_a_key_of_another_prng_implementation_is_kept(tiny_mlp):
    p = tiny_mlp
    key = jax.random.key(5, impl="rbg")
    # JAX's "rbg" bits under vmap depend on the batch: ONE's batch_size (16) is the whole set,
    # the batch of the reference.
    ev = evaluate(p.logits_fn, p.xs, p.labels, eps=0.08, key=key, **ONE)
    n = len(p.labels)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    ref = jax.jit(jax.vmap(autoattack(p.logits_fn, attacks=["apgd-ce"], **KW)))(
        jnp.asarray(p.xs), jnp.asarray(p.labels), eps=jnp.full(n, 0.08), key=keys)
    np.testing.assert_array_equal(ev.broken_by == 0, np.asarray(ref.aux["apgd-ce"]))
    assert 0 < (ev.broken_by == 0).sum() < n


def test_the_evaluator_validates_as_autoattack_does(tiny_mlp):
    p = tiny_mlp
    for kwargs in (dict(attacks=()), dict(version="rand", attacks=["fab"]),
                   dict(attacks=["apgd-ce", "pgd"])):
        with pytest.raises(ValueError, match="attacks") as want:
            autoattack(p.logits_fn, **kwargs)
        with pytest.raises(ValueError, match="attacks") as got:
            AutoAttackEvaluator(p.logits_fn, **kwargs)
        assert str(got.value) == str(want.value)
    three = lambda x: p.logits_fn(x)[:3]  # noqa: E731
    labels = np.asarray(p.labels) % 3
    with pytest.raises(ValueError, match="'apgd-t' needs at least 4 classes"):
        evaluate(three, p.xs, labels, eps=0.05, key=jax.random.key(0),
                 **dict(KW, attacks=["apgd-ce", "apgd-t"]))


def test_each_stage_runs_on_the_robust_examples_with_their_own_keys(tiny_mlp):
    """Examples 0-3 are misclassified (labels shifted), so the examples still robust are not the
    first ones: each must be attacked with its own key ``fold_in(key, j)`` (a compaction that
    took the keys by position gave other random starts), and a misclassified example is never
    attacked nor counted robust."""
    p, key = tiny_mlp, jax.random.key(5)
    preds = np.asarray(jax.vmap(p.logits_fn)(jnp.asarray(p.xs))).argmax(-1)
    labels = np.asarray(p.labels).copy()
    labels[:4] = (preds[:4] + 1) % 5
    correct = labels == preds
    ev = evaluate(p.logits_fn, p.xs, labels, eps=0.08, key=key, **ONE)
    np.testing.assert_array_equal(ev.clean_correct, correct)
    assert not ev.robust[~correct].any() and ev.attacked["apgd-ce"] == int(correct.sum())
    assert ev.robust_accuracy["apgd-ce"] == float(ev.robust.mean()) <= ev.clean_accuracy
    attack = jax.jit(autoattack(p.logits_fn, attacks=["apgd-ce"], **KW))
    broke = 0
    for j in np.flatnonzero(correct):
        r = attack(jnp.asarray(p.xs[j]), jnp.asarray(labels[j]), eps=0.08,
                   key=jax.random.fold_in(key, j))
        assert bool(r.success) == (ev.broken_by[j] == 0), j
        if r.success:
            broke += 1
            np.testing.assert_allclose(ev.x_adv[j], np.asarray(r.x_adv), atol=1e-6)
    assert 0 < broke < correct.sum()  # both outcomes, so the points compared are attack points
