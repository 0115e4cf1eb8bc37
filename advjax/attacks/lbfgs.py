"""Szegedy et al.'s box-constrained L-BFGS minimum-distortion search (papers.md §1.3-1.4, App. A).

For ONE example ``x`` and a target class ``l`` the attack approximates
``D(x, l) = argmin ||r||_2 s.t. argmax f(x + r) = l, x + r in [lo, hi]`` by the penalty problem

    minimise_x'  c * CE(logits_fn(x'), l) + ||x' - x||_2^2   subject to   lo <= x' <= hi,

solved by the pure-JAX projected L-BFGS of :mod:`advjax.attacks._lbfgsb` from ``x' = x``, and by a
per-example search over ``c`` (:func:`advjax.attacks.c_search.c_search`: ``c *= growth`` until the
target is reached, then bisection), keeping the successful ``x'`` of smallest L2 distortion. This
is the reference implementations' form (cleverhans ``LBFGS``: ``c`` on the cross-entropy, squared
L2, minimum successful ``c``), equivalent to the paper's ``c |r| + loss`` with ``c' = 1 / c``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax import _checks
from advjax.attacks import _boundary, losses, projections
from advjax.attacks._lbfgsb import minimize_box
from advjax.attacks.c_search import c_search, check_const
from advjax.attacks.result import AttackResult

Array = jax.Array
LogitsFn = Callable[[Array], Array]

__all__ = ["lbfgs", "random_wrong_target", "second_most_likely_target"]


def random_wrong_target(key: Array, label: Array, num_classes: int) -> Array:
    """A target class drawn uniformly from the ``num_classes - 1`` classes other than ``label``.

    Args:
      key: PRNG key (one example; under ``vmap`` a per-example key).
      label: the true label, int scalar in ``[0, num_classes)``.
      num_classes: static number of classes ``K >= 2``.

    Returns:
      int32 scalar in ``[0, K)``, never equal to ``label``.
    """
    _checks.check_positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2; got {num_classes}.")
    _checks.check_labels(label, "label", num_classes)
    offset = jax.random.randint(key, (), 1, num_classes)
    return ((jnp.asarray(label, jnp.int32) + offset) % num_classes).astype(jnp.int32)


def second_most_likely_target(logits: Array) -> Array:
    """The class with the second-largest logit (cleverhans' default target, papers.md App. A).

    Args:
      logits: ``(K,)`` logits of the clean example, ``K >= 2``.

    Returns:
      int32 scalar: ``argmax`` of ``logits`` with the top class removed.
    """
    _checks.check_rank(logits, "logits", 1)
    if logits.shape[0] < 2:
        raise ValueError(f"`logits` needs at least 2 classes; got shape {logits.shape}.")
    top = jnp.argmax(logits)
    masked = jnp.where(jnp.arange(logits.shape[0]) == top, -jnp.inf, logits)
    return jnp.argmax(masked).astype(jnp.int32)


def lbfgs(
    logits_fn: LogitsFn,
    *,
    initial_const: float = 1e-2,
    search_steps: int = 9,
    max_iterations: int = 100,
    history: int = 10,
    growth: float = 10.0,
    lo: float = 0.0,
    hi: float = 1.0,
    pgtol: float = 1e-5,
    ftol: float | None = None,
    max_linesearch: int = 20,
) -> Callable[..., AttackResult]:
    """Builds the per-example Szegedy L-BFGS attack (papers.md §1.3, Appendix A).

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (no batch axis), differentiable.
      initial_const: first penalty constant ``c`` on the cross-entropy (> 0; cleverhans: 1e-2).
        A per-example value can be given at call time instead.
      search_steps: static number of inner L-BFGS solves of the ``c`` search (growth + bisection;
        cleverhans: 5, advertorch: 9).
      max_iterations: static maximum number of L-BFGS iterations per solve (advertorch: 100).
      history: L-BFGS memory ``m`` (curvature pairs kept).
      growth: ``c`` factor while no solve has reached the target.
      lo, hi: the input box; ``x_adv`` stays in ``[lo, hi]``.
      pgtol, ftol, max_linesearch: tolerances of :func:`advjax.attacks._lbfgsb.minimize_box`.

    Returns:
      ``attack(x, label, *, target=None, key=None, initial_const=None) -> AttackResult``:

      * ``x``: one example, floating, inside ``[lo, hi]``.
      * ``label``: the TRUE label (int scalar); ``clean_correct`` compares the clean prediction to
        it. An example already predicted as ``target`` is reported with ``x_adv = x``.
      * ``target``: the class to reach (int scalar in ``[0, K)``); success means
        ``argmax logits(x_adv) == target``. When ``None``: a random class other than ``label``
        drawn with ``key`` if a key is given, else the most likely class other than ``label`` of
        the clean prediction (cleverhans' second-most-likely default for a correctly classified
        example; never the label itself for a misclassified one). A ``target == label`` is
        invalid.
      * ``initial_const``: per-example override of the constructor's ``initial_const``.

      ``result.aux`` holds ``target``, ``const`` (the ``c`` of the returned example; the last ``c``
      tried when no ``c`` succeeded), ``const_lower`` / ``const_upper`` (final bracket) and
      ``num_successes`` (solves that reached the target). Distortions are in input units (L2 of
      ``x_adv - x``; ``rmse`` is Szegedy's distortion measure, papers.md §1.4).
      ``jax.jit(jax.vmap(attack))`` maps ``x``, ``label``, ``target``, ``key`` and
      ``initial_const`` per example.
    """
    check_const(initial_const, "initial_const")
    _checks.check_positive_int(search_steps, "search_steps")
    _checks.check_positive_int(max_iterations, "max_iterations")
    _checks.check_positive_int(history, "history")
    _checks.check_positive_int(max_linesearch, "max_linesearch")
    if not float(growth) > 1.0:
        raise ValueError(f"`growth` must be > 1; got {growth!r}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    if lo is None:
        raise ValueError("`lo` and `hi` are required: the L-BFGS attack is box-constrained.")
    default_const = float(initial_const)

    def default_target(ex: _boundary.Example) -> Array:
        if ex.key is not None:
            return random_wrong_target(ex.key, ex.label, ex.num_classes)
        others = jnp.where(jnp.arange(ex.num_classes) == ex.label, -jnp.inf, ex.clean_logits)
        return jnp.argmax(others).astype(jnp.int32)

    def search(logits_fn, ex: _boundary.Example):
        x, target = ex.x, ex.target
        c_in = ex.extra["initial_const"]
        const0 = default_const if c_in is None else c_in

        def solve(c):
            def objective(x_adv):
                ce = losses.ce_loss(logits_fn(x_adv), target)
                return c.astype(x.dtype) * ce + jnp.sum(jnp.square(x_adv - x))

            res = minimize_box(objective, x, lo, hi, max_iterations=max_iterations,
                               history=history, pgtol=pgtol, ftol=ftol,
                               max_linesearch=max_linesearch)
            x_c = jnp.clip(res.x, lo, hi)
            ok = jnp.argmax(logits_fn(x_c)) == target
            return x_c, ok, projections.l2_norm(x_c - x)

        found = c_search(solve, const0, x, search_steps=search_steps, growth=growth)
        aux = {
            "const": found.const,
            "const_lower": found.lower,
            "const_upper": found.upper,
            "num_successes": found.num_successes,
        }
        return found.x_best, aux

    const_spec = _boundary.Extra(host_check=check_const, predicate=_checks.positive_ok,
                                 safe=default_const)
    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi, target="optional",
                                 default_target=default_target,
                                 extras={"initial_const": const_spec})
