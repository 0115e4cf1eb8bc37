"""MnistCNN and LeNet5: numpy (PyTorch-layout) reference forwards, the advertorch weights import."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.models import (
    LeNet5,
    MnistCNN,
    lenet5_variables_from_torch,
    linen_logits_fn,
    load_lenet5,
    load_lenet5_state,
    predict,
)
from tests.conftest import require_data
from tests.models._reference import (
    conv2d_nchw,
    lenet5_torch_forward,
    maxpool2_nchw,
    read_mnist_test,
    relu,
)
from tests.models._transforms import check_logits_fn_transforms

_X = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32)
_Y = np.array([1, 4, 8], np.int32)


def _random_lenet5_state(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3),
              "conv2.bias": (64,), "linear1.weight": (200, 3136), "linear1.bias": (200,),
              "linear2.weight": (10, 200), "linear2.bias": (10,)}
    return {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in shapes.items()}


def test_mnist_cnn_matches_numpy_forward():
    module = MnistCNN()
    variables = jax.jit(module.init)(jax.random.key(0), jnp.asarray(_X))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    n_params = sum(a.size for a in jax.tree.leaves(p))
    assert n_params == (25 * 32 + 32) + (25 * 32 * 64 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)
    x = np.transpose(_X, (0, 3, 1, 2)).astype(np.float64)
    h = x
    for name in ("Conv_0", "Conv_1"):
        w = np.transpose(p[name]["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        h = maxpool2_nchw(relu(conv2d_nchw(h, w, p[name]["bias"], pad=2)))  # "SAME" for 5x5
    h = np.transpose(h, (0, 2, 3, 1)).reshape(3, -1)  # NHWC flatten, as the Flax model
    h = relu(h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    ref = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(module.apply(variables, _X), ref, rtol=1e-4, atol=1e-5)


def test_lenet5_conversion_matches_torch_forward_on_random_weights():
    state = _random_lenet5_state()
    variables = lenet5_variables_from_torch(state)
    got = LeNet5().apply(variables, _X)
    np.testing.assert_allclose(got, lenet5_torch_forward(state, _X), rtol=1e-4, atol=1e-4)
    # The linear1 row permutation matters: without it the logits differ.
    wrong = jax.tree.map(lambda a: a, variables)
    wrong["params"]["linear1"]["kernel"] = state["linear1.weight"].T
    assert not np.allclose(LeNet5().apply(wrong, _X), got, atol=1e-3)


def test_lenet5_conversion_validates_state():
    state = _random_lenet5_state()
    del state["conv2.bias"]
    with pytest.raises(KeyError, match="conv2.bias"):
        lenet5_variables_from_torch(state)
    state = _random_lenet5_state()
    state["linear1.weight"] = state["linear1.weight"][:, :100]
    with pytest.raises(ValueError, match=r"linear1.weight.*\(200, 3136\)"):
        lenet5_variables_from_torch(state)
    state = _random_lenet5_state()
    state["conv1.bias"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lenet5_variables_from_torch(state)


def test_conv_input_validation():
    with pytest.raises(ValueError, match="rank 4"):
        LeNet5().init(jax.random.key(0), jnp.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="1 channel"):
        LeNet5().init(jax.random.key(0), jnp.zeros((2, 28, 28, 3)))


def test_logits_fn_transforms_mnist_cnn():
    module = MnistCNN(features=(4, 8), dense=16)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.asarray(_X))
    check_logits_fn_transforms(module, variables, _X, _Y, fd_examples=1, eager_grad=False,
                               train=False)


def test_logits_fn_transforms_lenet5():
    variables = lenet5_variables_from_torch(_random_lenet5_state(1))
    check_logits_fn_transforms(LeNet5(), variables, _X, _Y, fd_examples=1, train=False)


# ---- real weights (advertorch-lenet5/) --------------------------------------------------------

@pytest.mark.data
@pytest.mark.parametrize(("which", "published"), [("clntrained", 0.9889), ("advtrained", 0.9864)])
def test_lenet5_real_weights_logits_and_accuracy(which, published):
    npz = require_data("advertorch-lenet5", "lenet5_mnist.npz")
    xs, ys = read_mnist_test(require_data("mnist-test"), 10_000)
    module, variables = load_lenet5(npz, which)
    # Logits agree with a direct numpy reimplementation of the PyTorch forward pass.
    state = load_lenet5_state(npz.parent, which)
    np.testing.assert_allclose(module.apply(variables, xs[:8]), lenet5_torch_forward(state, xs[:8]),
                               rtol=1e-4, atol=1e-4)
    correct = np.asarray(predict(linen_logits_fn(module, variables), xs)) == ys
    # Clean accuracy on the first 1000 test images.
    assert float(correct[:1000].mean()) >= 0.98, float(correct[:1000].mean())
    # On the full test set: advertorch's published accuracy (98.89 % / 98.64 %), to 0.05 points.
    assert float(correct.mean()) == pytest.approx(published, abs=5e-4)


def test_load_lenet5_errors(tmp_path):
    with pytest.raises(ValueError, match="`which` must be one of"):
        load_lenet5(tmp_path, "robust")
    with pytest.raises(FileNotFoundError, match="lenet5_mnist.npz"):
        load_lenet5(tmp_path)
    np.savez(tmp_path / "lenet5_mnist.npz", other=np.zeros(3))
    with pytest.raises(KeyError, match="mnist_lenet5_clntrained"):
        load_lenet5(tmp_path)
