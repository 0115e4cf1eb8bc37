"""Attack objectives for ONE example (logits ``(K,)``, integer class indices), to MAXIMISE.

An untargeted attack maximises ``loss(logits, label)``; a targeted one the targeted variant
(``-CE(target)``, the targeted margin, the targeted DLR). :func:`attack_loss` picks by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LOSSES = ("ce", "margin", "dlr")

__all__ = [
    "LOSSES",
    "attack_loss",
    "ce_loss",
    "dlr_loss",
    "margin_loss",
    "targeted_dlr_loss",
    "targeted_margin_loss",
    "top_targets",
]


def ce_loss(logits: Array, label: Array) -> Array:
    """Cross-entropy ``-log softmax(logits)[label]`` (scalar, nats)."""
    return -jax.nn.log_softmax(logits)[label]


def _max_other(logits: Array, label: Array) -> Array:
    mask = jax.nn.one_hot(label, logits.shape[-1], dtype=bool)
    return jnp.max(jnp.where(mask, -jnp.inf, logits))


def margin_loss(logits: Array, label: Array) -> Array:
    """Untargeted margin ``max_{j != label} z_j - z_label`` (> 0 iff misclassified)."""
    return _max_other(logits, label) - logits[label]


def targeted_margin_loss(logits: Array, target: Array) -> Array:
    """Targeted margin ``z_target - max_{j != target} z_j`` (> 0 iff predicted as ``target``)."""
    return logits[target] - _max_other(logits, target)


def dlr_loss(logits: Array, label: Array) -> Array:
    """Difference-of-logits-ratio loss (Croce & Hein 2020, Eq. 6), to maximise.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi`` the sorted logits
    (decreasing). Needs at least 3 classes.
    """
    z = jnp.sort(logits)[::-1]
    return -(logits[label] - _max_other(logits, label)) / (z[0] - z[2] + 1e-12)


def targeted_dlr_loss(logits: Array, label: Array, target: Array) -> Array:
    """Targeted DLR (Croce & Hein 2020, Eq. 7), to maximise.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Needs at least 4 classes.
    """
    z = jnp.sort(logits)[::-1]
    return -(logits[label] - logits[target]) / (z[0] - 0.5 * (z[2] + z[3]) + 1e-12)


def attack_loss(name: str, logits: Array, label: Array, target: Array | None = None) -> Array:
    """The objective an attack MAXIMISES.

    Args:
      name: ``"ce"``, ``"margin"`` or ``"dlr"``.
      logits: ``(K,)``.
      label: the true label (int scalar).
      target: ``None`` for untargeted; otherwise the target class (int scalar).

    Returns:
      Scalar. Untargeted: ``CE(label)``, ``margin(label)``, ``DLR(label)``. Targeted:
      ``-CE(target)``, ``targeted_margin(target)``, targeted DLR.
    """
    if name == "ce":
        return ce_loss(logits, label) if target is None else -ce_loss(logits, target)
    if name == "margin":
        if target is None:
            return margin_loss(logits, label)
        return targeted_margin_loss(logits, target)
    if name == "dlr":
        if target is None:
            return dlr_loss(logits, label)
        return targeted_dlr_loss(logits, label, target)
    raise ValueError(f"`loss` must be one of {list(LOSSES)}; got {name!r}.")


def top_targets(clean_logits: Array, n_targets: int) -> Array:
    """The ``n_targets`` most likely classes other than the top one, most likely first: the
    classes ranked 2nd, 3rd, ... by the clean logits, the targets of APGD-T and FAB-T (as in the
    official AutoAttack; for a misclassified example the label may be among them).

    Args:
      clean_logits: ``(K,)``.
      n_targets: ``1 <= n_targets <= K - 1`` (static).

    Returns:
      ``(n_targets,)`` int32 class indices.
    """
    order = jnp.argsort(-clean_logits)
    return order[1:1 + n_targets].astype(jnp.int32)
