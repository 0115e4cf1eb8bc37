"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), for ONE example, in pure JAX."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks
from advjax.attacks import _boundary, losses, passes, projections
from advjax.attacks._restarts import best_of_runs, better, run_keys
from advjax.attacks.result import AttackResult

Array = jax.Array


SCHEDULES = ("paper", "official")
KEEP = ("best", "last_success", "max")
# APGD-L1 (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image
# classifiers"; ``autopgd_base.py``, ``norm == 'L1'``): step size ``eps`` (not ``2 eps``), no
# momentum, the sparsity ``k`` of the step adapted every ``max(int(0.04 N), 1)`` iterations.
L1_CHECK_FRACTION = 0.04
L1_TOPK_INIT = 0.2
L1_STEP_DECAY = 1.5
L1_MIN_STEP_FACTOR = 10.0


def l1_sparse_step(g: Array, topk: Array) -> Array:
    """APGD-L1's step direction (``autopgd_base.py``): the signs of the gradient's entries whose
    magnitude is at least the ``(1 - topk)``-quantile (about ``topk * d`` of them; ties kept),
    divided by their number, so that the step has L1 norm 1.

    Args:
      g: gradient, any shape.
      topk: fraction of coordinates kept, scalar in ``(0, 1]``.
    """
    flat = jnp.abs(g).reshape(-1)
    n = flat.shape[0]
    idx = jnp.clip(((1.0 - topk) * n).astype(jnp.int32), 0, n - 1)
    thr = jnp.sort(flat)[idx]
    s = jnp.sign(g) * (jnp.abs(g) >= thr)
    return s / (jnp.sum(jnp.abs(s)) + 1e-10)


def checkpoints(steps: int, rule: str = "paper") -> np.ndarray:
    """APGD checkpoints ``w_j`` in ``(0, steps)``, increasing.

    ``rule="paper"`` (Croce & Hein 2020, §3.2): ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``,
    ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.
    ``rule="official"`` (``autopgd_base.py``): period lengths ``k_1 = max(int(0.22 N), 1)``,
    ``k_{j+1} = max(k_j - max(int(0.03 N), 1), max(int(0.06 N), 1))`` (integer floors). Both give
    22, 41, 57, 70, 80, 87, 93, 99 for ``N = 100``; they differ for other ``N`` (``N = 40``:
    9, 17, 23, 28, ... vs 8, 15, 21, 26, ...).
    """
    _checks.check_choice(rule, "schedule", SCHEDULES)
    if rule == "official":
        k = max(int(0.22 * steps), 1)
        k_min, dec = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
        w, out = k, []
        while w < steps:
            out.append(w)
            k = max(k - dec, k_min)
            w += k
        return np.asarray(out, np.int64)
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # Round away float noise first (0.41 + 0.16 must give ceil(57.0) = 57, not 58).
    w = sorted({int(math.ceil(round(q * steps, 9))) for q in p[1:]})
    w = [v for v in w if 0 < v < steps]
    return np.asarray(w, np.int64)


def eot_value_and_grad(loss_fn, z: Array, key: Array, samples: int):
    """Mean loss and mean input gradient over ``samples`` draws (keys ``fold_in(key, i)``).

    ``loss_fn(z, key) -> (loss, logits)``. Returns ``(mean loss, logits of the first draw, mean
    gradient)``; with ``samples == 1`` exactly ``loss_fn(z, key)`` and its gradient. (The
    official code steers the step size by the loss of the LAST draw; the mean is the better
    estimate of the expected loss whose gradient is averaged.)
    """
    vg = jax.value_and_grad(loss_fn, has_aux=True)
    if samples == 1:
        (v, logits), g = vg(z, key)
        return v, logits, g
    (v0, logits0), g0 = vg(z, jax.random.fold_in(key, 0))

    def body(i, acc):
        (v, _), g = vg(z, jax.random.fold_in(key, i))
        return acc[0] + v, acc[1] + g

    v_sum, g_sum = jax.lax.fori_loop(1, samples, body, (v0, g0))
    return v_sum / samples, logits0, g_sum / samples


