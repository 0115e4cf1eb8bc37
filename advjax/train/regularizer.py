"""The Woods Lipschitz-inspired regulariser ``L_adv`` (papers.md §2.5).

For a batch ``x (B, ...)`` of the inputs actually trained on (in [0, 1], un-normalised; adversarial
inputs when adversarial training is on), logits ``z_b`` and labels ``y_b``::

    j_b ~ Uniform{0..K-1},  u_b ~ Bernoulli(ζ)                          (ζ = 0.2, "tandem")
    s_b = u_b · (z_{b,y_b} - max_{j≠y_b} z_{b,j}) + (1 - u_b) · z_{b,j_b}
    G   = ∂(Σ_b s_b)/∂x                                                 (double backprop)
    L_adv = ψ · mean_{b,...} |G|^z                                      (z = 2, ψ stop-gradient)

The gradient of ``L_adv`` with respect to the parameters flows through ``G`` (second-order terms;
they vanish almost everywhere with ReLU and are non-zero with the half-Huber ReLU, §2.8). With
BatchNorm in training mode, ``Σ_b s_b`` includes the cross-example terms, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from advjax._checks import check_floating, check_rank

Array = jax.Array


def tandem_choice(key: Array, batch_size: int, num_classes: int,
                  zeta: float) -> tuple[Array, Array]:
    """The random output choice of each example (papers.md §2.5, "tandem").

    Example ``b`` draws from ``fold_in(key, b)``, so its choice does not depend on the batch size.

    Args:
      key: PRNG key.
      batch_size: ``B`` (static).
      num_classes: ``K`` (static).
      zeta: probability ζ of choosing the margin.

    Returns:
      ``(use_margin (B,) bool ~ Bernoulli(ζ), j (B,) int32 uniform on [0, K))``.
    """

    def one(i):
        k_u, k_j = jax.random.split(jax.random.fold_in(key, i))
        return (jax.random.bernoulli(k_u, zeta),
                jax.random.randint(k_j, (), 0, num_classes, dtype=jnp.int32))

    return jax.vmap(one)(jnp.arange(batch_size))


def selected_outputs(logits: Array, labels: Array, use_margin: Array, j: Array) -> Array:
    """The penalised scalar output of each example.

    Args:
      logits: ``(B, K)``.
      labels: ``(B,)`` int true labels.
      use_margin: ``(B,)`` bool.
      j: ``(B,)`` int random logit indices.

    Returns:
      ``s (B,)``: ``z_y - max_{j≠y} z_j`` where ``use_margin``, else ``z_{j_b}``.
    """
    num_classes = logits.shape[-1]
    true_mask = jax.nn.one_hot(labels, num_classes, dtype=bool)
    true_logit = jnp.sum(jnp.where(true_mask, logits, 0.0), axis=-1)
    best_other = jnp.max(jnp.where(true_mask, -jnp.inf, logits), axis=-1)
    random_logit = jnp.take_along_axis(logits, j[:, None], axis=-1)[:, 0]
    return jnp.where(use_margin, true_logit - best_other, random_logit)


def input_gradient_penalty(
    logits_fn: Callable[[Array], Array],
    x: Array,
    labels: Array,
    key: Array,
    *,
    zeta: float = 0.2,
    z: float = 2.0,
) -> tuple[Array, Array]:
    """``mean |∂(Σ_b s_b)/∂x|^z`` of papers.md §2.5, without ψ.

    Args:
      logits_fn: batched model ``(B, ...) -> (B, K)``, closing over the parameters to
        differentiate.
      x: ``(B, ...)`` float inputs (the un-normalised [0, 1] images).
      labels: ``(B,)`` int true labels.
      key: PRNG key of the tandem output choice (:func:`tandem_choice`).
      zeta: probability of the margin output (0.2).
      z: exponent (2).

    Returns:
      ``(penalty, G)``: the scalar mean over every element of ``|G|^z`` and ``G`` (shape of ``x``).
      Differentiable in whatever ``logits_fn`` closes over (double backprop).
    """
    check_floating(x, "x")
    check_rank(labels, "labels", 1)

    def total(xx):
        logits = logits_fn(xx)
        use_margin, j = tandem_choice(key, logits.shape[0], logits.shape[-1], zeta)
        return jnp.sum(selected_outputs(logits, labels, use_margin, j))

    grad = jax.grad(total)(x)
    if z == 2.0:
        magnitude = jnp.square(grad)
    else:
        magnitude = jnp.abs(grad) ** z
    return jnp.mean(magnitude), grad
