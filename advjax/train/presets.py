"""Training presets of the two papers: Szegedy's MNIST networks and the Woods CIFAR-10 networks.

* :func:`szegedy_config`: per-layer weight decay of Table 1 / Table 3 (papers.md §1.5), optionally
  with the adversarial pool of the adversarial-training paragraph.
* :func:`woods_config` / :func:`woods_optimizer`: the four variants of the reference code (standard,
  adversarial training, robust additions, all; papers.md §2.2, §2.4–§2.7) and its SGD schedule;
  :func:`woods_psi_config` scales the ψ controller to the input size.
"""

from __future__ import annotations

import optax

from advjax._checks import check_choice, check_positive_int
from advjax.train.config import (
    LipschitzConfig,
    PoolConfig,
    PsiConfig,
    TrainConfig,
    WoodsAdversarialConfig,
)

WOODS_VARIANTS = ("standard", "adv-train", "robust", "all")


def szegedy_config(name: str, *, pool: PoolConfig | None = None) -> TrainConfig:
    """The weight decay of a Szegedy model name (``"FC10(1e-4)"``, ``"FC100-100-10"``, ...).

    Args:
      name: a key of ``advjax.models.szegedy.SZEGEDY_WEIGHT_DECAY`` (a trailing prime is ignored).
        ``"AE400-10"`` decays only its ``classifier`` (λ = 1e-6; the autoencoder is frozen).
      pool: optional adversarial pool (papers.md §1.5; its sizes are not given in the paper).

    Returns:
      A :class:`TrainConfig`.
    """
    from advjax.models.szegedy import SZEGEDY_WEIGHT_DECAY

    base = name.rstrip("'").strip() if isinstance(name, str) else name
    check_choice(base, "name", tuple(SZEGEDY_WEIGHT_DECAY))
    lambdas = SZEGEDY_WEIGHT_DECAY[base]
    if base == "AE400-10":
        return TrainConfig(weight_decay={"classifier": lambdas[0]}, pool=pool)
    return TrainConfig(weight_decay=tuple(lambdas), pool=pool)


CIFAR10_INPUT_SIZE = 3 * 32 * 32


def woods_psi_config(input_size: int = CIFAR10_INPUT_SIZE) -> PsiConfig:
    """The reference ψ controller, its initial strength scaled to the input size.

    The regulariser is a mean over input elements, so the reference ``k_psi0 = 220`` (for
    3·32·32 CIFAR-10 inputs) is scaled by ``input_size / 3072`` to give the same penalty per unit
    of summed squared input gradient; unscaled, small inputs (8·8 digits, 28·28 MNIST) collapse
    training.

    Args:
      input_size: number of elements of one input (``H·W·C``), ``>= 1``.

    Returns:
      A :class:`PsiConfig` with ``k_psi0 = 220 · input_size / 3072`` and the reference constants.
    """
    check_positive_int(input_size, "input_size")
    return PsiConfig(k_psi0=PsiConfig().k_psi0 * input_size / CIFAR10_INPUT_SIZE)


def woods_config(variant: str, *, input_size: int = CIFAR10_INPUT_SIZE) -> TrainConfig:
    """The step configuration of a Woods et al. reference variant (papers.md §2.2).

    Args:
      variant: ``"standard"`` (cross-entropy only), ``"adv-train"`` (Algorithm 1 "l2", RMSE 0.01,
        7 steps), ``"robust"`` (the Lipschitz regulariser with adaptive ψ; the half-Huber ReLU is a
        model setting) or ``"all"`` (robust additions + L2-min adversarial training at RMSE 0.1
        with the half-half mask).
      input_size: elements of one input; scales ψ (:func:`woods_psi_config`). The default is
        CIFAR-10's 3072, the reference setting.

    Returns:
      A :class:`TrainConfig` (weight decay is in :func:`woods_optimizer`, coupled as in SGD).
    """
    check_choice(variant, "variant", WOODS_VARIANTS)
    if variant == "standard":
        return TrainConfig()
    if variant == "adv-train":
        return TrainConfig(adversarial=WoodsAdversarialConfig.l2())
    lipschitz = LipschitzConfig(psi=woods_psi_config(input_size))
    if variant == "robust":
        return TrainConfig(lipschitz=lipschitz)
    return TrainConfig(adversarial=WoodsAdversarialConfig.l2_min(half_half=True),
                       lipschitz=lipschitz)


def woods_optimizer(steps_per_epoch: int, *, epochs: int = 200, num_devices: int = 1,
                    weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """The reference SGD (papers.md §2.4): lr ``0.1·G``, momentum 0.9, coupled L2 decay 1e-4 on all
    parameters, lr ÷10 at 85 % and 97.5 % of training (epochs 170 and 195 of 200).

    Args:
      steps_per_epoch: optimiser steps per epoch (``ceil(50000 / (128·G))`` on CIFAR-10).
      epochs: total epochs (200); the decay epochs scale with it.
      num_devices: ``G`` (the reference scales lr and batch size by the number of GPUs).
      weight_decay: coupled decay added to the gradient (PyTorch ``SGD(weight_decay=...)``).

    Returns:
      ``optax.chain(add_decayed_weights, sgd(schedule, momentum=0.9))``.
    """
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(woods_learning_rate(steps_per_epoch, epochs=epochs,
                                                     num_devices=num_devices), momentum=0.9))


def woods_learning_rate(steps_per_epoch: int, *, epochs: int = 200,
                        num_devices: int = 1) -> optax.Schedule:
    """The reference learning rate per step: ``0.1·G``, ÷10 at epoch ``round(0.85·epochs)`` and
    again at ``round(0.975·epochs)`` (170 and 195 of 200; papers.md §2.4)."""
    check_positive_int(steps_per_epoch, "steps_per_epoch")
    check_positive_int(epochs, "epochs")
    check_positive_int(num_devices, "num_devices")
    first = round(epochs * 170 / 200) * steps_per_epoch
    second = round(epochs * 195 / 200) * steps_per_epoch
    return optax.piecewise_constant_schedule(0.1 * num_devices, {first: 0.1, second: 0.1})
