"""Adversarial searches: each constructor returns a per-example pure function.

``attack = advjax.attacks.NAME(logits_fn, **static_settings)`` gives
``attack(x, label, *, key=None, **per_example) -> AttackResult`` for ONE example; batch it with
``jax.vmap`` (per-example eps, target, c and key all map) and compile it with ``jax.jit``.

Attacks are loaded on first access, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from advjax.attacks.result import AttackResult, distortions, is_success, make_result

_ATTACKS = {
    "fgsm": "advjax.attacks.fgsm",
    "pgd": "advjax.attacks.pgd",
    "apgd": "advjax.attacks.apgd",
    "lbfgs": "advjax.attacks.lbfgs",
    "cw_l2": "advjax.attacks.cw",
    "deepfool": "advjax.attacks.deepfool",
    "woods_l2": "advjax.attacks.woods",
    "gaussian_noise": "advjax.attacks.noise",
}

__all__ = ["AttackResult", "distortions", "is_success", "make_result", *sorted(_ATTACKS)]


def __getattr__(name: str) -> Any:
    if name in _ATTACKS:
        return getattr(importlib.import_module(_ATTACKS[name]), name)
    raise AttributeError(f"module 'advjax.attacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
