"""Fast gradient (sign) method: one steepest-ascent step of size ``eps`` (Goodfellow et al.)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
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

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      norm: ``"linf"`` or ``"l2"``.
      targeted: whether the attack takes a ``target=`` and succeeds when it is predicted.
      reset_misclassified: report already-misclassified examples unperturbed (``x_adv = x``);
        ``False`` perturbs every example (adversarial training).
      lo, hi: the box (input units); ``lo = hi = None`` disables clipping.

    Returns:
      ``attack(x, label, *, eps, target=None, key=None) -> AttackResult`` where ``x`` is one
      example (any shape, float, in ``[lo, hi]``), ``label`` the true class (int scalar),
      ``eps >= 0`` the step in ``norm`` (input units, per example under ``vmap``), ``target`` the
      target class (targeted only); ``key`` is unused (accepted for a uniform interface).
      ``x_adv`` satisfies ``||x_adv - x||_norm <= eps`` and lies in the box.
    """
    _checks.check_choice(norm, "norm", projections.NORMS)
    lo, hi = _boundary.check_box_setting(lo, hi)

    def search(logits_fn, ex: _boundary.Example):
        def objective(z):
            return losses.attack_loss("ce", logits_fn(z), ex.label, ex.target)

        g = jax.grad(objective)(ex.x)
        eps = ex.budget
        return ex.x + eps * projections.steepest_direction(g, norm), {}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="eps", budget_norm=norm,
                                 target="required" if targeted else "none",
                                 reset_misclassified=bool(reset_misclassified))
