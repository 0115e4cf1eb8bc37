"""lower_convs on the zoo models: logits and input gradients equal the native ones under jit, vmap,
grad and sharding; the training state and the parallel helpers apply it.

Tolerance: each convolution's output differs from XLA's by at most ``2 n eps Σ|w||x|``
(``n`` = taps · channels ≤ 800 here, so ~2e-4 of the layer's absolute scale) and later layers
are Lipschitz, so through a few layers the logits and gradients agree to ~1e-4 relative (LeNet5,
MnistCNN: 2 convolutions) and, compounding over 44 layers, to ~1e-3 relative (ResNet-44); we
check ``max|Δ| ≤ rtol · max|reference|`` with those ``rtol``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax import parallel, train
from advjax.lowering import MAC_MAX_IN_CHANNELS, LoweredFunction, lower_convs, lowering_plan
from advjax.models import LeNet5, MnistCNN, PreActResNet

ROOT = Path(__file__).resolve().parents[2]


def _close(got, want, rtol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= rtol * np.max(np.abs(want)), \
        (np.max(np.abs(got - want)), np.max(np.abs(want)))


def _model(name):
    if name == "resnet44":
        module = PreActResNet(depth=44)
        x = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))
        variables = module.init(jax.random.key(1), x[:1], train=False)
        # Non-trivial running statistics and last convolutions (zero at init).
        variables = jax.tree.map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size).reshape(a.shape)),
                                 variables)
        return (lambda v: module.apply(variables, v[None], train=False)[0]), x, 1e-3
    module = {"lenet5": LeNet5(), "mnistcnn": MnistCNN()}[name]
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    variables = module.init(jax.random.key(1), x[:1])
    return (lambda v: module.apply(variables, v[None])[0]), x, 1e-4


@pytest.mark.parametrize("name", ["lenet5", "mnistcnn",
                                  pytest.param("resnet44", marks=pytest.mark.slow)])
def test_zoo_logits_and_input_gradients_under_jit_vmap_grad(name):
    logits_fn, x, rtol = _model(name)
    fast = lower_convs(logits_fn, mode="gemm")
    assert all(r["form"] != "native" for r in lowering_plan(logits_fn, x[0]))

    def loss(f):
        return lambda v: jax.nn.logsumexp(f(v)) - f(v)[0]

    run = jax.jit(jax.vmap(jax.value_and_grad(loss(fast))))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(run)(x))
    (v_fast, g_fast), (v_nat, g_nat) = run(x), jax.jit(jax.vmap(jax.value_and_grad(
            loss(logits_fn))))(x)
    _close(v_fast, v_nat, rtol)
    _close(g_fast, g_nat, rtol)
    _close(jax.vmap(fast)(x), jax.vmap(logits_fn)(x), rtol)


def test_pgd_on_lowered_lenet_matches_native():
    from advjax import attacks
    logits_fn, x, _ = _model("lenet5")
    y = jnp.argmax(jax.vmap(logits_fn)(x), -1)
    runs = []
    for f in (logits_fn, lower_convs(logits_fn, mode="gemm")):
        atk = attacks.pgd(f, steps=5, step_size=0.01, random_start=False)
        runs.append(jax.jit(jax.vmap(lambda a, b, atk=atk: atk(a, b, eps=0.1)))(x, y))
    _close(runs[0].x_adv, runs[1].x_adv, 1e-5)  # sign steps: identical unless a tie flips
    np.testing.assert_array_equal(runs[0].success, runs[1].success)


def _convs_in(attack, x, y, keys):
    """(all convolutions, transposed ones) in the traced batched attack: a transposed
    convolution swaps the kernel's feature axes in its dimension numbers (LeNet5's kernels are
    HWIO, rhs_spec (3, 2, 0, 1)) or dilates its input."""
    from tests.lowering.test_conv import conv_layouts

    jaxpr = jax.make_jaxpr(jax.vmap(lambda a, b, k: attack(a, b, eps=0.1, key=k)))(x, y, keys)
    layouts = conv_layouts(str(jaxpr))
    return len(layouts), sum(spec != (3, 2, 0, 1) or set(dil) != {1} for spec, dil in layouts)


@pytest.mark.parametrize("make", ["pgd", "apgd", "square", "autoattack"])
def test_attacks_lower_only_the_derivatives_by_default_and_honour_the_opt_out(make):
    """On CPU a plain logits_fn's input gradients run no transposed convolution (forward-layout
    convolutions and GEMM forms instead); lower_convs(fn, mode="native") keeps XLA's."""
    from advjax import attacks
    if jax.default_backend() != "cpu":
        pytest.skip("the default lowering applies on CPU backends only")
    logits_fn, x, _ = _model("lenet5")
    y = jnp.zeros(3, jnp.int32)
    ctor = {"pgd": lambda f: attacks.pgd(f, steps=2, step_size=0.01, random_start=False),
            "apgd": lambda f: attacks.apgd(f, steps=2),
            "square": lambda f: attacks.square(f, queries=2),
            "autoattack": lambda f: attacks.autoattack(f, steps=2, queries=2)}[make]
    keys = jax.random.split(jax.random.key(0), 3)
    (total, transposed) = _convs_in(ctor(logits_fn), x, y, keys)
    (native_total, native_transposed) = _convs_in(ctor(lower_convs(logits_fn, mode="native")),
                                                  x, y, keys)
    # 2 convolutions per logits_fn call site, none transposed. At each of the `sites` gradient
    # sites XLA runs 4: both values and 2 transposed input gradients. The lowered program runs 2
    # there: conv2's value and its input gradient as one forward-layout convolution (32 input
    # channels); conv1 (1 input channel, within MAC_MAX_IN_CHANNELS) runs its value as
    # multiply-adds and its input gradient in the GEMM form, no convolution.
    forward = str(jax.make_jaxpr(logits_fn)(x[0])).count("conv_general_dilated")
    assert forward == 2 and transposed == 0 and MAC_MAX_IN_CHANNELS >= 1
    assert native_transposed % 2 == 0
    sites = native_transposed // 2
    assert total == native_total - 2 * sites
    if make == "square":                     # forward passes only: nothing to lower
        assert native_transposed == 0
    else:                                    # the native program runs XLA's transposed convs
        assert native_transposed > 0


