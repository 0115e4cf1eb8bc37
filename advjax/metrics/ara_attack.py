"""Attack ARA and BTR ARA: minimal distortions from Algorithm 1, then :func:`~advjax.metrics.ara`.

Both follow ``calculate_ara`` of the official code (papers.md §2.10): Algorithm 1
(``advjax.attacks.woods_l2``) with T = 450 steps, a total path length ``eps = 20`` RMSE,
``eps_overshoot = 1``, momentum 0.9 and track-best, on the true labels; the minimal RMSE it finds is
each example's distortion.

* Attack ARA: criterion ``"l2_min"``: the boundary is misclassification.
* BTR ARA ("better than random"): criterion ``"btr"``: the boundary is ``p(label) <= 1/K``.

The settings are arguments so quick runs can use fewer steps (the official help text advises
momentum 0 below about 100 steps).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import (
    check_finite,
    check_floating,
    check_in_range,
    check_labels,
    check_positive_int,
    check_shape,
)
from advjax.metrics.ara import _check_num_classes, ara

Array = jax.Array
LogitsFn = Callable[[Array], Array]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AraResult:
    """Outcome of :func:`attack_ara` / :func:`btr_ara` (host-side numpy arrays and floats).

    Attributes:
      ara: the ARA by the official Riemann sum (1000 bins), accuracy × RMSE.
      ara_exact: the exact integral of the same empirical curve (``>= ara``).
      distortions: ``(n,)`` float64 minimal RMSE distortions (0 where the criterion already holds
        at the clean image, and 0 where the attack found no crossing, as in the official code).
      correct: ``(n,)`` bool clean correctness (``argmax == label``).
      crossed: ``(n,)`` bool, the returned point satisfies the criterion's boundary condition
        (misclassified for ``"l2_min"``, ``p(label) <= 1/K`` for ``"btr"``).
      failed: ``(n,)`` bool, the example started on the near side of the boundary and the attack
        found no crossing (its distortion 0 under-states its robustness).
      sanity: ``(n,)`` bool, the attack's sanity flag (boundary crossed within the first half of
        the steps, ``aux["boundary_by_half"]``); all True when the attack reports none.
      stalled: ``(n,)`` bool, among ``failed``: Algorithm 1 stopped moving (it travelled less than
        half its path: the gradient vanished, typically a saturated softmax whose CE gradient
        underflows against the ``1e-8`` of the normalisation). Their distortion 0 is an artefact
        of the attack, not a property of the model; ``loss="margin"`` avoids it.
      clean_accuracy: fraction correct before the attack.
      criterion: ``"l2_min"`` or ``"btr"``.
      num_classes: ``K``.
      settings: the attack settings used.
    """

    ara: float
    ara_exact: float
    distortions: np.ndarray
    correct: np.ndarray
    crossed: np.ndarray
    failed: np.ndarray
    sanity: np.ndarray
    clean_accuracy: float
    criterion: str
    num_classes: int
    settings: dict
    stalled: np.ndarray | None = None

    @property
    def num_failed(self) -> int:
        """Examples that started on the near side and never crossed (counted at distortion 0)."""
        return int(np.count_nonzero(self.failed))

    @property
    def num_stalled(self) -> int:
        """Failed examples on which Algorithm 1 stopped moving (see ``stalled``)."""
        return 0 if self.stalled is None else int(np.count_nonzero(self.stalled))

    @property
    def sanity_ok(self) -> bool:
        """True when every example crossed its boundary within the first half of the steps."""
        return bool(np.all(self.sanity))

    def to_dict(self) -> dict:
        """Scalars and per-example arrays, JSON-ready through ``advjax.io.atomic_write_json``;
        includes ``num_failed`` and ``num_stalled``."""
        return {**dataclasses.asdict(self), "num_failed": self.num_failed,
                "num_stalled": self.num_stalled}


def _woods_ara(
    criterion: str,
    logits_fn: LogitsFn,
    xs: Array,
    labels: Array,
    *,
    num_classes: int,
    steps: int,
    eps: float,
    momentum: float,
    eps_overshoot: float,
    chunk_size: int,
    bins: int,
    key: Array | None,
    attack_settings: dict[str, Any],
) -> AraResult:
    from advjax.attacks import woods_l2

    if np.ndim(xs) < 2 or np.shape(xs)[0] < 1:
        raise ValueError(f"`xs` must be a non-empty batch (N, ...); got shape {np.shape(xs)}.")
    check_floating(xs, "xs")
    lo, hi = attack_settings.get("lo", 0.0), attack_settings.get("hi", 1.0)
    if lo is not None and hi is not None:
        check_in_range(xs, "xs", lo, hi)
    else:
        check_finite(xs, "xs")
    check_shape(labels, "labels", (np.shape(xs)[0],))
    _check_num_classes(num_classes)
    check_labels(labels, "labels", num_classes)
    check_positive_int(steps, "steps")
    check_positive_int(chunk_size, "chunk_size")
    if not float(eps) > 0:
        raise ValueError(f"`eps` must be > 0 (total path length in RMSE); got {eps}.")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"`momentum` must lie in [0, 1); got {momentum}.")

    settings = dict(steps=steps, criterion=criterion, momentum=float(momentum),
                    eps_overshoot=float(eps_overshoot), track_best=True, sanity_check=False)
    if criterion == "btr":
        # The BTR boundary is the confidence, not the decision: misclassified examples with
        # p(label) > 1/K are attacked too (as the reference does), not reset to x.
        settings["reset_misclassified"] = False
    settings.update(attack_settings)
    attack = woods_l2(logits_fn, **settings)

    def one(x, y, k):
        kwargs = {} if k is None else {"key": k}
        res = attack(x, y, eps=jnp.asarray(eps, x.dtype), **kwargs)
        probs = jax.nn.softmax(res.logits.astype(jnp.float32))
        if criterion == "btr":
            crossed = probs[y] <= 1.0 / num_classes
            clean_p = jax.nn.softmax(logits_fn(x).astype(jnp.float32))[y]
            started_inside = clean_p > 1.0 / num_classes
        else:
            crossed = jnp.argmax(res.logits) != y
            started_inside = res.clean_correct
        sanity = jnp.asarray(res.aux.get("boundary_by_half", True), bool)
        stalled = jnp.asarray(res.aux.get("stalled", False), bool)
        valid = jnp.asarray(res.aux.get("valid_input", True), bool)
        return res.rmse, res.clean_correct, crossed, started_inside, sanity, stalled, valid

    def indexed(x, y, i):
        return one(x, y, None if key is None else jax.random.fold_in(key, i))

    # Fixed-size chunks (one compilation), sharded over every device when there are several.
    from advjax.parallel import stream

    xs = np.asarray(xs)
    labels = np.asarray(labels)
    n = xs.shape[0]
    rmse, correct, crossed, inside, sanity, stalled, valid = stream(
        indexed, xs, labels, np.arange(n), chunk_size=min(chunk_size, n))
    if not valid.all():
        raise ValueError(f"{criterion} ARA: {int((~valid).sum())} example(s) had invalid input "
                         "for the attack (aux['valid_input'] False); refusing to count them.")
    rmse = rmse.astype(np.float64)
    failed = inside & ~crossed
    stalled = failed & stalled.astype(bool)
    distortions = np.where(inside & crossed, rmse, 0.0)
    if failed.any():
        logger.warning("%s ARA: %d example(s) never crossed the boundary (%d of them stalled: "
                       "the attack stopped moving); counted with distortion 0", criterion,
                       int(failed.sum()), int(stalled.sum()))
    if not sanity.all():
        logger.warning("%s ARA: %d example(s) crossed the boundary only in the second half of "
                       "the steps; the distortions may not be minimal", criterion,
                       int((~sanity).sum()))
    correct = correct.astype(bool)
    mask = correct if criterion == "l2_min" else None
    return AraResult(
        ara=ara(distortions, mask, num_classes, method="riemann", bins=bins),
        ara_exact=ara(distortions, mask, num_classes, method="exact"),
        distortions=distortions,
        correct=correct,
        crossed=crossed.astype(bool),
        failed=failed.astype(bool),
        sanity=sanity.astype(bool),
        clean_accuracy=float(np.count_nonzero(correct)) / n,
        criterion=criterion,
        num_classes=int(num_classes),
        settings={**settings, "eps": float(eps), "bins": int(bins)},
        stalled=stalled,
    )


def attack_ara(
    logits_fn: LogitsFn,
    xs: Array,
    labels: Array,
    *,
    num_classes: int,
    steps: int = 450,
    eps: float = 20.0,
    momentum: float = 0.9,
    eps_overshoot: float = 1.0,
    chunk_size: int = 128,
    bins: int = 1000,
    key: Array | None = None,
    **attack_settings: Any,
) -> AraResult:
    """Attack ARA: minimal misclassifying RMSE per example (Algorithm 1, ``"l2_min"``), then ARA.

    Args:
      logits_fn: per-example ``x -> logits (K,)``, model in inference mode.
      xs: ``(N, H, W, C)`` float images in ``[0, 1]``.
      labels: ``(N,)`` int true labels in ``[0, K)``.
      num_classes: ``K`` (the naive accuracy is ``1/K``).
      steps: Algorithm 1 steps T (450 in the paper's protocol).
      eps: total path length ``S = eps · eps_overshoot`` in RMSE units (20).
      momentum: momentum μ of the normalised direction (0.9; use 0 below about 100 steps).
      eps_overshoot: multiplier of the path length (1 for ARA).
      chunk_size: examples attacked together by one compiled ``jax.vmap`` call.
      bins: bins of the Riemann sum (1000).
      key: optional PRNG key (example ``b`` gets ``fold_in(key, b)``); Algorithm 1 for ARA is
        deterministic, so it is only passed on when given.
      **attack_settings: further static settings of ``advjax.attacks.woods_l2`` (e.g. ``clip``).

    Returns:
      An :class:`AraResult` (papers.md §2.10; published Attack ARAs of the Woods 2019 ResNet-44s:
      0.0013 standard, 0.0100 adv-train, 0.0188 all, 0.0142 robust).
    """
    return _woods_ara("l2_min", logits_fn, xs, labels, num_classes=num_classes, steps=steps,
                      eps=eps, momentum=momentum, eps_overshoot=eps_overshoot,
                      chunk_size=chunk_size, bins=bins, key=key, attack_settings=attack_settings)


def btr_ara(
    logits_fn: LogitsFn,
    xs: Array,
    labels: Array,
    *,
    num_classes: int,
    steps: int = 450,
    eps: float = 20.0,
    momentum: float = 0.9,
    eps_overshoot: float = 1.0,
    chunk_size: int = 128,
    bins: int = 1000,
    key: Array | None = None,
    **attack_settings: Any,
) -> AraResult:
    """BTR ARA: minimal RMSE bringing ``p(label)`` down to ``1/K`` (Algorithm 1, ``"btr"``).

    Same arguments as :func:`attack_ara`. Examples already at ``p(label) <= 1/K`` get distortion
    0; correctness does not mask the distortions (the boundary is the confidence, not the
    decision).

    Returns:
      An :class:`AraResult` (published BTR ARAs: 0.0015 standard, 0.0157 adv-train, 0.0414 all,
      0.0395 robust).
    """
    return _woods_ara("btr", logits_fn, xs, labels, num_classes=num_classes, steps=steps,
                      eps=eps, momentum=momentum, eps_overshoot=eps_overshoot,
                      chunk_size=chunk_size, bins=bins, key=key, attack_settings=attack_settings)
