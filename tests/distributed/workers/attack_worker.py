"""Worker: ``shard_attack`` and ``stream`` under P processes, both data modes, uneven rows.

argv: OUT_PREFIX N COUNTS, e.g. ``/tmp/x 13 3,0,5,5``: N examples in all; with
``data_layout="local"`` process ``p`` passes rows ``[sum(COUNTS[:p]), sum(COUNTS[:p + 1]))``
(a process may have none).
Writes ``OUT_PREFIX.<process>.npz`` with every result; a failure exits at once (``os._exit``).
"""
import os
import re
import sys
import traceback

from advjax import parallel

parallel.initialize_distributed()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from advjax import attacks  # noqa: E402

KEY_SEED = 11


def problem(n: int):
    """A fixed tiny MLP (weights from a numpy seed) and ``n`` examples of shape (4, 4, 1)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 8)).astype(np.float32)
    w2 = rng.normal(size=(8, 3)).astype(np.float32)

    def logits_fn(x):
        return jnp.tanh(x.reshape(-1) @ w1) @ w2

    xs = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    labels = (np.arange(n) % 3).astype(np.int32)
    eps = np.linspace(0.05, 0.3, n).astype(np.float32)
    return logits_fn, xs, labels, eps


def make_attack(logits_fn):
    # Random start: the per-example keys decide the result.
    return attacks.pgd(logits_fn, norm="linf", steps=5, random_start=True)


def main():
    prefix, n, counts = sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3].split(",")]
    me = jax.process_index()
    assert len(counts) == jax.process_count() and sum(counts) == n
    logits_fn, xs, labels, eps = problem(n)
    key = jax.random.key(KEY_SEED)
    lo, hi = sum(counts[:me]), sum(counts[:me + 1])
    run_g = parallel.shard_attack(make_attack(logits_fn))
    run_l = parallel.shard_attack(make_attack(logits_fn), data_layout="local")
    out = {}
    g = run_g(xs, labels, key=key, eps=eps)
    out["shard_global_x"], out["shard_global_s"] = g.x_adv, g.success
    loc = run_l(xs[lo:hi], labels[lo:hi], key=key, eps=eps[lo:hi])
    out["shard_local_x"], out["shard_local_s"] = loc.x_adv, loc.success
    every = parallel.gather(loc)
    out["shard_gathered_x"], out["shard_gathered_s"] = every.x_adv, every.success
    # The program a call runs, lowered on every process (a Python-float eps broadcast to the rows,
    # as a user writes it): it must contain no collective.
    text = run_g.lower(xs, labels, key=key, eps=0.1).compile().as_text()
    out["collectives"] = np.asarray(len(re.findall(
        r"\s(?:all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(",
        text)))
    attack = make_attack(logits_fn)

    def per_example(x, label, key, eps):
        r = attack(x, label, key=key, eps=eps)
        return r.x_adv, r.success

    out["stream_global_x"], out["stream_global_s"] = parallel.stream(
        per_example, xs, labels, chunk_size=5, key=key, eps=eps)
    # Bad input is refused on every process alike (no process waits for another).
    out["mismatch_refused"] = np.asarray(jax.process_count() == 1)
    if jax.process_count() > 1:
        try:
            parallel.stream(per_example, xs[lo:hi, :2] if me == 0 else xs[lo:hi],
                            labels[lo:hi], key=key, eps=eps[lo:hi], data_layout="local")
        except ValueError as e:
            out["mismatch_refused"] = np.asarray("different per-row shapes" in str(e))
    np.savez(f"{prefix}.{me}.npz", **out)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
