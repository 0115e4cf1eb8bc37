"""Target selection (advjax.attacks.targets): MALT's score against the exact distance to each
pairwise boundary of a linear model (an LP / closed form, no box), MALT's order, MultiTargeted
containing APGD-T, and the "apgd-mt" / "apgd-malt" stages in autoattack and evaluate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from advjax.attacks import targets
from advjax.attacks.autoattack import autoattack
from advjax.attacks.evaluate import evaluate
from tests.attacks.conftest import linear_logits_fn

SHAPE = (3, 3, 1)
D = 9


def _ranked_linear(seed: int = 0, k: int = 6):
    """A linear K-class model on 3x3x1 inputs whose boundary order differs from its logits
    order AND between the dual norms: class t's weight difference ``w_y - w_t`` is a random
    direction scaled by ``s_t``, and the bias sets the clean logits. Label 0 for x = 0.5."""
    rng = np.random.default_rng(seed)
    W = np.zeros((D, k))
    for t in range(1, k):
        v = rng.normal(size=D)
        if t % 2:                                  # sparse rows: L1 and L2 orders disagree
            v[rng.permutation(D)[:6]] = 0.0
        W[:, t] = -v * rng.uniform(0.3, 3.0)
    x = np.full(SHAPE, 0.5, np.float32)
    gaps = np.r_[0.0, rng.uniform(0.2, 2.0, size=k - 1)]          # z_0 - z_t > 0
    b = -(x.reshape(-1) @ W) + 3.0 - gaps
    return linear_logits_fn(W, b, SHAPE), W, b, x


def _exact_distance(W, b, x, t, norm: str) -> float:
    """The smallest ``||delta||_norm`` with ``z_0(x + delta) = z_t(x + delta)`` (no box), by a
    linear program (linf, l1) or the projection formula (l2): independent of any dual norm."""
    z = x.reshape(-1).astype(np.float64) @ W + b
    w = W[:, 0] - W[:, t]                       # z_0 - z_t moves by w . delta
    gap = z[0] - z[t]
    if norm == "l2":
        delta = -gap * w / (w @ w)
        return float(np.linalg.norm(delta))
    n = len(w)
    if norm == "linf":                           # min s  s.t. -s <= delta_i <= s, w.delta = -gap
        c = np.r_[np.zeros(n), 1.0]
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        res = scipy.optimize.linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n),
                                     A_eq=np.r_[w, 0.0][None], b_eq=[-gap],
                                     bounds=[(None, None)] * (n + 1))
    else:                                        # l1: delta = p - m, p, m >= 0, min sum(p + m)
        res = scipy.optimize.linprog(np.ones(2 * n), A_eq=np.r_[w, -w][None], b_eq=[-gap],
                                     bounds=[(0, None)] * (2 * n))
    assert res.success
    return float(res.fun)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_malt_score_is_the_exact_boundary_distance_of_a_linear_model(norm):
    logits_fn, W, b, x = _ranked_linear()
    scores = np.asarray(targets.malt_scores(logits_fn, jnp.asarray(x), jnp.int32(0), norm))
    exact = np.array([_exact_distance(W, b, x, t, norm) for t in range(1, W.shape[1])])
    assert np.isinf(scores[0])
    # float32 logits and Jacobian against a float64 LP: a few ulp of the ~1-sized logit gaps.
    np.testing.assert_allclose(scores[1:], exact, rtol=1e-4)
    # MALT's order is the true order of the boundaries, nearest first, and differs from the
    # logits' order (so ranking by logits would fail here).
    order = np.asarray(targets.malt_targets(logits_fn, jnp.asarray(x), jnp.int32(0),
                                            W.shape[1] - 1, norm=norm))
    np.testing.assert_array_equal(order, 1 + np.argsort(exact))
    by_logits = np.asarray(targets.top_targets(logits_fn(jnp.asarray(x)), W.shape[1] - 1))
    assert not np.array_equal(order, by_logits)


def test_the_dual_norm_matters():
    """For L-infinity the L1 norm of the gradient difference ranks the boundaries; the L2 norm
    (the careless choice) ranks this model differently."""
    logits_fn, W, b, x = _ranked_linear()
    ex = [_exact_distance(W, b, x, t, "linf") for t in range(1, W.shape[1])]
    l2 = [_exact_distance(W, b, x, t, "l2") for t in range(1, W.shape[1])]
    assert not np.array_equal(np.argsort(ex), np.argsort(l2))


def test_candidates_and_errors():
    logits_fn, W, b, x = _ranked_linear()
    xj, y = jnp.asarray(x), jnp.int32(0)
    # Only the 2 most likely classes are scored: the targets are those two, nearest first.
    two = np.asarray(targets.malt_targets(logits_fn, xj, y, 2, norm="linf", candidates=2))
    top2 = np.asarray(targets.top_targets(logits_fn(xj), 2))
    assert set(two) == set(top2)
    with pytest.raises(ValueError, match="n_targets"):
        targets.malt_targets(logits_fn, xj, y, W.shape[1], norm="linf")
    with pytest.raises(ValueError, match="candidates"):
        targets.malt_targets(logits_fn, xj, y, 3, norm="linf", candidates=2)
    with pytest.raises(ValueError, match="selection"):
        targets.select("random", logits_fn, xj, y, 2, norm="linf")
    with pytest.raises(ValueError, match="norm"):
        targets.malt_scores(logits_fn, xj, y, "l0")
    # "all": every class but the label, most likely first.
    allt = np.asarray(targets.all_targets(logits_fn(xj), y))
    np.testing.assert_array_equal(allt, top2.tolist() + [t for t in allt if t not in top2])
    assert sorted(allt) == list(range(1, W.shape[1]))


def _nearest_ranked_last():
    """A linear 5-class model, label 0 at x = 0.5: classes 1, 2, 4 lead the logits but are
    unreachable (tiny weight differences); class 3 has the lowest logit and the nearest
    boundary, at ``(z_0 - z_3) / ||w_0 - w_3||_1`` in L-infinity."""
    rng = np.random.default_rng(3)
    d = 16
    W = np.zeros((d, 5))
    for t in (1, 2, 4):
        W[:, t] = 0.01 * rng.normal(size=d)
    W[:, 3] = rng.normal(size=d)
    x = np.full((4, 4, 1), 0.5, np.float32)
    b = np.array([3.0, 2.9, 2.8, 2.0, 2.7]) - x.reshape(-1) @ W
    w = W[:, 3] - W[:, 0]
    return linear_logits_fn(W, b, x.shape), x, 1.0 / np.abs(w).sum()


def test_malt_first_target_is_the_nearest_boundary():
    logits_fn, x, dist = _nearest_ranked_last()
    xj, y, key = jnp.asarray(x), jnp.int32(0), jax.random.key(0)
    assert int(targets.malt_targets(logits_fn, xj, y, 1, norm="linf")[0]) == 3
    kw = dict(steps=20, malt_targets=1)
    malt = jax.jit(autoattack(logits_fn, attacks=["apgd-malt"], **kw))
    logit1 = jax.jit(autoattack(logits_fn, attacks=["apgd-t"], n_targets=1, steps=20))
    above = malt(xj, y, eps=1.05 * dist, key=key)
    assert bool(above.success) and int(jnp.argmax(above.logits)) == 3
    assert not bool(malt(xj, y, eps=0.95 * dist, key=key).success)
    # One target by the logits (class 1) cannot reach its boundary within the budget; every
    # target (MultiTargeted) does, at the cost of 4 runs instead of 1.
    assert not bool(logit1(xj, y, eps=1.05 * dist, key=key).success)
    mt = autoattack(logits_fn, attacks=["apgd-mt"], steps=20)
    assert bool(jax.jit(mt)(xj, y, eps=1.05 * dist, key=key).success)


def test_multitargeted_breaks_whatever_apgd_t_breaks(tiny_mlp):
    """Same keys, and MultiTargeted's first target is APGD-T's: example by example, every
    success of APGD-T on 1 target is a success of APGD-T on all K - 1 targets."""
    p = tiny_mlp
    n = len(p.labels)
    xs, ys = jnp.asarray(p.xs), jnp.asarray(p.labels)
    eps = jnp.full((n,), 0.06, jnp.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(jnp.arange(n))
    t1 = jax.jit(jax.vmap(autoattack(p.logits_fn, attacks=["apgd-t"], n_targets=1, steps=5)))
    mt = jax.jit(jax.vmap(autoattack(p.logits_fn, attacks=["apgd-mt"], steps=5)))
    s1 = np.asarray(t1(xs, ys, eps=eps, key=keys).success)
    sm = np.asarray(mt(xs, ys, eps=eps, key=keys).success)
    assert np.all(sm >= s1)
    assert 0 < s1.sum() < n                     # the check is not vacuous on this model


def test_stages_in_autoattack_and_evaluate(tiny_mlp):
    p = tiny_mlp
    stages = ["apgd-malt", "apgd-mt"]
    kw = dict(steps=3, malt_targets=2)
    key = jax.random.key(4)
    ev = evaluate(p.logits_fn, p.xs, p.labels, eps=0.05, key=key, attacks=stages,
                  batch_size=8, **kw)
    assert ev.stages == tuple(stages)
    # evaluate = the ensemble called per example with fold_in(key, index).
    attack = jax.jit(jax.vmap(autoattack(p.logits_fn, attacks=stages, **kw)))
    n = len(p.labels)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))
    r = attack(jnp.asarray(p.xs), jnp.asarray(p.labels), eps=jnp.full((n,), 0.05), key=keys)
    np.testing.assert_array_equal(ev.stage_success, np.asarray(r.aux["stage_success"]))
    assert float(jnp.max(r.linf)) <= 0.05 + 1e-6


def test_settings_are_validated(tiny_mlp):
    p = tiny_mlp
    with pytest.raises(ValueError, match="malt_targets"):
        autoattack(p.logits_fn, attacks=["apgd-malt"], malt_targets=0)
    with pytest.raises(ValueError, match="malt_candidates"):
        autoattack(p.logits_fn, attacks=["apgd-malt"], malt_targets=5, malt_candidates=3)
    with pytest.raises(ValueError, match="randomised"):
        autoattack(lambda x, k: p.logits_fn(x), version="rand", attacks=["apgd-malt"])
    three = lambda x: p.logits_fn(x)[:3]  # noqa: E731
    with pytest.raises(ValueError, match="apgd-malt"):
        autoattack(three, attacks=["apgd-malt"])(jnp.asarray(p.xs[0]), jnp.int32(0), eps=0.1,
                                                  key=jax.random.key(0))
