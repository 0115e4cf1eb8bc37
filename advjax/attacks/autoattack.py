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
from advjax.attacks import _boundary, losses, passes, projections
from advjax.attacks._restarts import best_of_runs
from advjax.attacks.apgd_targeted import OFFICIAL, apgd_search, apgd_t_search
from advjax.attacks.fab import fab_multi_search
from advjax.attacks.result import AttackResult
from advjax.attacks.square import square_search

Array = jax.Array

VERSIONS = ("standard", "plus", "rand", "adaptive")
STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square", "apgd-mt", "apgd-malt",
          "transfer", "square-restarts")
# Targeted APGD stages and their target selection (advjax.attacks.targets): AutoAttack's APGD-T
# (top logits), MultiTargeted (every other class) and MALT (nearest linearised boundary first).
TARGETED_APGD = {"apgd-t": "logits", "apgd-mt": "all", "apgd-malt": "malt"}
VERSION_STAGES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
# The stages ``version="adaptive"`` runs after AutoAttack's standard ones, in this order:
# MALT-targeted APGD; "transfer" only when a surrogate model is given; "square-restarts" only
# when a gradient-masking check tripped (:func:`advjax.attacks.diagnostics.masking_suspected`;
# the per-example :func:`autoattack` cannot run the checks and always runs it).
ADAPTIVE_STAGES = ("apgd-malt", "transfer", "square-restarts")
# Stages that attack a surrogate model (``surrogate=``) and verify on the target.
SURROGATE_STAGES = ("transfer",)
# Stages that run only when the gradient-masking checks ask for them (in ``evaluate``).
CONDITIONAL_STAGES = ("square-restarts",)
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
      square_restarts: runs of Square (each ``queries`` queries, its own key) in the
        ``"square-restarts"`` stage (5: more Square restarts is how k-WTA's AutoAttack figure
        was lowered, 18.50 -> 7.40 %).
      malt_targets: targets of the ``"apgd-malt"`` stage (9, the MALT authors' ``k``; capped at
        ``K - 1``); malt_candidates: classes MALT scores (100, their ``testk``; capped at
        ``K - 1``). See :mod:`advjax.attacks.targets`.
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
    malt_targets: int = 9
    malt_candidates: int = 100
    eot_samples: int = 1
    square_restarts: int = 5
    randomized: bool = False
    verify_draws: int = 20
    lo: float | None = 0.0
    hi: float | None = 1.0


def _model(logits_fn, randomized: bool):
    if randomized:
        return logits_fn
    return lambda z, key: logits_fn(z)


