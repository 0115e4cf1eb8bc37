"""APGD-T (Croce & Hein 2020): targeted-DLR Auto-PGD against the top-k classes, for ONE example.

The APGD loop here (:func:`apgd_search`) is the evaluation variant used by the AutoAttack stages:
success is any misclassification seen at any iterate (as in the official code), an example stops
as soon as it is misclassified or when it is not ``active`` (so a batch whose examples are all
broken costs nothing more), and the gradient may be an expectation over random draws of the model
(EOT, for randomised defences).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax import _checks
from advjax.attacks import _boundary, _search, losses, projections
from advjax.attacks.apgd import checkpoints
from advjax.attacks.pgd import better
from advjax.attacks.result import AttackResult

Array = jax.Array
# loss_fn(z, key) -> (loss to maximise, logits used to decide success)
LossFn = Callable[[Array, Array], tuple[Array, Array]]


def _start(key: Array, x: Array, eps: Array, norm: str) -> Array:
    """The official random start: uniform in the L-infinity cube, or ON the L2 sphere."""
    if norm == "linf":
        return x + eps * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    g = jax.random.normal(key, x.shape, x.dtype)
    return x + eps * projections.normalize_l2(g)


def eot_value_and_grad(loss_fn: LossFn, z: Array, key: Array, samples: int):
    """Mean loss and mean input gradient over ``samples`` draws (keys ``fold_in(key, i)``).

    Returns:
      ``(mean loss, logits of the first draw, mean gradient)``; with ``samples == 1`` exactly
      ``loss_fn(z, key)`` and its gradient.
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


def apgd_search(loss_fn: LossFn, x: Array, label: Array, eps: Array, key: Array, *, norm: str,
                steps: int, lo: float | None, hi: float | None, rho: float = 0.75,
                alpha: float = 0.75, eot_samples: int = 1,
                active: Array | bool = True) -> tuple[Array, Array, Array]:
    """One APGD run (Croce & Hein 2020, Algorithm 1) on ONE example.

    Args:
      loss_fn: ``(z, key) -> (loss, logits)``; the loss is maximised, ``argmax logits != label``
        is a success. ``key`` is used only by randomised models (EOT).
      x: clean example, any shape, in ``[lo, hi]``.
      label: true class.
      eps: radius of the ``norm`` ball (input units, scalar).
      key: random start and EOT draws.
      norm: ``"linf"`` or ``"l2"``.
      steps: iterations ``N`` (the checkpoints of :func:`advjax.attacks.apgd.checkpoints`).
      lo, hi: the box.
      rho, alpha: checkpoint threshold and momentum weight (0.75, 0.75 in the paper).
      eot_samples: draws per gradient (1 for a deterministic model).
      active: bool scalar; when False the run does no iteration (the result is the random start).

    Returns:
      ``(x_best, success, loss_best)``: the best iterate by "misclassified first, then loss".
    """
    ckpt = checkpoints(steps)
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
        return projections.project(z, x, eps, norm, lo, hi)

    def evaluate(z, i):
        v, logits, g = eot_value_and_grad(loss_fn, z, jax.random.fold_in(key, i + 1), eot_samples)
        return v, jnp.argmax(logits) != label, g

    x0 = proj(_start(jax.random.fold_in(key, 0), x, eps, norm))
    f0, s0, g0 = evaluate(x0, 0)
    eta = 2.0 * eps
    st = dict(i=jnp.ones((), jnp.int32), x=x0, x_prev=x0, f=f0, g=g0, eta=eta, x_max=x0,
              f_max=f0, g_max=g0, x_best=x0, s_best=s0, f_best=f0,
              n_inc=jnp.zeros((), x.dtype), f_max_ckpt=f0, reduced_ckpt=jnp.ones((), bool))

    def cond(st):
        return (st["i"] <= steps) & active & ~st["s_best"]

    def body(st):
        i = st["i"]
        z = proj(st["x"] + st["eta"] * projections.steepest_direction(st["g"], norm))
        # The first step has no momentum (alpha = 1), as in the paper.
        a = jnp.where(i == 1, 1.0, alpha).astype(x.dtype)
        x_cur = st["x"]
        x_new = proj(x_cur + a * (z - x_cur) + (1 - a) * (x_cur - st["x_prev"]))
        f_new, s_new, g_new = evaluate(x_new, i)
        n_inc = st["n_inc"] + (f_new > st["f"]).astype(x.dtype)
        up = f_new > st["f_max"]
        x_max = jnp.where(up, x_new, st["x_max"])
        g_max = jnp.where(up, g_new, st["g_max"])
        f_max = jnp.where(up, f_new, st["f_max"])
        take = better(s_new, f_new, st["s_best"], st["f_best"])
        j = jnp.minimum(i, steps)
        at_ckpt = is_ckpt_j[j]
        cond1 = n_inc < rho * period_j[j]
        cond2 = (~st["reduced_ckpt"]) & (st["f_max_ckpt"] >= f_max)
        halve = at_ckpt & (cond1 | cond2)
        return dict(
            i=i + 1, x=jnp.where(halve, x_max, x_new), x_prev=x_cur,
            f=jnp.where(halve, f_max, f_new), g=jnp.where(halve, g_max, g_new),
            eta=jnp.where(halve, 0.5 * st["eta"], st["eta"]),
            x_max=x_max, f_max=f_max, g_max=g_max,
            x_best=jnp.where(take, x_new, st["x_best"]), s_best=st["s_best"] | s_new,
            f_best=jnp.where(take, f_new, st["f_best"]),
            n_inc=jnp.where(at_ckpt, 0.0, n_inc).astype(x.dtype),
            f_max_ckpt=jnp.where(at_ckpt, f_max, st["f_max_ckpt"]),
            reduced_ckpt=jnp.where(at_ckpt, halve, st["reduced_ckpt"]),
        )

    st = jax.lax.while_loop(cond, body, st)
    return st["x_best"], st["s_best"] & active, st["f_best"]


