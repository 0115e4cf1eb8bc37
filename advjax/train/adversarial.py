"""Batch transforms for robust training: adversarial batches and Szegedy's adversarial pool.

A *batch transform* is a pure function ``transform(state, batch, key) -> (state, batch, metrics)``
applied by :func:`advjax.train.make_train_step` before the loss. ``batch`` is a dict with
``"image" (B, ...)`` and ``"label" (B,)``. Attacks come from an *attack factory*
``make_attack(logits_fn) -> attack(x, label, *, eps, key, ...) -> AttackResult`` (per example,
the ``advjax.attacks`` contract); the generated inputs are ``stop_gradient`` constants of the loss.

* :func:`adversarial_examples`: each example is replaced (with probability ``prob``) by its
  adversarial version: PGD training (Madry et al.) and Woods adversarial training (papers.md §2.7).
* :func:`adversarial_pool`: Szegedy's input-level pool of adversarial examples, a random subset
  refreshed every step and mixed into every batch (papers.md §1.5).

Training-mode generation (papers.md §2.7): with ``train_mode=True`` the model runs in training
mode. When its BatchNorm layers were built with ``axis_name`` (``state.bn_axis_name``), the
per-example attack runs under ``jax.vmap(attack, axis_name=...)``, so every forward pass inside the
attack uses the batch statistics of the batch being attacked, as the reference implementation does.
Unlike the reference, the running statistics are not updated by the attack's forward passes (only
by the training forward pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from advjax.parallel import example_keys
from advjax.train.config import PGDAdversarialConfig, PoolConfig, WoodsAdversarialConfig
from advjax.train.state import Pool, TrainState, example_logits_fn

Array = jax.Array
AttackFactory = Callable[[Callable[[Array], Array]], Callable[..., Any]]
BatchTransform = Callable[[TrainState, dict, Array], tuple[TrainState, dict, dict]]


def pgd_attack_factory(config: PGDAdversarialConfig) -> AttackFactory:
    """``make_attack`` building ``advjax.attacks.pgd`` with the settings of ``config``.

    ``pgd`` reports examples the model already misclassifies unperturbed (``x_adv = x``), so these
    examples are trained clean.
    """
    from advjax.attacks import pgd

    def make_attack(logits_fn):
        return pgd(logits_fn, norm=config.norm, steps=config.steps, step_size=config.step_size,
                   random_start=config.random_start)

    return make_attack


def woods_attack_factory(config: WoodsAdversarialConfig) -> AttackFactory:
    """``make_attack`` building ``advjax.attacks.woods_l2`` (Algorithm 1, papers.md §2.9).

    Track-best is on for the ``"l2_min"`` and ``"btr"`` criteria (the smallest boundary-crossing δ,
    or δ = 0 when none was found) and off for ``"l2"`` (the last iterate). Already misclassified
    examples are perturbed too, as in the reference adversarial training.
    """
    from advjax.attacks import woods_l2

    def make_attack(logits_fn):
        return woods_l2(logits_fn, steps=config.steps, criterion=config.criterion,
                        momentum=config.momentum, eps_overshoot=config.eps_overshoot,
                        track_best=config.criterion != "l2", reset_misclassified=False)

    return make_attack


def _expand(mask: Array, ndim: int) -> Array:
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def adversarial_examples(
    make_attack: AttackFactory,
    *,
    eps: float,
    prob: float = 1.0,
    train_mode: bool = True,
    pass_affected: bool = False,
) -> BatchTransform:
    """Batch transform replacing examples by adversarial versions made with the current params.

    Args:
      make_attack: attack factory (see the module docstring).
      eps: attack radius passed as ``eps=`` to every example, in the attack's units (PGD: norm
        radius; Woods: RMSE).
      prob: each example is perturbed independently with this probability (the Woods "half-half"
        mask for ``prob = 0.5``); the others stay clean.
      train_mode: generate with the model in training mode (batch statistics; see module docstring).
      pass_affected: pass the mask to the attack as ``affected=`` (Woods Algorithm 1 then leaves the
        unaffected examples at δ = 0 during the whole attack, so they also enter the batch
        statistics clean); otherwise unaffected examples are restored to clean afterwards.

    Returns:
      ``transform(state, batch, key) -> (state, batch', metrics)`` with metrics ``adv_fraction``
      (fraction perturbed) and ``adv_rmse`` (mean RMSE of the perturbation over perturbed examples).
    """
    if not float(eps) >= 0:
        raise ValueError(f"`eps` must be >= 0; got {eps!r}.")
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"`prob` must lie in [0, 1]; got {prob!r}.")

    def transform(state: TrainState, batch: dict, key: Array):
        x, y = batch["image"], batch["label"]
        n = x.shape[0]
        k_mask, k_attack = jax.random.split(key)
        if prob < 1.0:
            mask = jax.random.bernoulli(k_mask, prob, (n,))
        else:
            mask = jnp.ones((n,), bool)
        logits_fn, axis = example_logits_fn(state, train=train_mode)
        attack = make_attack(logits_fn)

        def one(xi, yi, ki, mi):
            if pass_affected:
                return attack(xi, yi, eps=eps, key=ki, affected=mi).x_adv
            return attack(xi, yi, eps=eps, key=ki).x_adv

        x_adv = jax.vmap(one, axis_name=axis)(x, y, example_keys(k_attack, n), mask)
        x_adv = jax.lax.stop_gradient(jnp.where(_expand(mask, x.ndim), x_adv, x))
        rmse = jnp.sqrt(jnp.mean(jnp.square(x_adv - x).reshape(n, -1), axis=-1))
        frac = jnp.mean(mask.astype(jnp.float32))
        metrics = {"adv_fraction": frac,
                   "adv_rmse": jnp.sum(rmse * mask) / jnp.maximum(jnp.sum(mask), 1)}
        return state, {**batch, "image": x_adv}, metrics

    return transform


def adversarial_training(config: PGDAdversarialConfig | WoodsAdversarialConfig,
                         make_attack: AttackFactory | None = None) -> BatchTransform:
    """The batch transform of a PGD or Woods adversarial-training config (papers.md §2.7).

    ``make_attack`` overrides the attack built from the config (e.g. a custom attack in tests).
    """
    if isinstance(config, PGDAdversarialConfig):
        make = make_attack or pgd_attack_factory(config)
        return adversarial_examples(make, eps=config.eps, prob=config.prob,
                                    train_mode=config.train_mode)
    if isinstance(config, WoodsAdversarialConfig):
        make = make_attack or woods_attack_factory(config)
        prob = config.prob if config.half_half else 1.0
        return adversarial_examples(make, eps=config.eps, prob=prob, train_mode=config.train_mode,
                                    pass_affected=make_attack is None)
    raise TypeError("`config` must be a PGDAdversarialConfig or WoodsAdversarialConfig; got "
                    f"{type(config).__name__}.")


def adversarial_pool(
    make_attack: AttackFactory,
    *,
    eps: float,
    refresh: int,
    mix: int,
    train_mode: bool = True,
) -> BatchTransform:
    """Szegedy's continuously refreshed input-level pool of adversarial examples (papers.md §1.5).

    Each step: the attack runs on ``refresh`` random examples of the clean batch (current params);
    its outputs overwrite ``refresh`` random slots of ``state.pool``; then ``mix`` examples drawn
    uniformly (with replacement) from the filled slots are appended to the clean batch, so the loss
    sees ``B + mix`` examples. Pool entries keep the true labels of their clean sources. The pool
    is allocated by ``create_train_state(..., pool_size=P)``. Per-layer pools are not implemented.

    Returns:
      ``transform(state, batch, key) -> (state with refreshed pool, mixed batch, metrics)``;
      metrics: ``pool_filled`` (fraction of filled slots).
    """
    for name, value in (("refresh", refresh), ("mix", mix)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")

    def transform(state: TrainState, batch: dict, key: Array):
        pool = state.pool
        if pool is None:
            raise ValueError("`state.pool` is None: create the state with "
                             "create_train_state(..., pool_size=P) to train with a pool.")
        x, y = batch["image"], batch["label"]
        n, size = x.shape[0], pool.x.shape[0]
        if refresh > n or refresh > size:
            raise ValueError(f"`refresh` ({refresh}) must be <= the batch size ({n}) and the pool "
                             f"size ({size}).")
        if pool.x.shape[1:] != x.shape[1:]:
            raise ValueError(f"pool examples have shape {pool.x.shape[1:]} but `batch['image']` "
                             f"examples have shape {x.shape[1:]}.")
        k_src, k_slot, k_attack, k_mix = jax.random.split(key, 4)
        src = jax.random.permutation(k_src, n)[:refresh]
        xs, ys = x[src], y[src]
        logits_fn, axis = example_logits_fn(state, train=train_mode)
        attack = make_attack(logits_fn)
        x_new = jax.vmap(lambda xi, yi, ki: attack(xi, yi, eps=eps, key=ki).x_adv,
                         axis_name=axis)(xs, ys, example_keys(k_attack, refresh))
        x_new = jax.lax.stop_gradient(x_new).astype(pool.x.dtype)
        slots = jax.random.permutation(k_slot, size)[:refresh]
        pool = Pool(x=pool.x.at[slots].set(x_new), y=pool.y.at[slots].set(ys.astype(jnp.int32)),
                    valid=pool.valid.at[slots].set(True))
        weights = pool.valid.astype(jnp.float32)
        draw = jax.random.choice(k_mix, size, (mix,), replace=True, p=weights / jnp.sum(weights))
        mixed = {"image": jnp.concatenate([x, pool.x[draw].astype(x.dtype)]),
                 "label": jnp.concatenate([y, pool.y[draw].astype(y.dtype)])}
        return state.replace(pool=pool), mixed, {"pool_filled": jnp.mean(weights)}

    return transform


def pool_training(config: PoolConfig, make_attack: AttackFactory | None = None) -> BatchTransform:
    """The batch transform of a :class:`PoolConfig` (attack from ``config.attack`` by default)."""
    attack_cfg = config.attack
    if make_attack is None:
        if isinstance(attack_cfg, PGDAdversarialConfig):
            make_attack = pgd_attack_factory(attack_cfg)
        else:
            make_attack = woods_attack_factory(attack_cfg)
    return adversarial_pool(make_attack, eps=attack_cfg.eps, refresh=config.refresh,
                            mix=config.mix, train_mode=attack_cfg.train_mode)
