"""Gradient-masking diagnostics to report beside a robustness evaluation.

The checks of the official AutoAttack (``checks.py``, ``flags_doc.md``), each returned with its
measured value, the threshold it is compared with and a plain-words verdict:

* ``randomness``: do repeated forward passes (or draws, for a randomised model) disagree?
* ``softmax_output``: does the model return probabilities instead of logits?
* ``zero_gradients``: how many examples have an exactly zero input gradient of the
  cross-entropy at the clean point (where APGD starts)?
* ``square_beats_white_box``: did the score-based Square Attack lower the robust accuracy after
  the gradient-based stage just before it?
* ``nonfinite_logits``: how many examples gave NaN / inf logits (clean or attacked)?
* ``target_classes``: are more target classes requested than the model has?

:func:`masking_suspected` turns the first five into the decision of the adaptive evaluation
(``evaluate(version="adaptive")``) to run its conditional stages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from advjax.attacks import _boundary, losses

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Check:
    """One diagnostic.

    Attributes:
      name: the check.
      value: the measured quantity (units in ``verdict``).
      threshold: the value beyond which the check trips.
      tripped: True when the evaluation may be unreliable for this reason.
      verdict: one plain-words sentence.
    """

    name: str
    value: float
    threshold: float
    tripped: bool
    verdict: str


def check_randomness(logits_fn: Callable, xs, *, randomized: bool = False, draws: int = 5,
                     key: Array | None = None, tol: float = 1e-4) -> Check:
    """Largest L2 distance between L2-normalised logits of repeated passes over ``xs``.

    ``randomized``: ``logits_fn(x, key)`` is called with ``draws`` different keys; otherwise
    ``logits_fn(x)`` is called ``draws`` times (separately compiled) and must agree.
    """
    xs = jnp.asarray(xs)
    key = jax.random.key(0) if key is None else key
    outs = []
    for i in range(draws):
        if randomized:
            k = jax.random.fold_in(key, i)
            out = jax.jit(jax.vmap(lambda x, k=k: logits_fn(x, k)))(xs)
        else:
            out = jax.jit(jax.vmap(lambda x, i=i: logits_fn(x) + 0.0 * i))(xs)
        outs.append(out / (jnp.linalg.norm(out, axis=-1, keepdims=True) + 1e-10))
    diff = max(float(jnp.max(jnp.linalg.norm(a - b, axis=-1)))
               for j, a in enumerate(outs) for b in outs[j + 1:])
    tripped = diff > tol
    verdict = (f"repeated passes differ by up to {diff:.3g} (normalised logits): the model looks "
               "randomised; evaluate it with version='rand' (EOT)." if tripped else
               f"repeated passes agree (max difference {diff:.3g}): the model is deterministic.")
    return Check("randomness", diff, tol, tripped, verdict)


def check_softmax_output(logits_fn: Callable, xs, *, tol: float = 1e-5) -> Check:
    """Largest ``|sum(outputs) - 1|`` when every output lies in ``[0, 1]`` (inf otherwise)."""
    out = np.asarray(jax.jit(jax.vmap(logits_fn))(jnp.asarray(xs)), np.float64)
    in_unit = out.max() < 1 + tol and out.min() > -tol
    value = float(np.max(np.abs(out.sum(-1) - 1))) if in_unit else float("inf")
    tripped = value < tol
    verdict = ("the outputs are probabilities (in [0, 1], summing to 1): pass the logits; "
               "losses on probabilities saturate and mask the gradient." if tripped else
               "the outputs are not a probability distribution (logits, as expected).")
    return Check("softmax_output", value, tol, tripped, verdict)


def check_zero_gradients(logits_fn: Callable, xs, labels) -> Check:
    """Number of examples whose cross-entropy input gradient is exactly zero at the clean point."""
    def grad_l1(x, y):
        g = jax.grad(lambda z: losses.ce_loss(logits_fn(z), y))(x)
        return jnp.sum(jnp.abs(g))

    g = np.asarray(jax.jit(jax.vmap(grad_l1))(jnp.asarray(xs), jnp.asarray(labels)))
    count = int(np.sum(g == 0))
    tripped = count > 0
    verdict = (f"{count} of {len(g)} examples have an exactly zero gradient: gradient-based "
               "stages cannot move them; the robust accuracy may be overestimated (gradient "
               "masking)." if tripped else
               f"no example of {len(g)} has a zero gradient.")
    return Check("zero_gradients", float(count), 0.0, tripped, verdict)


def check_square(robust_accuracy: Mapping[str, float], *, tol: float = 0.002) -> Check:
    """Drop of robust accuracy due to Square: the robust accuracy just before the Square stage
    minus just after it (fraction of examples).

    ``robust_accuracy`` is in stage order (``Evaluation.robust_accuracy``). Comparing with the
    stage just before Square (not the minimum over all stages) also works when later stages
    follow it (``version="plus"``); Square first has no white-box stage to compare with.
    """
    names = list(robust_accuracy)
    if "square" not in names or names.index("square") == 0:
        return Check("square_beats_white_box", 0.0, tol, False,
                     "Square was not run after white-box stages: nothing to compare.")
    before = names[names.index("square") - 1]
    drop = float(robust_accuracy[before] - robust_accuracy["square"])
    tripped = drop > tol
    verdict = (f"the black-box Square Attack lowered the robust accuracy by {drop:.2%} after the "
               "gradient-based stages: their gradients are likely masked; use more queries and "
               "restarts or an adaptive attack." if tripped else
               f"Square lowered the robust accuracy by {max(drop, 0.0):.2%} (at most {tol:.1%}): "
               "no sign of gradient masking.")
    return Check("square_beats_white_box", drop, tol, tripped, verdict)


def check_finite_logits(num_nonfinite: int, num_examples: int) -> Check:
    """Examples where the model's logits were not finite (NaN or inf), at the clean point or at
    an attack's point: neither robust nor broken, since the argmax of NaN is 0, not a class."""
    tripped = num_nonfinite > 0
    verdict = (f"{num_nonfinite} of {num_examples} examples gave non-finite logits: they are "
               "counted as invalid (neither robust nor broken); a model that returns NaN can "
               "hide adversarial points (gradient masking)." if tripped else
               f"the logits were finite on all {num_examples} examples.")
    return Check("nonfinite_logits", float(num_nonfinite), 0.0, tripped, verdict)