def checkpoint_halves(n_inc: Array, period: Array, f_max: Array, f_max_ckpt: Array,
                      reduced_ckpt: Array, *, rho: float, schedule: str) -> Array:
    """The step-size decision at a checkpoint (Croce & Hein 2020, §3.2; ``autopgd_base.py``).

    Halve (and restart from ``x_max``) when
      (1) ``n_inc`` -- the steps of the ``period`` since the previous checkpoint that increased
          the loss -- is below ``rho * period`` (``schedule="paper"``: ``<``, as written in the
          paper; ``"official"``: ``<=``, as ``check_oscillation`` computes it), or
      (2) the step was NOT halved at the previous checkpoint (``~reduced_ckpt``) and the best
          loss has not grown since then (``f_max_ckpt >= f_max``).

    Returns:
      bool scalar.
    """
    limit = rho * period
    cond1 = (n_inc <= limit) if schedule == "official" else (n_inc < limit)
    cond2 = (~reduced_ckpt) & (f_max_ckpt >= f_max)
    return cond1 | cond2


def apgd_run(loss_fn, success_fn, x: Array, eps: Array, key: Array, *, norm: str, steps: int,
             lo: float | None, hi: float | None, rho: float = 0.75, alpha: float = 0.75,
             schedule: str = "paper", start: str = "ball", projection: str = "exact",
             eot_samples: int = 1, stop_at_success: bool = False, keep: str = "best",
             active: Array | bool = True, start_key: Array | None = None,
             x_init: Array | None = None):
    """ONE run of APGD (Croce & Hein 2020, Algorithm 1) on ONE example: the only APGD loop of the
    package (the public :func:`apgd`, :func:`advjax.attacks.apgd_targeted` and every AutoAttack
    APGD stage call it; they differ only in the options below).

    Iterates ``x^(0)`` (random start), ``x^(1) = P(x^(0) + eta d(g))`` and, for ``i >= 2``,
    ``z = P(x^(i-1) + eta d(g))``, ``x^(i) = P(x^(i-1) + alpha (z - x^(i-1)) + (1 - alpha)
    (x^(i-1) - x^(i-2)))``, ``eta = 2 eps`` halved at a checkpoint when (1) too few steps of the
    period increased the loss or (2) it was not halved at the previous checkpoint and the best
    loss has not grown since; a halving restarts from ``x_max`` (best loss) and its gradient.

    Args:
      loss_fn: ``(z, key) -> (loss to maximise, logits)``; ``key`` matters only for a randomised
        model (EOT).
      success_fn: ``logits -> bool``: what a success is (untargeted ``argmax != label``, or
        ``argmax == target``).
      x, eps, key: the clean example, the ball radius and the run's key (start: ``fold_in(key,
        0)``; the draws at iterate ``i``: ``fold_in(key, i + 1)``).
      norm, steps, lo, hi, rho, alpha: as in :func:`apgd`.
      schedule: ``"paper"`` (checkpoints ``ceil(p_j N)``; condition (1) ``n_inc < rho k``
        counting increases against the current iterate, ``f_max`` after a restart) or
        ``"official"`` (``autopgd_base.py``: integer periods, ``n_inc <= rho k`` counted on the
        sequence of losses as produced, whose first term is ``f(x^(1)) > 0``: the official
        ``loss_steps[-1]`` is still 0 then).
      start: ``"ball"`` or ``"surface"`` (:func:`advjax.attacks.projections.sample_start`).
      projection: L2 projection onto ball ∩ box, ``"exact"`` or ``"clip"`` (the official one).
      eot_samples: draws per gradient (mean loss and gradient; success from the first draw).
      stop_at_success: stop at the first successful iterate (a deterministic model's flag is the
        same either way; with EOT the run must go on: one draw's success is luck near the
        boundary).
      keep: ``"best"`` (success first, then loss, over all iterates), ``"last_success"`` (the
        last successful iterate, as the official ``x_best_adv``; ``x_max`` when none) or
        ``"max"`` (``x_max``, the best loss: the official ``x_best``, the start of the next
        budget of APGD-L1's decreasing-budget schedule, :func:`apgd_l1_schedule_run`).
      active: when False no iteration runs.
      start_key: the key of the random start (default ``fold_in(key, 0)``; the public
        :func:`apgd` passes its run key itself).
      x_init: a starting point instead of the random start (projected onto the ball ∩ box).

    ``norm="l1"`` (APGD-L1, ``autopgd_base.py``): the step is ``eta`` times
    :func:`l1_sparse_step` (the top-``k`` gradient signs, ``k = 0.2 d`` at a random start, the
    start's sparsity ``/ 1.5`` at ``x_init``), no momentum, ``eta = eps``; every
    ``max(int(0.04 N), 1)`` iterations ``k`` becomes the sparsity of ``x_max - x`` over 1.5 and,
    when that sparsity fell below 95 % of its previous value, ``eta`` is reset to ``eps`` and the
    iterate to ``x_max``, else ``eta`` is divided by 1.5 (kept in ``[eps / 10, eps]``). The
    official random start is a standard Gaussian offset projected onto the ball ∩ box
    (``start="surface"``). ``schedule`` and ``rho`` / ``alpha`` do not apply.

    Returns:
      ``(x_out, success, loss, eta, passes)``: the kept point, whether any iterate succeeded,
      the loss of the kept point (``f_max`` for ``keep="last_success"``), the final step size and
      the model passes spent (:mod:`advjax.attacks.passes`: ``eot_samples`` forward and backward
      per gradient, the start's included; ``[0, 0]`` when not ``active``).
    """
    _checks.check_choice(schedule, "schedule", SCHEDULES)
    _checks.check_choice(keep, "keep", KEEP)
    official = schedule == "official"
    ckpt = checkpoints(steps, schedule)
    is_ckpt = np.zeros(steps + 1, bool)
    is_ckpt[ckpt] = True
    period = np.zeros(steps + 1, np.float32)
    prev = 0
    for w in ckpt:
        period[w] = w - prev
        prev = w
    is_ckpt_j, period_j = jnp.asarray(is_ckpt), jnp.asarray(period)
    active = jnp.asarray(active, bool)

    def proj(z):
        return projections.project(z, x, eps, norm, lo, hi, l2_method=projection)

    def evaluate(z, i):
        v, logits, g = eot_value_and_grad(loss_fn, z, jax.random.fold_in(key, i + 1),
                                          eot_samples)
        return v, success_fn(logits), g

    if start_key is None:
        start_key = jax.random.fold_in(key, 0)
    l1 = norm == "l1"
    n_fts = x.size
    if x_init is not None:
        x0 = proj(x_init)
    elif l1 and start == "surface":
        # The official L1 start: x + N(0, I), projected.
        x0 = proj(x + jax.random.normal(start_key, x.shape, x.dtype))
    else:
        x0 = proj(x + projections.sample_start(start_key, x.shape, eps, norm, start, x.dtype))
    # A run that is not active (a restart or target after a success) skips its start's
    # gradient too (under vmap the cond is a select and both branches run, as idle loop steps).
    f0, s0, g0 = jax.lax.cond(
        active, lambda z: evaluate(z, 0),
        lambda z: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                               jax.eval_shape(lambda v: evaluate(v, 0), z)), x0)
    eta0 = (1.0 if l1 else 2.0) * eps
    if x_init is not None:
        sp0 = projections.l0_norm(x0 - x)
        topk0 = sp0 / n_fts / L1_STEP_DECAY
    else:
        sp0 = jnp.asarray(n_fts, x.dtype)
        topk0 = jnp.asarray(L1_TOPK_INIT, x.dtype)
    st = dict(i=jnp.ones((), jnp.int32), x=x0, x_prev=x0, f=f0, f_raw=f0, g=g0,
              eta=eta0, x_max=x0, f_max=f0, g_max=g0, x_best=x0, s_best=s0, f_best=f0,
              x_last=x0, n_inc=jnp.zeros((), x.dtype), f_max_ckpt=f0,
              reduced_ckpt=jnp.ones((), bool), topk=topk0.astype(x.dtype),
              sp_old=sp0.astype(x.dtype),
              passes=passes.gated(active, passes.value_and_grad(eot_samples)))
    l1_period = max(int(L1_CHECK_FRACTION * steps), 1)

    def cond(st):
        go = (st["i"] <= steps) & active
        return go & ~st["s_best"] if stop_at_success else go

    def body(st):
        i = st["i"]
        x_cur = st["x"]
        if l1:
            x_new = proj(x_cur + st["eta"] * l1_sparse_step(st["g"], st["topk"]))
        else:
            z = proj(x_cur + st["eta"] * projections.steepest_direction(st["g"], norm))
            # The first step has no momentum (alpha = 1), as in the paper and the official code.
            a = jnp.where(i == 1, 1.0, alpha).astype(x.dtype)
            x_new = proj(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - st["x_prev"]))
        f_new, s_new, g_new = evaluate(x_new, i)
        if official:
            before = jnp.where(i == 1, jnp.zeros((), x.dtype), st["f_raw"])
        else:
            before = st["f"]
        n_inc = st["n_inc"] + (f_new > before).astype(x.dtype)
        up = f_new > st["f_max"]
        x_max = jnp.where(up, x_new, st["x_max"])
        g_max = jnp.where(up, g_new, st["g_max"])
        f_max = jnp.where(up, f_new, st["f_max"])
        take = better(s_new, f_new, st["s_best"], st["f_best"])
        common = dict(
            i=i + 1, x_prev=x_cur, x_max=x_max, f_max=f_max, g_max=g_max,
            x_best=jnp.where(take, x_new, st["x_best"]), s_best=st["s_best"] | s_new,
            f_best=jnp.where(take, f_new, st["f_best"]),
            x_last=jnp.where(s_new, x_new, st["x_last"]), f_raw=f_new,
            passes=st["passes"] + passes.value_and_grad(eot_samples))
        if l1:
            at_check = (i % l1_period) == 0
            sp = projections.l0_norm(x_max - x)
            red = at_check & (sp / st["sp_old"] < 0.95)
            eta = jnp.where(red, eps, st["eta"] / jnp.where(at_check, L1_STEP_DECAY, 1.0))
            eta = jnp.clip(eta, eps / L1_MIN_STEP_FACTOR, eps)
            return {**st, **common,
                    "x": jnp.where(red, x_max, x_new), "f": jnp.where(red, f_max, f_new),
                    "g": jnp.where(red, g_max, g_new), "eta": eta.astype(x.dtype),
                    "topk": jnp.where(at_check, sp / n_fts / L1_STEP_DECAY, st["topk"]),
                    "sp_old": jnp.where(at_check, sp, st["sp_old"])}
        j = jnp.minimum(i, steps)
        at_ckpt = is_ckpt_j[j]
        halve = at_ckpt & checkpoint_halves(n_inc, period_j[j], f_max, st["f_max_ckpt"],
                                            st["reduced_ckpt"], rho=rho, schedule=schedule)
        return {**st, **common,
                "x": jnp.where(halve, x_max, x_new), "f": jnp.where(halve, f_max, f_new),
                "g": jnp.where(halve, g_max, g_new),
                "eta": jnp.where(halve, 0.5 * st["eta"], st["eta"]),
                "n_inc": jnp.where(at_ckpt, 0.0, n_inc).astype(x.dtype),
                "f_max_ckpt": jnp.where(at_ckpt, f_max, st["f_max_ckpt"]),
                "reduced_ckpt": jnp.where(at_ckpt, halve, st["reduced_ckpt"])}

    st = jax.lax.while_loop(cond, body, st)
    success = st["s_best"] & active
    if keep == "best":
        return st["x_best"], success, st["f_best"], st["eta"], st["passes"]
    if keep == "max":
        return st["x_max"], success, st["f_max"], st["eta"], st["passes"]
    return (jnp.where(st["s_best"], st["x_last"], st["x_max"]), success, st["f_max"],
            st["eta"], st["passes"])