def stage_search(name: str, logits_fn: Callable, cfg: Settings,
                 surrogate: Callable | None = None) -> Callable:
    """The search of one stage: ``search(x, label, eps, key, active) -> (x_adv, passes)`` (ONE
    example; ``passes``: int32 ``(2,)`` ``[forward, backward]`` model passes the search spent on
    it, :mod:`advjax.attacks.passes`; ``[0, 0]`` when not ``active``).

    The returned point is checked by :func:`verified_success` on ``logits_fn``, never trusted
    as is (its passes, :func:`verification_passes`, are not included). ``surrogate``
    (per-example ``x -> logits``, the same classes) is the model the ``"transfer"`` stage
    attacks; its passes count like the target's.
    """
    _checks.check_choice(name, "attacks", STAGES)
    if name in SURROGATE_STAGES and surrogate is None:
        raise ValueError(f"the {name!r} stage attacks a surrogate model: pass `surrogate` "
                         "(per-example x -> logits with the same classes).")
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
            z, _, _, spent = best_of_runs(run, keys, x, (passes.zero(),), rule="first_success",
                                          accumulate=(3,))
            return z, spent
        return search

    if name == "apgd-ce":
        return apgd_untargeted("ce")
    if name == "apgd-dlr":
        return apgd_untargeted("dlr")
    if name in TARGETED_APGD:
        apgd_targets = {"apgd-t": n_targets if cfg.apgd_n_targets is None
                        else cfg.apgd_n_targets, "apgd-mt": None,
                        "apgd-malt": cfg.malt_targets}[name]

        def search(x, label, eps, key, active):
            k = _boundary.num_classes(det, x)
            n = k - 1 if apgd_targets is None else min(apgd_targets, k - 1)
            z, _, spent = apgd_t_search(det, x, label, eps, key, norm=cfg.norm,
                                        steps=cfg.steps, n_targets=n, lo=cfg.lo, hi=cfg.hi,
                                        active=active, selection=TARGETED_APGD[name],
                                        candidates=min(cfg.malt_candidates, k - 1))
            return z, spent
        return search
    if name in ("fab", "fab-t"):
        targeted = name == "fab-t"

        def search(x, label, eps, key, active):
            k = _boundary.num_classes(det, x)
            z, _, spent = fab_multi_search(det, x, label, key, norm=cfg.norm, steps=cfg.steps,
                                           lo=cfg.lo, hi=cfg.hi, targeted=targeted,
                                           n_targets=min(n_targets, k - 1),
                                           n_restarts=1 if targeted else cfg.fab_restarts,
                                           stop_below=eps, start_radius=eps, active=active)
            return z, spent
        return search

    if name == "transfer":
        return transfer_search(det, surrogate, cfg)

    def square_run(x, label, eps, key, active):
        return square_search(det, x, label, eps, key, norm=cfg.norm, n_queries=cfg.queries,
                             p_init=cfg.p_init, lo=cfg.lo, hi=cfg.hi, active=active)

    if name == "square-restarts":
        def search(x, label, eps, key, active):
            def run(run_key, run_active):
                z, s, spent = square_run(x, label, eps, run_key, active & run_active)
                return z, s, jnp.zeros((), x.dtype), spent

            keys = _boundary.example_keys(key, cfg.square_restarts)
            z, _, _, spent = best_of_runs(run, keys, x, (passes.zero(),), rule="first_success",
                                          accumulate=(3,))
            return z, spent
        return search

    def search(x, label, eps, key, active):
        z, _, spent = square_run(x, label, eps, key, active)
        return z, spent
    return search


def transfer_search(logits_fn: Callable, surrogate: Callable, cfg: Settings) -> Callable:
    """The ``"transfer"`` stage: APGD runs on ``surrogate`` whose points are verified on the
    target ``logits_fn`` (ONE example): APGD-CE, then targeted-DLR APGD towards the surrogate's
    ``n_targets`` most likely other classes (capped at ``K - 1``; none below 4 classes), each
    with the official options but running all ``steps`` iterations (the surrogate's success is
    not the target's: the run keeps maximising the surrogate's loss and reports its last point
    the surrogate misclassifies, else its point of largest loss). The first run whose point the
    target misclassifies wins (keys ``fold_in(key, run)``).

    A transfer attack never differentiates the target, so no gradient masking of the target
    can stop it: on a masked twin (the surrogate's own values behind a zero gradient) it finds
    what white-box APGD finds on the surrogate.

    Passes (:mod:`advjax.attacks.passes`): the surrogate's forward pass that ranks the targets,
    each run's APGD passes on the surrogate and one forward pass of the target per run.
    """
    def search(x, label, eps, key, active):
        k = _boundary.num_classes(logits_fn, x)
        k_surrogate = _boundary.num_classes(surrogate, x)
        if k_surrogate != k:
            raise ValueError(f"`surrogate` gives {k_surrogate} classes, `logits_fn` {k}: a "
                             "transfer attack needs the same classes.")
        n_t = min(cfg.n_targets, k - 1) if k >= 4 else 0
        targets = jnp.concatenate([jnp.full((1,), -1, jnp.int32),
                                   losses.top_targets(surrogate(x), n_t).astype(jnp.int32)])

        def run(item, run_active):
            run_key, target = item

            def loss_fn(z, _key):
                logits = surrogate(z)
                ce = losses.attack_loss("ce", logits, label)
                if n_t == 0:
                    return ce, logits
                t_dlr = losses.targeted_dlr_loss(logits, label, jnp.maximum(target, 0))
                return jnp.where(target < 0, ce, t_dlr), logits

            on = active & run_active
            z, _, f, spent = apgd_search(loss_fn, x, label, eps, run_key, norm=cfg.norm,
                                         steps=cfg.steps, lo=cfg.lo, hi=cfg.hi, active=on,
                                         **{**OFFICIAL, "stop_at_success": False})
            # The target's check runs only for a run that ran (a skipped run computes nothing,
            # as its passes say; under vmap both branches run for the batch, uncounted).
            logits = jax.lax.cond(on, logits_fn, lambda v: jnp.zeros((k,), v.dtype), z)
            fooled = (jnp.argmax(logits) != label) & jnp.all(jnp.isfinite(logits))
            return z, fooled & on, f, spent + passes.gated(on, passes.count(forward=1))

        keys = _boundary.example_keys(key, n_t + 1)
        z, _, _, spent = best_of_runs(run, (keys, targets), x, (passes.zero(),),
                                      rule="first_success", accumulate=(3,))
        return z, spent + passes.gated(active, passes.count(forward=1))

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


