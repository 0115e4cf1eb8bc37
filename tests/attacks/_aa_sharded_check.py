"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): the AutoAttack
evaluation sharded over 8 devices (batch 8) equals one device (batch 5) and the per-example
``autoattack`` (``jit(vmap)``), example by example. Prints one JSON line."""

from __future__ import annotations

import json

import jax
import numpy as np

from advjax import parallel
from advjax.attacks.autoattack import autoattack
from advjax.attacks.evaluate import evaluate
from tests.attacks.conftest import TinyMLP, make_net_problem

KW = dict(steps=4, queries=30, n_targets=2)


def main() -> None:
    p = make_net_problem(TinyMLP(), n=13, seed=0)
    key = jax.random.key(5)
    eps = np.linspace(0.02, 0.2, 13).astype(np.float32)
    many = evaluate(p.logits_fn, p.xs, p.labels, eps=eps, key=key, batch_size=8,
                    mesh=parallel.make_mesh(), **KW)
    one = evaluate(p.logits_fn, p.xs, p.labels, eps=eps, key=key, batch_size=5,
                   mesh=parallel.make_mesh(jax.devices()[:1]), **KW)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(13))
    direct = jax.jit(jax.vmap(autoattack(p.logits_fn, **KW)))(p.xs, p.labels, eps=eps, key=keys)
    print(json.dumps(dict(
        device_count=jax.device_count(),
        same_flags=bool(np.array_equal(many.broken_by, one.broken_by)),
        same_x=float(np.max(np.abs(many.x_adv - one.x_adv))),
        direct_flags=bool(np.array_equal(~many.robust, np.asarray(direct.success))),
        direct_stage=bool(np.array_equal(many.stage_success,
                                         np.asarray(direct.aux["stage_success"]))),
        direct_x=float(np.max(np.abs(many.x_adv - np.asarray(direct.x_adv)))),
        n_broken=int((~many.robust).sum()), n_robust=int(many.robust.sum()))))


if __name__ == "__main__":
    main()