def l1_schedule(steps: int) -> tuple[tuple[float, int], ...]:
    """The official APGD-L1 decreasing-budget schedule (``use_largereps``,
    ``autopgd_base.py``): ``(budget factor, iterations)`` = ``(3, ceil(0.3 N))``,
    ``(2, ceil(0.3 N))``, ``(1, N - the rest)``."""
    a = math.ceil(0.3 * steps)
    return ((3.0, a), (2.0, a), (1.0, steps - 2 * a))


def apgd_l1_schedule_run(loss_fn, success_fn, x: Array, eps: Array, key: Array, *, steps: int,
                         lo: float | None, hi: float | None, keep: str = "last_success",
                         stop_at_success: bool = False, active: Array | bool = True, **kw):
    """APGD-L1 with the official decreasing budgets (``decr_eps_pgd``, AutoAttack's L1 APGD
    stages): a run at ``3 eps`` from ``x + N(0, I)``, then at ``2 eps`` and at ``eps``, each
    from the previous run's ``x_max`` projected onto its ball (:func:`l1_schedule` iterations).
    Only the last run, inside the ``eps`` ball, decides success.

    Returns:
      :func:`apgd_run`'s ``(x_out, success, loss, eta)`` of the last run, and the passes of all
      the runs.
    """
    runs = [r for r in l1_schedule(steps) if r[1] > 0]
    z = x + jax.random.normal(jax.random.fold_in(key, 0), x.shape, x.dtype)
    spent = passes.zero()
    for j, (factor, n) in enumerate(runs):
        last = j == len(runs) - 1
        out = apgd_run(loss_fn, success_fn, x, factor * eps, jax.random.fold_in(key, j + 1),
                       norm="l1", steps=n, lo=lo, hi=hi, x_init=z,
                       keep=keep if last else "max",
                       stop_at_success=stop_at_success and last, active=active, **kw)
        z = out[0]
        spent = spent + out[4]
    return (*out[:4], spent)


