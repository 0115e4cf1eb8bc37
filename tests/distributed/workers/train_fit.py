"""Worker: a few steps of robust training with ``advjax.train.fit`` on this process group.

Usage: ``train_fit.py OUT CONFIG LAYOUT CKPT DIE_AT``

* OUT: each process writes ``OUT.<process>.npz`` (final parameters, step, epoch losses).
* CONFIG: ``pgd`` (tiny CNN with global-batch BatchNorm, PGD adversarial training in training
  mode), ``woods`` (Woods Algorithm 1 adversarial training + the Lipschitz regulariser with
  adaptive ψ), ``pool`` (Szegedy's adversarial pool) or ``pgd-fsdp`` (``pgd`` with the
  parameters and optimiser state split over the devices, ``fsdp_sharding``).
* LAYOUT: ``global`` (every process passes the whole set), ``local`` (its contiguous slice) or
  ``mismatch`` (``global`` with one label changed on the last process: ``fit`` must refuse).
* CKPT: checkpoint folder (``-``: none); checkpoints every 4 steps.
* DIE_AT: the last process leaves with exit code 7 right after this step (``-1``: never).
"""
import functools
import os
import sys
import time

from advjax import parallel

parallel.initialize_distributed()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from advjax.data import load  # noqa: E402
from advjax.train import (  # noqa: E402
    LipschitzConfig,
    PGDAdversarialConfig,
    PoolConfig,
    TrainConfig,
    WoodsAdversarialConfig,
    create_train_state,
    fit,
    fsdp_sharding,
)

out, kind, layout_arg, ckpt, die_at = sys.argv[1:6]
die_at = int(die_at)


class Net(nn.Module):
    """Dense 16 -> BatchNorm (axis "bn": attacks see the global batch statistics) -> Dense 10."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16, use_bias=False)(x.reshape((x.shape[0], -1)))  # BatchNorm makes a bias idle
        x = nn.BatchNorm(use_running_average=not train, axis_name="bn", momentum=0.5)(x)
        return nn.Dense(10)(nn.relu(x))


CONFIGS = {
    "pgd": TrainConfig(adversarial=PGDAdversarialConfig(eps=0.1, steps=3, step_size=0.05)),
    "woods": TrainConfig(adversarial=WoodsAdversarialConfig(criterion="l2", eps=0.05, steps=2,
                                                                 half_half=True),
                         lipschitz=LipschitzConfig()),
    "pool": TrainConfig(pool=PoolConfig(size=16, refresh=4, mix=8, attack=PGDAdversarialConfig(
            norm="l2", eps=1.0, steps=2))),
}
CONFIGS["pgd-fsdp"] = CONFIGS["pgd"]


def main():
    layout = layout_arg
    t0 = time.perf_counter()
    images, labels = load("digits", "train")
    images, labels = images[:190], labels[:190]
    state = create_train_state(Net(), jax.random.key(0), images[:1], optax.adam(1e-2),
                               bn_axis_name="bn", pool_size=16 if kind == "pool" else None)
    if layout == "local":
        rows = np.array_split(np.arange(images.shape[0]), jax.process_count())[jax.process_index()]
        data = (images[rows], labels[rows])
    else:
        data = (images, labels)
    if layout == "mismatch":
        layout = "global"
        if jax.process_index() == jax.process_count() - 1:
            data = (images, np.where(np.arange(labels.size) == 0, (labels + 1) % 10, labels))

    def on_step(step, metrics):
        if step == die_at and jax.process_index() == jax.process_count() - 1:
            print(f"process {jax.process_index()} stops after step {step} on purpose",
                  file=sys.stderr, flush=True)
            os._exit(7)

    state, history = fit(state, data, key=jax.random.key(1), epochs=2, batch_size=32,
                         config=CONFIGS[kind], checkpoint_dir=None if ckpt == "-" else ckpt,
                         checkpoint_every=4, progress=False, on_step=on_step, data_layout=layout,
                         eval_data=load("digits", "test"), eval_batch_size=100,
                         state_sharding=functools.partial(fsdp_sharding, min_size=16)
                         if kind == "pgd-fsdp" else "replicated")
    if kind == "pgd-fsdp":  # the kernels really are split over the devices
        kernel = state.params["Dense_0"]["kernel"]
        assert not kernel.sharding.is_fully_replicated, kernel.sharding
    print(f"fit took {time.perf_counter() - t0:.1f} s", flush=True)
    # Whole arrays on every process (the fsdp state is split over the processes).
    leaves = jax.tree.leaves(multihost_utils.process_allgather(state.params, tiled=True))
    np.savez(f"{out}.{jax.process_index()}.npz", *leaves,
             step=np.asarray(jax.device_get(state.step)),
             loss=np.asarray([h["train"]["loss"] for h in history]),
             eval_accuracy=np.asarray([h["eval"]["accuracy"] for h in history]),
             batch_stats=np.concatenate([np.ravel(a) for a in
                                         jax.tree.leaves(multihost_utils.process_allgather(
                                             state.batch_stats, tiled=True))]))


try:
    main()
except BaseException:  # a failing process leaves at once (the others are killed by the launcher)
    import traceback

    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
