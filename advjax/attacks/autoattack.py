"""AutoAttack (Croce & Hein 2020): the parameter-free ensemble, for ONE example, in one program.

``standard`` = APGD-CE -> APGD-T -> FAB-T -> Square with the published settings (100 iterations,
1 restart, 9 target classes, 5000 queries, ``p_init = 0.8``); ``plus`` adds APGD-DLR and
untargeted FAB with 5 restarts each (and 5 restarts of APGD-CE); ``rand`` runs APGD-CE and
APGD-DLR with the gradient averaged over ``eot_samples`` random draws of a randomised model.

Every APGD stage is the package's one APGD loop (:func:`advjax.attacks.apgd.apgd_run`) with the
official options (:data:`advjax.attacks.apgd_targeted.OFFICIAL`); restarts and targets follow
the official "first success wins". With a deterministic model a run stops at its first
misclassified iterate (the flag is the same as running on). With a randomised model (``rand``)
one draw's misclassification is luck near the boundary: the EOT runs keep optimising, as the
official code does, return the last iterate one draw misclassified, and the point counts only
if the majority of ``verify_draws`` (20, the official EOT count) fresh draws misclassify it
(:func:`verified_success`).

An example already broken by a stage is not attacked by the later ones: every stage runs its loop
only while ``active`` (a ``lax.while_loop`` condition), so a batch stops as soon as all of its
examples are broken. :func:`advjax.attacks.evaluate.evaluate` goes further and runs each stage
only on the examples still robust (compacted), as the official code does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks._restarts import best_of_runs
from advjax.attacks.apgd_targeted import OFFICIAL, apgd_search, apgd_t_search
from advjax.attacks.fab import fab_multi_search
from advjax.attacks.result import AttackResult
from advjax.attacks.square import square_search

Array = jax.Array

VERSIONS = ("standard", "plus", "rand")
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSION_STAGES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
# The official ``AutoAttack(norm='L1', version='standard')`` runs apgd-ce, apgd-t, fab-t and
# square (APGD with the decreasing budgets ``use_largereps``, 5 restarts of APGD-CE, 5 APGD-T
# targets, Square with the official L1 step: ``advjax.attacks.square.l1_proposal``): the same
# four stages as L-infinity and L2, with the L1 settings below.
L1_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
L1_OVERRIDES = dict(apgd_restarts=5, apgd_n_targets=5)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static settings of the stages (the published values by default).

    Attributes:
      norm: ``"linf"``, ``"l2"`` or ``"l1"``.
      steps: APGD / FAB iterations (100).
      apgd_restarts: APGD-CE / APGD-DLR restarts (1 standard and rand, 5 plus).
      fab_restarts: untargeted FAB restarts (5, plus only).
      n_targets: APGD-T / FAB-T target classes (9; capped at ``K - 1``).
      apgd_n_targets: APGD-T's target classes when they differ from FAB-T's (``None``: the same;
        5 for L1, as the official code).
      queries: Square queries (5000); ``p_init``: 0.8.
      eot_samples: gradient draws per APGD step (1; 20 for ``rand``).
      randomized: ``logits_fn(x, key)`` is a randomised model.
      verify_draws: fresh draws of a randomised model that decide a stage's success (majority;
        20: the official EOT count; the standard error of the misclassified fraction is then
        at most 0.11, where a single draw makes the flag a coin flip with the point's
        misclassification probability).
      lo, hi: the box.
    """

    norm: str = "linf"
    steps: int = 100
    apgd_restarts: int = 1
    fab_restarts: int = 5
    n_targets: int = 9
    apgd_n_targets: int | None = None
    queries: int = 5000
    p_init: float = 0.8
    eot_samples: int = 1
    randomized: bool = False
    verify_draws: int = 20
    lo: float | None = 0.0
    hi: float | None = 1.0


def _model(logits_fn, randomized: bool):
    if randomized:
        return logits_fn
    return lambda z, key: logits_fn(z)


