"""FMN and DDN against the closed-form minimal perturbations of linear models.

For ``logits = W^T x + b`` and a class ``j != y`` with margin ``m_j = z_y - z_j > 0`` and
``w = W[:, y] - W[:, j]``, the smallest perturbation reaching the boundary ``z_j = z_y`` is, in
``[lo, hi]``:
  * L2 / L-infinity (box inactive, checked): ``m_j / ||w||_2`` / ``m_j / ||w||_1``;
  * L1: a fractional knapsack -- coordinates filled in decreasing ``|w_i|``, each up to its room
    in the box towards ``-sign(w_i)``, until ``m_j`` is covered (exact with the box);
  * L0: the smallest ``k`` whose ``k`` largest ``|w_i| room_i`` sum to at least ``m_j``.
The minimum over ``j != y`` is the untargeted minimal distance (a union of half-spaces). The
targeted region ``{z_t >= z_j for all j}`` is an intersection: its minimal L2 distance comes from
the conftest's SLSQP quadratic program with the box.
An attack's point must be misclassified and no closer than that minimum (closer is a bug), and
it must come within the tolerance stated at each test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from tests.attacks.conftest import linear_logits_fn, make_linear_problem, min_l2_to_class_qp


def _moves(W, b, x, y, j, lo=0.0, hi=1.0):
    xf = np.asarray(x, np.float64).reshape(-1)
    z = xf @ W + b
    w = W[:, y] - W[:, j]
    m = z[y] - z[j]
    room = np.where(w > 0, xf - lo, hi - xf)      # decreasing w . x: move against sign(w)
    return w, m, room


def min_distance(W, b, x, y, norm, *, targets=None, lo=0.0, hi=1.0) -> float:
    """Closed-form minimal ``norm`` distance to the class(es) ``targets`` (default: all others)."""
    k = W.shape[1]
    best = np.inf
    for j in (range(k) if targets is None else targets):
        if j == y:
            continue
        w, m, room = _moves(W, b, x, y, j, lo, hi)
        aw = np.abs(w)
        if norm == "l2":
            d = m / np.linalg.norm(w)
            assert np.all(np.abs(m * w / np.dot(w, w)) <= room + 1e-12), "box active (L2)"
        elif norm == "linf":
            d = m / aw.sum()
            assert np.all(d <= room), "box active (Linf)"
        elif norm == "l1":
            order = np.argsort(-aw)
            need, d = m, 0.0
            for i in order:
                take = min(room[i], need / aw[i])
                d += take
                need -= take * aw[i]
                if need <= 1e-15:
                    break
            if need > 1e-12:
                d = np.inf
        else:  # l0
            gains = np.sort(aw * room)[::-1]
            reach = np.cumsum(gains)
            d = float(np.searchsorted(reach, m) + 1) if reach[-1] >= m else np.inf
        best = min(best, d)
    return float(best)


def _run(attack, P, **kw):
    return jax.jit(jax.vmap(attack))(jnp.asarray(P.xs), jnp.asarray(P.labels), **kw)


def _size(delta, norm):
    d = np.asarray(delta, np.float64).reshape(delta.shape[0], -1)
    return {"l0": (d != 0).sum(1).astype(float), "l1": np.abs(d).sum(1),
            "l2": np.linalg.norm(d, axis=1), "linf": np.abs(d).max(1)}[norm]


def _truth(P, norm, targets=None):
    if targets is None:
        return np.array([min_distance(P.W, P.b, x, y, norm)
                         for x, y in zip(P.xs, P.labels, strict=True)])
    assert norm == "l2"
    return np.array([min_l2_to_class_qp(P.W, P.b, x, int(t), lo=0.0, hi=1.0)[0]
                     for x, t in zip(P.xs, targets, strict=True)])


def _check(res, P, norm, rtol, *, targets=None, atol_l0=0):
    sizes = _size(np.asarray(res.x_adv) - P.xs, norm)
    truth = _truth(P, norm, targets)
    assert np.all(np.asarray(res.success)), "every example must be broken"
    # Misclassified by the model itself (float32 logits at x_adv, recomputed here): a point at the
    # boundary up to float32 rounding counts, as it does for the attack.
    logits = np.asarray(jax.vmap(P.logits_fn)(jnp.asarray(res.x_adv)))
    pred = logits.argmax(1)
    if targets is None:
        assert np.all(pred != P.labels), "the point returned must be misclassified"
    else:
        assert np.all(pred == np.asarray(targets)), "the point returned must be the target"
    np.testing.assert_allclose(np.asarray(res.aux["distance"]), sizes, rtol=1e-4, atol=1e-6)
    # Never below the minimum (float32 rounding of the point and the QP's tolerance: 1e-4).
    assert np.all(sizes >= truth * (1 - 1e-4) - 1e-6), (norm, sizes, truth)
    if norm == "l0":
        assert np.all(sizes <= truth + atol_l0), (norm, sizes, truth)
    else:
        assert np.all(sizes <= truth * (1 + rtol)), (norm, sizes / truth)
    return sizes / truth


PROBLEM_4 = make_linear_problem(seed=5, shape=(6, 6, 1), num_classes=4, n=6, margin=0.3)
PROBLEM_2 = make_linear_problem(seed=7, shape=(6, 6, 1), num_classes=2, n=6, margin=0.3)


# FMN ends with gamma = 0.001: once the boundary is bracketed eps moves by 0.1 % per step, and the
# normalised gradient of a linear model points straight at the boundary; 1 % above the minimum
# leaves room for the ball's rounding and the last few steps of the schedule.
@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
@pytest.mark.parametrize("problem", ["binary", "multiclass"])
def test_fmn_reaches_the_closed_form_minimum(norm, problem):
    P = PROBLEM_2 if problem == "binary" else PROBLEM_4
    res = _run(attacks.fmn(P.logits_fn, norm=norm, steps=300), P)
    _check(res, P, norm, rtol=0.01)


def test_fmn_l0_reaches_the_minimal_number_of_pixels():
    # L0 moves eps by whole pixels: the count found must equal the greedy minimum, or exceed it by
    # at most one pixel (FMN-L0 puts the whole step on the pixels of largest gradient, which is the
    # greedy order only up to the box room).
    P = PROBLEM_4
    res = _run(attacks.fmn(P.logits_fn, norm="l0", steps=300), P)
    _check(res, P, "l0", rtol=0.0, atol_l0=1)


def test_fmn_targeted_reaches_the_target_minimum():
    P = PROBLEM_4
    targets = (P.labels + 1) % 4
    res = _run(attacks.fmn(P.logits_fn, norm="l2", steps=300, targeted=True), P,
               target=jnp.asarray(targets))
    _check(res, P, "l2", rtol=0.01, targets=targets)


# DDN's norm moves by gamma = 5 % per step around the boundary, and each up-down pair changes it by
# (1 - gamma)(1 + gamma) = 0.9975: the adversarial norms visited come within ~0.5 % of the boundary.
# Binary: the CE gradient is parallel to w_y - w_j, the optimal direction: 1 %.
def test_ddn_binary_reaches_the_closed_form_minimum():
    P = PROBLEM_2
    res = _run(attacks.ddn(P.logits_fn, steps=500, init_norm=0.5), P)
    _check(res, P, "l2", rtol=0.01)
    np.testing.assert_allclose(np.asarray(res.l2), _size(np.asarray(res.x_adv) - P.xs, "l2"),
                               rtol=1e-4)


# Multiclass: DDN's direction is the CE gradient sum_j p_j (w_j - w_y), which mixes in the classes
# other than the closest one by their probabilities, so DDN stops short of the minimal-norm
# direction by design (measured 0.2-4.4 % above the minimum on this problem at 300 and at 1000
# steps alike: not a convergence issue). Tolerance 5 %; the binary test above holds it to 1 %.
def test_ddn_multiclass_within_five_percent():
    P = PROBLEM_4
    res = _run(attacks.ddn(P.logits_fn, steps=500, init_norm=0.5), P)
    _check(res, P, "l2", rtol=0.05)


# Targeted: the gradient of -CE(target) mixes the non-target classes likewise (measured up to 5.9 %
# above the QP minimum on this problem): tolerance 7 %.
def test_ddn_targeted():
    P = PROBLEM_4
    targets = (P.labels + 2) % 4
    res = _run(attacks.ddn(P.logits_fn, steps=500, init_norm=0.5, targeted=True), P,
               target=jnp.asarray(targets))
    _check(res, P, "l2", rtol=0.07, targets=targets)


def test_already_misclassified_and_no_adversarial():
    P = PROBLEM_4
    wrong = (P.labels + 1) % 4
    for att in (attacks.fmn(P.logits_fn, steps=5), attacks.ddn(P.logits_fn, steps=5)):
        res = _run(att, P.__class__(**{**P.__dict__, "labels": wrong}))
        np.testing.assert_array_equal(np.asarray(res.x_adv), P.xs)
        assert np.all(np.asarray(res.aux["distance"]) == 0.0)
    # One step from delta = 0 only scores x itself: nothing adversarial, distance inf, x returned.
    res = _run(attacks.fmn(P.logits_fn, steps=1), P)
    assert not np.any(np.asarray(res.success))
    assert np.all(np.isinf(np.asarray(res.aux["distance"])))
    np.testing.assert_array_equal(np.asarray(res.x_adv), P.xs)


# Why DDN is 2-6 % above the minimum on the multiclass problems above: its direction is the CE
# gradient, sum_j p_j (w_j - w_y), which weighs in the classes other than the closest by their
# softmax probabilities (Rony et al.'s reference code does the same: advjax follows it step by step:
# cosine-annealed step 1 -> 0.01, fixed gamma, eps from init_norm). Same model, same boundaries,
# logits times 10: the far classes' probabilities vanish near the boundary and DDN comes within
# 0.1 % of the minimum (measured: 1.0000-1.0010 at 500 steps, against 1.002-1.042 unscaled):
# tolerance 0.5 %. This pins the cause on the loss: a softer softmax (tried: CE of logits / 10)
# fails it; on a linear model DDN is insensitive to its norm and step schedule (tried: no
# annealing, a fixed step of 3, growth 1 + 2 gamma: all still within 0.5 %).
def test_ddn_multiclass_is_exact_when_the_softmax_is_sharp():
    P = PROBLEM_4
    sharp = linear_logits_fn(P.W * 10.0, P.b * 10.0, P.shape)
    res = _run(attacks.ddn(sharp, steps=500, init_norm=0.5), P)
    _check(res, P.__class__(**{**P.__dict__, "logits_fn": sharp}), "l2", rtol=0.005)


def test_a_distance_belongs_to_an_adversarial_point():
    # A search that claims distance 1 for a point the final forward pass does not misclassify
    # (FMN kept such a point on a LeNet5 image whose top logits tied to float precision): the
    # boundary reports inf, never a distance without an adversarial point; NaN stays NaN for
    # invalid input and an already misclassified example keeps its 0.
    from advjax.attacks import _boundary

    def logits_fn(x):
        return jnp.stack([x[0], x[1], 0.0 * x[0]])

    def claims(_, ex):
        return ex.x, {"distance": jnp.ones((), ex.x.dtype)}

    attack = _boundary.per_example(claims, logits_fn, lo=None, hi=None,
                                   nan_aux=("distance",), distance_aux=("distance",))
    res = attack(jnp.array([1.0, 0.0]), jnp.asarray(0))
    assert not bool(res.success) and float(res.aux["distance"]) == np.inf
    wrong = attack(jnp.array([0.0, 1.0]), jnp.asarray(0))        # already misclassified
    assert float(wrong.aux["distance"]) == 1.0 and not bool(wrong.clean_correct)
    bad = jax.jit(attack)(jnp.array([np.nan, 0.0]), jnp.asarray(0))     # flagged under jit
    assert np.isnan(float(bad.aux["distance"]))
    plain = _boundary.per_example(claims, logits_fn, lo=None, hi=None, nan_aux=("distance",))
    assert float(plain(jnp.array([1.0, 0.0]), jnp.asarray(0)).aux["distance"]) == 1.0