def verification_passes(cfg: Settings) -> Array:
    """The forward passes of :func:`verified_success` (:mod:`advjax.attacks.passes`): one for a
    deterministic model, ``cfg.verify_draws`` for a randomised one."""
    return passes.count(forward=cfg.verify_draws if cfg.randomized else 1)


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


def version_stages(version: str, norm: str, *, surrogate: bool = False) -> tuple[str, ...]:
    """The stages of ``version`` in order: the published ones (standard L1: :data:`L1_STAGES`);
    ``"adaptive"``: the standard stages, then :data:`ADAPTIVE_STAGES` ("transfer" only when a
    surrogate is given)."""
    _checks.check_choice(version, "version", VERSIONS)
    if version == "adaptive":
        return version_stages("standard", norm) + tuple(
            s for s in ADAPTIVE_STAGES if surrogate or s not in SURROGATE_STAGES)
    if norm == "l1" and version == "standard":
        return L1_STAGES
    return VERSION_STAGES[version]


def check_stage_classes(stages: Sequence[str], num_classes: int) -> None:
    """The class counts the stages need: ``'apgd-dlr'`` at least 3, the targeted APGD stages
    (``'apgd-t'``, ``'apgd-mt'``, ``'apgd-malt'``: the targeted DLR loss) at least 4 (a
    ``ValueError`` naming the stage otherwise). Checked by :func:`autoattack` and
    :func:`advjax.attacks.evaluate` alike."""
    if "apgd-dlr" in stages and num_classes < 3:
        raise ValueError(f"'apgd-dlr' needs at least 3 classes; `logits_fn` gives {num_classes}.")
    for s in TARGETED_APGD:
        if s in stages and num_classes < 4:
            raise ValueError(f"{s!r} needs at least 4 classes; `logits_fn` gives {num_classes}.")


