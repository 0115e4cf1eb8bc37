"""What a Lipschitz certificate is worth: radii in quantisation steps, vacuous radii and
astronomically loose bounds are said in the result and the report."""

from __future__ import annotations

import pytest

from advjax import pipeline
from advjax.studies import common, quickstart, szegedy_spectral

Q = 1 / 255


def test_radii_in_quantisation_steps_and_vacuous_share():
    cert = common.certificate_remarks([0.5 * Q, 2 * Q, 4 * Q], Q, bound=10.0, lower=2.0)
    # Closed forms: mean of (0.5, 2, 4) steps; one radius of three below one step.
    assert cert["mean_radius_steps"] == pytest.approx(6.5 / 3)
    assert cert["vacuous_fraction"] == pytest.approx(1 / 3)
    assert not cert["all_vacuous"]
    assert cert["bound_to_lower"] == pytest.approx(5.0) and cert["loose"] is False
    assert cert["remark"] == ("1 of 3 certified radii are vacuous (below the input's "
                              "quantisation step 0.003922).")


def test_all_vacuous_and_astronomically_loose():
    # A GroupNorm network's bound of 1.95e24 against a local Jacobian norm of 3.
    cert = common.certificate_remarks([1e-20, 3e-22], Q, bound=1.95e24, lower=3.0)
    assert cert["all_vacuous"] and cert["vacuous_fraction"] == 1.0
    assert cert["loose"] is True and cert["bound_to_lower"] == pytest.approx(6.5e23)
    assert "Every certified radius is vacuous" in cert["remark"]
    assert "astronomically loose" in cert["remark"] and "6.5e+23 times" in cert["remark"]


def test_loose_rule_boundary_and_missing_lower_bound():
    at = common.certificate_remarks([Q], Q, bound=common.LOOSE_BOUND_RATIO, lower=1.0)
    above = common.certificate_remarks([Q], Q, bound=common.LOOSE_BOUND_RATIO * 1.01, lower=1.0)
    assert at["loose"] is False and above["loose"] is True
    assert at["vacuous_fraction"] == 0.0 and at["remark"] == ""    # one step is not below it
    assert common.certificate_remarks([Q], Q, bound=float("inf"), lower=1.0)["loose"] is True
    assert common.certificate_remarks([Q], Q, bound=5.0)["loose"] is None
    with pytest.raises(ValueError, match="quantization_step"):
        common.certificate_remarks([Q], 0.0, bound=5.0)


@pytest.mark.parametrize("study", [quickstart, szegedy_spectral])
def test_quantisation_step_is_a_config_value(study):
    assert study.CONFIGS["quick"].quantization_step == pytest.approx(1 / 255)
    config = pipeline.resolve_config(study, "quick", {"quantization_step": "0.5"}, raw=True)
    assert config.quantization_step == 0.5
    with pytest.raises(ValueError, match="'quantization_step' = -1.0: expected a number > 0"):
        pipeline.resolve_config(study, "quick", {"quantization_step": "-1"}, raw=True)


def test_remark_joins_the_certificate_claim():
    ci = {"value": 1.0, "ci_low": 0.97, "ci_high": 1.0, "n": 100}
    m = {"lbfgs_success": ci, "lbfgs_mean_rmse": ci, "lbfgs_attacked": 100, "lbfgs_failure": "",
         "certificate_violations": 0, "mean_certified_radius": 1e-22,
         "certificate": common.certificate_remarks([1e-22], Q, bound=1.95e24, lower=3.0)}
    evidence = quickstart.findings(m)[1].evidence
    assert "vacuous" in evidence and "astronomically loose" in evidence
    results = {"net": {"total": 1.95e24, "lower": 3.0, "violations": 0, "attack_failure": "",
                       "mean_radius_ci": ci, "mean_best_attack_l2_ci": ci,
                       "certificate": m["certificate"]}}
    assert "astronomically loose" in szegedy_spectral.findings(results)[1].evidence
