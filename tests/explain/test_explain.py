"""Adversarial explanations on a linear softmax model (closed forms) and PNG grids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpimg

from advjax.explain import (
    confidence_caption,
    explain,
    explain_classes,
    explanation_grid,
    explanation_strength,
    explanation_targets,
)

K, SHAPE = 5, (4, 4, 3)


def softmax_np(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, int(np.prod(SHAPE)))).astype(np.float32)
    b = rng.normal(size=(K,)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=SHAPE).astype(np.float32)
    logits_fn = lambda v: jnp.asarray(w) @ v.reshape(-1) + jnp.asarray(b)
    return w, b, x, logits_fn


def test_one_step_is_the_closed_form_descent(linear):
    # T = 1: delta = S · (−g) / (1e-8 + RMSE(g)), S = 5ρ, g = ∇_x CE = Wᵀ(softmax(Wx + b) − e_t).
    w, b, x, logits_fn = linear
    rho, t = 0.05, 3
    e = explain(logits_fn, x, t, rho=rho, steps=1, clip=False)
    p = softmax_np(w @ x.ravel() + b)
    g = w.T @ (p - np.eye(K)[t])
    expected = x.ravel() - 5 * rho * g / (1e-8 + np.sqrt(np.mean(g ** 2)))
    np.testing.assert_allclose(np.asarray(e.image).ravel(), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(e.probs_before), p, rtol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("t", [0, 2, 4])
def test_explanation_raises_target_and_lands_on_the_rho_sphere(linear, mode, t):
    w, b, x, logits_fn = linear
    rho = 0.1
    fn = lambda x, t: explain(logits_fn, x, t, rho=rho)
    e = (jax.jit(fn) if mode == "jit" else fn)(x, t)
    p_before = softmax_np(w @ x.ravel() + b)
    p_after = softmax_np(w @ np.asarray(e.image).ravel() + b)
    np.testing.assert_allclose(np.asarray(e.probs_before), p_before, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(e.probs_after), p_after, rtol=1e-4, atol=1e-7)
    assert p_after[t] > p_before[t]
    rmse = np.sqrt(np.mean((np.asarray(e.image) - x) ** 2))
    assert float(e.rmse) == pytest.approx(rmse, rel=1e-5)
    # Steps back at RMSE >= ρ leave it within the last few (small) ramp steps of the sphere:
    # the last step is 5ρ·1/(35·36/2) ≈ 0.008ρ; allow 5%.
    assert rmse == pytest.approx(rho, rel=0.05)
    assert bool(e.sanity)
    assert np.all(np.asarray(e.image) >= 0) and np.all(np.asarray(e.image) <= 1)
    log_gain = np.log(p_after[t]) - np.log(p_before[t])
    assert float(e.logprob_gain) == pytest.approx(log_gain, rel=1e-3, abs=1e-5)
    assert float(e.prob_gain) == pytest.approx(p_after[t] - p_before[t], abs=1e-5)
    assert float(e.strength) == pytest.approx(log_gain / rmse, rel=1e-3)
    assert float(e.strength) > 0


def test_jit_vmap_matches_eager(linear):
    _, _, x, logits_fn = linear
    xs = np.stack([x, np.clip(x[::-1] + 0.05, 0, 1)])
    ts = np.array([1, 4], np.int32)
    batched = jax.jit(jax.vmap(lambda x, t: explain(logits_fn, x, t, rho=0.08)))(xs, ts)
    for i in range(2):
        one = explain(logits_fn, xs[i], int(ts[i]), rho=0.08)
        np.testing.assert_allclose(np.asarray(batched.image[i]), np.asarray(one.image), atol=1e-5)
        np.testing.assert_allclose(float(batched.strength[i]), float(one.strength), rtol=1e-4)


def test_explain_classes_targets(linear):
    w, b, x, logits_fn = linear
    z = w @ x.ravel() + b
    label = int(np.argsort(z)[-2])  # not the top class, so "second" is the argmax
    run = jax.jit(explain_classes, static_argnums=(0, 3))
    real = run(logits_fn, x, label, "real")
    second = run(logits_fn, x, label, "second")
    every = run(logits_fn, x, label, "all")
    assert np.asarray(real.target).tolist() == [label]
    masked = np.where(np.arange(K) == label, -np.inf, z)
    assert np.asarray(second.target).tolist() == [int(np.argmax(masked))]
    assert np.asarray(every.target).tolist() == list(range(K))
    assert every.image.shape == (K, *SHAPE)
    assert np.all(np.asarray(every.prob_gain) > 0)
    np.testing.assert_allclose(np.asarray(every.image[label]), np.asarray(real.image[0]),
                               atol=1e-5)
    explicit = run(logits_fn, x, label, (4, 0))
    assert np.asarray(explicit.target).tolist() == [4, 0]
    with pytest.raises(ValueError, match="targets"):
        explain_classes(logits_fn, x, label, "best")
    with pytest.raises(ValueError, match="targets"):
        explanation_targets(jnp.zeros(K), 0, [7])


def test_strength_kinds_and_zero_rmse():
    pb = jnp.array([[0.5, 0.5], [0.2, 0.8]])
    pa = jnp.array([[0.25, 0.75], [0.2, 0.8]])
    t = jnp.array([1, 0])
    r = jnp.array([0.1, 0.0])
    s = np.asarray(explanation_strength(pb, pa, t, r))
    np.testing.assert_allclose(s, [np.log(1.5) / 0.1, 0.0], rtol=1e-6)
    sp = np.asarray(explanation_strength(pb, pa, t, r, kind="prob"))
    np.testing.assert_allclose(sp, [2.5, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        explanation_strength(pb, pa, t, r, kind="logit")


def test_bad_rho(linear):
    _, _, x, logits_fn = linear
    with pytest.raises(ValueError, match="rho"):
        explain(logits_fn, x, 0, rho=0.0)


def test_grid_png(tmp_path, linear):
    _, _, x, logits_fn = linear
    images = np.stack([x, x * 0.5])
    ex = jax.vmap(lambda v: explain(logits_fn, v, 1))(images)
    captions = [confidence_caption(ex.probs_before[i], ex.probs_after[i], 1, list("abcde"))
                for i in range(2)]
    assert captions[0].startswith("b: ") and "→" in captions[0]
    path = explanation_grid(images, np.stack([ex.image, ex.image]), [captions, captions],
                            tmp_path / "sub" / "grid.png", image_captions=["x", "x/2"],
                            row_labels=["net A", "net B"], title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file
    gray = explanation_grid(images[..., :1], ex.image[..., :1], captions, tmp_path / "g.png")
    assert gray.exists()
    with pytest.raises(ValueError, match="captions"):
        explanation_grid(images, ex.image, captions[:1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="explanations"):
        explanation_grid(images, ex.image[:1], captions, tmp_path / "bad.png")
