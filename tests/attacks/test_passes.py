"""Model passes per example (:mod:`advjax.attacks.passes`), against two independent truths:
closed forms where the loop length is known (a model that is never fooled runs every step), and a
counting model whose forward and backward passes bump Python counters (``jax.debug.callback``
inside a ``custom_vjp``) while ONE example is attacked; plus the invariance of the counts to the
batch size and the state file."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks import apgd, fab, square
from advjax.attacks.autoattack import (
    autoattack,
    settings_for,
    stage_search,
    verification_passes,
    verified_success,
)
from advjax.attacks.evaluate import evaluate

N, R, T, Q, K = 5, 2, 2, 7, 4          # steps, restarts, targets, Square queries, classes
ALL = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square", "apgd-mt", "apgd-malt",
       "transfer", "square-restarts")
SMALL = dict(steps=N, apgd_restarts=R, fab_restarts=R, n_targets=T, queries=Q, malt_targets=T,
             square_restarts=R)


class Counting:
    """A linear model ``logits = scale * vec(x) @ W + bias`` whose every forward pass (one
    logits vector of one example) and every backward pass (one cotangent pulled back) adds to
    ``forward`` / ``backward``. Under ``vmap`` a callback sees the batched array once, so the
    count is the number of logits vectors (cotangents) it holds."""

    def __init__(self, W, bias, scale=1.0):
        self.forward = self.backward = 0
        self.W = jnp.asarray(W, jnp.float32)
        self.k = self.W.shape[1]
        bias, scale = jnp.asarray(bias, jnp.float32), float(scale)

        def bump_f(v):
            self.forward += int(np.asarray(v).size // self.k)

        def bump_b(g):
            self.backward += int(np.asarray(g).size // self.k)

        @jax.custom_vjp
        def model(x):
            out = x.reshape(-1) @ self.W
            jax.debug.callback(bump_f, out)
            return out

        def fwd(x):
            return model(x), x.shape

        def bwd(shape, g):
            jax.debug.callback(bump_b, g)
            return ((self.W @ g).reshape(shape),)

        model.defvjp(fwd, bwd)
        self.logits_fn = lambda x: scale * model(x) + bias

    def reset(self):
        self.forward = self.backward = 0

    def counts(self):
        jax.effects_barrier()
        return [self.forward, self.backward]


M = 0.5                                 # the clean margin of class 0


def _problem(seed=0):
    """A counting linear model, a clean point ``x`` in ``[0.3, 0.7]`` where class 0 leads every
    other class by ``M``, and two L-infinity budgets: ``safe`` (no perturbation can change a
    logit difference ``z_0 - z_j`` by more than ``safe * ||w_0 - w_j||_1 <= M / 2``: never
    fooled, every step of every loop runs, the loop lengths are known) and ``fool`` (the best
    perturbation changes it by ``3 M``: the attacks succeed and stop early)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(16, K))
    x = rng.uniform(0.3, 0.7, (4, 4, 1)).astype(np.float32)
    bias = -(x.reshape(-1) @ W) + np.array([M, 0.0, 0.0, 0.0])
    d = np.abs(W[:, :1] - W[:, 1:]).sum(0)               # ||w_0 - w_j||_1
    return Counting(W, bias), jnp.asarray(x), 0.5 * M / d.max(), 3 * M / d.min()


def _closed_form(stage, *, restarts=R, l1=False):
    """``[forward, backward]`` of one stage on a never-fooled example, its verification pass
    included (the convention of :mod:`advjax.attacks.passes`)."""
    a = math.ceil(0.3 * N)
    # APGD: one gradient at the start and one per step; APGD-L1's decreasing budgets are three
    # runs of a, a and N - 2a steps, each with its own start.
    apgd_run = N + 3 if l1 and 2 * a < N else N + 1
    return {
        "apgd-ce": [restarts * apgd_run + 1, restarts * apgd_run],
        "apgd-dlr": [restarts * apgd_run + 1, restarts * apgd_run],
        # the clean pass that ranks the targets, one run per target
        "apgd-t": [1 + T * apgd_run + 1, T * apgd_run],
        # per step: the Jacobian (1 forward + K backward) and the check of the new point
        "fab": [restarts * N * 2 + 1, restarts * N * K],
        # per step: the gradient of z_t - z_y (1 + 1) and the check; the clean ranking pass
        "fab-t": [1 + T * N * 2 + 1, T * N],
        # the start, Q queries, the verification
        "square": [Q + 1 + 1, 0],
        # every other class (K - 1 targets), ranked by one clean pass
        "apgd-mt": [1 + (K - 1) * apgd_run + 1, (K - 1) * apgd_run],
        # MALT's ranking is the clean Jacobian (1 forward + K backward), then T targets
        "apgd-malt": [1 + T * apgd_run + 1, K + T * apgd_run],
        # the surrogate's ranking pass, then APGD-CE and T targeted runs on the surrogate (every
        # step: the surrogate's success does not stop them), each checked by one target pass
        "transfer": [1 + (T + 1) * (apgd_run + 1) + 1, (T + 1) * apgd_run],
        # R more Square runs (start + Q queries each)
        "square-restarts": [restarts * (Q + 1) + 1, 0],
    }[stage]


