"""NNX models through the library: nnx_logits_fn under jit/vmap/grad, attacks, bounds, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from advjax import attacks, lipschitz
from advjax.models import (
    MnistCNN,
    linen_logits_fn,
    nnx_apply_fn,
    nnx_from_linen,
    nnx_logits_fn,
    nnx_variables,
)

ROOT = Path(__file__).resolve().parents[2]


class BNNet(nnx.Module):
    """conv 3×3 → BatchNorm → tanh → dense, on 6×6×1 inputs."""

    def __init__(self, rngs: nnx.Rngs, axis_name: str | None = None):
        self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.9, axis_name=axis_name, rngs=rngs)
        self.fc = nnx.Linear(6 * 6 * 3, 4, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))


def _bn_net(axis_name=None):
    net = BNNet(nnx.Rngs(0), axis_name)
    net.bn.mean[...] = jnp.array([0.1, -0.2, 0.3])
    net.bn.var[...] = jnp.array([0.5, 2.0, 1.5])
    return net


def _conv(net, x):
    out = jax.lax.conv_general_dilated(x, net.conv.kernel[...], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + net.conv.bias[...]


def _manual_eval(net, x):
    """The eval-mode forward pass written out with the running statistics (independent)."""
    h = _conv(net, x)
    h = (h - net.bn.mean[...]) / jnp.sqrt(net.bn.var[...] + 1e-5) * net.bn.scale[...] \
        + net.bn.bias[...]
    h = jnp.tanh(h).reshape(x.shape[0], -1)
    return h @ net.fc.kernel[...] + net.fc.bias[...]


XS = jax.random.uniform(jax.random.key(1), (5, 6, 6, 1))


def test_eval_mode_by_default_and_module_untouched():
    net = _bn_net()
    assert net.bn.use_running_average is False  # NNX builds modules in training mode
    fn = nnx_logits_fn(net)
    out = jax.jit(jax.vmap(fn))(XS)
    np.testing.assert_allclose(out, _manual_eval(net, XS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(XS), out, rtol=1e-6, atol=1e-6)  # without jit
    # the module keeps its mode and its statistics
    assert net.bn.use_running_average is False
    np.testing.assert_array_equal(net.bn.mean[...], np.float32([0.1, -0.2, 0.3]))


def test_logits_fn_is_a_snapshot_of_the_weights():
    net = _bn_net()
    fn = nnx_logits_fn(net)
    before = jax.jit(jax.vmap(fn))(XS)
    net.fc.bias[...] = net.fc.bias[...] + 1.0
    np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(XS), before)
    np.testing.assert_allclose(jax.jit(jax.vmap(nnx_logits_fn(net)))(XS), before + 1.0,
                               rtol=1e-5, atol=1e-5)


def test_train_mode_takes_batch_statistics_over_the_vmapped_axis():
    net = _bn_net(axis_name="batch")
    fn = nnx_logits_fn(net, train=True)
    got = jax.vmap(fn, axis_name="batch")(XS)
    # reference: the batched module in training mode (batch statistics over the 5 examples)
    ref_net = nnx.clone(net)  # a deep copy: calling it in training mode updates ITS statistics
    ref_net.bn.axis_name = None
    np.testing.assert_allclose(got, ref_net(XS), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, _manual_eval(net, XS), atol=1e-3)  # it really is training mode
    # running-statistic updates are discarded
    np.testing.assert_array_equal(net.bn.mean[...], np.float32([0.1, -0.2, 0.3]))


def test_gradient_equals_the_linear_closed_form():
    lin = nnx.Linear(12, 3, rngs=nnx.Rngs(0))

    class Flat(nnx.Module):
        def __init__(self):
            self.lin = lin

        def __call__(self, x):
            return self.lin(x.reshape(x.shape[0], -1))

    fn = nnx_logits_fn(Flat())
    x = jnp.linspace(0, 1, 12).reshape(2, 2, 3)
    g = jax.grad(lambda v: fn(v)[1])(x)
    np.testing.assert_allclose(g.reshape(-1), lin.kernel[...][:, 1], rtol=1e-6)


def test_compute_dtype_bfloat16_close_to_float32():
    net = _bn_net()
    out32 = jax.vmap(nnx_logits_fn(net))(XS)
    out16 = jax.vmap(nnx_logits_fn(net, compute_dtype=jnp.bfloat16))(XS)
    assert out16.dtype == jnp.float32
    # bfloat16 has 8 bits of mantissa: relative error ~ 2^-8 per op, a few ops deep
    np.testing.assert_allclose(out16, out32, rtol=0.05, atol=0.05)


def test_rejects_linen_modules():
    with pytest.raises(TypeError, match="linen_logits_fn"):
        nnx_logits_fn(MnistCNN())


def test_apply_fn_eval_returns_unchanged_statistics():
    net = _bn_net()
    apply_fn, variables = nnx_apply_fn(net)
    out, upd = apply_fn(variables, XS, train=False, mutable=["batch_stats"])
    np.testing.assert_allclose(out, _manual_eval(net, XS), rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, upd["batch_stats"], variables["batch_stats"])
    _, upd = apply_fn(variables, XS, train=True, mutable=["batch_stats"])
    h = _conv(net, XS)
    np.testing.assert_allclose(upd["batch_stats"]["bn"]["mean"],
                               0.9 * net.bn.mean[...] + 0.1 * h.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)


def _twins():
    module = MnistCNN(features=(4, 8), dense=16)
    x = jax.random.uniform(jax.random.key(2), (6, 8, 8, 1))
    variables = jax.jit(module.init)(jax.random.key(0), x[:1])
    return linen_logits_fn(module, variables), nnx_logits_fn(nnx_from_linen(module, variables)), x


def test_pgd_on_nnx_equals_pgd_on_the_linen_twin():
    lin_fn, nnx_fn, x = _twins()
    labels = jnp.argmax(jax.vmap(lin_fn)(x), -1)
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    eps = jnp.linspace(0.02, 0.3, x.shape[0])
    run = lambda fn: jax.jit(jax.vmap(attacks.pgd(fn, norm="linf", steps=10)))(
            x, labels, key=keys, eps=eps)
    a, b = run(lin_fn), run(nnx_fn)
    np.testing.assert_allclose(b.x_adv, a.x_adv, atol=1e-5)
    np.testing.assert_array_equal(b.success, a.success)
    assert bool(jnp.all(jnp.max(jnp.abs(b.x_adv - x).reshape(6, -1), -1) <= eps + 1e-6))


@pytest.mark.slow
def test_layer_bounds_of_nnx_equal_linen_twin_and_are_sound():
    lin_fn, nnx_fn, x = _twins()
    r_nnx = lipschitz.layer_bounds(nnx_fn, x[0])
    r_lin = lipschitz.layer_bounds(lin_fn, x[0])
    assert [row.kind for row in r_nnx.rows] == [row.kind for row in r_lin.rows]
    np.testing.assert_allclose(r_nnx.total, r_lin.total, rtol=1e-5)
    # soundness: the largest Jacobian spectral norm at sampled points is below the bound
    lower = lipschitz.local_lower_bound(nnx_fn, x)
    assert 0 < float(lower) <= float(r_nnx.total) * (1 + 1e-6)


@pytest.mark.slow
def test_layer_bounds_of_an_nnx_batchnorm_net_in_eval_mode():
    """Eval-mode BatchNorm is an affine map: the bound covers sampled Jacobian norms."""
    net = _bn_net()
    fn = nnx_logits_fn(net)
    report = lipschitz.layer_bounds(fn, XS[0])
    assert float(lipschitz.local_lower_bound(fn, XS)) <= float(report.total) * (1 + 1e-6)


_SHARDED = r"""
import json, jax, jax.numpy as jnp
from flax import nnx
from advjax import attacks, parallel
from advjax.models import nnx_logits_fn

