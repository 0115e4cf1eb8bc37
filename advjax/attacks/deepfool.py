"""DeepFool (Moosavi-Dezfooli et al. 2016), multi-class L2 version, for ONE example."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _common
from advjax.attacks.result import AttackResult, make_result

Array = jax.Array


def deepfool(
    logits_fn: Callable[[Array], Array],
    *,
    num_classes: int | None = None,
    steps: int = 50,
    overshoot: float = 0.02,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """Minimal-L2 DeepFool (Algorithm 2 of Moosavi-Dezfooli et al. 2016).

    At the current point ``x_i`` the classifier is linearised: for each candidate class ``k != y``,
    ``w_k = grad z_k - grad z_y`` and ``f_k = z_k - z_y``; the closest linearised boundary is
    ``l = argmin_k |f_k| / ||w_k||_2`` and the step ``r_i = (|f_l| + 1e-4) / ||w_l||^2 * w_l``
    is added to the accumulated ``r``. The iterate is ``x_{i+1} = clip(x + (1 + overshoot) r)``.
    It stops (a mask inside ``lax.while_loop``, so the batched loop runs until every example is
    done) when ``x_{i+1}`` is misclassified or after ``steps`` steps. For an affine classifier
    with the box inactive one step gives ``(1 + overshoot)`` times the exact minimal perturbation.

    **Arguments:**
      logits_fn: per-example ``x -> logits (K,)``.
      num_classes: number of candidate classes, the top ones of the clean logits (the true class
        included), as in the reference; ``None``: all ``K``.
      steps: maximum number of linearisation steps.
      overshoot: relative overshoot (>= 0) applied to the accumulated perturbation.
      lo, hi: the box; ``lo = hi = None`` disables clipping.

    **Returns:**
      ``attack(x, label, *, key=None) -> AttackResult`` (``key`` unused). ``aux["steps"]`` is the
      number of steps taken (int32).
    """
    _checks.check_positive_int(steps, "steps")
    if num_classes is not None:
        _checks.check_positive_int(num_classes, "num_classes")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
    overshoot = _common.check_nonneg_float(overshoot, "overshoot")
    lo, hi = _common.check_box_setting(lo, hi)

    def attack(x: Array, label: Array, *, key: Array | None = None) -> AttackResult:
        del key
        x, label, k = _common.check_inputs(logits_fn, x, label, lo, hi)
        n_cand = k if num_classes is None else min(num_classes, k)
        clean_logits = logits_fn(x)
        # Candidate classes: the top n_cand of the clean logits, always including the label.
        order = jnp.argsort(-clean_logits)
        candidates = jnp.zeros((k,), bool).at[order[:n_cand]].set(True)
        candidates = candidates.at[label].set(False)
        eye = jnp.eye(k, dtype=clean_logits.dtype)

        def cond(state):
            i, _, _, done = state
            return (i < steps) & ~done

        def body(state):
            i, r_tot, x_i, done = state
            # One forward pass and K vector-Jacobian products give logits and the Jacobian.
            logits, vjp = jax.vjp(logits_fn, x_i)
            jac = jax.vmap(lambda e: vjp(e)[0])(eye).reshape(k, -1)
            w = jac - jac[label][None, :]
            f = logits - logits[label]
            w_norm = jnp.sqrt(jnp.sum(w * w, axis=1))
            ratio = jnp.where(candidates, jnp.abs(f) / jnp.maximum(w_norm, 1e-12), jnp.inf)
            l_idx = jnp.argmin(ratio)
            w_l = w[l_idx]
            r_i = (jnp.abs(f[l_idx]) + 1e-4) / jnp.maximum(w_norm[l_idx] ** 2, 1e-24) * w_l
            r_new = r_tot + r_i.reshape(x.shape)
            x_new = _common.clip_box(x + (1.0 + overshoot) * r_new, lo, hi)
            done_new = jnp.argmax(logits_fn(x_new)) != label
            # Masked update: finished examples keep their state (also under vmap).
            r_tot = jnp.where(done, r_tot, r_new)
            x_i = jnp.where(done, x_i, x_new)
            return i + jnp.where(done, 0, 1), r_tot, x_i, done | done_new

        done0 = jnp.argmax(clean_logits) != label
        init = (jnp.zeros((), jnp.int32), jnp.zeros_like(x), x, done0)
        n_steps, _, x_adv, _ = jax.lax.while_loop(cond, body, init)
        return make_result(logits_fn, x, x_adv, label, clean_logits=clean_logits,
                           aux={"steps": n_steps,
                                "valid_input": _common.input_flag(x, label, k)})

    return attack

