"""Shared check: a per-example ``logits_fn`` under vmap, jit(vmap) and grad (no-jit and jit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from advjax.models import linen_logits_fn


def check_logits_fn_transforms(module, variables, xs, labels, *, fd_examples=2, eager_grad=True,
                               **apply_kwargs):
    """Asserts that ``linen_logits_fn(module, variables, **apply_kwargs)``:

    1. under ``jax.vmap`` and ``jax.jit(jax.vmap(...))`` equals the batched ``module.apply``
       (rtol 1e-5, atol 1e-5);
    2. has input gradients (``jax.jit(jax.vmap(jax.grad(...)))``) equal to the un-jitted
       gradient of the first example (rtol 1e-4, atol 1e-6; skipped with ``eager_grad=False``,
       as eager differentiation of a conv net is slow on CPU);
    3. whose directional derivatives agree with central finite differences of the forward pass in
       float64 (h = 1e-5; rtol 1e-5 + atol 1e-7): an independent check of the gradient.
    """
    xs = jnp.asarray(xs, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    logits_fn = linen_logits_fn(module, variables, **apply_kwargs)
    expected = module.apply(variables, xs, **apply_kwargs)
    np.testing.assert_allclose(jax.vmap(logits_fn)(xs), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(logits_fn))(xs), expected, rtol=1e-5, atol=1e-5)

    def picked(x, y):
        return logits_fn(x)[y]

    grads = jax.jit(jax.vmap(jax.grad(picked)))(xs, labels)
    assert grads.shape == xs.shape
    if eager_grad:
        np.testing.assert_allclose(grads[0], jax.grad(picked)(xs[0], labels[0]),
                                   rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(grads).sum()) > 0.0

    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                           if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, variables)
        fn64 = linen_logits_fn(module, v64, **apply_kwargs)
        h = 1e-5

        @jax.jit
        def fd_and_grad(x, y, direction):
            fd = (fn64(x + h * direction)[y] - fn64(x - h * direction)[y]) / (2 * h)
            return fd, jax.grad(lambda z: fn64(z)[y])(x)

        rng = np.random.default_rng(0)
        for i in range(min(fd_examples, xs.shape[0])):
            x = jnp.asarray(np.asarray(xs[i]), jnp.float64)
            direction = jnp.asarray(rng.normal(size=x.shape))
            fd, g64 = fd_and_grad(x, labels[i], direction)
            np.testing.assert_allclose(float(jnp.vdot(g64, direction)), float(fd),
                                       rtol=1e-5, atol=1e-7)
            # The float32 gradient agrees with the float64 one.
            np.testing.assert_allclose(np.asarray(grads[i], np.float64), np.asarray(g64),
                                       rtol=1e-3, atol=1e-4 * float(jnp.abs(g64).max()))