class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(6 * 6 * 4, 3, rngs=rngs)
    def __call__(self, x):
        h = nnx.relu(self.bn(self.conv(x)))
        return self.fc(h.reshape(h.shape[0], -1))

fn = nnx_logits_fn(Net(nnx.Rngs(0)))
n = 13
xs = jax.random.uniform(jax.random.key(1), (n, 6, 6, 1))
labels = jnp.argmax(jax.vmap(fn)(xs), -1)
keys = jax.random.split(jax.random.key(2), n)
eps = jnp.linspace(0.05, 0.5, n)
pgd = attacks.pgd(fn, norm="l2", steps=10)
ref = jax.jit(jax.vmap(pgd))(xs, labels, key=keys, eps=eps)
got = parallel.shard_attack(pgd)(xs, labels, key=keys, eps=eps)
print(json.dumps({"devices": jax.device_count(),
                  "shards": len({s.device for s in got.x_adv.addressable_shards}),
                  "rows_held": sum(s.data.shape[0] for s in got.x_adv.addressable_shards),
                  "diff": float(jnp.max(jnp.abs(ref.x_adv - got.x_adv))),
                  "success_equal": bool(jnp.all(ref.success == got.success)),
                  "some_success": bool(jnp.any(ref.success)), "n": int(got.x_adv.shape[0])}))
"""


@pytest.mark.slow
def test_shard_attack_on_an_nnx_model_over_eight_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # 13 rows on 8 devices: JAX splits an axis only evenly, so the rows sit on the largest device
    # count dividing 13 (parallel.rows_sharding: 1), each row once, never a copy on every device.
    assert out["devices"] == 8 and out["n"] == 13
    assert out["shards"] == max(d for d in range(1, 9) if 13 % d == 0) and out["rows_held"] == 13
    assert out["diff"] < 1e-5 and out["success_equal"], out  # same computation per example
    assert out["some_success"], out  # the attack did something to compare


def test_nnx_variables_of_a_twin_match_the_linen_tree():
    module = MnistCNN(features=(4, 8), dense=16)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    got = nnx_variables(nnx_from_linen(module, variables))
    assert jax.tree.structure(got) == jax.tree.structure(dict(variables))
