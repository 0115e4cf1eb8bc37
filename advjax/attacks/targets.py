"""Target selection for the targeted APGD stages, for ONE example: which classes APGD-T attacks,
and in which order (the one place every targeted APGD stage takes its targets from).

* ``"logits"``: the classes ranked 2nd, 3rd, ... by the clean logits (AutoAttack's APGD-T,
  :func:`advjax.attacks.losses.top_targets`).
* ``"all"``: every class but the label, most likely first: MultiTargeted (Gowal et al. 2019,
  "An Alternative Surrogate Loss for PGD-based Adversarial Testing", Sec. 3: one run per target
  class, ``K - 1`` of them), here run with AutoAttack's targeted-DLR APGD.
* ``"malt"``: MALT, Mesoscopic Almost Linearity Targeting (Melamed, Yehudai & Shamir, "MALT
  Powers Up Adversarial Attacks", NeurIPS 2024, arXiv:2407.02240): the classes ranked by the
  linearised distance to each pairwise boundary at the clean point (:func:`malt_scores`),
  nearest first, among the ``candidates`` most likely classes.

The MALT ranking follows the authors' code (github.com/odeliamel/MALT, ``targeting.py``:
``get_class_rank`` divides the logit gap by the ``p=1`` norm of the gradient difference for
L-infinity and the ``p=2`` norm for L2, over the ``testk`` most likely classes other than the
label, and keeps the ``k`` smallest; ``MALT_attack.py``: ``MALTAttack(k=9, testk=100)``, the
defaults of its ``demo.py`` too). Two documented differences: a gradient difference of norm 0
(no linear path to that boundary) scores ``+inf`` here, where their code leaves the score at 0
(ranked first); and the APGD run counts any misclassification as a success (AutoAttack's
convention), where their driver counts only the target class.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax.attacks import losses, passes, projections

Array = jax.Array

__all__ = ["DUAL", "SELECTIONS", "all_targets", "malt_scores", "malt_targets", "select",
           "top_targets"]

SELECTIONS = ("logits", "all", "malt")
# The dual of each threat model's norm: the linear function w.x moves by at most ||w||_dual per
# unit of ||delta|| (Hoelder), so the linearised distance to w.x + c = 0 is |c| / ||w||_dual.
DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}
# The authors' default number of candidate classes (``testk``) and of targets (``k``).
MALT_CANDIDATES = 100
MALT_TARGETS = 9

top_targets = losses.top_targets


def _ranked_others(scores: Array, label: Array) -> Array:
    """Class indices by increasing ``scores`` with the label last (``(K,)`` int32)."""
    mask = jax.nn.one_hot(label, scores.shape[-1], dtype=bool)
    return jnp.argsort(jnp.where(mask, jnp.inf, scores), stable=True).astype(jnp.int32)


def all_targets(clean_logits: Array, label: Array) -> Array:
    """Every class but ``label``, most likely first (MultiTargeted's targets).

    Args:
      clean_logits: ``(K,)``.
      label: the true class (int scalar).

    Returns:
      ``(K - 1,)`` int32 class indices.
    """
    return _ranked_others(-clean_logits, label)[:-1]


def malt_scores(logits_fn: Callable[[Array], Array], x: Array, label: Array,
                norm: str) -> Array:
    """MALT's linearised distance from ``x`` to each pairwise boundary ``z_label = z_t``.

    ``score_t = (z_label(x) - z_t(x)) / ||grad z_label(x) - grad z_t(x)||_*`` with ``||.||_*``
    the dual of the threat model's ``norm`` (:data:`DUAL`: L1 for L-infinity, L2 for L2,
    L-infinity for L1). For a linear model ``z = W x + b`` this is exactly the smallest
    ``norm``-perturbation (no box) that puts ``x`` on that boundary; for a network it is the
    distance to the boundary of its first-order Taylor model at ``x``. Costs one forward pass and
    ``K`` backward passes (the Jacobian).

    Args:
      logits_fn: per-example ``x -> logits (K,)``.
      x: ONE example, any shape, in input units.
      label: the true class (int scalar).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (the threat model).

    Returns:
      ``(K,)`` scores in input units of ``norm``: ``+inf`` at ``label`` and where the gradient
      difference is 0 with a positive gap; ``<= 0`` for a class already scoring at least
      ``z_label``.
    """
    if norm not in DUAL:
        raise ValueError(f"`norm` must be one of {list(DUAL)}; got {norm!r}.")
    z, vjp = jax.vjp(logits_fn, x)
    k = z.shape[-1]
    jac = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(k, dtype=z.dtype))      # (K, *x.shape)
    diff = jac[label][None] - jac                                          # grad (z_y - z_t)
    dual = jax.vmap(lambda d: projections.norm_of(d, DUAL[norm]))(diff)
    gap = z[label] - z
    safe = jnp.where(dual > 0, dual, 1.0)
    scores = jnp.where(dual > 0, gap / safe, jnp.where(gap > 0, jnp.inf, -jnp.inf))
    return jnp.where(jnp.arange(k) == label, jnp.inf, scores)


def malt_targets(logits_fn: Callable[[Array], Array], x: Array, label: Array, n_targets: int,
                 *, norm: str, candidates: int = MALT_CANDIDATES) -> Array:
    """MALT's targets: among the ``candidates`` most likely classes other than ``label``, the
    ``n_targets`` with the smallest :func:`malt_scores`, nearest boundary first.

    Args:
      logits_fn, x, label, norm: as :func:`malt_scores`.
      n_targets: ``1 <= n_targets <= K - 1`` (static; 9 in the authors' code).
      candidates: classes scored, ``n_targets <= candidates`` (static; capped at ``K - 1``;
        100 in the authors' code, which bounds the Jacobian's cost on ImageNet).

    Returns:
      ``(n_targets,)`` int32 class indices.
    """
    scores = malt_scores(logits_fn, x, label, norm)
    k = scores.shape[-1]
    if not 1 <= n_targets <= k - 1:
        raise ValueError(f"`n_targets` must lie in [1, K - 1 = {k - 1}]; got {n_targets}.")
    if candidates < n_targets:
        raise ValueError(f"`candidates` ({candidates}) must be >= `n_targets` ({n_targets}).")
    if candidates < k - 1:
        z = logits_fn(x)
        pool = all_targets(z, label)[:candidates]
        keep = jnp.zeros((k,), bool).at[pool].set(True)
        scores = jnp.where(keep, scores, jnp.inf)
    return _ranked_others(scores, label)[:n_targets]


def selection_passes(selection: str, num_classes: int,
                     candidates: int = MALT_CANDIDATES) -> Array:
    """The model passes of :func:`select` (:mod:`advjax.attacks.passes`): one forward pass for
    ``"logits"`` and ``"all"``; for ``"malt"`` the Jacobian of :func:`malt_scores` (1 forward +
    ``K`` backward), plus the forward pass that picks the candidates when they are fewer than
    ``K - 1``."""
    if selection != "malt":
        return passes.count(forward=1)
    extra = 1 if candidates < num_classes - 1 else 0
    return passes.count(forward=1 + extra, backward=num_classes)


def select(selection: str, logits_fn: Callable[[Array], Array], x: Array, label: Array,
           n_targets: int, *, norm: str, candidates: int = MALT_CANDIDATES) -> Array:
    """The ``n_targets`` targets of ONE example by ``selection`` (:data:`SELECTIONS`).

    Args:
      selection: ``"logits"`` (:func:`top_targets`), ``"all"`` (:func:`all_targets`, its first
        ``n_targets``) or ``"malt"`` (:func:`malt_targets`).
      logits_fn, x, label: the model and the clean example.
      n_targets: ``1 <= n_targets <= K - 1`` (static).
      norm, candidates: the threat model and MALT's candidate count (``"malt"`` only).

    Returns:
      ``(n_targets,)`` int32 class indices, the first attacked first.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {list(SELECTIONS)}; got {selection!r}.")
    if selection == "malt":
        return malt_targets(logits_fn, x, label, n_targets, norm=norm, candidates=candidates)
    z = logits_fn(x)
    k = z.shape[-1]
    if not 1 <= n_targets <= k - 1:
        raise ValueError(f"`n_targets` must lie in [1, K - 1 = {k - 1}]; got {n_targets}.")
    if selection == "logits":
        return top_targets(z, n_targets)
    return all_targets(z, label)[:n_targets]
