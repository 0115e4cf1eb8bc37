"""The adaptive evaluation (``version="adaptive"``): the transfer stage attacks a surrogate and
verifies on the target, the gradient-masking checks decide the extra Square restarts, and the
table says what the adaptive stages broke beyond AutoAttack.

Truth: a linear model ``z = W x + b`` without a box. ``argmax z != y`` exactly when some class
``t`` has ``z_t > z_y``, a half-space, so the smallest L-infinity perturbation that breaks ``x``
is ``min_t (z_y - z_t) / ||w_y - w_t||_1`` (closed form): an example is robust at ``eps``
exactly when that distance exceeds ``eps``. Its masked twin has the same values and a zero
gradient everywhere, so white-box stages cannot move it; a transfer attack from the unmasked
model must recover the closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.autoattack import autoattack, version_stages
from advjax.attacks.evaluate import evaluate

K, SHAPE, N = 5, (6, 6, 1), 48
# Few iterations and queries keep the test fast; a linear model needs few APGD steps.
FAST = dict(steps=20, queries=60, n_targets=4, malt_targets=2, square_restarts=2,
            batch_size=N, lo=None, hi=None)
EPS = 0.06


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 0.3, (K, int(np.prod(SHAPE)))).astype(np.float32)
    b = rng.normal(0.0, 0.1, K).astype(np.float32)
    xs = rng.normal(0.0, 1.0, (N, *SHAPE)).astype(np.float32)
    z = xs.reshape(N, -1) @ w.T + b
    labels = z.argmax(1)                       # every example clean-correct
    margin = z[np.arange(N), labels][:, None] - z
    dual = np.abs(w[labels][:, None, :] - w[None, :, :]).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):     # t == y: 0 / 0, masked below
        dist = np.where(np.arange(K)[None] == labels[:, None], np.inf, margin / dual).min(1)

    def logits_fn(x):
        return jnp.asarray(w) @ x.reshape(-1) + jnp.asarray(b)

    def masked(x):                            # same values, zero input gradient
        return logits_fn(jax.lax.stop_gradient(x))

    return logits_fn, masked, xs, labels, dist


def test_the_closed_form_splits_the_set(linear):
    *_, dist = linear
    truth = float(np.mean(dist > EPS))
    assert 0.2 < truth < 0.8, truth          # otherwise the tests below say little


def test_the_transfer_stage_recovers_the_masked_twins_closed_form(linear):
    logits_fn, masked, xs, labels, dist = linear
    truth = dist > EPS
    key = jax.random.key(0)
    plain = evaluate(masked, xs, labels, eps=EPS, key=key, **FAST)
    adaptive = evaluate(masked, xs, labels, eps=EPS, key=key, version="adaptive",
                        surrogate=logits_fn, **FAST)
    # Masking is real: without a surrogate the gradient stages break only what their random
    # start happens to break, far fewer than the closed form says are breakable.
    assert plain.robust_accuracy["apgd-t"] - truth.mean() >= 8 / N, plain.robust_accuracy
    # Every success is real (verified on the target): nothing the closed form calls robust is
    # broken, whatever the stage ...
    assert not np.any(~adaptive.robust & truth)
    # ... and the adaptive protocol recovers the closed form up to 1 example of 48 (APGD with
    # 20 steps may stop short on an example within a hair of the boundary); AutoAttack alone
    # on the masked twin stays above it by more than that.
    assert np.sum(adaptive.robust & ~truth) <= 1
    aa = float(plain.robust.mean())
    assert aa - truth.mean() >= 3 / N, (aa, truth.mean())
    assert adaptive.stages == version_stages("adaptive", "linf", surrogate=True)
    assert adaptive.autoattack_stages == ("apgd-ce", "apgd-t", "fab-t", "square")
    beyond = adaptive.broken_beyond_autoattack()
    assert beyond["transfer"] >= 3
    # The zero-gradient check trips, so the extra Square restarts run.
    assert "square-restarts" not in adaptive.skipped
    assert adaptive.attacked["square-restarts"] == int(np.sum(
        adaptive.broken_by < 0) + beyond["square-restarts"] - np.sum(~adaptive.clean_correct))
    table = adaptive.table()
    assert "Beyond AutoAttack" in table and f"transfer {beyond['transfer']}" in table


def test_without_masking_the_conditional_stage_is_skipped_and_says_why(linear):
    logits_fn, _, xs, labels, dist = linear
    ev = evaluate(logits_fn, xs, labels, eps=EPS, key=jax.random.key(1), version="adaptive",
                  **FAST)
    assert ev.stages == ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-malt", "square-restarts")
    assert ev.skipped == {"square-restarts": "no gradient-masking check tripped"}
    assert ev.attacked["square-restarts"] == 0
    assert ev.robust_accuracy["square-restarts"] == ev.robust_accuracy["square"]
    assert "skipped: no gradient-masking check tripped" in ev.table()
    # White-box stages on the unmasked model already meet the closed form.
    assert not np.any(~ev.robust & (dist > EPS))
    assert np.sum(ev.robust & (dist <= EPS)) <= 1


def test_the_per_example_ensemble_runs_the_adaptive_stages_under_jit_vmap(linear):
    logits_fn, masked, xs, labels, dist = linear
    attack = autoattack(masked, version="adaptive", surrogate=logits_fn, lo=None, hi=None,
                        **{k: v for k, v in FAST.items() if k not in ("batch_size", "lo", "hi")})
    assert attack.stages[-2:] == ("transfer", "square-restarts")
    keys = jax.random.split(jax.random.key(2), N)
    res = jax.jit(jax.vmap(lambda x, y, k: attack(x, y, eps=EPS, key=k)))(
        jnp.asarray(xs), jnp.asarray(labels), keys)
    success = np.asarray(res.success)
    assert not np.any(success & (dist > EPS))
    assert np.sum(~success & (dist <= EPS)) <= 1
    assert np.all(np.asarray(res.linf) <= EPS * (1 + 1e-5))


def test_a_transfer_stage_needs_a_surrogate_with_the_same_classes(linear):
    logits_fn, masked, xs, labels, _ = linear
    with pytest.raises(ValueError, match="surrogate"):
        autoattack(masked, attacks=["transfer"], lo=None, hi=None)
    with pytest.raises(ValueError, match="`surrogate` must be a per-example function"):
        autoattack(masked, attacks=["transfer"], surrogate=3, lo=None, hi=None)
    with pytest.raises(ValueError, match="`surrogate` gives 4 classes, `logits_fn` 5"):
        evaluate(masked, xs[:4], labels[:4], eps=EPS, key=jax.random.key(0),
                 attacks=["transfer"], surrogate=lambda x: logits_fn(x)[:4], **FAST)


def test_a_state_belongs_to_its_surrogate(linear, tmp_path):
    logits_fn, masked, xs, labels, _ = linear
    state, key = tmp_path / "s.npz", jax.random.key(4)
    kw = dict(FAST, attacks=["transfer"], steps=5, n_targets=1)
    first = evaluate(masked, xs[:8], labels[:8], eps=EPS, key=key, surrogate=logits_fn,
                     state_path=state, **kw)
    with pytest.raises(ValueError, match="another `surrogate`"):
        evaluate(masked, xs[:8], labels[:8], eps=EPS, key=key,
                 surrogate=lambda x: 2.0 * logits_fn(x), state_path=state, **kw)
    again = evaluate(masked, xs[:8], labels[:8], eps=EPS, key=key, surrogate=logits_fn,
                     state_path=state, **kw)
    np.testing.assert_array_equal(again.broken_by, first.broken_by)
