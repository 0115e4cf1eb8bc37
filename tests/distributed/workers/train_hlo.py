"""Worker: counts the collectives in the compiled data-parallel train step on 2, 4 and 8 devices.

Usage: ``train_hlo.py OUT`` (run with 8 local devices); writes ``OUT`` (npz) with, per config
(``plain`` on D = 2, 4, 8; ``pgd`` on D = 2, 8), the counts of each collective op in
``shard_train_step(...).lower(state, batch).compile().as_text()``, and the device counts of
``fit``'s default mesh for batch sizes 32, 12 and 7.
"""
import functools
import os
import re
import sys

import flax.linen as nn
import jax
import numpy as np
import optax

from advjax.parallel import make_mesh
from advjax.train import (
    PGDAdversarialConfig,
    TrainConfig,
    create_train_state,
    global_batch,
    replicate,
    shard_train_step,
    train_step,
)

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# The op of an HLO instruction `%name = TYPE op(...)` (TYPE may be a tuple with spaces), or its
# async `op-start(` (the matching `op-done(` is not counted again).
PATTERN = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16, use_bias=False)(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, axis_name="bn")(x)
        return nn.Dense(10)(nn.relu(x))


def counts(text: str) -> list[int]:
    found = [op for line in text.splitlines() if " = " in line for op in PATTERN.findall(line)]
    return [found.count(name) for name in COLLECTIVES]


def main():
    out = sys.argv[1]
    configs = {"plain": TrainConfig(),
               "pgd": TrainConfig(adversarial=PGDAdversarialConfig(eps=0.1, steps=3))}
    x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.arange(32, dtype=np.int32) % 10
    results = {}
    for name, config in configs.items():
        for d in ((2, 4, 8) if name == "plain" else (2, 8)):
            mesh = make_mesh(jax.devices()[:d])
            state = replicate(create_train_state(Net(), jax.random.key(0), x[:1], optax.sgd(0.1),
                                                 bn_axis_name="bn"), mesh)
            step = shard_train_step(functools.partial(train_step, config=config), mesh)
            text = step.lower(state, global_batch({"image": x, "label": y}, mesh, 32)
                              ).compile().as_text()
            results[f"{name}_{d}"] = np.asarray(counts(text))
    # fit's default mesh for batch sizes that do (32) and do not (12, 7) divide over 8 devices.
    from advjax.train.loop import _default_mesh

    results["default_mesh"] = np.asarray([_default_mesh(b).devices.size for b in (32, 12, 7)])
    np.savez(out, collectives=np.asarray(COLLECTIVES), **results)


try:
    main()
except BaseException:
    import traceback

    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
