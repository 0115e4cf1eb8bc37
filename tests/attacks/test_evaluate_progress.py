"""``evaluate``'s progress report moves within a stage (one report per compiled call, with the
time left), costs no extra compilation, and leaves the results unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from advjax import parallel
from advjax.attacks.evaluate import PROGRESS_CHUNKS, AutoAttackEvaluator

KW = dict(steps=4, queries=30, n_targets=2, attacks=["apgd-ce", "square"], batch_size=16)


def _check_stream(updates, total):
    """One stage's reports: a start at 0, then strictly increasing ``done`` ending at
    ``total``; the time left is unknown only before the first call and 0 at the end."""
    done = [u.done for u in updates]
    assert done[0] == 0 and done[-1] == total, done
    assert all(b > a for a, b in zip(done, done[1:], strict=False)), done
    assert all(u.total == total for u in updates)
    assert updates[0].eta_s is None and updates[-1].eta_s == 0.0
    assert all(u.eta_s is not None and u.eta_s >= 0 for u in updates[1:])
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(updates, updates[1:], strict=False))


@pytest.mark.slow
def test_evaluate_reports_every_call_of_every_stage_and_compiles_once_per_stage(tiny_mlp):
    p, key = tiny_mlp, jax.random.key(3)
    plain = AutoAttackEvaluator(p.logits_fn, **KW)(p.xs, p.labels, eps=0.3, key=key)
    updates = []
    ev = AutoAttackEvaluator(p.logits_fn, **KW)
    got = ev(p.xs, p.labels, eps=0.3, key=key, progress=updates.append)
    # The same numbers: per-example keys do not depend on the chunking.
    np.testing.assert_array_equal(got.broken_by, plain.broken_by)
    np.testing.assert_array_equal(got.x_adv, plain.x_adv)
    for name in ev.stages:
        mine = [u for u in updates if u.desc == name]
        rows = got.attacked[name]
        if rows == 0:
            assert not mine
            continue
        _check_stream(mine, rows)
        # 16 rows with batch_size 16: without a report one call; with it ~PROGRESS_CHUNKS
        # calls (one report each) of ONE compiled size.
        calls = len(mine) - 1
        assert calls == -(-rows // -(-rows // PROGRESS_CHUNKS)), (name, rows, calls)
        assert calls >= min(rows, PROGRESS_CHUNKS // 2)
        assert len(ev._compiled[name]) == 1
    assert got.attacked["apgd-ce"] >= 4       # enough rows for the test to mean something


def test_run_chunked_reports_each_chunk_with_the_time_left():
    updates = []
    out = parallel.run_chunked(lambda x: 2 * x, (np.arange(10.0),), chunk_size=4,
                               progress=updates.append, desc="double")
    np.testing.assert_array_equal(out, 2 * np.arange(10.0))
    assert [u.done for u in updates] == [0, 4, 8, 10]
    assert {u.desc for u in updates} == {"double"}
    _check_stream(updates, 10)
