"""Training settings as frozen (hashable) dataclasses.

A :class:`TrainConfig` is static data: ``train_step(state, batch, config)`` is jitted with
``config`` as a static argument, so every field must be hashable (tuples, not lists or dicts;
a weight-decay mapping is converted to a sorted tuple of ``(layer, λ)`` pairs).

Presets follow the papers (papers.md):

* Szegedy et al. 2014 (§1.1, §1.5): per-layer weight decay ``λ_k·Σw²/k``; the continuously refreshed
  pool of adversarial examples (:class:`PoolConfig`).
* Woods et al. 2019 (§2.4–§2.7): the Lipschitz-inspired regulariser (:class:`LipschitzConfig`) with
  the adaptive ψ controller (:class:`PsiConfig`) and adversarial training with Algorithm 1
  (:class:`WoodsAdversarialConfig`: ``"l2"`` at RMSE 0.01 or ``"l2_min"`` at RMSE 0.1, 7 steps,
  optional half-half mask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from advjax._checks import check_choice


def _check_common(eps: float, steps: int, prob: float) -> None:
    if not float(eps) >= 0:
        raise ValueError(f"`eps` must be >= 0; got {eps!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer; got {steps!r}.")
    if not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"`prob` must lie in [0, 1]; got {prob!r}.")


WeightDecay = float | tuple[float, ...] | tuple[tuple[str, float], ...] | None


@dataclasses.dataclass(frozen=True)
class PsiConfig:
    """Constants of the adaptive-ψ integrator controller (papers.md §2.6).

    ``I_t = max(0, I_{t-1} + clip(-ln(L_t / l_target), -eps_worse, +eps_better))`` and
    ``ψ_t = k_psi0 · exp(k_psi · I_t)``, where ``L_t`` is the batch's mean cross-entropy.
    """

    l_target: float = 1.5
    k_psi0: float = 220.0
    k_psi: float = 0.02
    eps_better: float = 1.0
    eps_worse: float = 0.01

    def __post_init__(self) -> None:
        for name in ("l_target", "k_psi0"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"`{name}` must be > 0; got {getattr(self, name)!r}.")
        for name in ("eps_better", "eps_worse"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"`{name}` must be >= 0; got {getattr(self, name)!r}.")


@dataclasses.dataclass(frozen=True)
class LipschitzConfig:
    """The Woods Lipschitz-inspired regulariser ``L_adv = ψ·mean(|∂s/∂x|^z)`` (papers.md §2.5).

    Attributes:
      zeta: probability ζ that an example's penalised output ``s`` is the true-vs-best-other logit
        margin (otherwise one uniformly random logit); 0.2 in the paper ("tandem").
      z: exponent of the input-gradient magnitude (2 in the paper).
      psi: controller constants; used when ``fixed_psi`` is None (the paper's adaptive ψ).
      fixed_psi: a constant ψ instead of the controller (the integrator is then left unchanged).
    """

    zeta: float = 0.2
    z: float = 2.0
    psi: PsiConfig = PsiConfig()
    fixed_psi: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.zeta) <= 1.0:
            raise ValueError(f"`zeta` must lie in [0, 1]; got {self.zeta!r}.")
        if not float(self.z) > 0:
            raise ValueError(f"`z` must be > 0; got {self.z!r}.")
        if self.fixed_psi is not None and not float(self.fixed_psi) >= 0:
            raise ValueError(f"`fixed_psi` must be >= 0 or None; got {self.fixed_psi!r}.")


@dataclasses.dataclass(frozen=True)
class PGDAdversarialConfig:
    """PGD adversarial training (Madry et al.): every batch is replaced by PGD examples.

    Attributes:
      norm: ``"linf"`` or ``"l2"``; ``eps`` is the radius in that norm of the [0, 1] image (L2: the
        full L2 norm, not RMSE).
      eps: radius (>= 0).
      steps: PGD iterations.
      step_size: absolute step size (None: the attack's default).
      random_start: start from a uniform random point of the ball.
      prob: probability that an example is replaced by its adversarial version (1: all).
      train_mode: run the model in training mode during generation (batch statistics, see
        :func:`advjax.train.adversarial_examples`).
    """

    norm: str = "linf"
    eps: float = 0.3
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    prob: float = 1.0
    train_mode: bool = True

    def __post_init__(self) -> None:
        check_choice(self.norm, "norm", ("linf", "l2"))
        _check_common(self.eps, self.steps, self.prob)


@dataclasses.dataclass(frozen=True)
class WoodsAdversarialConfig:
    """Woods adversarial training with Algorithm 1 (papers.md §2.7, §2.9).

    Defaults are the standard ``"l2"`` variant (RMSE eps 0.01, 7 steps). ``criterion="l2_min"`` is
    the L2-min variant, used with ``eps=0.1``; ``half_half=True`` perturbs each example
    independently with probability ``prob`` (0.5), the others stay clean (the ``affected`` mask).
    The model runs in training mode (batch statistics) during generation.
    """

    criterion: str = "l2"
    eps: float = 0.01
    steps: int = 7
    momentum: float = 0.0
    eps_overshoot: float = 1.0
    half_half: bool = False
    prob: float = 0.5
    train_mode: bool = True

    def __post_init__(self) -> None:
        check_choice(self.criterion, "criterion", ("l2", "l2_min", "btr"))
        _check_common(self.eps, self.steps, self.prob)

    @classmethod
    def l2(cls, **kw) -> WoodsAdversarialConfig:
        """The standard variant: RMSE eps 0.01, 7 steps (``--adversarial-training``)."""
        return cls(criterion="l2", eps=0.01, steps=7, **kw)

    @classmethod
    def l2_min(cls, **kw) -> WoodsAdversarialConfig:
        """The L2-min variant: RMSE eps 0.1, 7 steps, smallest misclassifying δ (``--l2-min``)."""
        return cls(criterion="l2_min", eps=0.1, steps=7, **kw)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Szegedy's continuously refreshed pool of adversarial examples (papers.md §1.5).

    An input-level pool of ``size`` examples lives in the train state. Each step the attack is run
    on ``refresh`` randomly chosen examples of the clean batch, and the results replace ``refresh``
    randomly chosen pool slots; then ``mix`` examples drawn from the filled part of the pool are
    appended to the clean batch (the model trains on ``B + mix`` examples). Per-layer pools (the
    paper's "adversarial examples for each layer output") are not implemented.

    Attributes:
      size: pool capacity.
      refresh: pool slots replaced per step (<= batch size and <= size).
      mix: pool examples appended to each batch.
      attack: settings of the attack that generates the pool's examples.
    """

    size: int = 1024
    refresh: int = 16
    mix: int = 32
    attack: PGDAdversarialConfig | WoodsAdversarialConfig = PGDAdversarialConfig(
            norm="l2", eps=1.5, steps=10, prob=1.0)

    def __post_init__(self) -> None:
        for name in ("size", "refresh", "mix"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if self.refresh > self.size:
            raise ValueError(f"`refresh` must be <= `size` ({self.size}); got {self.refresh}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What one training step does (static: hashable; used as a jit static argument).

    Attributes:
      weight_decay: Szegedy per-layer decay ``λ_k·Σw²/k``: a float (every layer), a tuple of λ in
        layer order, or a mapping ``{layer name: λ}`` (stored as sorted pairs). None: no decay.
      adversarial: PGD or Woods adversarial training (the batch is replaced), or None.
      pool: Szegedy's adversarial pool, or None.
      lipschitz: the Woods regulariser with adaptive ψ, or None.
    """

    weight_decay: WeightDecay = None
    adversarial: PGDAdversarialConfig | WoodsAdversarialConfig | None = None
    pool: PoolConfig | None = None
    lipschitz: LipschitzConfig | None = None

    def __post_init__(self) -> None:
        wd = self.weight_decay
        if isinstance(wd, Mapping):
            object.__setattr__(self, "weight_decay",
                               tuple(sorted((str(k), float(v)) for k, v in wd.items())))
        elif isinstance(wd, list):
            object.__setattr__(self, "weight_decay", tuple(wd))


@dataclasses.dataclass(frozen=True)
class SparseAutoencoderConfig:
    """Sparse-autoencoder pretraining for ``AE400-10`` (papers.md §1.5; penalty not given there).

    Loss: ``mean((x - decode(encode(x)))²) + beta · Σ_j KL(rho ‖ ρ̂_j) + weight decay``, where
    ``ρ̂_j`` is unit ``j``'s mean sigmoid code over the batch.

    Attributes:
      rho: target mean activation ρ of each code unit, in (0, 1).
      beta: weight of the KL sparsity penalty (>= 0).
      weight_decay: λ of the per-layer decay on the encoder and decoder kernels (0: none).
    """

    rho: float = 0.05
    beta: float = 0.1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < float(self.rho) < 1.0:
            raise ValueError(f"`rho` must lie in (0, 1); got {self.rho!r}.")
        if not float(self.beta) >= 0:
            raise ValueError(f"`beta` must be >= 0; got {self.beta!r}.")
        if not float(self.weight_decay) >= 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {self.weight_decay!r}.")
