"""Arithmetic of the benchmark scripts against closed forms: interleaved.py's paired speed-up
interval and autoattack_bound.py's count of the standard protocol's passes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """The module ``benchmarks/<name>.py``, imported from its file (benchmarks is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def interleaved():
    return _script("interleaved")


def test_constant_ratio_has_a_zero_width_interval(interleaved):
    # Drift common to both frameworks cancels in the per-round pairs: the ratio is exact.
    advjax = np.array([1.0, 1.7, 0.8, 2.5])
    ci = interleaved.paired_speedup(advjax, 2.1 * advjax)
    assert ci["ratio"] == pytest.approx(2.1, rel=1e-12)
    assert ci["low"] == pytest.approx(2.1, rel=1e-12) and ci["high"] == pytest.approx(2.1)
    assert interleaved.verdict(ci, 2.0) == "met" and interleaved.verdict(ci, 2.2) == "not met"


def test_interval_is_students_t_on_log_ratios(interleaved):
    # Two rounds with log ratios log 2 ± d: mean log 2, sd = d * sqrt(2), t_{0.975, 1} = 12.706.
    d = 0.05
    advjax = np.array([1.0, 1.0])
    peer = 2.0 * np.exp(np.array([d, -d]))
    ci = interleaved.paired_speedup(advjax, peer)
    half = 12.706204736174707 * d * np.sqrt(2) / np.sqrt(2)
    assert ci["ratio"] == pytest.approx(2.0, rel=1e-12)
    assert ci["low"] == pytest.approx(2.0 * np.exp(-half), rel=1e-9)
    assert ci["high"] == pytest.approx(2.0 * np.exp(half), rel=1e-9)
    assert interleaved.verdict(ci, 2.0) == "inconclusive"


def test_one_round_is_inconclusive_and_bad_input_is_named(interleaved):
    ci = interleaved.paired_speedup([1.0], [3.0])
    assert ci["ratio"] == pytest.approx(3.0) and np.isnan(ci["low"])
    assert interleaved.verdict(ci, 2.0) == "inconclusive"
    with pytest.raises(ValueError, match="advjax_s"):
        interleaved.paired_speedup([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level"):
        interleaved.paired_speedup([1.0, 2.0], [1.0, 2.0], level=1.0)


def test_autoattack_bound_counts_the_published_protocol():
    # Standard AutoAttack: APGD-CE 100 steps x 1 restart, APGD-T / FAB-T 100 steps x 9 targets,
    # Square 5000 forward-only queries, each on the examples its stage attacked.
    mod = _script("autoattack_bound")
    from advjax.attacks.autoattack import Settings
    passes = mod.stage_passes(Settings(), {"apgd-ce": 199, "apgd-t": 182, "fab-t": 181,
                                           "square": 181})
    assert passes == {"apgd-ce": (19_900, 0), "apgd-t": (163_800, 0), "fab-t": (162_900, 0),
                      "square": (0, 905_000)}


@pytest.fixture(scope="module")
def parity():
    return _script("autoattack_parity")


def test_robust_flags_after_each_stage(parity):
    # Five images: misclassified; broken by APGD-CE (0); by FAB-T (2); never broken; by Square (3).
    clean = np.array([False, True, True, True, True])
    broken_by = np.array([-1, 0, 2, -1, 3])
    flags = parity.robust_after_stages(clean, broken_by)
    assert flags == {"apgd-ce": "00111", "apgd-t": "00111", "fab-t": "00011",
                     "square": "00010"}
    # Counts of "1" are the cumulative robust accuracy evaluate reports.
    assert [f.count("1") / 5 for f in flags.values()] == [0.6, 0.6, 0.4, 0.2]
    with pytest.raises(ValueError, match="broken_by"):
        parity.robust_after_stages(clean, broken_by[:4])


def test_per_image_agreement_counts_disagreements_not_totals(parity):
    # Equal counts (two robust images each) but on different images: one disagreement each way.
    a = {"robust_flags": {s: "1100" for s in parity.STAGES}}
    b = {"robust_flags": {s: "1010" for s in parity.STAGES}}
    agree = parity.per_image_agreement(a, b)
    assert all(v == {"only_a": 1, "only_b": 1, "both": 1} for v in agree.values())
    assert parity.per_image_agreement(a, a)["square"] == {"only_a": 0, "only_b": 0, "both": 2}
    with pytest.raises(ValueError, match="different numbers of images"):
        parity.per_image_agreement(a, {"robust_flags": {s: "10" for s in parity.STAGES}})


def test_pgd_agreement_margin_is_true_logit_minus_best_other():
    mod = _script("pgd_agreement")
    logits = np.array([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.5, 0.5, -1.0]])
    # 3 - 2; 1 - 3 (misclassified); a tie with another class is a zero margin, not a success.
    np.testing.assert_array_equal(mod.margins(logits, np.array([0, 1, 0])), [1.0, -2.0, 0.0])
