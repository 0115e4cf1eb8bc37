"""Tiny training run for the kill/resume test: ``python _resume_script.py DIR OUT.npz SLEEP``."""

from __future__ import annotations

import sys
import time

import jax
import numpy as np
import optax

from advjax.models.szegedy import MLP
from advjax.train import TrainConfig, create_train_state, fit


def main(ckpt_dir: str, out: str, sleep: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(256, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(256, -1).sum(-1) > 8).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 0.5)
    state = create_train_state(MLP(hidden=(16,), activation="tanh", num_classes=4),
                               jax.random.key(0), x[:1], optax.adam(1e-2))
    on_step = (lambda step, metrics: time.sleep(sleep)) if sleep > 0 else None
    state, history = fit(state, (x, y), key=jax.random.key(1), epochs=4, batch_size=32,
                         config=TrainConfig(weight_decay=1e-4), checkpoint_dir=ckpt_dir,
                         checkpoint_every=3, progress=False, on_step=on_step)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
    arrays["__train_loss__"] = np.array([h["train"]["loss"] for h in history])
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
