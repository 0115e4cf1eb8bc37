"""max_pool_2x2: value and gradient equal nn.max_pool's (select-and-scatter), ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import max_pool_2x2


def _reference(x):
    return nn.max_pool(x, (2, 2), (2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 4, 6, 3), (1, 5, 7, 2)])
def test_value_and_gradient_match_select_and_scatter(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(max_pool_2x2(x), _reference(x))
    g = jax.random.normal(jax.random.key(1), _reference(x).shape)
    ours = jax.vjp(max_pool_2x2, x)[1](g)[0]
    ref = jax.vjp(_reference, x)[1](g)[0]
    np.testing.assert_array_equal(ours, ref)


def test_ties_send_the_gradient_to_the_first_maximum_like_pytorch():
    # A constant region (every window entry tied) and a window with a tie in its second half.
    x = jnp.array([[1.0, 1.0, 0.0, 2.0],
                   [1.0, 1.0, 2.0, 0.0]])[None, :, :, None]
    grad = jax.grad(lambda v: jnp.sum(max_pool_2x2(v)))(x)[0, :, :, 0]
    np.testing.assert_array_equal(grad, [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    ref = jax.grad(lambda v: jnp.sum(_reference(v)))(x)[0, :, :, 0]
    np.testing.assert_array_equal(grad, ref)


def test_jit_vmap_and_second_order():
    x = jax.random.normal(jax.random.key(2), (3, 1, 4, 4, 2))
    f = jax.jit(jax.vmap(lambda v: jnp.sum(max_pool_2x2(v) ** 2)))
    np.testing.assert_allclose(f(x), jax.vmap(lambda v: jnp.sum(_reference(v) ** 2))(x),
                               rtol=1e-6)
    # Hessian-vector products (double backprop, as the Woods regulariser needs) are defined.
    hvp = jax.jvp(jax.grad(lambda v: jnp.sum(max_pool_2x2(v) ** 2)), (x[0],), (x[0],))[1]
    assert hvp.shape == x[0].shape and bool(jnp.all(jnp.isfinite(hvp)))


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank 4"):
        max_pool_2x2(jnp.zeros((4, 4, 1)))