def check_target_classes(num_classes: int, n_targets: int, stages) -> Check:
    """Target classes requested vs available (``K - 1``); DLR losses need 3 / 4 classes."""
    needs_t = any(s in ("apgd-t", "fab-t") for s in stages)
    problems = []
    if "apgd-dlr" in stages and num_classes < 3:
        problems.append(f"the DLR loss needs 3 classes, the model has {num_classes}")
    if "apgd-t" in stages and num_classes < 4:
        problems.append(f"the targeted DLR loss needs 4 classes, the model has {num_classes}")
    if needs_t and n_targets > num_classes - 1:
        problems.append(f"{n_targets} target classes requested, only {num_classes - 1} exist")
    tripped = bool(problems)
    verdict = ("; ".join(problems) + "." if tripped else
               f"{n_targets} target classes of {num_classes - 1} possible: fine.")
    return Check("target_classes", float(n_targets), float(num_classes - 1), tripped, verdict)


def diagnose(logits_fn: Callable, xs, labels, *, robust_accuracy: Mapping[str, float] | None = None,
             randomized: bool = False, n_targets: int = 9,
             stages=("apgd-ce", "apgd-t", "fab-t", "square")) -> list[Check]:
    """All checks on a sample of examples (e.g. the first batch) and, when given, the
    per-stage robust accuracies of an evaluation.

    Args:
      logits_fn: per-example ``x -> logits`` (``(x, key)`` when ``randomized``).
      xs, labels: ``(N, ...)``, ``(N,)`` examples.
      robust_accuracy: ``Evaluation.robust_accuracy``.
      randomized, n_targets, stages: as in the evaluation.

    Returns:
      The list of :class:`Check` (``[c for c in checks if c.tripped]`` are the warnings).
    """
    det = (lambda z: logits_fn(z, jax.random.key(0))) if randomized else logits_fn
    k = _boundary.num_classes(det, jnp.asarray(xs[0]))
    checks = [check_randomness(logits_fn, xs, randomized=randomized),
              check_softmax_output(det, xs), check_zero_gradients(det, xs, labels),
              check_target_classes(k, n_targets, stages)]
    if robust_accuracy is not None:
        checks.append(check_square(robust_accuracy))
    return checks


# The checks whose tripping says the gradient-based stages may have been fooled by the model
# (not a misuse such as too many target classes).
MASKING_CHECKS = ("randomness", "softmax_output", "zero_gradients", "square_beats_white_box",
                  "nonfinite_logits")


def masking_suspected(checks) -> tuple[bool, str]:
    """Whether any of :data:`MASKING_CHECKS` tripped, and a reason naming them (or saying none
    did): decides the conditional stages of ``evaluate(version="adaptive")``."""
    tripped = [c.name for c in checks if c.tripped and c.name in MASKING_CHECKS]
    if tripped:
        return True, "gradient masking suspected: " + ", ".join(tripped)
    return False, "no gradient-masking check tripped"


def report(checks) -> str:
    """A Markdown table of the checks."""
    rows = ["| check | value | threshold | verdict |", "|---|---|---|---|"]
    for c in checks:
        rows.append(f"| {c.name}{' (warning)' if c.tripped else ''} | {c.value:.4g} | "
                    f"{c.threshold:.4g} | {c.verdict} |")
    return "\n".join(rows)
