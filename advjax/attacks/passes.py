"""The cost of an attack in model passes, per example: the ONE convention and its counter.

Seconds depend on the hardware, the batch size and the padding; model passes do not. Every
search loop used by AutoAttack and :func:`advjax.attacks.evaluate` carries a counter
``passes``, an int32 array ``(2,)`` = ``[forward, backward]``, with this convention:

* one **forward pass** is one evaluation of the model's logits on ONE example (``logits_fn(x)``,
  or one draw ``logits_fn(x, key)`` of a randomised model);
* one **backward pass** is one vector-Jacobian product through the model on one example;
* so ``jax.value_and_grad`` of a loss of the logits is 1 forward + 1 backward; an EOT gradient
  over ``S`` draws is ``S`` forward + ``S`` backward; a ``K``-row Jacobian built with one
  ``jax.vjp`` and ``K`` cotangents (FAB's untargeted step) is 1 forward + ``K`` backward;
  Square's queries are forward passes only; a success verification is 1 forward (``verify_draws``
  for a randomised model);
* only the work done FOR the example while it was being attacked counts: a step of a
  ``lax.while_loop`` that the example had left (its lane idles under ``vmap`` while others run), a
  restart or target skipped after a success, a stage run on an already broken example, padded
  rows of a compiled chunk: none of them count. The counts therefore do not depend on the batch
  size, the chunking, the device or the process count; they are what an implementation that
  attacks this example alone, stopping where advjax stops, would compute.

Loops add :func:`count` terms in their carry (a ``while_loop``'s body runs only while its
condition holds for that example, so a counter in the carry counts exactly the steps taken) and
return the total beside their result; callers add the totals of the runs they made
(:func:`gated` for work done only when a flag holds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

FORWARD, BACKWARD = 0, 1


def count(forward=0, backward=0) -> Array:
    """``[forward, backward]`` as an int32 ``(2,)`` array (entries may be traced ints)."""
    return jnp.stack([jnp.asarray(forward, jnp.int32), jnp.asarray(backward, jnp.int32)])


def zero() -> Array:
    """No pass: ``[0, 0]``."""
    return count(0, 0)


def gated(active, passes: Array) -> Array:
    """``passes`` when ``active`` (a bool scalar), else ``[0, 0]``: work that counts only when the
    example was being attacked."""
    return jnp.where(jnp.asarray(active, bool), passes, 0).astype(jnp.int32)


def value_and_grad(samples: int = 1) -> Array:
    """One (EOT) gradient of a loss of the logits: ``samples`` forward + ``samples`` backward."""
    return count(samples, samples)


def jacobian(rows: int) -> Array:
    """A ``rows``-row Jacobian by one ``vjp`` and ``rows`` cotangents: 1 forward + ``rows``
    backward."""
    return count(1, rows)
