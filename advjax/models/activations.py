"""Activation functions of the model zoo, with a lookup by name.

``half_huber_relu`` is the half-Huber ReLU ("HHReLU") of Woods, Chen & Teuscher (2019), papers.md
§2.8: ReLU with a quadratic bowl on ``(0, delta]`` so that its first derivative is continuous and
its second derivative is non-zero near 0 (double backpropagation through the network then carries
curvature information, which the Lipschitz-style regulariser of §2.5 needs).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Activation = Callable[[Array], Array]

ACTIVATIONS = ("relu", "sigmoid", "tanh", "hhrelu", "leaky_relu")


def half_huber_relu(x: Array, delta: float = 0.5) -> Array:
    """Half-Huber ReLU (papers.md §2.8), correct for any ``delta > 0``.

    ``0`` for ``x <= 0``; ``x**2 / (2 delta)`` for ``0 < x <= delta``; ``x - delta / 2`` for
    ``x > delta``. The function and its derivative ``clip(x, 0, delta) / delta`` are continuous;
    the second derivative is ``1 / delta`` on ``(0, delta)`` and 0 elsewhere. (The reference PyTorch
    code computes the forward pass in place and matches this formula only for ``delta = 0.5``; this
    one is exact for every ``delta``.)

    Args:
      x: array of any shape, floating point.
      delta: width of the quadratic bowl, ``> 0`` (a Python float; static).

    Returns:
      An array of the shape and dtype of ``x``, elementwise HHReLU.
    """
    if not delta > 0:
        raise ValueError(f"`delta` must be > 0; got {delta!r}.")
    x = jnp.asarray(x)
    # Clamp inside each branch so that unused branches do not produce inf/NaN gradients.
    pos = jnp.maximum(x, 0.0)
    bowl = jnp.minimum(pos, delta)
    return bowl * bowl / (2.0 * delta) + (pos - bowl)


def activation(name: str, **kwargs: float) -> Activation:
    """The activation function called ``name``.

    Args:
      name: one of ``"relu"``, ``"sigmoid"``, ``"tanh"``, ``"hhrelu"`` (half-Huber ReLU) and
        ``"leaky_relu"``.
      **kwargs: settings of the activation: ``delta`` for ``"hhrelu"`` (default 0.5),
        ``negative_slope`` for ``"leaky_relu"`` (default 0.01). Others take none.

    Returns:
      An elementwise function ``f(x) -> array`` of the shape of ``x``.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"`name` must be one of {ACTIVATIONS}; got {name!r}.")
    allowed = {"hhrelu": {"delta"}, "leaky_relu": {"negative_slope"}}.get(name, set())
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
                f"activation {name!r} takes settings {sorted(allowed)}; got {sorted(unknown)}.")
    if name == "relu":
        return nn.relu
    if name == "sigmoid":
        return nn.sigmoid
    if name == "tanh":
        return jnp.tanh
    if name == "hhrelu":
        delta = float(kwargs.get("delta", 0.5))
        if not delta > 0:
            raise ValueError(f"`delta` must be > 0; got {delta!r}.")
        return lambda x: half_huber_relu(x, delta)
    slope = float(kwargs.get("negative_slope", 0.01))
    return lambda x: nn.leaky_relu(x, slope)
