"""Network Lipschitz bounds by walking the jaxpr of ``logits_fn`` (jax_verify style).

``layer_bounds(logits_fn, x_example)`` traces ``logits_fn`` with ``jax.make_jaxpr`` and interprets
the jaxpr primitive by primitive (:class:`advjax.lipschitz.walker.Walker`) with a rule table
(:data:`advjax.lipschitz.rules.DEFAULT_RULES`, documented there). Every value is either a constant
(parameters and everything computed from them only; evaluated concretely) or a function of the
input ``x`` carrying an upper Lipschitz constant ``L`` in the L2 norm
(``‖v(x) - v(x')‖ <= L ‖x - x'‖``; the input has ``L = 1``). Composition multiplies and sums add,
so ``report.total`` is a sound upper bound of the L2 Lipschitz constant of ``logits_fn`` over all
of input space (Szegedy §4.3: the product of per-layer bounds for a chain).

The bound is of the function in exact real arithmetic: casts between floating types are the
identity, so a model computing in bfloat16 is bounded as if it did not round. Explicit rounding
(``reduce_precision``, casts to integer or bool types) is a step function and is refused.

An unsupported primitive raises :class:`UnsupportedPrimitiveError` naming it; the walk never returns
a silent, unsound bound. To add or override rules, extend the (immutable) table and pass it::

    rules = DEFAULT_RULES.extend({"my_primitive": my_rule})
    layer_bounds(fn, x, rules=rules)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from advjax._checks import check_choice
from advjax.lipschitz.report import LayerBound, LipschitzReport, UnsupportedPrimitiveError
from advjax.lipschitz.rules import DEFAULT_RULES
from advjax.lipschitz.walker import Const, Dep, RuleTable, Walker, is_float, norm_up

Array = jax.Array
logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RULES", "LayerBound", "LipschitzReport", "RuleTable",
           "UnsupportedPrimitiveError", "layer_bounds"]


def layer_bounds(
    logits_fn: Callable[[Array], Array],
    x_example: Array,
    *,
    conv_method: str = "fft",
    conv_kwargs: dict | None = None,
    rules: RuleTable | None = None,
) -> LipschitzReport:
    """Per-layer upper Lipschitz bounds and a sound network bound, read from the jaxpr.

    Follows Szegedy et al. (2013) §4.3 (papers.md §1.6): per-layer operator norms (dense: largest
    singular value; conv: Fourier formula (1) with the ``1/Δ`` stride factor), contractive
    nonlinearities and max pooling, combined through the computation graph (products along paths,
    sums at additions of input-dependent values). See :mod:`advjax.lipschitz.rules` for the rule
    table. It runs on the host, outside ``jit``: it reads the concrete parameter values that
    ``logits_fn`` closes over (the per-layer norms themselves are jitted computations).

    Args:
      logits_fn: ``x -> logits`` for ONE example, closing over its parameters (e.g.
        :func:`advjax.models.linen_logits_fn`); models with BatchNorm must be in eval mode.
      x_example: an input ``(...)`` of the right shape and dtype (values unused).
      conv_method: ``"fft"`` (default; sound upper bound for every padding) or ``"exact"`` (power
        iteration: the true norm to ``tol``, approached from below; tighter for zero padding but
        only as sound as its convergence).
      conv_kwargs: extra keyword arguments of :func:`conv_norm` (``iters``, ``tol``, ``key``).
      rules: the rule table (default :data:`DEFAULT_RULES`); extend it with
        :meth:`RuleTable.extend` to add primitives without changing global state.

    Returns:
      :class:`LipschitzReport` with one row per layer and ``.total``, an upper bound of
      ``sup ‖logits_fn(x) - logits_fn(x')‖₂ / ‖x - x'‖₂`` over all inputs (exact arithmetic), with
      per-channel scalings folded into the next linear map's norm where tighter (see
      :class:`advjax.lipschitz.walker.Fold`); ``.unfolded_total`` is the walk without folding.

    Raises:
      UnsupportedPrimitiveError: for a primitive without a sound rule (named in the message).
    """
    check_choice(conv_method, "conv_method", ("fft", "exact"))
    if rules is not None and not isinstance(rules, RuleTable):
        raise TypeError(f"`rules` must be a RuleTable; got {type(rules).__name__}.")
    x_example = jnp.asarray(x_example)
    if not is_float(x_example.dtype):
        raise TypeError(f"`x_example` must be a floating-point array; got {x_example.dtype}.")
    closed = jax.make_jaxpr(logits_fn)(x_example)
    cache: dict = {}

    def walk(fold: bool):
        walker = Walker(DEFAULT_RULES if rules is None else rules,
                        {"conv_method": conv_method, "conv_kwargs": dict(conv_kwargs or {}),
                         "fold": fold, "cache": cache})
        x = walker.fresh(1.0, x_example.shape, x_example.dtype, "input")
        outs = walker.run(closed.jaxpr, closed.consts, [x])
        lips = [walker.lip(o) for o in outs if isinstance(o, Dep)]
        total = norm_up(lips)
        if math.isnan(total):
            raise UnsupportedPrimitiveError("the network bound is NaN")
        return walker, outs, total

    walker, outs, total = walk(True)
    _, _, unfolded = walk(False)
    out_shape = tuple(np.shape(outs[0].value)) if isinstance(outs[0], Const) else outs[0].shape
    logger.debug("layer_bounds: %d rows, total %.6g (unfolded %.6g)", len(walker.rows), total,
                 unfolded)
    return LipschitzReport(walker.sorted_rows(), float(min(total, unfolded)),
                           tuple(x_example.shape), out_shape, unfolded_total=float(unfolded))
