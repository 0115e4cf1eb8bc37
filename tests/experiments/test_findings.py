"""Every study's findings follow its numbers: on synthetic metric tables a claim flips when the
numbers flip, an interval across the null is inconclusive, and a failed attack blocks its claims."""

from __future__ import annotations

import pytest

from advjax.metrics import stats
from advjax.studies import (
    quickstart,
    szegedy_adversarial_training,
    szegedy_spectral,
    szegedy_table1,
    szegedy_transfer,
    szegedy_units,
    woods_ara,
    woods_explanations,
)

R, N, INC = stats.REPRODUCED, stats.NOT_REPRODUCED, stats.INCONCLUSIVE


def ci(value, low, high, n=100):
    return {"value": value, "ci_low": low, "ci_high": high, "n": n}


UP, DOWN, ACROSS = ci(0.1, 0.05, 0.15), ci(-0.1, -0.15, -0.05), ci(0.01, -0.04, 0.06)


def verdicts(claims):
    return [c.verdict for c in claims]


def test_quickstart_claims():
    m = {"lbfgs_success": ci(1.0, 0.97, 1.0), "lbfgs_mean_rmse": ci(0.1, 0.09, 0.11),
         "lbfgs_attacked": 190, "lbfgs_failure": "", "certificate_violations": 0,
         "mean_certified_radius": 0.07}
    assert verdicts(quickstart.findings(m)) == [R, R]
    low = {**m, "lbfgs_success": ci(0.3, 0.25, 0.35), "certificate_violations": 2}
    assert verdicts(quickstart.findings(low)) == [N, N]
    failed = {**m, "lbfgs_success": ci(0.0, 0.0, 0.02), "lbfgs_failure": "success 0/190"}
    claims = quickstart.findings(failed)
    assert verdicts(claims) == [INC, INC] and all("success 0/190" in c.blocked_by for c in claims)
    assert "1 [0.97, 1]" in quickstart.findings(m)[0].evidence  # measured values in the sentence


def _table1(d_strong, d_weak, diff, failure=""):
    model = lambda d, f="": {"success": ci(1.0, 0.96, 1.0), "av_min_distortion_ci": d,
                             "failure": f}
    return {"models": {"FC10(1e-4)": model(d_weak), "FC10(1)": model(d_strong, failure)},
            "fc10_decay_difference": diff}


def test_table1_claims_flip_with_the_distortions():
    assert verdicts(szegedy_table1.findings(_table1(ci(0.2, 0.18, 0.22), ci(0.07, 0.06, 0.08),
                                                    UP))) == [R, R]
    assert verdicts(szegedy_table1.findings(_table1(ci(0.07, 0.06, 0.08), ci(0.2, 0.18, 0.22),
                                                    DOWN))) == [R, N]
    assert verdicts(szegedy_table1.findings(_table1(ci(0.1, 0.08, 0.12), ci(0.1, 0.08, 0.12),
                                                    ACROSS)))[1] == INC
    blocked = szegedy_table1.findings(_table1(ci(float("nan"), float("nan"), float("nan")),
                                              ci(0.07, 0.06, 0.08), None, "success 0/100"))
    assert verdicts(blocked) == [INC, INC] and "FC10(1)" in blocked[1].blocked_by


def _transfer(diff, failures=None):
    claim = {"transfer": ci(0.3, 0.25, 0.35), "noise": ci(0.05, 0.03, 0.08), "difference": diff,
             "failures": failures or {}}
    return {"table2_claim": claim, "table4_claim": claim}


def test_transfer_claims_flip_and_a_failed_attack_blocks_them():
    assert verdicts(szegedy_transfer.findings(_transfer(UP))) == [R, R]
    assert verdicts(szegedy_transfer.findings(_transfer(DOWN))) == [N, N]
    # 0.158 vs 0.158 is no evidence of transfer.
    assert verdicts(szegedy_transfer.findings(_transfer(ci(0.0, -0.03, 0.03)))) == [INC, INC]
    claims = szegedy_transfer.findings(_transfer(None, {"FC10(1)": "success 0/100"}))
    assert verdicts(claims) == [INC, INC] and "success 0/100" in claims[0].blocked_by


