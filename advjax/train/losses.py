"""Classification loss and Szegedy's per-layer weight decay (papers.md §1.1, §1.5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from advjax._checks import check_floating, check_labels, check_rank

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Mean softmax cross-entropy (nats) of logits ``(B, K)`` against integer labels ``(B,)``.

    Args:
      logits: ``(B, K)`` float.
      labels: ``(B,)`` int in ``[0, K)``.
      weights: optional ``(B,)`` non-negative example weights; the result is the weighted mean.

    Returns:
      Scalar ``mean_b -log softmax(logits_b)[labels_b]``.
    """
    check_rank(logits, "logits", 2)
    check_floating(logits, "logits")
    check_rank(labels, "labels", 1)
    check_labels(labels, "labels", logits.shape[-1])
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`labels` must have shape ({logits.shape[0]},) to match `logits`; got "
                         f"{labels.shape}.")
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return jnp.mean(per_example)
    weights = jnp.asarray(weights, per_example.dtype)
    return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-12)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows of ``logits (B, K)`` whose argmax equals ``labels (B,)``."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def kernel_layers(params: Mapping[str, Any]) -> list[tuple[str, Array]]:
    """The layers of a Flax parameter tree that hold a ``kernel``, in definition order.

    A layer is a sub-dict with a ``"kernel"`` entry; its name is the ``/``-joined path
    (``"Dense_0"``, ``"encoder"``, ``"block/Conv_0"``). The order is the insertion order of the
    parameter dicts, which for linen is the order in which layers were created (input side first).

    Returns:
      A list of ``(name, kernel)``.
    """
    out: list[tuple[str, Array]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            if "kernel" in node and not isinstance(node["kernel"], Mapping):
                out.append(("/".join(path), node["kernel"]))
            for k, v in node.items():
                if isinstance(v, Mapping):
                    walk(v, (*path, str(k)))

    walk(params, ())
    return out


def weight_decay_penalty(params: Mapping[str, Any],
                         lambdas: float | Sequence[float] | Mapping[str, float]) -> Array:
    """Szegedy's per-layer weight decay ``Σ_layers λ_l · Σ w_l² / k_l`` (papers.md §1.1).

    ``k_l`` is the number of units of layer ``l``: the kernel's output dimension
    ``kernel.shape[-1]`` (Dense: output features; Conv: output channels). Only kernels are
    penalised: biases, BatchNorm scales/offsets and other parameters are excluded.

    Args:
      params: a Flax parameter tree (see :func:`kernel_layers` for what a layer is).
      lambdas: a float (the same λ for every layer); a sequence of λ in layer order (input side
        first; its length must equal the number of layers); or a mapping from layer name (the full
        ``/``-joined path or its last component) to λ, where layers not named get λ = 0. Every λ
        must be >= 0.

    Returns:
      The scalar penalty (differentiable in ``params``).
    """
    layers = kernel_layers(params)
    if not layers:
        raise ValueError("`params` holds no layer with a `kernel`; nothing to decay.")
    names = [name for name, _ in layers]
    if isinstance(lambdas, Mapping) or (
            isinstance(lambdas, tuple) and lambdas and isinstance(lambdas[0], tuple)):
        mapping = dict(lambdas)
        lam = []
        known = set(names) | {n.split("/")[-1] for n in names}
        unknown = [k for k in mapping if k not in known]
        if unknown:
            raise ValueError(f"`lambdas` names unknown layer(s) {unknown}; layers are {names}.")
        for name in names:
            lam.append(float(mapping.get(name, mapping.get(name.split("/")[-1], 0.0))))
    elif isinstance(lambdas, (int, float)):
        lam = [float(lambdas)] * len(layers)
    else:
        lam = [float(v) for v in lambdas]
        if len(lam) != len(layers):
            raise ValueError(f"`lambdas` must give one λ per layer ({len(layers)}: {names}); got "
                             f"{len(lam)}.")
    for name, value in zip(names, lam, strict=True):
        if not value >= 0:
            raise ValueError(f"`lambdas` must be >= 0; got {value!r} for layer {name!r}.")
    total = jnp.zeros((), jnp.float32)
    for (_, kernel), value in zip(layers, lam, strict=True):
        if value == 0.0:
            continue
        units = kernel.shape[-1]
        total = total + value * jnp.sum(jnp.square(kernel)) / units
    return total