def test_closed_form_of_apgd_l1_decreasing_budgets_inside_the_ensemble():
    # APGD-L1 runs the official decreasing budgets 3 eps, 2 eps, eps: three starts. Through
    # the per-example ensemble: its verification pass is counted, aux["passes"] sums the stages.
    m, x, safe, _ = _problem(2)
    attack = autoattack(m.logits_fn, norm="l1", attacks=("apgd-ce",), **SMALL)
    r = jax.jit(lambda x: attack(x, jnp.int32(0), eps=jnp.float32(safe),
                                 key=jax.random.key(1)))(x)
    want = [_closed_form("apgd-ce", l1=True)]
    np.testing.assert_array_equal(np.asarray(r.aux["stage_passes"]), want)
    np.testing.assert_array_equal(np.asarray(r.aux["passes"]), want[0])


def test_eot_counts_every_draw_and_the_verification_draws():
    # APGD-CE of the rand version: S draws per gradient, (N + 1) gradients per run (EOT runs
    # never stop early); the point is verified on V fresh draws, and evaluate checks that the
    # logits are finite on one more draw.
    S, V = 3, 5
    m, x, safe, _ = _problem(3)

    def noisy(x, key):
        return m.logits_fn(x) + 0.01 * jax.random.normal(key, (K,))

    kw = dict(version="rand", attacks=("apgd-ce",), steps=N, eot_samples=S, verify_draws=V)
    ev = evaluate(noisy, np.asarray(x)[None].repeat(2, 0), np.zeros(2, np.int32), eps=safe,
                  key=jax.random.key(2), batch_size=2, **kw)
    want = [(N + 1) * S + V + 1, (N + 1) * S]
    np.testing.assert_array_equal(ev.passes[:, 0], [want] * 2)
    assert ev.forward_per_example["apgd-ce"] == want[0]


@pytest.mark.parametrize("stage", ALL)
def test_reported_counts_equal_an_independent_counter(stage):
    # One compiled search per stage, run at the safe budget (every step runs: the closed form),
    # at the fooling budget (it stops early: fewer passes) and inactive (no pass at all).
    m, x, safe, fool = _problem(4)
    cfg = settings_for("standard", "linf", **SMALL)
    # The transfer stage attacks a surrogate: the same counting model (its passes count too).
    search = jax.jit(lambda x, eps, active: stage_search(stage, m.logits_fn, cfg,
                                                         surrogate=m.logits_fn)(
        x, jnp.int32(0), eps, jax.random.key(6), active))
    verify = jax.jit(lambda z, eps: verified_success(m.logits_fn, cfg, x, z, jnp.int32(0), eps,
                                                     jax.random.key(0)))
    full = _closed_form(stage)
    for eps in (safe, fool):
        m.reset()
        z, spent = search(x, jnp.float32(eps), True)
        assert m.counts() == np.asarray(spent).tolist(), eps
        m.reset()
        broken = bool(verify(z, jnp.float32(eps)))
        assert m.counts() == np.asarray(verification_passes(cfg)).tolist() == [1, 0]
        if eps == safe:
            assert not broken
            np.testing.assert_array_equal(np.asarray(spent) + verification_passes(cfg), full)
        else:
            # it succeeded and stopped early: fewer forward passes than every step of every run
            assert broken and int(spent[0]) + 1 < full[0], (np.asarray(spent), full)
    # Inactive: nothing counts (under vmap the program may still compute the start for that
    # lane, as it computes idle loop steps: work not done FOR the example, see passes.py).
    assert np.asarray(search(x, jnp.float32(fool), False)[1]).tolist() == [0, 0]


