"""bf16 mixed precision: logits and attack outcomes agree with fp32 within bf16 accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from advjax import attacks, data, train
from advjax.models import MnistCNN, linen_logits_fn


def _trained_cnn():
    xs, ys = data.load("digits", "train")
    module = MnistCNN(features=(8, 16), dense=32)
    state = train.create_train_state(module, jax.random.key(0), xs[:1], optax.adam(3e-3))
    state, _ = train.fit(state, (xs, ys), key=jax.random.key(1), epochs=4, progress=False)
    return module, {"params": state.params}


def test_bf16_logits_gradients_and_pgd_agree_with_fp32():
    module, variables = _trained_cnn()
    xs, ys = data.load("digits", "test", limit=128)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    fp32 = linen_logits_fn(module, variables)
    bf16 = linen_logits_fn(module, variables, compute_dtype=jnp.bfloat16)
    l32, l16 = jax.vmap(fp32)(xs), jax.vmap(bf16)(xs)
    assert l16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(l32)))
    assert float(jnp.max(jnp.abs(l16 - l32))) < 0.05 * scale  # bf16 has 8 mantissa bits
    assert float(jnp.mean(jnp.argmax(l16, -1) == jnp.argmax(l32, -1))) > 0.97
    g = jax.vmap(jax.grad(lambda x, y, f: -jax.nn.log_softmax(f(x))[y]), (0, 0, None))
    g32, g16 = g(xs[:16], ys[:16], fp32), g(xs[:16], ys[:16], bf16)
    assert g16.dtype == jnp.float32
    cos = jnp.sum(g16 * g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32))
    assert float(cos) > 0.95
    eps = jnp.full(len(xs), 0.8)
    keys = jax.random.split(jax.random.key(2), len(xs))
    r32 = jax.jit(jax.vmap(attacks.pgd(fp32, norm="l2", steps=20)))(xs, ys, key=keys, eps=eps)
    r16 = jax.jit(jax.vmap(attacks.pgd(bf16, norm="l2", steps=20)))(xs, ys, key=keys, eps=eps)
    acc32, acc16 = float(np.mean(~r32.success)), float(np.mean(~r16.success))
    assert abs(acc32 - acc16) < 0.08
    assert bool(jnp.all(r16.l2 <= eps + 1e-4))
