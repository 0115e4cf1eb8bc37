"""APGD-T (Croce & Hein 2020): targeted-DLR Auto-PGD against the top-k classes, for ONE example.

The APGD loop is the package's one :func:`advjax.attacks.apgd.apgd_run`, with the official
AutoAttack options (:data:`OFFICIAL`): integer checkpoint periods and condition (1) as in
``autopgd_base.py``, the start on the sphere / cube surface, the L2 projection "rescale then
clip", success = any misclassification seen at any iterate (the official ``acc``), the last
misclassified iterate kept (``x_best_adv``), restarts and targets "first success wins".
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, passes, projections, targets
from advjax.attacks._restarts import best_of_runs
from advjax.attacks.apgd import apgd_l1_schedule_run, apgd_run, eot_value_and_grad
from advjax.attacks.result import AttackResult

Array = jax.Array
# loss_fn(z, key) -> (loss to maximise, logits used to decide success)
LossFn = Callable[[Array, Array], tuple[Array, Array]]

__all__ = ["OFFICIAL", "apgd_search", "apgd_t_search", "apgd_targeted", "eot_value_and_grad"]

# The options of apgd_run that reproduce the official AutoAttack APGD (autopgd_base.py). Early
# stopping at the first success is added by the callers for deterministic models only.
OFFICIAL = dict(schedule="official", start="surface", projection="clip", keep="last_success")


def _start(key: Array, x: Array, eps: Array, norm: str) -> Array:
    """The official random start ``x + sample_surface(key, ...)`` (before projection)."""
    return x + projections.sample_surface(key, x.shape, eps, norm, x.dtype)


def apgd_search(loss_fn: LossFn, x: Array, label: Array, eps: Array, key: Array, *, norm: str,
                steps: int, lo: float | None, hi: float | None, rho: float = 0.75,
                alpha: float = 0.75, eot_samples: int = 1,
                active: Array | bool = True,
                **options) -> tuple[Array, Array, Array, Array]:
    """One untargeted-success APGD run: :func:`advjax.attacks.apgd.apgd_run` with success
    ``argmax logits != label``.

    Defaults are plain Algorithm 1 (paper checkpoints, exact projection) from the surface start,
    stopping at the first success and keeping the best iterate; ``**options`` (e.g.
    :data:`OFFICIAL`, ``stop_at_success=False``) override them. ``norm="l1"`` runs APGD-L1 with
    the official decreasing budgets ``3 eps, 2 eps, eps``
    (:func:`advjax.attacks.apgd.apgd_l1_schedule_run`, AutoAttack's ``use_largereps``).

    Returns:
      ``(x_kept, success, loss, passes)`` (passes: :mod:`advjax.attacks.passes`).
    """
    opts = dict(schedule="paper", start="surface", projection="exact", keep="best",
                stop_at_success=True)
    opts.update(options)
    success_fn = lambda logits: jnp.argmax(logits) != label  # noqa: E731
    if norm == "l1":
        z, s, f, _, spent = apgd_l1_schedule_run(
            loss_fn, success_fn, x, eps, key, steps=steps, lo=lo, hi=hi, rho=rho, alpha=alpha,
            eot_samples=eot_samples, active=active, **opts)
        return z, s, f, spent
    z, s, f, _, spent = apgd_run(loss_fn, success_fn, x, eps, key,
                                 norm=norm, steps=steps, lo=lo, hi=hi, rho=rho, alpha=alpha,
                                 eot_samples=eot_samples, active=active, **opts)
    return z, s, f, spent


def apgd_t_search(logits_fn: Callable[[Array], Array], x: Array, label: Array, eps: Array,
                  key: Array, *, norm: str, steps: int, n_targets: int, n_restarts: int = 1,
                  lo: float | None, hi: float | None, rho: float = 0.75, alpha: float = 0.75,
                  active: Array | bool = True, selection: str = "logits",
                  candidates: int = targets.MALT_CANDIDATES) -> tuple[Array, Array, Array]:
    """APGD-T on ONE example: one targeted-DLR run per target and restart (keys
    ``fold_in(fold_in(key, target position), r)``), with the official options; later runs run
    only while the example is still robust.

    The targets and their order come from :func:`advjax.attacks.targets.select`: ``selection=
    "logits"`` the classes ranked 2nd, 3rd, ... by the clean logits (AutoAttack), ``"all"`` every
    other class (MultiTargeted), ``"malt"`` the nearest linearised boundaries first (MALT, among
    ``candidates`` classes).

    Returns:
      ``(x_adv, success, passes)``: the first successful point (or the last run's point) and the
      model passes spent (:mod:`advjax.attacks.passes`: the ranking of the targets,
      :func:`advjax.attacks.targets.selection_passes`, then the runs made).
    """
    ranked = targets.select(selection, logits_fn, x, label, n_targets, norm=norm,
                            candidates=candidates)
    active = jnp.asarray(active, bool)

    def body(carry, t_index):
        x_adv, done, spent = carry
        target = ranked[t_index]

        def loss_fn(z, _key):
            logits = logits_fn(z)
            return losses.targeted_dlr_loss(logits, label, target), logits

        def run(run_key, run_active):
            return apgd_search(loss_fn, x, label, eps, run_key, norm=norm, steps=steps,
                               lo=lo, hi=hi, rho=rho, alpha=alpha,
                               active=active & ~done & run_active, **OFFICIAL)

        t_key = jax.random.fold_in(key, t_index)
        keys = _boundary.example_keys(t_key, n_restarts)
        z, s, _, used = best_of_runs(run, keys, x_adv, (passes.zero(),), rule="first_success",
                                     accumulate=(3,))
        x_adv = jnp.where(done, x_adv, z)
        return (x_adv, done | s, spent + used), None

    k = _boundary.num_classes(logits_fn, x)
    init = (x, jnp.zeros((), bool),
            passes.gated(active, targets.selection_passes(selection, k, candidates)))
    (x_adv, done, spent), _ = jax.lax.scan(body, init, jnp.arange(n_targets))
    return x_adv, done, spent


def apgd_targeted(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "linf",
    steps: int = 100,
    n_targets: int = 9,
    n_restarts: int = 1,
    rho: float = 0.75,
    alpha: float = 0.75,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """APGD-T: Auto-PGD on the targeted DLR loss (Croce & Hein 2020, Eq. 7) against the top-k
    classes of the clean logits; success = any misclassification (as in AutoAttack).

    Args:
      logits_fn: per-example ``x -> logits (K,)``, ``K >= 4`` (the targeted DLR loss).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (APGD-L1 with AutoAttack's decreasing budgets).
      steps: APGD iterations per target and restart (100 in AutoAttack).
      n_targets: classes attacked, ``1 <= n_targets <= K - 1`` (9 in AutoAttack).
      n_restarts: random restarts per target (1 in AutoAttack).
      rho, alpha: APGD's checkpoint threshold and momentum, in ``(0, 1]``.
      lo, hi: the box (``None`` for both: no box).

    Returns:
      ``attack(x, label, *, eps, key) -> AttackResult``; ``key`` is required (random starts).
    """
    _checks.check_choice(norm, "norm", projections.BALL_NORMS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(n_targets, "n_targets")
    _checks.check_positive_int(n_restarts, "n_restarts")
    rho = _boundary.check_positive_float(rho, "rho")
    alpha = _boundary.check_positive_float(alpha, "alpha")
    if rho > 1 or alpha > 1:
        raise ValueError(f"`rho` and `alpha` must lie in (0, 1]; got rho={rho}, alpha={alpha}.")
    lo, hi = _boundary.check_box_setting(lo, hi)

    def check_classes(k):
        if k < 4:
            raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes; `logits_fn` "
                             f"gives {k}.")
        if n_targets > k - 1:
            raise ValueError(f"`n_targets` must be <= K - 1 = {k - 1}; got {n_targets}.")

    def search(logits_fn, ex: _boundary.Example):
        x_adv, _, spent = apgd_t_search(logits_fn, ex.x, ex.label, ex.budget, ex.key, norm=norm,
                                        steps=steps, n_targets=n_targets, n_restarts=n_restarts,
                                        lo=lo, hi=hi, rho=rho, alpha=alpha)
        return x_adv, {"passes": spent}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                 needs_key=True, check_classes=check_classes)
