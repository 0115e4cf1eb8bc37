"""BPDA: mark a non-differentiable part of a model so that attacks differentiate a surrogate.

Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018, "Obfuscated Gradients
Give a False Sense of Security", Section 4.1): a preprocessing or layer ``g`` whose gradient is
zero, undefined or useless (rounding, thresholds, ``argmax``, top-k masks) is replaced *on the
backward pass only* by a differentiable ``s`` with ``s(x) ~ g(x)`` (often the identity: the
"straight-through" estimator). The forward pass, and therefore every prediction and every success
an attack reports, stays the real ``g``.

:func:`bpda` returns a function whose VALUE is ``forward(*args)`` itself (the same operations:
bitwise the same, eagerly and under ``jax.jit``) and whose derivatives (``jax.jvp``,
``jax.vjp``, ``jax.grad``, ``jax.linearize``) are those of ``surrogate`` at the same arguments.
It is a :func:`jax.custom_jvp`, so it composes with ``vmap``, ``jit``, higher-order
differentiation of the surrogate and Flax modules (call it inside ``__call__``; ``forward`` and
``surrogate`` should be functions of their arguments and constants, not of Flax parameters being
trained: JAX does not differentiate a ``custom_jvp`` with respect to closed-over values).

On the CPU the attacks rewrite a model's convolutions as matrix products
(:func:`advjax.lowering.lower_convs`) but leave the inside of a ``custom_jvp`` native (with a
one-line ``RuntimeWarning``): results are the same, but keep convolutions outside ``forward`` and
``surrogate`` where the model allows it (mark the rounding, not the network).

Attacks need nothing else: they take gradients of the model (which now flow through the
surrogate) and decide success on the model's value at the candidate point (the real forward),
in the one attack boundary (:mod:`advjax.attacks._boundary`). Do not write BPDA as
``s(x) + stop_gradient(g(x) - s(x))``: its value is ``g(x)`` only up to float rounding, and can
change a prediction at a decision boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import jax
import jax.numpy as jnp

__all__ = ["bpda"]


def _identity(*args):
    if len(args) != 1:
        raise ValueError(f"the default `surrogate` (identity) needs a function of one argument; "
                         f"got {len(args)} arguments: pass a `surrogate`.")
    return args[0]


def _describe(tree) -> str:
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", tree))


def _check_match(forward, surrogate, args, is_default: bool) -> None:
    """Trace-time check (no computation) that ``surrogate``'s output has the structure, shapes
    and dtypes of ``forward``'s, with a ``ValueError`` naming ``surrogate``."""
    out = jax.eval_shape(forward, *args)
    try:
        sur = jax.eval_shape(surrogate, *args)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the argument named
        raise ValueError(f"`surrogate` fails on the arguments of `forward` "
                         f"({_describe(jax.eval_shape(lambda *a: a, *args))}): {e}") from e
    same_tree = jax.tree.structure(out) == jax.tree.structure(sur)
    same = same_tree and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(sur), strict=True))
    if not same:
        what = ("the default `surrogate` (identity) returns the input" if is_default
                else "`surrogate` returns")
        raise ValueError(f"{what} {_describe(sur)}, but `forward` returns {_describe(out)}: "
                         "the surrogate's output must have forward's structure, shape and dtype "
                         "(BPDA substitutes its derivative for forward's).")
    for leaf in jax.tree.leaves(out):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ValueError(f"`forward` returns {leaf.dtype}: BPDA needs a float output (the "
                             "surrogate's derivative has to have somewhere to go); cast to float "
                             "inside `forward`.")


@overload
def bpda(forward: Callable[..., Any], surrogate: Callable[..., Any] | None = None
         ) -> Callable[..., Any]: ...


@overload
def bpda(forward: None = None, surrogate: Callable[..., Any] | None = None
         ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def bpda(forward=None, surrogate=None):
    """``forward``'s values with ``surrogate``'s derivatives (BPDA; Athalye et al. 2018, §4.1).

    Also a decorator: ``@bpda`` (identity surrogate) or ``@bpda(surrogate=s)``.

    Args:
      forward: the real computation, ``forward(*args) -> out`` (arrays or pytrees of arrays;
        ``out`` float). May be non-differentiable: ``round``, comparisons cast to float,
        ``argmax`` + one-hot, ``top_k`` thresholds, integer casts inside.
      surrogate: a differentiable ``surrogate(*args) -> out`` with the same output structure,
        shapes and dtypes as ``forward`` (checked when traced, ``ValueError`` naming
        ``surrogate``). Default: the identity of a one-argument ``forward`` (straight-through),
        which then must return its input's shape and dtype.

    Returns:
      ``f(*args)``: the value is ``forward(*args)`` (the same operations, not an arithmetic
      reconstruction, so bitwise equal); ``jax.jvp(f, args, t)[1] == jax.jvp(surrogate, args,
      t)[1]`` and likewise for ``vjp``, ``grad`` and ``linearize``. Works under ``jax.vmap`` and
      ``jax.jit`` and inside every attack (attacks follow the surrogate's gradient; success is
      verified on the value, i.e. on ``forward``).
    """
    if forward is None:
        if surrogate is not None and not callable(surrogate):
            raise ValueError(f"`surrogate` must be callable or None; got "
                             f"{type(surrogate).__name__}.")
        return lambda fn: bpda(fn, surrogate)
    if not callable(forward):
        raise ValueError(f"`forward` must be callable; got {type(forward).__name__}.")
    if surrogate is not None and not callable(surrogate):
        raise ValueError(f"`surrogate` must be callable or None; got {type(surrogate).__name__}.")
    is_default = surrogate is None
    sur = _identity if is_default else surrogate

    @jax.custom_jvp
    def marked(*args):
        return forward(*args)

    @marked.defjvp
    def _marked_jvp(primals, tangents):
        # The primal output is forward's own computation; the tangent is the surrogate's.
        _, tangent_out = jax.jvp(sur, primals, tangents)
        return forward(*primals), tangent_out

    checked_signatures: set = set()   # argument structures already validated (trace-time cost)

    def wrapped(*args):
        leaves, tree = jax.tree.flatten(args)
        signature = (tree, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
        if signature not in checked_signatures:
            _check_match(forward, sur, args, is_default)
            checked_signatures.add(signature)
        return marked(*args)

    try:
        wrapped.__name__ = f"bpda({getattr(forward, '__name__', 'forward')})"
        wrapped.__doc__ = forward.__doc__
    except (AttributeError, TypeError):  # pragma: no cover - exotic callables
        pass
    wrapped.forward = forward
    wrapped.surrogate = sur
    return wrapped
