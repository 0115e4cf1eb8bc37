"""Fast gradient (sign) method: one steepest-ascent step of size ``eps`` (Goodfellow et al.)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from advjax import _checks
from advjax.attacks import _common
from advjax.attacks.result import AttackResult

Array = jax.Array


def fgsm(
    logits_fn: Callable[[Array], Array],
    *,
    norm: str = "linf",
    targeted: bool = False,
    reset_misclassified: bool = True,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
) -> Callable[..., AttackResult]:
    """Fast gradient method for ONE example.

    ``x_adv = clip(x + eps * d, lo, hi)`` with ``d`` the unit steepest-ascent direction of the
    cross-entropy: ``sign(g)`` for ``norm="linf"`` (FGSM), ``g / ||g||_2`` for ``norm="l2"``
    (fast gradient method). Untargeted attacks ascend ``CE(label)``; targeted ones descend
    ``CE(target)``.

    **Arguments:**
      logits_fn: per-example ``x -> logits (K,)``.
      norm: ``"linf"`` or ``"l2"``.
      targeted: whether the attack takes a ``target=`` and succeeds when it is predicted.
      reset_misclassified: report already-misclassified examples unperturbed (``x_adv = x``);
        ``False`` perturbs every example (adversarial training).
      lo, hi: the box (input units); ``lo = hi = None`` disables clipping.

    **Returns:**
      ``attack(x, label, *, eps, target=None, key=None) -> AttackResult`` where ``x`` is one
      example (any shape, float, in ``[lo, hi]``), ``label`` the true class (int scalar),
      ``eps >= 0`` the step in ``norm`` (input units, per example under ``vmap``), ``target`` the
      target class (targeted only); ``key`` is unused (accepted for a uniform interface).
      ``x_adv`` satisfies ``||x_adv - x||_norm <= eps`` and lies in the box.
    """
    _checks.check_choice(norm, "norm", _common.NORMS)
    lo, hi = _common.check_box_setting(lo, hi)
    targeted = bool(targeted)

    def attack(x: Array, label: Array, *, eps: Array, target: Array | None = None,
               key: Array | None = None) -> AttackResult:
        del key
        x, label, k = _common.check_inputs(logits_fn, x, label, lo, hi)
        target = _common.check_target(target, targeted, k)
        eps = _common.check_eps(eps).astype(x.dtype)

        def objective(z):
            logits = logits_fn(z)
            return _common.attack_loss("ce", logits, label, target), logits

        _, clean_logits, g = _common.grad_and_aux(objective, x)
        x_adv = _common.clip_box(x + eps * _common.steepest_direction(g, norm), lo, hi)
        valid = _common.input_flag(x, label, k, eps=eps, target=target)
        return _common.finish_result(logits_fn, x, x_adv, label, target=target,
                                     clean_logits=clean_logits, aux={"valid_input": valid},
                                     reset_misclassified=reset_misclassified)

    return attack