def apgd_t_search(logits_fn: Callable[[Array], Array], x: Array, label: Array, eps: Array,
                  key: Array, *, norm: str, steps: int, n_targets: int, n_restarts: int = 1,
                  lo: float | None, hi: float | None, rho: float = 0.75, alpha: float = 0.75,
                  active: Array | bool = True) -> tuple[Array, Array]:
    """APGD-T on ONE example: one targeted-DLR run per target (the classes ranked 2nd, 3rd, ...
    by the clean logits), later targets run only while the example is still robust.

    Returns:
      ``(x_adv, success)``: the first successful point (or the last target's best point).
    """
    targets = _search.top_targets(logits_fn(x), label, n_targets)

    def body(carry, t_index):
        x_adv, done = carry
        target = targets[t_index]

        def loss_fn(z, _key):
            logits = logits_fn(z)
            return losses.targeted_dlr_loss(logits, label, target), logits

        for r in range(n_restarts):
            run_key = jax.random.fold_in(jax.random.fold_in(key, t_index), r)
            z, s, _ = apgd_search(loss_fn, x, label, eps, run_key, norm=norm, steps=steps,
                                  lo=lo, hi=hi, rho=rho, alpha=alpha,
                                  active=jnp.asarray(active) & ~done)
            x_adv = jnp.where(s & ~done, z, x_adv)
            done = done | s
        return (x_adv, done), None

    (x_adv, done), _ = jax.lax.scan(body, (x, jnp.zeros((), bool)), jnp.arange(n_targets))
    return x_adv, done


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
    classes of the clean logits, best over targets; success = any misclassification.

    Args:
      logits_fn: per-example ``x -> logits (K,)``, ``K >= 4`` (the targeted DLR loss).
      norm: ``"linf"`` or ``"l2"``.
      steps: APGD iterations per target and restart (100 in AutoAttack).
      n_targets: classes attacked, ``1 <= n_targets <= K - 1`` (9 in AutoAttack).
      n_restarts: random restarts per target (1 in AutoAttack).
      rho, alpha: APGD's checkpoint threshold and momentum, in ``(0, 1]``.
      lo, hi: the box (``None`` for both: no box).

    Returns:
      ``attack(x, label, *, eps, key) -> AttackResult``; ``key`` is required (random starts).
    """
    _checks.check_choice(norm, "norm", projections.NORMS)
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(n_targets, "n_targets")
    _checks.check_positive_int(n_restarts, "n_restarts")
    rho = _boundary.check_positive_float(rho, "rho")
    alpha = _boundary.check_positive_float(alpha, "alpha")
    if rho > 1 or alpha > 1:
        raise ValueError(f"`rho` and `alpha` must lie in (0, 1]; got rho={rho}, alpha={alpha}.")
    lo, hi = _boundary.check_box_setting(lo, hi)

    logits_fn = _boundary._prepare_logits_fn(logits_fn)

    def attack(x: Array, label: Array, *, eps: Array, key: Array | None = None) -> AttackResult:
        x, label, eps, key, k, valid = _search.check_call(logits_fn, x, label, eps, key, lo, hi)
        if k < 4:
            raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes; `logits_fn` "
                             f"gives {k}.")
        if n_targets > k - 1:
            raise ValueError(f"`n_targets` must be <= K - 1 = {k - 1}; got {n_targets}.")
        x_adv, _ = apgd_t_search(logits_fn, x, label, eps, key, norm=norm, steps=steps,
                                 n_targets=n_targets, n_restarts=n_restarts, lo=lo, hi=hi,
                                 rho=rho, alpha=alpha, active=valid)
        return _search.finish(logits_fn, x, x_adv, label, valid, norm=norm, eps=eps)

    return attack
