"""Tiny models for the attack tests, with independent truths.

* Linear / softmax-regression models ``logits = W^T vec(x) + b`` where the minimal perturbations
  are known in closed form (box inactive):
    - untargeted L2:   ``min_{j != y} (z_y - z_j) / ||w_y - w_j||_2``
    - untargeted Linf: ``min_{j != y} (z_y - z_j) / ||w_y - w_j||_1``
    - targeted (any K), with or without the box: a small QP solved by scipy (SLSQP), see
      :func:`min_l2_to_class_qp`.
* A tiny MLP and a tiny CNN (fixed random weights; labels are their clean predictions, so every
  example is clean-correct).

Helpers are plain functions (importable as ``from tests.attacks.conftest import ...``); the fixtures
wrap them with fixed seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize


@dataclasses.dataclass(frozen=True)
class LinearProblem:
    """A linear model and examples in the box interior.

    Attributes:
      logits_fn: per-example ``x (shape) -> (K,)``.
      W: ``(d, K)`` float64 numpy weights; b: ``(K,)``.
      xs: ``(N, *shape)`` float32 examples in ``[lo_margin, 1 - lo_margin]``.
      labels: ``(N,)`` int32 clean predictions (so every example is clean-correct).
      shape: the example shape.
    """

    logits_fn: Callable
    W: np.ndarray
    b: np.ndarray
    xs: np.ndarray
    labels: np.ndarray
    shape: tuple


def linear_logits_fn(W, b, shape) -> Callable:
    """``logits_fn(x) = vec(x) @ W + b`` for examples of ``shape``."""
    Wj = jnp.asarray(W, jnp.float32)
    bj = jnp.asarray(b, jnp.float32)
    del shape

    def logits_fn(x):
        return x.reshape(-1) @ Wj + bj

    return logits_fn


def make_linear_problem(*, seed: int = 0, shape=(4, 4, 1), num_classes: int = 4, n: int = 8,
                        weight_scale: float = 1.0, margin: float = 0.3) -> LinearProblem:
    """A random linear model with ``n`` examples uniform in ``[margin, 1 - margin]^d``."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    W = rng.normal(size=(d, num_classes)) * weight_scale
    b = rng.normal(size=(num_classes,)) * 0.1 * weight_scale
    xs = rng.uniform(margin, 1 - margin, size=(n, *shape)).astype(np.float32)
    z = xs.reshape(n, -1).astype(np.float64) @ W + b
    labels = np.argmax(z, axis=1).astype(np.int32)
    return LinearProblem(linear_logits_fn(W, b, shape), W, b, xs, labels, tuple(shape))


def linear_min_l2(W, b, x, y) -> float:
    """Closed-form minimal untargeted L2 perturbation of a linear model (box inactive).

    ``min_{j != y} (z_y - z_j) / ||w_y - w_j||_2`` with ``z = W^T vec(x) + b`` (float64).
    """
    z = np.asarray(x, np.float64).reshape(-1) @ W + b
    return float(min((z[y] - z[j]) / np.linalg.norm(W[:, y] - W[:, j])
                     for j in range(W.shape[1]) if j != y))


def linear_min_linf(W, b, x, y) -> float:
    """Closed-form minimal untargeted L-infinity perturbation (box inactive): ``/ ||.||_1``."""
    z = np.asarray(x, np.float64).reshape(-1) @ W + b
    return float(min((z[y] - z[j]) / np.abs(W[:, y] - W[:, j]).sum()
                     for j in range(W.shape[1]) if j != y))


def linear_min_l2_delta(W, b, x, y) -> np.ndarray:
    """The minimal untargeted L2 perturbation itself (flat ``(d,)``), box inactive."""
    z = np.asarray(x, np.float64).reshape(-1) @ W + b
    best = None
    for j in range(W.shape[1]):
        if j == y:
            continue
        w = W[:, j] - W[:, y]
        r = (z[y] - z[j]) / np.dot(w, w) * w
        if best is None or np.linalg.norm(r) < np.linalg.norm(best):
            best = r
    return best


