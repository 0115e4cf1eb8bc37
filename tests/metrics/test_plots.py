"""PNG figures: ARA curve with shading and the naive line; transfer heatmap."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import image as mpimg

from advjax.metrics import transfer_matrix
from advjax.metrics.plots import plot_accuracy_vs_distortion, plot_transfer_matrix

PNG = b"\x89PNG\r\n\x1a\n"


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
