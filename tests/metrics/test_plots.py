"""PNG figures: ARA curve with shading and the naive line; transfer heatmap; robust-accuracy
curve, distortion histogram, per-layer bound bars, adversarial examples beside originals."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from advjax.metrics import plots, transfer_matrix
from advjax.metrics.plots import plot_accuracy_vs_distortion, plot_transfer_matrix

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png_drawn(path, min_height: int = 150, min_width: int = 150) -> np.ndarray:
    """Opens the PNG at ``path``: a real image of at least that size, not blank."""
    from pathlib import Path

    assert Path(path).read_bytes()[:8] == PNG, path
    img = mpimg.imread(path)
    assert img.shape[0] >= min_height and img.shape[1] >= min_width, (path, img.shape)
    # A blank canvas (one colour) has zero variance; every figure draws axes, bars or images.
    assert float(np.var(img[..., :3])) > 0.0, path
    return img


def test_ara_curve_png(tmp_path):
    rng = np.random.default_rng(0)
    d = rng.exponential(0.02, 100)
    correct = rng.random(100) < 0.9
    p = plot_accuracy_vs_distortion(d, correct, 10, tmp_path / "ara.png", title="toy")
    assert p.read_bytes()[:8] == PNG
    img = mpimg.imread(p)
    assert img.shape[0] > 200 and img.shape[1] > 300
    from advjax.metrics import AraResult

    res = AraResult(ara=0.0, ara_exact=0.0, distortions=3 * d, correct=correct, crossed=correct,
                    failed=~correct, sanity=correct, clean_accuracy=0.9, criterion="btr",
                    num_classes=10, settings={})
    curves = {"a": (d, correct), "b": (2 * d, None), "c": res}
    p2 = plot_accuracy_vs_distortion(curves, None, 10, tmp_path / "two.png")
    assert p2.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="correct"):
        plot_accuracy_vs_distortion(curves, correct, 10, tmp_path / "bad.png")


def test_transfer_heatmap_png(tmp_path):
    m, rows, cols = transfer_matrix(
        {"m0": lambda x: x, "m1": lambda x: -x},
        {"s": (np.eye(2, dtype=np.float32), np.array([0, 1], np.int32))})
    np.testing.assert_array_equal(m, [[0.0, 1.0]])
    p = plot_transfer_matrix(m, rows, cols, tmp_path / "t.png", title="transfer")
    assert p.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="row_names"):
        plot_transfer_matrix(m, ["a", "b"], cols, tmp_path / "bad.png")


def test_robust_accuracy_curve_histogram_and_layer_bars(tmp_path):
    rng = np.random.default_rng(0)
    assert_png_drawn(plots.plot_robust_accuracy_curve(
        [0.0, 1.0, 2.0], [0.9, 0.5, 0.1], tmp_path / "curve.png",
        ci=[(0.8, 0.95), (0.4, 0.6), (0.05, 0.2)], title="toy"))
    with pytest.raises(ValueError, match="accuracy"):
        plots.plot_robust_accuracy_curve([0.0, 1.0], [0.9], tmp_path / "bad.png")
    assert_png_drawn(plots.plot_distortion_histogram(
        {"a": rng.random(50), "b": np.r_[rng.random(40), np.nan]}, tmp_path / "hist.png"))
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_distortion_histogram({}, tmp_path / "bad.png")
    assert_png_drawn(plots.plot_layer_bounds({"net": [1.0, 20.0, 3e4]}, ["a", "b", "c"],
                                             tmp_path / "bars.png"))
    with pytest.raises(ValueError, match="bounds"):
        plots.plot_layer_bounds({"net": [1.0, 2.0]}, ["a", "b", "c"], tmp_path / "bad.png")


def test_adversarial_examples_beside_originals(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((4, 8, 8, 1)).astype(np.float32)
    adv = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    img = assert_png_drawn(plots.plot_adversarial_examples(x, adv, tmp_path / "ex.png"))
    # Three rows of images: taller than one row of the same images.
    one = mpimg.imread(plots.plot_image_rows(x[None], ["x"], tmp_path / "one.png"))
    assert img.shape[0] > 2 * one.shape[0]
    with pytest.raises(ValueError, match="adversarials"):
        plots.plot_adversarial_examples(x, adv[:3], tmp_path / "bad.png")
