"""Gaussian noise: the control rows of the papers (random, not adversarial, perturbations)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from advjax.attacks import _common
from advjax.attacks.result import AttackResult, make_result

Array = jax.Array


def gaussian_noise(
    logits_fn: Callable[[Array], Array],
    *,
    lo: float | None = 0.0,
    hi: float | None = 1.0,
    clip: bool = True,
) -> Callable[..., AttackResult]:
    """Adds i.i.d. ``N(0, rms^2)`` noise to ONE example (Szegedy et al. §4.2 control rows).

    **Arguments:**
      logits_fn: per-example ``x -> logits (K,)``.
      lo, hi: the box (input units).
      clip: clip ``x + noise`` to ``[lo, hi]`` (default). With ``clip=False`` (or no box) the
        RMSE of ``x_adv - x`` is ``rms`` in expectation (``E[rmse^2] = rms^2``).

    **Returns:**
      ``attack(x, label, *, rms, key) -> AttackResult``: ``rms >= 0`` the per-pixel standard
      deviation of the noise (input units, per example under ``vmap``), ``key`` a PRNG key
      (required). ``success`` means the noisy example is misclassified.
    """
    lo, hi = _common.check_box_setting(lo, hi)
    do_clip = bool(clip) and lo is not None

    def attack(x: Array, label: Array, *, rms: Array, key: Array | None = None) -> AttackResult:
        x, label, k = _common.check_inputs(logits_fn, x, label, lo, hi)
        rms = _common.check_eps(rms, "rms").astype(x.dtype)
        key = _common.check_key(key)
        x_adv = x + rms * jax.random.normal(key, x.shape, x.dtype)
        if do_clip:
            x_adv = _common.clip_box(x_adv, lo, hi)
        valid = _common.input_flag(x, label, k, eps=rms)
        return make_result(logits_fn, x, x_adv, label, aux={"valid_input": valid})

    return attack
