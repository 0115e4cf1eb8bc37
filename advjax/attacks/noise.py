"""Gaussian noise: the control rows of the papers (random, not adversarial, perturbations)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from advjax.attacks import _boundary
from advjax.attacks.result import AttackResult

Array = jax.Array


def gaussian_noise(
    logits_fn: Callable[[Array], Array],
    *,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    clip: bool = True,
) -> Callable[..., AttackResult]:
    """Adds i.i.d. ``N(0, rms^2)`` noise to ONE example (Szegedy et al. §4.2 control rows).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      lo, hi: the box (input units).
      clip: clip ``x + noise`` to ``[lo, hi]`` (default). With ``clip=False`` (or no box) the
        RMSE of ``x_adv - x`` is ``rms`` in expectation (``E[rmse^2] = rms^2``).

    Returns:
      ``attack(x, label, *, rms, key) -> AttackResult``: ``rms >= 0`` the per-pixel standard
      deviation of the noise (input units, per example under ``vmap``), ``key`` a PRNG key
      (required). ``success`` means the noisy example is misclassified.
    """
    lo, hi = _boundary.check_box_setting(lo, hi)
    do_clip = bool(clip) and lo is not None

    def search(logits_fn, ex: _boundary.Example):
        del logits_fn
        return ex.x + ex.budget * jax.random.normal(ex.key, ex.x.shape, ex.x.dtype), {}

    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, budget="rms", needs_key=True,
                                 clip=do_clip)
