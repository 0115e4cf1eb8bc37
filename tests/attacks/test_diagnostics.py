"""Gradient-masking diagnostics: a masked model trips the matching check, a clean one none."""

from __future__ import annotations

import jax

from advjax.attacks import diagnostics as dg


def _by_name(checks):
    return {c.name: c for c in checks}


def test_clean_model_trips_nothing(tiny_mlp):
    p = tiny_mlp
    checks = dg.diagnose(p.logits_fn, p.xs, p.labels, n_targets=4,
                         robust_accuracy={"apgd-ce": 0.5, "apgd-t": 0.4, "fab-t": 0.4,
                                          "square": 0.4})
    assert not [c.name for c in checks if c.tripped], dg.report(checks)
    assert len(checks) == 5 and all(c.verdict for c in checks)


def test_each_masked_model_trips_its_check(tiny_mlp):
    p = tiny_mlp
    xs, ys = p.xs, p.labels

    def blocked(x):                      # stop_gradient: every input gradient is zero
        return p.logits_fn(jax.lax.stop_gradient(x))

    def saturated(x):                    # saturated softmax: probabilities, not logits
        return jax.nn.softmax(1e4 * p.logits_fn(x))

    def noisy(x, key):                   # randomised defence
        return p.logits_fn(x + 0.05 * jax.random.normal(key, x.shape))

    z = _by_name(dg.diagnose(blocked, xs, ys, n_targets=4))
    assert z["zero_gradients"].tripped and z["zero_gradients"].value == len(ys)
    assert not z["softmax_output"].tripped and not z["randomness"].tripped
    s = _by_name(dg.diagnose(saturated, xs, ys, n_targets=4))
    assert s["softmax_output"].tripped and s["softmax_output"].value < 1e-5
    r = _by_name(dg.diagnose(noisy, xs, ys, randomized=True, n_targets=4))
    assert r["randomness"].tripped and r["randomness"].value > 1e-3
    t = _by_name(dg.diagnose(p.logits_fn, xs, ys, n_targets=9))     # 5 classes: 4 targets max
    assert t["target_classes"].tripped and "only 4" in t["target_classes"].verdict
    sq = dg.check_square({"apgd-ce": 0.5, "apgd-t": 0.45, "fab-t": 0.45, "square": 0.40})
    assert sq.tripped and abs(sq.value - 0.05) < 1e-12
    assert not dg.check_square({"apgd-ce": 0.5, "square": 0.499}).tripped
    assert "zero gradient" in dg.report([z["zero_gradients"]])


def test_square_is_compared_with_the_stage_just_before_it():
    # version="plus": stages after Square lower the accuracy further; the minimum over all
    # stages (0.3) would hide that Square took 10 points from the white-box stages before it.
    plus = {"apgd-ce": 0.5, "apgd-dlr": 0.5, "fab": 0.5, "square": 0.4, "apgd-t": 0.3,
            "fab-t": 0.3}
    sq = dg.check_square(plus)
    assert sq.tripped and abs(sq.value - 0.1) < 1e-12
    assert not dg.check_square({"square": 0.4, "apgd-ce": 0.3}).tripped   # nothing before it
    assert not dg.check_square(dict(plus, square=0.5)).tripped


def test_finite_logits_check():
    bad = dg.check_finite_logits(2, 10)
    assert bad.tripped and "2 of 10" in bad.verdict
    assert not dg.check_finite_logits(0, 10).tripped
