"""Worker: ``attacks.evaluate`` under P processes, with a state file, interrupted or resumed.

argv: OUT_PREFIX STATE DATA COUNTS INTERRUPT, e.g. ``/tmp/x /tmp/s.npz local 5,0,4,3 0``:
``DATA`` is ``global`` or ``local`` (process ``p`` passes rows ``[sum(COUNTS[:p]),
sum(COUNTS[:p + 1]))``); ``INTERRUPT=1`` stops every process when the second stage starts (the
state then holds the first). Writes ``OUT_PREFIX.<process>.npz``; a failure exits at once.
"""
import os
import sys
import traceback

from advjax import parallel

parallel.initialize_distributed()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from advjax.attacks.evaluate import AutoAttackEvaluator  # noqa: E402

SETTINGS = dict(attacks=["apgd-ce", "apgd-t"], steps=3, n_targets=2, batch_size=8)
EPS = 0.04
KEY_SEED = 3


def problem(n: int):
    """A fixed tiny MLP with 5 classes (numpy-seeded weights) and ``n`` (4, 4, 1) examples."""
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(16, 8)).astype(np.float32)
    w2 = rng.normal(size=(8, 5)).astype(np.float32)

    def logits_fn(x):
        return jnp.tanh(x.reshape(-1) @ w1) @ w2

    xs = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    labels = np.argmax(np.tanh(xs.reshape(n, -1) @ w1) @ w2, axis=-1).astype(np.int32)
    labels[::5] = (labels[::5] + 1) % 5             # a few misclassified examples
    return logits_fn, xs, labels


def main():
    prefix, state, data_layout = sys.argv[1], sys.argv[2], sys.argv[3]
    counts, interrupt = [int(c) for c in sys.argv[4].split(",")], sys.argv[5] == "1"
    me = jax.process_index()
    logits_fn, xs, labels = problem(sum(counts))
    if data_layout == "local":
        lo, hi = sum(counts[:me]), sum(counts[:me + 1])
        xs, labels = xs[lo:hi], labels[lo:hi]
    ev = AutoAttackEvaluator(logits_fn, **SETTINGS)
    if interrupt:
        original = ev._run_chunked

        def stop(name, *a, **k):
            if name == SETTINGS["attacks"][1]:
                raise KeyboardInterrupt
            return original(name, *a, **k)
        ev._run_chunked = stop
    try:
        out = ev(xs, labels, eps=EPS, key=jax.random.key(KEY_SEED), state_path=state,
                 data_layout=data_layout)
    except KeyboardInterrupt:
        np.savez(f"{prefix}.{me}.npz", interrupted=True)
        return
    np.savez(f"{prefix}.{me}.npz", interrupted=False, broken_by=out.broken_by,
             x_adv=out.x_adv, robust=out.robust,
             robust_accuracy=np.asarray([out.robust_accuracy[s] for s in out.stages]),
             attacked=np.asarray([out.attacked[s] for s in out.stages]), passes=out.passes,
             forward_passes=np.asarray([out.forward_passes[s] for s in out.stages]),
             backward_passes=np.asarray([out.backward_passes[s] for s in out.stages]))


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