def test_train_state_applies_the_setting_and_steps_match():
    module = LeNet5()
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    states = [train.create_train_state(module, jax.random.key(2), x[:1], optax.sgd(0.1),
                                       conv_lowering=mode) for mode in ("native", "gemm")]
    assert isinstance(states[1].apply_fn, LoweredFunction)
    assert states[1].apply_fn == train.create_train_state(
            module, jax.random.key(3), x[:1], optax.sgd(0.1), conv_lowering="gemm").apply_fn
    step = jax.jit(train.make_train_step())
    outs = [step(s, {"image": x, "label": y}) for s in states]
    _close(outs[1][1]["loss"], outs[0][1]["loss"], 1e-5)
    _close(outs[1][0].params["conv1"]["kernel"], outs[0][0].params["conv1"]["kernel"], 1e-4)
    with pytest.raises(ValueError, match="conv_lowering"):
        train.create_train_state(module, jax.random.key(2), x[:1], optax.sgd(0.1),
                                 conv_lowering="fast")


def test_stream_runs_a_lowered_function_as_given():
    """The parallel helpers have no lowering option of their own (attacks lower their model at
    the one boundary); a function lowered by the caller runs as it is."""
    logits_fn, x, rtol = _model("mnistcnn")
    for mode in ("native", "gemm"):
        out = parallel.stream(lower_convs(logits_fn, mode=mode), x, chunk_size=2)
        _close(out, jax.vmap(logits_fn)(x), rtol)
    with pytest.raises(TypeError, match="conv_lowering"):
        parallel.shard_attack(logits_fn, conv_lowering="gemm")


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from advjax import attacks, parallel
    from advjax.lowering import lower_convs
    from advjax.models import LeNet5
    assert jax.device_count() == 8
    m = LeNet5()
    x = jax.random.uniform(jax.random.key(0), (16, 28, 28, 1))
    v = m.init(jax.random.key(1), x[:1])
    f = lambda a: m.apply(v, a[None])[0]
    y = jnp.argmax(jax.vmap(f)(x), -1)
    g = jax.vmap(jax.grad(lambda a, b: -jax.nn.log_softmax(f(a))[b]))
    mesh = parallel.make_mesh()
    xs = jax.device_put(x, parallel.batch_sharding(mesh))
    lowered = jax.jit(jax.vmap(jax.grad(lambda a, b: -jax.nn.log_softmax(
        lower_convs(f, mode="gemm")(a))[b])))
    got, want = lowered(xs, y), g(x, y)
    assert len(got.sharding.device_set) == 8
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
    atk = attacks.pgd(lower_convs(f, mode="gemm"), steps=3, step_size=0.02, random_start=False)
    a = parallel.shard_attack(atk)(x[:12], y[:12], eps=0.1)  # padded
    b = jax.jit(jax.vmap(lambda p, q: atk(p, q, eps=0.1)))(x[:12], y[:12])
    assert np.max(np.abs(np.asarray(a.x_adv) - np.asarray(b.x_adv))) <= 1e-5
    print("OK")
""")


def test_sharded_over_8_simulated_devices():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