def _pool(err, robust, dist, failures=None):
    v = {"test_error_ci": ci(0.1, 0.08, 0.12)}
    return {"variants": {szegedy_adversarial_training.BASE: v,
                         szegedy_adversarial_training.POOL: v},
            "test_error_reduction": err, "robust_accuracy_gain": robust, "distortion_gain": dist,
            "failures": failures or {}}


def test_adversarial_training_claims():
    f = szegedy_adversarial_training.findings
    assert verdicts(f(_pool(UP, UP, UP))) == [R, R, R]
    assert verdicts(f(_pool(DOWN, ACROSS, DOWN))) == [N, INC, N]
    assert verdicts(f(_pool(UP, UP, None, {"weight decay": "success 0/100"})))[2] == INC


@pytest.mark.parametrize("diff, expected", [(ci(0.02, -0.05, 0.08), R), (ci(0.3, 0.2, 0.4), N),
                                            (ci(0.1, 0.0, 0.2), INC)])
def test_units_claim_is_an_equivalence(diff, expected):
    m = {"purity_difference": diff, "purity_random_ci": ci(0.8, 0.75, 0.85),
         "purity_natural_ci": ci(0.82, 0.78, 0.86), "chance": 0.11}
    assert verdicts(szegedy_units.findings(m)) == [expected]


def test_spectral_claims_follow_the_bounds():
    net = {"total": 10.0, "lower": 2.0, "violations": 0, "mean_radius_ci": ci(0.1, 0.09, 0.11),
           "mean_best_attack_l2_ci": ci(1.0, 0.9, 1.1), "attack_failure": ""}
    ok = {"MnistCNN": net, "resnet44-standard.pt": {"total": 100.0, "lower": 5.0},
          "resnet44-robust.pt": {"total": 20.0, "lower": 1.0}}
    assert verdicts(szegedy_spectral.findings(ok)) == [R, R, R]
    bad = {"MnistCNN": {**net, "lower": 11.0, "violations": 3},
           "resnet44-standard.pt": {"total": 20.0, "lower": 5.0},
           "resnet44-robust.pt": {"total": 100.0, "lower": 1.0}}
    assert verdicts(szegedy_spectral.findings(bad)) == [N, N, N]
    failed = {"MnistCNN": {**net, "attack_failure": "success 0/64"}}
    assert verdicts(szegedy_spectral.findings(failed)) == [R, INC]


def _ara(vs_plain, ranking, failure=""):
    v = {"attack_ara_ci": ci(0.02, 0.015, 0.025), "failure": ""}
    ckpt = {"attack_ara_ci": ci(0.01, 0.005, 0.015), "failure": failure}
    return {"variants": {"plain": v, "lipschitz": v}, "vs_plain": {"lipschitz": vs_plain},
            "checkpoints": {"resnet44-standard.pt": ckpt, "resnet44-adv-train.pt": ckpt},
            "ranking": [{"low": "resnet44-standard.pt", "high": "resnet44-adv-train.pt",
                         "difference": d} for d in ranking]}


def test_ara_claims_flip_with_the_paired_differences():
    assert verdicts(woods_ara.findings(_ara(UP, [UP, UP]))) == [R, R]
    assert verdicts(woods_ara.findings(_ara(DOWN, [UP, DOWN]))) == [N, N]
    assert verdicts(woods_ara.findings(_ara(ACROSS, [UP, ACROSS]))) == [INC, INC]
    claims = woods_ara.findings(_ara(UP, [UP, UP], failure="success 0/24"))
    assert claims[1].verdict == INC and "success 0/24" in claims[1].blocked_by


def test_explanation_claims():
    assert verdicts(woods_explanations.findings({"real_gain": UP, "second_gain": UP})) == [R, R]
    assert verdicts(woods_explanations.findings({"real_gain": DOWN, "second_gain": ACROSS})) \
        == [N, INC]
    assert verdicts(woods_explanations.findings({"real_gain": None, "second_gain": None})) \
        == [INC, INC]
