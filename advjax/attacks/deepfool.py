"""DeepFool (Moosavi-Dezfooli et al. 2016), multi-class L2 version, for ONE example."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary
from advjax.attacks.result import AttackResult

Array = jax.Array


def deepfool(
    logits_fn: Callable[[Array], Array],
    *,
    candidates: int | None = 10,
    steps: int = 50,
    overshoot: float = 0.02,
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    num_classes: int | None = None,
) -> Callable[..., AttackResult]:
    """Minimal-L2 DeepFool (Algorithm 2 of Moosavi-Dezfooli et al. 2016).

    The candidate classes are the ``candidates`` classes of largest clean logit, the true class
    first (foolbox's ``candidates``; the reference's ``num_classes``). At the current point ``x_i``
    the classifier is linearised on those classes only: for each candidate ``k != y``,
    ``w_k = grad z_k - grad z_y`` and ``f_k = z_k - z_y``; the closest linearised boundary is
    ``l = argmin_k |f_k| / ||w_k||_2`` and the step ``r_i = (|f_l| + 1e-4) / ||w_l||^2 * w_l``
    is added to the accumulated ``r``. The iterate is ``x_{i+1} = clip(x + (1 + overshoot) r)``.
    It stops (a mask inside ``lax.while_loop``, so the batched loop runs until every example is
    done) when ``x_{i+1}`` is misclassified or after ``steps`` steps. Each step costs one forward
    pass and ``candidates`` vector-Jacobian products, whatever ``K``. For an affine classifier
    with the box inactive (and the closest class among the candidates) one step gives
    ``(1 + overshoot)`` times the exact minimal perturbation.

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      candidates: number of candidate classes ``k >= 2`` (the true class included); ``None``:
        all ``K``. Capped at ``K``.
      steps: maximum number of linearisation steps.
      overshoot: relative overshoot (>= 0) applied to the accumulated perturbation.
      reset_misclassified: report already-misclassified examples unperturbed (default).
      lo, hi: the box; ``lo = hi = None`` disables clipping.
      num_classes: former name of ``candidates`` (same meaning; overrides it when given).

    Returns:
      ``attack(x, label, *, key=None) -> AttackResult`` (``key`` unused). ``aux["steps"]`` is the
      number of steps taken (int32).
    """
    if num_classes is not None:
        _checks.check_positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
        candidates = num_classes
    if candidates is not None:
        _checks.check_positive_int(candidates, "candidates")
        if candidates < 2:
            raise ValueError(f"`candidates` must be >= 2; got {candidates}.")
    _checks.check_positive_int(steps, "steps")
    overshoot = _boundary.check_nonneg_float(overshoot, "overshoot")
    lo, hi = _boundary.check_box_setting(lo, hi)

    def search(logits_fn, ex: _boundary.Example):
        x, label, k = ex.x, ex.label, ex.num_classes
        n_cand = k if candidates is None else min(candidates, k)
        # Candidate classes: the label first, then the other classes of largest clean logit.
        ranked = jnp.where(jnp.arange(k) == label, jnp.inf, ex.clean_logits)
        _, cand = jax.lax.top_k(ranked, n_cand)  # cand[0] == label
        cotangents = jax.nn.one_hot(cand, k, dtype=ex.clean_logits.dtype)  # (n_cand, K)

        def cond(state):
            i, _, _, done = state
            return (i < steps) & ~done

        def body(state):
            i, r_tot, x_i, done = state
            # One forward pass and n_cand vector-Jacobian products: the candidates' gradients.
            logits, vjp = jax.vjp(logits_fn, x_i)
            jac = jax.vmap(lambda e: vjp(e)[0])(cotangents).reshape(n_cand, -1)
            z = logits[cand]
            w = jac[1:] - jac[0][None, :]
            f = z[1:] - z[0]
            w_norm = jnp.sqrt(jnp.sum(w * w, axis=1))
            l_idx = jnp.argmin(jnp.abs(f) / jnp.maximum(w_norm, 1e-12))
            r_i = (jnp.abs(f[l_idx]) + 1e-4) / jnp.maximum(w_norm[l_idx] ** 2, 1e-24) * w[l_idx]
            r_new = r_tot + r_i.reshape(x.shape)
            x_new = _clip(x + (1.0 + overshoot) * r_new, lo, hi)
            done_new = jnp.argmax(logits_fn(x_new)) != label
            # Masked update: finished examples keep their state (also under vmap).
            r_tot = jnp.where(done, r_tot, r_new)
            x_i = jnp.where(done, x_i, x_new)
            return i + jnp.where(done, 0, 1), r_tot, x_i, done | done_new

        done0 = jnp.argmax(ex.clean_logits) != label
        init = (jnp.zeros((), jnp.int32), jnp.zeros_like(x), x, done0)
        n_steps, _, x_adv, _ = jax.lax.while_loop(cond, body, init)
        return x_adv, {"steps": n_steps}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi,
                                 reset_misclassified=bool(reset_misclassified))


def _clip(x, lo, hi):
    return x if lo is None else jnp.clip(x, lo, hi)
