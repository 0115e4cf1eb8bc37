"""Lipschitz functions the walk used to refuse, each bounded soundly.

Truth: the float64 Jacobian's largest singular value at sampled points (a sound bound is >= every
one); where a bound is claimed tight, the reason is stated and the bound is compared with the
largest sampled value (or, for scalar activations, the largest derivative on a dense float64 grid).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.lipschitz import UnsupportedPrimitiveError, layer_bounds
from advjax.lipschitz.rules import cumsum_norm


def _sampled(fn, shape, n=48, scale=3.0, seed=0, center=0.0) -> float:
    rng = np.random.default_rng(seed)
    with jax.enable_x64():
        jac = jax.jit(jax.jacfwd(fn))
        best = 0.0
        for _ in range(n):
            x = jnp.asarray(center + rng.normal(scale=scale, size=shape), jnp.float64)
            j = np.asarray(jac(x), np.float64).reshape(-1, int(np.prod(shape)))
            best = max(best, float(np.linalg.svd(j, compute_uv=False)[0]))
    return best


def _grid_derivative(fn, lo=-200.0, hi=200.0, n=400_001) -> float:
    """max |f'| of a scalar activation on a dense float64 grid (autodiff)."""
    with jax.enable_x64():
        t = jnp.linspace(lo, hi, n, dtype=jnp.float64)
        return float(jnp.max(jnp.abs(jax.vmap(jax.grad(fn))(t))))