def min_l2_to_class_qp(W, b, x, t, *, lo=None, hi=None) -> tuple[float, np.ndarray]:
    """Minimal L2 perturbation making class ``t`` the argmax of a linear model (independent truth).

    Solves ``min ||r||^2 s.t. (w_t - w_j).(x + r) + b_t - b_j >= 0 for j != t`` (and
    ``lo <= x + r <= hi`` when given) with scipy's SLSQP in float64.

    **Returns:**
      ``(norm, r)`` with ``r`` flat ``(d,)``.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    K = W.shape[1]
    A = np.stack([W[:, t] - W[:, j] for j in range(K) if j != t])
    c = np.array([b[t] - b[j] for j in range(K) if j != t]) + A @ x
    cons = [{"type": "ineq", "fun": lambda r: A @ r + c, "jac": lambda r: A}]
    bounds = None
    if lo is not None:
        bounds = list(zip(lo - x, hi - x, strict=True))
    res = scipy.optimize.minimize(lambda r: r @ r, np.zeros_like(x), jac=lambda r: 2 * r,
                                  constraints=cons, bounds=bounds, method="SLSQP",
                                  options={"ftol": 1e-14, "maxiter": 500})
    return float(np.linalg.norm(res.x)), res.x


class TinyMLP(nn.Module):
    hidden: int = 16
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.tanh(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


class TinyCNN(nn.Module):
    features: int = 4
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features, (3, 3))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


@dataclasses.dataclass(frozen=True)
class NetProblem:
    """A tiny Flax network with clean-correct examples (labels are the clean predictions)."""

    logits_fn: Callable
    module: nn.Module
    variables: dict
    xs: np.ndarray
    labels: np.ndarray


def make_net_problem(module: nn.Module, *, shape=(4, 4, 1), n: int = 8, seed: int = 0,
                     scale: float = 3.0) -> NetProblem:
    """Initialises ``module`` (weights scaled by ``scale`` for less flat logits) and samples
    ``n`` examples uniform in ``[0, 1]``; labels are the clean predictions."""
    key = jax.random.key(seed)
    k_init, k_x = jax.random.split(key)
    init = jax.jit(lambda k: jax.tree_util.tree_map(
            lambda p: p * scale, module.init(k, jnp.zeros((1, *shape), jnp.float32))))
    variables = init(k_init)
    xs = np.asarray(jax.random.uniform(k_x, (n, *shape), jnp.float32))

    def logits_fn(x):
        return module.apply(variables, x[None])[0]

    labels = np.asarray(jnp.argmax(jax.jit(jax.vmap(logits_fn))(jnp.asarray(xs)), -1), np.int32)
    return NetProblem(logits_fn, module, variables, xs, labels)


@pytest.fixture(scope="session")
def linear_problem() -> LinearProblem:
    """4 classes, 4x4x1 inputs in [0.3, 0.7], weights N(0, 1): minimal L2 distortions ~0.05-0.3,
    so the box [0, 1] stays inactive."""
    return make_linear_problem(seed=0)


@pytest.fixture(scope="session")
def binary_linear_problem() -> LinearProblem:
    """2 classes (binary linear model), 4x4x1 inputs in [0.3, 0.7]."""
    return make_linear_problem(seed=1, num_classes=2)


@pytest.fixture(scope="session")
def tiny_mlp() -> NetProblem:
    """Tiny 2-hidden-layer MLP (tanh, relu), 4x4x1 inputs, 5 classes, 16 examples."""
    return make_net_problem(TinyMLP(), n=16, seed=0)


@pytest.fixture(scope="session")
def tiny_cnn() -> NetProblem:
    """Tiny CNN (one 3x3 conv, 4 channels, relu, dense), 6x6x1 inputs, 5 classes, 8 examples."""
    return make_net_problem(TinyCNN(), shape=(6, 6, 1), n=8, seed=1)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request) -> Callable[[Callable], Callable]:
    """The one jit/eager switch of the attack tests: ``maybe_jit(fn)`` is ``jax.jit(fn)`` in the
    ``jit`` run and ``fn`` itself in the ``eager`` run, so one test body covers both paths."""
    return jax.jit if request.param else (lambda fn: fn)
