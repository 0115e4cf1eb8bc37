"""Minimum eps by bisection: closed-form minimal distances of a linear model; the curve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.apgd import apgd
from advjax.attacks.min_eps import accuracy_vs_eps, min_eps
from tests.attacks.conftest import linear_min_l2


def test_bisection_finds_the_closed_form_minimum(linear_problem):
    # APGD-DLR L2 on a linear model succeeds for every eps a little above the minimal distance d
    # (closed form) and can never succeed below it, so the bisection lands in
    # [d, d * 1.01 + eps_max / 2**steps].
    p = linear_problem
    d = np.array([linear_min_l2(p.W, p.b, x, y) for x, y in zip(p.xs, p.labels, strict=True)])
    labels = p.labels.copy()
    labels[0] = (labels[0] + 1) % 4                             # misclassified: eps_min = 0
    search = jax.jit(jax.vmap(min_eps(apgd(p.logits_fn, norm="l2", loss="dlr", steps=20),
                                      eps_max=1.0, steps=12)))
    keys = jax.random.split(jax.random.key(0), len(d))
    e, r = search(jnp.asarray(p.xs), jnp.asarray(labels), key=keys)
    e = np.asarray(e)
    tol = 1.0 / 2 ** 12
    assert e[0] == 0
    assert np.all(e[1:] >= d[1:] * (1 - 1e-5)) and np.all(e[1:] <= d[1:] * 1.01 + tol)
    assert np.asarray(r.success).all()
    assert np.all(np.asarray(r.l2)[1:] <= e[1:] * (1 + 1e-5))
    # The curve: from the per-example minima, no loop over eps.
    grid = np.array([0.0, np.median(e), 10.0])
    np.testing.assert_allclose(accuracy_vs_eps(e, grid), [(e > g).mean() for g in grid])
    assert accuracy_vs_eps(np.array([np.inf, 0.1, np.nan]), [0.2])[0] == 0.5
    with pytest.raises(ValueError, match="eps_max"):
        min_eps(apgd(p.logits_fn), eps_max=0.0)


def test_unreachable_is_inf(linear_problem):
    p = linear_problem
    search = jax.jit(min_eps(apgd(p.logits_fn, norm="l2", steps=5), eps_max=1e-3, steps=3))
    e, _ = search(jnp.asarray(p.xs[1]), jnp.asarray(p.labels[1]), key=jax.random.key(0))
    assert np.isinf(float(e))
