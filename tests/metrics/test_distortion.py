"""distortion_stats on hand-made batched AttackResults and on a vmapped attack."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.result import AttackResult, make_result
from advjax.metrics import distortion_stats


def batch(success, clean, rmse, n_pixels=4):
    rmse = np.asarray(rmse, np.float32)
    n = rmse.shape[0]
    return AttackResult(
        x_adv=np.zeros((n, n_pixels), np.float32), success=np.asarray(success),
        l2=rmse * np.sqrt(n_pixels), linf=rmse * 1.5, rmse=rmse,
        logits=np.zeros((n, 3), np.float32), clean_correct=np.asarray(clean), aux={})


def test_hand_computed_values():
    # 5 examples: two already wrong (d = 0), three attacked: two fooled at 0.1 and 0.3, one not.
    res = batch(success=[True, True, True, True, False],
                clean=[False, False, True, True, True],
                rmse=[0.0, 0.0, 0.1, 0.3, 0.05])
    s = distortion_stats(res)
    assert s.n == 5 and s.attacked == 3
    assert s.clean_accuracy == pytest.approx(0.6)
    assert s.success_rate == pytest.approx(2 / 3)
    assert s.error_rate == pytest.approx(4 / 5)
    assert s.mean_rmse == pytest.approx(0.2)
    assert s.median_rmse == pytest.approx(0.2)
    assert s.std_rmse == pytest.approx(0.1)
    assert (s.min_rmse, s.max_rmse) == pytest.approx((0.1, 0.3))
    assert s.mean_rmse_all == pytest.approx(0.4 / 4)
    assert s.mean_l2 == pytest.approx(0.4)
    assert s.mean_linf == pytest.approx(0.3)
    d = s.to_dict()
    assert set(d) >= {"mean_rmse", "success_rate", "error_rate"}
    masked = distortion_stats(res, mask=np.array([False, False, True, True, False]))
    assert masked.n == 2 and masked.success_rate == 1.0


def test_no_success_gives_nan_means():
    s = distortion_stats(batch([False, False], [True, True], [0.1, 0.2]))
    assert s.success_rate == 0.0 and math.isnan(s.mean_rmse) and s.error_rate == 0.0


def test_vmapped_attack_results():
    # Closed-form attack on a 1-D threshold classifier: moves x to the threshold + 0.01.
    logits_fn = lambda x: jnp.stack([0.5 - x[0], x[0] - 0.5])

    def attack(x, label):
        x_adv = x.at[0].set(jnp.where(label == 1, 0.49, 0.51))
        return make_result(logits_fn, x, x_adv, label)

    xs = np.array([[0.9], [0.7], [0.2], [0.6]], np.float32)
    labels = np.array([1, 1, 0, 0], np.int32)  # the last is already wrong
    res = jax.jit(jax.vmap(attack))(xs, labels)
    s = distortion_stats(res)
    assert s.attacked == 3 and s.success_rate == 1.0
    assert s.mean_rmse == pytest.approx(np.mean([0.41, 0.21, 0.31]), abs=1e-6)


def test_bad_results():
    with pytest.raises(TypeError, match="AttackResult"):
        distortion_stats({"rmse": np.zeros(3)})
    with pytest.raises(ValueError, match="mask"):
        distortion_stats(batch([True], [True], [0.1]), mask=np.ones(2, bool))
