"""Transfer matrices on hand-made classifiers; Gaussian control rows; amplification to RMS 0.1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.metrics import amplify, amplify_set, gaussian_noise_set, rms_of, transfer_matrix


def constant(k, num_classes=3):
    return lambda x: jax.nn.one_hot(k, num_classes) + 0.0 * jnp.sum(x)


def sign_of_first_pixel(x):
    """Class 1 when x[0] > 0.5 else class 0 (of 3)."""
    return jnp.stack([0.5 - x[0], x[0] - 0.5, -jnp.ones(())])


def test_transfer_matrix_on_constant_and_threshold_classifiers():
    models = {"always0": constant(0), "always2": constant(2), "threshold": sign_of_first_pixel}
    xa = np.array([[0.9, 0.0], [0.1, 0.0], [0.7, 0.3], [0.2, 0.2]], np.float32)
    ya = np.array([0, 0, 1, 2], np.int32)
    xb = np.array([[0.6, 1.0], [0.6, 0.0]], np.float32)
    yb = np.array([2, 2], np.int32)
    matrix, rows, cols = transfer_matrix(models, {"A": (xa, ya), "B": (xb, yb)}, batch_size=3)
    # Hand-computed errors: always0 is right on labels 0 only, always2 on labels 2 only; the
    # threshold predicts (1, 0, 1, 0) on A (right on examples 1 and 2) and (1, 1) on B.
    expected = np.array([[2 / 4, 3 / 4, 2 / 4],
                         [1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(matrix, expected)
    assert rows == ["A", "B"] and cols == ["always0", "always2", "threshold"]


def test_transfer_matrix_matches_numpy_linear_models():
    rng = np.random.default_rng(0)
    ws = {f"m{i}": rng.normal(size=(5, 8)).astype(np.float32) for i in range(3)}
    sets = {}
    for name, n in (("s0", 7), ("s1", 23)):
        sets[name] = (rng.normal(size=(n, 8)).astype(np.float32),
                      rng.integers(0, 5, size=n).astype(np.int32))
    def linear(w):
        return lambda x: jnp.asarray(w) @ x

    models = {k: linear(w) for k, w in ws.items()}
    matrix, rows, cols = transfer_matrix(models, sets)
    for i, r in enumerate(rows):
        x, y = sets[r]
        for j, c in enumerate(cols):
            assert matrix[i, j] == np.mean(np.argmax(x @ ws[c].T, axis=1) != y)


def test_transfer_matrix_errors():
    with pytest.raises(ValueError, match="models"):
        transfer_matrix({}, {"a": (np.zeros((1, 2), np.float32), np.zeros(1, np.int32))})
    with pytest.raises(ValueError, match="adversarial_sets"):
        transfer_matrix({"m": constant(0)}, {"a": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match="labels.*shape"):
        transfer_matrix({"m": constant(0)}, {"a": (np.zeros((2, 2), np.float32),
                                                   np.zeros(1, np.int32))})


def test_transfer_matrix_leaves_out_examples_the_attack_refused():
    from advjax import attacks

    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(3, 6)).astype(np.float32))
    model = lambda x: w @ x                                            # noqa: E731
    xs = rng.uniform(0.3, 0.7, size=(6, 6)).astype(np.float32)
    ys = np.asarray(jnp.argmax(jax.vmap(model)(xs), -1))
    eps = np.full(6, 0.5, np.float32)
    eps[[1, 4]] = -1.0                                                 # invalid budgets
    res = jax.jit(jax.vmap(attacks.pgd(model, norm="linf", steps=20)))(
        xs, ys, eps=eps, key=jax.random.split(jax.random.key(0), 6))
    valid = np.asarray(res.aux["valid_input"])
    assert valid.tolist() == [True, False, True, True, False, True]
    x_adv = np.asarray(res.x_adv)
    matrix, _, _ = transfer_matrix({"m": model}, {"pgd": (x_adv, ys, valid),
                                                  "unmasked": (x_adv, ys)})
    wrong = np.argmax(x_adv @ np.asarray(w).T, 1) != ys
    assert matrix[0, 0] == np.mean(wrong[valid]) == 1.0                # every valid one broken
    assert matrix[1, 0] == np.mean(wrong) == 4 / 6                     # refused rows look robust
    with pytest.raises(ValueError, match="valid mask must be bool of shape"):
        transfer_matrix({"m": model}, {"a": (x_adv, ys, valid[:3])})
    with pytest.raises(ValueError, match="every example is flagged invalid"):
        transfer_matrix({"m": model}, {"a": (x_adv, ys, np.zeros(6, bool))})


def test_gaussian_noise_rows():
    key = jax.random.key(0)
    xs = np.full((8, 28, 28, 1), 0.5, np.float32)
    unclipped = np.asarray(gaussian_noise_set(xs, 0.1, key=key, clip=False))
    noise = unclipped - xs
    # 8·784 samples: the empirical stddev is within 3% of 0.1, the mean near 0.
    assert np.std(noise) == pytest.approx(0.1, rel=0.03)
    assert abs(np.mean(noise)) < 0.005
    clipped = np.asarray(gaussian_noise_set(xs, 0.3, key=key))
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    np.testing.assert_allclose(clipped, np.clip(xs + 3 * noise, 0, 1), atol=1e-6)
    # Example b's noise depends only on fold_in(key, b): a prefix of the batch gets the same.
    np.testing.assert_array_equal(np.asarray(gaussian_noise_set(xs[:3], 0.1, key=key,
                                                                clip=False)), unclipped[:3])
    assert not np.allclose(noise[0], noise[1])
    with pytest.raises(ValueError, match="stddev"):
        gaussian_noise_set(xs, -0.1, key=key)


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_amplify_gives_rms_exactly(mode):
    rng = np.random.default_rng(1)
    x = rng.random((28, 28, 1)).astype(np.float32)
    x_adv = x + rng.normal(scale=0.06, size=x.shape).astype(np.float32)
    fn = amplify if mode == "eager" else jax.jit(amplify, static_argnums=2)
    out = np.asarray(fn(x, x_adv, 0.1))
    delta = out - x
    assert np.sqrt(np.mean(delta.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-5)
    # Same direction as the original perturbation.
    d0 = (x_adv - x).ravel()
    cos = delta.ravel() @ d0 / np.linalg.norm(delta) / np.linalg.norm(d0)
    assert cos == pytest.approx(1.0, abs=1e-6)
    # The literal formula (divide by the L2 norm) would give 0.1/sqrt(784): not what we do.
    assert float(rms_of(jnp.asarray(delta))) > 10 * 0.1 / np.sqrt(784)


def test_amplify_vmap_and_zero_perturbation():
    rng = np.random.default_rng(2)
    xs = rng.random((5, 4, 4, 3)).astype(np.float32)
    xs_adv = xs + rng.normal(scale=0.01, size=xs.shape).astype(np.float32)
    xs_adv[2] = xs[2]  # no perturbation: returned unchanged, no NaN
    out = np.asarray(jax.jit(jax.vmap(lambda a, b: amplify(a, b, 0.1)))(xs, xs_adv))
    np.testing.assert_allclose(out, np.asarray(amplify_set(xs, xs_adv, 0.1)), atol=1e-6)
    r = np.sqrt(np.mean((out - xs).reshape(5, -1).astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(np.delete(r, 2), 0.1, rtol=1e-5)
    np.testing.assert_array_equal(out[2], xs[2])
    # Per-example rms under vmap.
    out2 = np.asarray(jax.vmap(amplify)(xs, xs_adv, jnp.linspace(0.1, 0.5, 5)))
    r2 = np.sqrt(np.mean((out2 - xs).reshape(5, -1).astype(np.float64) ** 2, axis=1))
    np.testing.assert_allclose(np.delete(r2, 2), np.delete(np.linspace(0.1, 0.5, 5), 2),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="x_adv.*shape"):
        amplify(xs[0], xs[0, :2])