def autoattack(
    logits_fn: Callable,
    *,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    surrogate: Callable | None = None,
    **settings,
) -> Callable[..., AttackResult]:
    """The AutoAttack ensemble as one per-example attack (contract).

    Args:
      logits_fn: per-example ``x -> logits (K,)``; for ``version="rand"`` a randomised model
        ``logits_fn(x, key) -> logits``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (standard: :data:`L1_STAGES`, the official L1
        stages, Square-L1 included, with the official L1 settings :data:`L1_OVERRIDES`; APGD-L1
        runs the decreasing budgets ``3 eps, 2 eps, eps``).
      version: ``"standard"``, ``"plus"`` or ``"rand"`` (stages and settings as published), or
        ``"adaptive"``: the standard stages and settings, then :data:`ADAPTIVE_STAGES`
        (:func:`version_stages`; here "square-restarts" always runs, :func:`advjax.attacks.evaluate`
        runs it only when a gradient-masking check trips).
      attacks: a custom order of stages from ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``,
        ``fab-t``, ``square``, the target-selection stages ``apgd-mt`` (MultiTargeted: APGD-T
        on every other class) and ``apgd-malt`` (MALT: APGD-T on the ``malt_targets`` classes
        whose linearised boundary is nearest; :mod:`advjax.attacks.targets`), ``transfer``
        (APGD on ``surrogate``, verified on ``logits_fn``: :func:`transfer_search`) and
        ``square-restarts`` (``square_restarts`` more Square runs) (default: the version's).
      lo, hi: the box.
      surrogate: per-example ``x -> logits`` with the same classes, attacked by the
        ``"transfer"`` stage (e.g. the undefended model behind a defence, or a model trained on
        the same data); required by that stage.
      **settings: overrides of :class:`Settings` (e.g. ``steps=10`` for a quick check).

    Returns:
      ``attack(x, label, *, eps, key) -> AttackResult``: ``success`` is the worst case over the
      stages (robust = ``~success``), ``x_adv`` the first stage's successful point (``x`` if none),
      ``aux[name]`` each stage's success flag, ``aux["stage_success"]`` the flags stacked in
      stage order (``attack.stages``), ``aux["stage_passes"]`` int32 ``(n_stages, 2)`` the
      ``[forward, backward]`` model passes each stage spent on the example, its verification
      included (zero for a stage that did not run: the example was already broken), and
      ``aux["passes"]`` their sum (:mod:`advjax.attacks.passes`; the clean forward pass is not
      counted). Keys: stage ``i`` uses ``fold_in(key, i)``.
    """
    lo, hi = _boundary.check_box_setting(lo, hi)
    cfg = settings_for(version, norm, lo=lo, hi=hi, **settings)
    if attacks is None:
        attacks = version_stages(version, norm, surrogate=surrogate is not None)
    stages = tuple(attacks)
    if not stages:
        raise ValueError("`attacks` must name at least one stage.")
    for s in stages:
        _checks.check_choice(s, "attacks", STAGES)
    if surrogate is not None and not callable(surrogate):
        raise ValueError(f"`surrogate` must be a per-example function x -> logits; got "
                         f"{type(surrogate).__name__}.")
    for name in ("malt_targets", "malt_candidates"):
        _checks.check_positive_int(getattr(cfg, name), name)
    if cfg.malt_candidates < cfg.malt_targets:
        raise ValueError(f"`malt_candidates` ({cfg.malt_candidates}) must be >= `malt_targets` "
                         f"({cfg.malt_targets}): MALT picks its targets among the candidates.")
    if cfg.randomized and any(s not in ("apgd-ce", "apgd-dlr") for s in stages):
        raise ValueError("`attacks`: with a randomised model only 'apgd-ce' and 'apgd-dlr' use "
                         "EOT; got " + repr(stages))
    logits_fn = _boundary._prepare_logits_fn(logits_fn)
    if surrogate is not None:
        surrogate = _boundary._prepare_logits_fn(surrogate)
    searches = [stage_search(s, logits_fn, cfg, surrogate) for s in stages]
    det = (lambda z: logits_fn(z, jax.random.key(0))) if cfg.randomized else logits_fn

    def check_classes(k):
        check_stage_classes(stages, k)

    def search(_, ex: _boundary.Example):
        x, label, eps, key = ex.x, ex.label, ex.budget, ex.key
        done = jnp.argmax(ex.clean_logits) != label
        x_adv = x
        flags, spent = [], []
        for i, stage in enumerate(searches):
            k_i = jax.random.fold_in(key, i)
            z, used = stage(x, label, eps, k_i, ~done)
            s = ~done & verified_success(logits_fn, cfg, x, z, label, eps,
                                         jax.random.fold_in(k_i, 7))
            spent.append(used + passes.gated(~done, verification_passes(cfg)))
            x_adv = jnp.where(s, z, x_adv)
            flags.append(s)
            done = done | s
        aux = {name: f for name, f in zip(stages, flags, strict=True)}
        aux["stage_success"] = jnp.stack(flags)
        aux["stage_passes"] = jnp.stack(spent)
        aux["passes"] = jnp.sum(aux["stage_passes"], axis=0)
        # Worst case over the stages: robust only if no stage succeeded (and the clean point is
        # correct); for a randomised model the verified stage flags decide, not one more draw.
        aux["success"] = done
        return x_adv, aux

    attack = _boundary.per_example(search, det, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                   needs_key=True, search_success=True,
                                   check_classes=check_classes)
    attack.stages = stages
    return attack