# exact cases: the Jacobian norm is attained at every (almost every) point
EXACT = {
        # a permutation matrix per point
        "sort": (lambda x: jnp.sort(x), (5,)),
        "sort-rows": (lambda x: jnp.sort(x, axis=-1), (3, 4)),
        # a coordinate projection of a permutation
        "top_k": (lambda x: jax.lax.top_k(x, 3)[0], (6,)),
        # the gradient x/‖x‖ is a unit vector
        "norm": (lambda x: jnp.linalg.norm(x), (5,)),
        "norm-rows": (lambda x: jnp.linalg.norm(x, axis=-1), (3, 4)),
        # constant Jacobians
        "cumsum": (lambda x: jnp.cumsum(x), (7,)),
        "cumsum-reverse-axis0": (lambda x: jax.lax.cumsum(x, axis=0, reverse=True), (5, 2)),
        "scatter-add": (lambda x: jnp.zeros(3).at[jnp.array([0, 0, 2, 1, 0])].add(x), (5,)),
        "scatter-add-drop": (lambda x: jnp.ones(3).at[jnp.array([0, 5, 0, 1])].add(x, mode="drop"),
                             (4,)),
        "optimization_barrier": (lambda x: 2.0 * jax.lax.optimization_barrier(x), (4,)),
        "debug.print": (lambda x: (jax.debug.print("{x}", x=x), 2.0 * x)[1], (4,)),
        # identity where x > 0 (elu(relu(x)) = relu(x))
        "elu(relu)": (lambda x: jax.nn.elu(jax.nn.relu(x)), (4,)),
        "leaky_relu(elu)": (lambda x: jax.nn.leaky_relu(jax.nn.elu(x)), (4,)),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_bound_is_sound_and_attained(name):
    fn, shape = EXACT[name]
    total = layer_bounds(fn, jnp.zeros(shape, jnp.float32)).total
    truth = _sampled(fn, shape)
    assert truth <= total * (1 + 1e-12)
    assert total == pytest.approx(truth, rel=1e-6)


def test_cumsum_norm_closed_form_matches_the_svd():
    for n in (1, 2, 3, 10, 64):
        exact = np.linalg.svd(np.tril(np.ones((n, n))), compute_uv=False)[0]
        assert exact <= cumsum_norm(n) <= exact * (1 + 1e-12)


@pytest.mark.parametrize("fn,expected", [
        (lambda x: jax.nn.softplus(jnp.tanh(x)), None),
        (lambda x: jax.nn.gelu(x + 70.0), None),
        (lambda x: jax.nn.gelu(x - 70.0), None),
], ids=["softplus(tanh)", "gelu(x+70)", "gelu(x-70)"])
def test_stacked_and_shifted_activations(fn, expected):
    total = layer_bounds(fn, jnp.zeros(4)).total
    f1 = lambda t: fn(jnp.full((1,), t))[0]
    truth = _grid_derivative(f1)
    assert truth <= total * (1 + 1e-12)
    # softplus(tanh): the max parts are hulled (1 + 1/2); the gelus within 1 % of the true constant
    assert total <= (1.5 if truth < 1 else truth * 1.01)


def test_sort_with_an_input_dependent_permutation_of_indices_is_refused_where_used():
    with pytest.raises(UnsupportedPrimitiveError, match="argsort|permuted|indices|sort"):
        layer_bounds(lambda x: jnp.argsort(x).astype(jnp.float32), jnp.zeros(4))
    with pytest.raises(UnsupportedPrimitiveError, match="indices"):
        layer_bounds(lambda x: jax.lax.top_k(x, 2)[1].astype(jnp.float32), jnp.zeros(4))


def test_a_sum_of_squares_is_only_a_norm_under_its_square_root():
    with pytest.raises(UnsupportedPrimitiveError, match="sum of squares"):
        layer_bounds(lambda x: jnp.sum(x * x), jnp.zeros(4))
    fn = lambda x: jnp.linalg.norm(3.0 * jnp.tanh(x))
    total = layer_bounds(fn, jnp.zeros(4)).total
    assert total == pytest.approx(3.0) and _sampled(fn, (4,), scale=0.5) <= total


def test_standardize_is_a_normalisation():
    fn = lambda x: jax.nn.standardize(x, epsilon=1e-2)
    total = layer_bounds(fn, jnp.zeros(6)).total
    # 1/√ε, attained at x = const; ε = float32(0.01) = 0.01 − 2.2e-10: rel 1e-6
    assert total == pytest.approx(10.0, rel=1e-6)
    assert _sampled(fn, (6,), scale=0.01) <= total * (1 + 1e-9)


_MASK = np.array([True, True, False, True, False, True])


@pytest.mark.parametrize("fn,expected", [
        (lambda x: jax.nn.softmax(jnp.where(_MASK, x, -jnp.inf)), 0.5),
        (lambda x: jax.nn.softmax(x, where=_MASK), 0.5),
        (lambda x: jax.nn.softmax(jnp.where(_MASK.reshape(2, 3), x.reshape(2, 3), -jnp.inf)),
         0.5),
        (lambda x: jax.nn.log_softmax(x, where=_MASK), np.sqrt(6)),
        (lambda x: jax.nn.logsumexp(jnp.where(_MASK, x, -jnp.inf)), 1.0),
        (lambda x: jax.nn.logsumexp(x, where=_MASK), 1.0),
        (lambda x: jax.nn.logsumexp(x, b=jnp.array([1.0, 2.0, 0.0, 0.5, 3.0, 1.0])), 1.0),
        (lambda x: jax.nn.logsumexp(x.reshape(2, 3), axis=1, b=jnp.array([[1.0, 2.0, 0.0],
                                                                        [0.5, 3.0, 1.0]])),
         1.0),
], ids=["where-inf", "softmax-where", "softmax-rows", "log_softmax-where", "logsumexp-inf",
        "logsumexp-where", "logsumexp-b", "logsumexp-b-rows"])
def test_masked_softmax_family(fn, expected):
    """-inf masks: the masked entries are exact constants (0, or -inf for log_softmax) and the
    unmasked ones the function of the unmasked logits, so the Jacobian is the unmasked one padded
    with zeros: softmax 1/2, log_softmax √n (n the group size; √(unmasked) would do), logsumexp
    1 (with weights b >= 0 its gradient b·e/Σb·e is still a probability vector). The sampled
    Jacobians: softmax reaches 1/2 only at two equal top logits (not sampled)."""
    total = layer_bounds(fn, jnp.zeros(6)).total
    assert total == pytest.approx(expected, rel=1e-9)
    masked_free = lambda x: jnp.where(jnp.isfinite(fn(x)), fn(x), 0.0)  # -inf entries: constants
    assert _sampled(masked_free, (6,), scale=1.0) <= total


def test_masks_that_reach_the_derivative_stay_refused():
    # an input-dependent choice of -inf jumps
    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(lambda x: jax.nn.softmax(jnp.where(x > 0, x, -jnp.inf)), jnp.zeros(6))
    # numerator and denominator masked differently: not a softmax
    other = np.array([True, False, False, True, False, True])

    def mixed(x):
        e = jnp.exp(jnp.where(_MASK, x, -jnp.inf) - jnp.max(jnp.where(_MASK, x, -jnp.inf)))
        return e / jnp.sum(jnp.where(other, e, 0.0))

    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(mixed, jnp.zeros(6))
    # a negative weight: log of a sum that may be negative (NaN), no bound
    with pytest.raises(UnsupportedPrimitiveError):
        layer_bounds(lambda x: jax.nn.logsumexp(x, b=jnp.array([1.0, -2.0, 0.5, 1.0, 1.0, 1.0])),
                     jnp.zeros(6))