def test_public_attacks_report_their_passes():
    m, x, safe, _ = _problem(7)
    y, key = jnp.int32(0), jax.random.key(8)
    r = jax.jit(apgd(m.logits_fn, steps=N, n_restarts=R))(x, y, eps=safe, key=key)
    assert np.asarray(r.aux["passes"]).tolist() == [R * (N + 1)] * 2
    r = jax.jit(fab(m.logits_fn, steps=N))(x, y, key=key, eps=safe)
    assert np.asarray(r.aux["passes"]).tolist() == [2 * N, K * N]
    r = jax.jit(square(m.logits_fn, queries=Q, n_restarts=2))(x, y, eps=safe, key=key)
    assert np.asarray(r.aux["passes"]).tolist() == [2 * (Q + 1), 0]
    assert int(r.aux["queries"]) == 2 * (Q + 1)


def test_evaluate_counts_do_not_depend_on_the_batch_and_equal_the_ensembles(tiny_mlp, tmp_path):
    # Each stage runs only on the examples still robust, in chunks whose padded lanes idle:
    # the per-example counts must be the same for batch_size 4 and 16, and equal to the
    # per-example ensemble's (the same keys), which runs every example in one vmap.
    p, key = tiny_mlp, jax.random.key(9)
    xs, ys = p.xs[:8], p.labels[:8]
    kw = dict(attacks=("apgd-ce", "square"), steps=6, queries=40, eps=0.06, key=key)
    small = evaluate(p.logits_fn, xs, ys, batch_size=4, **kw)
    big = evaluate(p.logits_fn, xs, ys, batch_size=16,
                   state_path=tmp_path / "s.npz", **kw)
    assert small.passes.shape == (8, 2, 2)
    np.testing.assert_array_equal(small.passes, big.passes)
    att = autoattack(p.logits_fn, attacks=kw["attacks"], steps=6, queries=40)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(8))
    r = jax.jit(jax.vmap(lambda x, y, k: att(x, y, eps=jnp.float32(0.06), key=k)))(
        jnp.asarray(xs), jnp.asarray(ys), keys)
    np.testing.assert_array_equal(small.passes, np.asarray(r.aux["stage_passes"]))
    # Some examples were broken by APGD-CE, early (fewer than its 6 + 1 gradients and the
    # verification): Square costs them nothing; the others reached Square.
    by_apgd = small.broken_by == 0
    assert by_apgd.any() and (~by_apgd).any(), small.broken_by
    assert (small.passes[by_apgd, 0, 0] < 6 + 1 + 1).any()
    assert (small.passes[by_apgd, 1] == 0).all() and (small.passes[~by_apgd, 1, 0] > 0).all()
    for i, s in enumerate(small.stages):
        tot = small.passes[:, i].sum(0)
        assert [small.forward_passes[s], small.backward_passes[s]] == tot.tolist()
        assert small.forward_per_example[s] == pytest.approx(tot[0] / small.attacked[s])
        assert (small.passes[:, i].sum(1) > 0).sum() == small.attacked[s]
    table = small.table()
    assert "forward / example" in table and "backward / example" in table
    total = [r for r in table.splitlines() if r.startswith("| total |")]
    fwd = (8 + small.passes[..., 0].sum()) / 8        # the clean pass: 1 forward per example
    assert len(total) == 1 and f"| {fwd:.1f} | {small.passes[..., 1].sum() / 8:.1f} |" in total[0]
    # resumed from the state: the counts come back
    again = evaluate(p.logits_fn, xs, ys, batch_size=16,
                     state_path=tmp_path / "s.npz", **kw)
    np.testing.assert_array_equal(again.passes, big.passes)
    assert again.forward_passes == big.forward_passes
    # a state of the previous format (no passes) is refused, saying why
    state = tmp_path / "s.npz"
    with np.load(state) as f:
        arrays = {k: f[k] for k in f.files if k != "passes"}
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = 3
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(state, **arrays)
    with pytest.raises(ValueError, match="state format 3.*reads format 4"):
        evaluate(p.logits_fn, xs, ys, batch_size=16, state_path=state, **kw)