def stage_search(name: str, logits_fn: Callable, cfg: Settings) -> Callable:
    """The search of one stage: ``search(x, label, eps, key, active) -> x_adv`` (ONE example).

    The returned point is checked by :func:`verified_success`, never trusted as is.
    """
    _checks.check_choice(name, "attacks", STAGES)
    model = _model(logits_fn, cfg.randomized)
    det = (lambda z: logits_fn(z, jax.random.key(0))) if cfg.randomized else logits_fn
    n_targets = cfg.n_targets

    def apgd_untargeted(loss):
        def search(x, label, eps, key, active):
            def loss_fn(z, k):
                logits = model(z, k)
                return losses.attack_loss(loss, logits, label), logits

            def run(run_key, run_active):
                return apgd_search(loss_fn, x, label, eps, run_key, norm=cfg.norm,
                                   steps=cfg.steps, lo=cfg.lo, hi=cfg.hi,
                                   eot_samples=cfg.eot_samples, active=active & run_active,
                                   stop_at_success=not cfg.randomized, **OFFICIAL)

            keys = _boundary.example_keys(key, cfg.apgd_restarts)
            return best_of_runs(run, keys, x, rule="first_success")[0]
        return search

    if name == "apgd-ce":
        return apgd_untargeted("ce")
    if name == "apgd-dlr":
        return apgd_untargeted("dlr")
    if name == "apgd-t":
        apgd_targets = n_targets if cfg.apgd_n_targets is None else cfg.apgd_n_targets

        def search(x, label, eps, key, active):
            k = _boundary.num_classes(det, x)
            return apgd_t_search(det, x, label, eps, key, norm=cfg.norm, steps=cfg.steps,
                                 n_targets=min(apgd_targets, k - 1), lo=cfg.lo, hi=cfg.hi,
                                 active=active)[0]
        return search
    if name in ("fab", "fab-t"):
        targeted = name == "fab-t"

        def search(x, label, eps, key, active):
            k = _boundary.num_classes(det, x)
            return fab_multi_search(det, x, label, key, norm=cfg.norm, steps=cfg.steps,
                                    lo=cfg.lo, hi=cfg.hi, targeted=targeted,
                                    n_targets=min(n_targets, k - 1),
                                    n_restarts=1 if targeted else cfg.fab_restarts,
                                    stop_below=eps, start_radius=eps, active=active)[0]
        return search

    def search(x, label, eps, key, active):
        return square_search(det, x, label, eps, key, norm=cfg.norm, n_queries=cfg.queries,
                             p_init=cfg.p_init, lo=cfg.lo, hi=cfg.hi, active=active)[0]
    return search


def verified_success(logits_fn: Callable, cfg: Settings, x: Array, z: Array, label: Array,
                     eps: Array, key: Array) -> Array:
    """A stage's point counts only if it is inside the box and the ``norm`` ball of radius
    ``eps`` (the boundary's :func:`advjax.attacks._boundary.within_budget`: float rounding only)
    and fresh forward passes misclassify it with finite logits: one pass for a deterministic
    model; for a randomised one the majority of ``cfg.verify_draws`` draws (keys
    ``fold_in(key, j)``)."""
    ok = _boundary.within_budget(x, z, eps, cfg.norm)
    if cfg.lo is not None:
        ok = ok & jnp.all(z >= cfg.lo) & jnp.all(z <= cfg.hi)

    def wrong(k):
        logits = _model(logits_fn, cfg.randomized)(z, k)
        return (jnp.argmax(logits) != label) & jnp.all(jnp.isfinite(logits))

    if not cfg.randomized:
        return ok & wrong(key)
    draws = jax.vmap(lambda j: wrong(jax.random.fold_in(key, j)))(jnp.arange(cfg.verify_draws))
    return ok & (2 * jnp.sum(draws) > cfg.verify_draws)


def settings_for(version: str, norm: str, **overrides) -> Settings:
    """The published settings of ``version`` (then ``overrides``)."""
    _checks.check_choice(version, "version", VERSIONS)
    _checks.check_choice(norm, "norm", projections.BALL_NORMS)
    base = dict(norm=norm)
    if norm == "l1" and version == "standard":
        base.update(L1_OVERRIDES)
    if version == "plus":
        base.update(apgd_restarts=5, fab_restarts=5)
    if version == "rand":
        base.update(eot_samples=20, randomized=True)
    base.update(overrides)
    return Settings(**base)


