"""Carlini & Wagner's L2 attack ("Towards evaluating the robustness of neural networks", 2017).

For ONE example ``x`` the attack minimises, over ``w`` (the tanh change of variables, CW §V.A),

    ||x'(w) - x||_2^2 + c * f6(x'(w)),    x'(w) = lo + (hi - lo) * (tanh(w) + 1) / 2,

where ``f6`` is CW's margin objective (their Eq. 6 with confidence ``kappa``): targeted
``max(max_{j != t} Z_j - Z_t, -kappa)``, untargeted ``max(Z_y - max_{j != y} Z_j, -kappa)``.
The change of variables keeps ``x'`` in the box without projection; the minimisation is Adam
(``optax.adam``) in a ``lax.while_loop`` of at most ``steps`` iterations, with a per-example
early abort checked every ``steps // 10`` iterations (see :func:`cw_l2`'s ``abort_early``).
Every iterate that meets the success criterion (with the confidence margin) is a candidate;
the smallest-L2 candidate is kept. The constant ``c`` is searched per example by
:func:`advjax.attacks.c_search.c_search` (``c *= growth`` until success, then bisection), the
convention shared with :mod:`advjax.attacks.lbfgs` (papers.md Appendix A).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from advjax import _checks
from advjax.attacks import _boundary, losses
from advjax.attacks.c_search import c_search, check_const
from advjax.attacks.result import AttackResult

Array = jax.Array
LogitsFn = Callable[[Array], Array]

__all__ = ["cw_l2", "f6_objective"]

_TANH_SHRINK = 0.999999  # CW's factor keeping arctanh finite at the box faces


def f6_objective(logits: Array, label: Array, target: Array | None, confidence: float) -> Array:
    """CW's objective ``f6`` (to MINIMISE; ``<= 0`` once the goal is met with margin ``kappa``).

    Args:
      logits: ``(K,)``.
      label: true label (int scalar), used when ``target is None`` (untargeted).
      target: target class (int scalar) or ``None``.
      confidence: ``kappa >= 0``, the margin the objective asks for.

    Returns:
      Scalar: targeted ``max(max_{j != t} z_j - z_t, -kappa)``; untargeted
      ``max(z_y - max_{j != y} z_j, -kappa)``.
    """
    if target is None:
        gap = -losses.margin_loss(logits, label)
    else:
        gap = -losses.targeted_margin_loss(logits, target)
    return jnp.maximum(gap, -confidence)


def cw_success(logits: Array, label: Array, target: Array | None, confidence: float) -> Array:
    """CW's success test with confidence (their ``compare``).

    Targeted: the ``argmax`` of the logits with ``kappa`` taken off ``z_t`` is ``t``; untargeted:
    the ``argmax`` with ``kappa`` added to ``z_y`` is not ``y``. With ``kappa = 0`` this is the
    plain ``argmax`` test.
    """
    if target is None:
        return jnp.argmax(logits.at[label].add(confidence)) != label
    return jnp.argmax(logits.at[target].add(-confidence)) == target


def cw_l2(
    logits_fn: LogitsFn,
    *,
    confidence: float = 0.0,
    learning_rate: float = 1e-2,
    steps: int = 1000,
    search_steps: int = 9,
    initial_const: float = 1e-3,
    targeted: bool = False,
    growth: float = 10.0,
    abort_early: bool = True,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Callable[..., AttackResult]:
    """Builds the per-example Carlini-Wagner L2 attack.

    Args:
      logits_fn: per-example ``x -> logits (K,)`` (no batch axis), differentiable.
      confidence: ``kappa >= 0``, required logit margin of the adversarial class (CW default 0).
      learning_rate: Adam step size in ``w`` space (CW default 1e-2).
      steps: static maximum number of Adam iterations per ``c`` (CW: 10000; cleverhans: 1000).
      search_steps: static number of ``c`` values tried per example (CW ``binary_search_steps``:
        9), growth steps included.
      initial_const: first ``c`` (> 0; CW default 1e-3); overridable per example at call time.
      targeted: if True, ``target`` is required and success means ``argmax == target``; else
        success means ``argmax != label``.
      growth: ``c`` factor while no success has been seen (CW: 10).
      abort_early: stop an example's Adam loop early. Every ``steps // 10`` iterations the loss
        is compared with its value at the previous check; the loss has *stalled* when it fell by
        less than ``1e-4`` of its magnitude (a relative test, right for either sign, so also with
        ``confidence > 0`` where the objective is negative). A stalled example stops when it has
        already succeeded at this ``c``, or when ``w`` itself has stopped moving (no coordinate
        moved towards the interior by ``learning_rate`` since the check): an example whose
        pixels are saturated at the box faces (``tanh`` flat, loss unchanged while Adam still
        drives ``w`` towards the interior) is never given up. CW's reference aborts on the
        batch-summed loss instead.
      lo, hi: the input box; ``x_adv`` stays in ``[lo, hi]`` through the tanh parametrisation.

    Returns:
      ``attack(x, label, *, target=None, key=None, initial_const=None) -> AttackResult``:
      ``x`` one example in ``[lo, hi]``; ``label`` its true label (int scalar); ``target`` the
      class to reach (required iff ``targeted``); ``key`` unused (the attack is deterministic;
      accepted for a uniform signature); ``initial_const`` an optional per-example first ``c``.
      ``result.aux`` holds ``const`` (the ``c`` of the returned example, or the last ``c`` tried),
      ``const_lower`` / ``const_upper`` (final bracket), ``num_successes`` (number of ``c`` whose
      run succeeded) and ``iterations`` (Adam iterations run over all ``c``), plus ``target`` when
      targeted. Distortions are in input units.
      ``jax.jit(jax.vmap(attack))`` maps every argument per example.
    """
    confidence = _boundary.check_nonneg_float(confidence, "confidence")
    learning_rate = _boundary.check_positive_float(learning_rate, "learning_rate")
    _checks.check_positive_int(steps, "steps")
    _checks.check_positive_int(search_steps, "search_steps")
    check_const(initial_const, "initial_const")
    if not float(growth) > 1.0:
        raise ValueError(f"`growth` must be > 1; got {growth!r}.")
    lo, hi = _boundary.check_box_setting(lo, hi)
    if lo is None:
        raise ValueError("`lo` and `hi` are required: the tanh change of variables needs a box.")
    default_const = float(initial_const)
    check_every = max(steps // 10, 1)
    optimizer = optax.adam(learning_rate)
    half_range = 0.5 * (hi - lo)

    def to_x(w):
        return lo + half_range * (jnp.tanh(w) + 1.0)

    def search(logits_fn, ex: _boundary.Example):
        x, label, target = ex.x, ex.label, ex.target
        c_in = ex.extra["initial_const"]
        const0 = default_const if c_in is None else c_in
        dtype = x.dtype
        w0 = jnp.arctanh(((x - lo) / half_range - 1.0) * _TANH_SHRINK)

        def solve(c):
            c = c.astype(dtype)

            def loss(w):
                x_adv = to_x(w)
                logits = logits_fn(x_adv)
                dist2 = jnp.sum(jnp.square(x_adv - x))
                total = dist2 + c * f6_objective(logits, label, target, confidence)
                return total, (x_adv, logits, dist2)

            def cond(carry):
                return (carry["i"] < steps) & ~carry["stop"]

            def body(carry):
                (value, (x_adv, logits, dist2)), g = jax.value_and_grad(loss, has_aux=True)(
                    carry["w"])
                ok = cw_success(logits, label, target, confidence) & (dist2 < carry["best_d2"])
                found = carry["found"] | ok
                updates, opt_state = optimizer.update(g, carry["opt"], carry["w"])
                w = optax.apply_updates(carry["w"], updates)
                i = carry["i"]
                check = (i % check_every) == 0
                prev = carry["prev"]
                stalled = value > prev - 1e-4 * jnp.abs(prev)
                # Moving towards the interior (|w| falling) is progress even while the loss is
                # flat (saturated tanh); drifting outwards at a face is not.
                inward = jnp.abs(carry["w_check"]) - jnp.abs(carry["w"])
                w_still = jnp.max(inward) < learning_rate
                stop = abort_early & check & (i > 0) & stalled & (found | w_still)
                return dict(
                    i=i + 1, w=w, opt=opt_state,
                    best_x=jnp.where(ok, x_adv, carry["best_x"]),
                    best_d2=jnp.where(ok, dist2, carry["best_d2"]), found=found,
                    prev=jnp.where(check, value, prev),
                    w_check=jnp.where(check, carry["w"], carry["w_check"]), stop=stop)

            init = dict(i=jnp.zeros((), jnp.int32), w=w0, opt=optimizer.init(w0), best_x=x,
                        best_d2=jnp.full((), jnp.inf, dtype), found=jnp.zeros((), bool),
                        prev=jnp.full((), jnp.inf, dtype), w_check=w0,
                        stop=jnp.zeros((), bool))
            out = jax.lax.while_loop(cond, body, init)
            return (jnp.clip(out["best_x"], lo, hi), out["found"], jnp.sqrt(out["best_d2"]),
                    out["i"])

        found = c_search(solve, const0, x, search_steps=search_steps, growth=growth)
        aux = {
            "const": found.const,
            "const_lower": found.lower,
            "const_upper": found.upper,
            "num_successes": found.num_successes,
            "iterations": found.work,
        }
        return found.x_best, aux

    const_spec = _boundary.Extra(host_check=check_const, predicate=_checks.positive_ok,
                                 safe=default_const)
    return _boundary.per_example(search, logits_fn, lo=lo, hi=hi,
                                 target="required" if targeted else "none",
                                 extras={"initial_const": const_spec})