def apgd(
    logits_fn: Callable[[Array], Array],
    *,
    loss: str = "ce",
    norm: str = "linf",
    steps: int = 100,
    n_restarts: int = 1,
    rho: float = 0.75,
    alpha: float = 0.75,
    targeted: bool = False,
    projection: str = "exact",
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """APGD: PGD with momentum and a budget-aware step-size schedule, no step size to tune.

    One run (``N = steps`` iterations, ``P`` = projection onto the ball ∩ box, ``f`` the loss):
      * ``x^(0)``: a uniform random point of the ``norm`` ball (radius ``eps``) around ``x``,
        projected; ``eta = 2 eps``; ``x^(1) = P(x^(0) + eta d(grad f(x^(0))))`` with
        ``d = sign`` (L-infinity) or ``g / ||g||_2`` (L2).
      * For ``k >= 1``: ``z = P(x^(k) + eta d(grad f(x^(k))))``,
        ``x^(k+1) = P(x^(k) + alpha (z - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))`` (momentum
        ``alpha = 0.75``); ``x_max`` / ``f_max`` track the best loss seen.
      * At each checkpoint ``w_j`` (:func:`checkpoints`) the step is halved and the iterate reset to
        ``x_max`` when (1) fewer than ``rho (w_j - w_{j-1})`` of the steps since the previous
        checkpoint increased ``f``, or (2) ``eta`` was not halved at the previous checkpoint and
        ``f_max`` has not grown since then.
    Every iterate is scored; the point returned is the best by "success first, then loss" over all
    iterates and all ``n_restarts`` runs (a ``lax.scan``; run 0 uses ``key`` itself, run
    ``r >= 1`` ``fold_in(key, r)``, :func:`advjax.attacks._restarts.run_keys`; the run key
    draws the start). This is :func:`apgd_run` with the paper's options
    (``schedule="paper"``, ``start="ball"``, ``keep="best"``, restart rule ``"best"``); the
    AutoAttack stages run the same loop with the official code's options
    (:func:`advjax.attacks.autoattack.stage_search`).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      loss: ``"ce"`` (targeted: ``-CE(target)``) or ``"dlr"`` (Eq. 6 / targeted Eq. 7: needs
        ``K >= 3`` / ``K >= 4``).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (APGD-L1 of Croce & Hein 2021, see
        :func:`apgd_run`: sparse steps, no momentum; from a uniform point of the L1 ball).
      steps: iterations per run ``N`` (``lax.fori_loop``).
      n_restarts: runs from independent random starts.
      rho: checkpoint condition (1) threshold, in ``(0, 1]``.
      alpha: momentum weight of the new step, in ``(0, 1]`` (0.75 in the paper).
      targeted: take ``target=``; success when it is predicted.
      projection: L2 projection onto ball ∩ box, ``"exact"`` or ``"clip"`` (rescale then clip),
        see :func:`advjax.attacks.pgd.pgd`.
      reset_misclassified: report already-misclassified examples unperturbed (default).
      lo, hi: the box; ``lo = hi = None`` disables it.

    Returns:
      ``attack(x, label, *, eps, key, target=None) -> AttackResult``; ``key`` (required) draws
      the random starts. ``aux["loss"]`` is the loss at ``x_adv``, ``aux["eta"]`` the final step
      size of the run that produced ``x_adv``.
    """
    _checks.check_choice(loss, "loss", ("ce", "dlr"))
    _checks.check_choice(norm, "norm", projections.BALL_NORMS)
    _checks.check_choice(projection, "projection", projections.L2_PROJECTIONS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(n_restarts, "n_restarts")
    rho = _boundary.check_positive_float(rho, "rho")
    alpha = _boundary.check_positive_float(alpha, "alpha")
    if rho > 1 or alpha > 1:
        raise ValueError(f"`rho` and `alpha` must lie in (0, 1]; got rho={rho}, alpha={alpha}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    targeted = bool(targeted)

    def search(logits_fn, ex: _boundary.Example):
        x, label, target, eps = ex.x, ex.label, ex.target, ex.budget

        def loss_fn(z, _key):
            logits = logits_fn(z)
            return losses.attack_loss(loss, logits, label, target), logits

        def success_fn(logits):
            pred = jnp.argmax(logits)
            return (pred == target) if targeted else (pred != label)

        def run(run_key):
            return apgd_run(loss_fn, success_fn, x, eps, run_key, norm=norm, steps=steps,
                            lo=lo, hi=hi, rho=rho, alpha=alpha, schedule="paper", start="ball",
                            projection=projection, keep="best", start_key=run_key)

        x_adv, _, best_loss, eta, spent = best_of_runs(
            run, run_keys(ex.key, n_restarts), x, (2.0 * eps, passes.zero()), accumulate=(4,))
        return x_adv, {"loss": best_loss, "eta": eta, "passes": spent}

    def check_classes(k):
        need = 4 if targeted else 3
        if loss == "dlr" and k < need:
            raise ValueError(f"loss='dlr' needs at least {need} classes; `logits_fn` gives {k}.")

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                 target="required" if targeted else "none", needs_key=True,
                                 reset_misclassified=bool(reset_misclassified),
                                 check_classes=check_classes)