def check_stage_classes(stages: Sequence[str], num_classes: int) -> None:
    """The class counts the stages need: ``'apgd-dlr'`` at least 3, ``'apgd-t'`` at least 4
    (a ``ValueError`` naming the stage otherwise). Checked by :func:`autoattack` and
    :func:`advjax.attacks.evaluate` alike."""
    if "apgd-dlr" in stages and num_classes < 3:
        raise ValueError(f"'apgd-dlr' needs at least 3 classes; `logits_fn` gives {num_classes}.")
    if "apgd-t" in stages and num_classes < 4:
        raise ValueError(f"'apgd-t' needs at least 4 classes; `logits_fn` gives {num_classes}.")


def autoattack(
    logits_fn: Callable,
    *,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    **settings,
) -> Callable[..., AttackResult]:
    """The AutoAttack ensemble as one per-example attack (contract).

    Args:
      logits_fn: per-example ``x -> logits (K,)``; for ``version="rand"`` a randomised model
        ``logits_fn(x, key) -> logits``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (standard: :data:`L1_STAGES`, the official L1
        stages, Square-L1 included, with the official L1 settings :data:`L1_OVERRIDES`; APGD-L1
        runs the decreasing budgets ``3 eps, 2 eps, eps``).
      version: ``"standard"``, ``"plus"`` or ``"rand"`` (stages and settings as published).
      attacks: a custom order of stages from ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``,
        ``fab-t``, ``square`` (default: the version's).
      lo, hi: the box.
      **settings: overrides of :class:`Settings` (e.g. ``steps=10`` for a quick check).

    Returns:
      ``attack(x, label, *, eps, key) -> AttackResult``: ``success`` is the worst case over the
      stages (robust = ``~success``), ``x_adv`` the first stage's successful point (``x`` if none),
      ``aux[name]`` each stage's success flag, ``aux["stage_success"]`` the flags stacked in
      stage order (``attack.stages``). Keys: stage ``i`` uses ``fold_in(key, i)``.
    """
    lo, hi = _boundary.check_box_setting(lo, hi)
    cfg = settings_for(version, norm, lo=lo, hi=hi, **settings)
    if attacks is None:
        attacks = (L1_STAGES if norm == "l1" and version == "standard"
                   else VERSION_STAGES[version])
    stages = tuple(attacks)
    if not stages:
        raise ValueError("`attacks` must name at least one stage.")
    for s in stages:
        _checks.check_choice(s, "attacks", STAGES)
    if cfg.randomized and any(s in ("fab", "fab-t", "square", "apgd-t") for s in stages):
        raise ValueError("`attacks`: with a randomised model only 'apgd-ce' and 'apgd-dlr' use "
                         "EOT; got " + repr(stages))
    logits_fn = _boundary._prepare_logits_fn(logits_fn)
    searches = [stage_search(s, logits_fn, cfg) for s in stages]
    det = (lambda z: logits_fn(z, jax.random.key(0))) if cfg.randomized else logits_fn

    def check_classes(k):
        check_stage_classes(stages, k)

    def search(_, ex: _boundary.Example):
        x, label, eps, key = ex.x, ex.label, ex.budget, ex.key
        done = jnp.argmax(ex.clean_logits) != label
        x_adv = x
        flags = []
        for i, stage in enumerate(searches):
            k_i = jax.random.fold_in(key, i)
            z = stage(x, label, eps, k_i, ~done)
            s = ~done & verified_success(logits_fn, cfg, x, z, label, eps,
                                         jax.random.fold_in(k_i, 7))
            x_adv = jnp.where(s, z, x_adv)
            flags.append(s)
            done = done | s
        aux = {name: f for name, f in zip(stages, flags, strict=True)}
        aux["stage_success"] = jnp.stack(flags)
        # Worst case over the stages: robust only if no stage succeeded (and the clean point is
        # correct); for a randomised model the verified stage flags decide, not one more draw.
        aux["success"] = done
        return x_adv, aux

    attack = _boundary.per_example(search, det, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                   needs_key=True, search_success=True,
                                   check_classes=check_classes)
    attack.stages = stages
    return attack
