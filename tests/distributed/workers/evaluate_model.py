"""A tiny fixed model for ``advjax evaluate tests.distributed.workers.evaluate_model:mlp``.

A 64-32-10 MLP on the 8x8 ``digits`` images: a seeded random tanh layer, then a least-squares
read-out fitted on the ``digits`` train split (numpy only, so every process builds the same
weights). About 90 % clean accuracy on the test split; small L-inf budgets break part of it.
"""
import jax.numpy as jnp
import numpy as np


def mlp():
    from advjax import data

    train = data.load("digits", "train")
    x = np.asarray(train.images, np.float64).reshape(len(train.labels), -1)
    w1 = np.random.default_rng(0).normal(size=(x.shape[1], 32)) * 0.3
    h = np.tanh(x @ w1)
    w2 = np.linalg.lstsq(h, np.eye(10)[np.asarray(train.labels)], rcond=None)[0]
    w1, w2 = jnp.asarray(w1, jnp.float32), jnp.asarray(w2 * 10.0, jnp.float32)

    def logits_fn(x):
        return jnp.tanh(x.reshape(-1) @ w1) @ w2

    return logits_fn
