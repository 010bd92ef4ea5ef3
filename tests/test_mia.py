"""Membership-inference audit: the ε lower bound arithmetic, and the attack on real models.

The required test trains a non-private MLP to overfit (wide, many epochs, few rows, noisy labels)
and a DP one (ε = 1) on the same rows with the same code path: the attack must do clearly better
on the first, and the DP model's empirical ε lower bound must stay below its guarantee.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from anonymize.errors import InputError
from privmodel.evaluation import mia


def test_clopper_pearson_matches_scipy_binomtest() -> None:
    # a one-sided (1 - a) bound is one end of the two-sided (1 - 2a) exact interval
    for k, n in [(0, 50), (3, 50), (25, 50), (49, 50), (50, 50), (7, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")
        assert float(mia.clopper_pearson_lower(k, n, 0.05)) == pytest.approx(ci.low, abs=1e-9)
        assert float(mia.clopper_pearson_upper(k, n, 0.05)) == pytest.approx(ci.high, abs=1e-9)


def test_perfect_separation_gives_the_hand_computed_bound() -> None:
    # members all score 1, non-members all 0: on the evaluation half (100 + 100 rows) TPR = 1 and
    # FPR = 0, so TPR_low = a^(1/100) and FPR_high = 1 - a^(1/100) with a = 0.025 (two sides share 5 %)
    result = mia.epsilon_lower_bound(np.ones(200), np.zeros(200), delta=1e-5, confidence=0.95, seed=1)
    a = 0.025
    tpr_low, fpr_high = a ** (1 / 100), 1 - a ** (1 / 100)
    expected = max(math.log((tpr_low - 1e-5) / fpr_high), math.log((1 - fpr_high - 1e-5) / (1 - tpr_low)))
    assert result["tpr"] == 1.0 and result["fpr"] == 0.0
    assert result["tpr_lower"] == pytest.approx(tpr_low) and result["fpr_upper"] == pytest.approx(fpr_high)
    assert result["epsilon_lower_bound"] == pytest.approx(expected)
    assert 3.0 < result["epsilon_lower_bound"] < 4.0  # 200 rows cannot prove more than ~log(100/0.37)
    assert result["members_evaluated"] == 100 and result["non_members_evaluated"] == 100


def test_no_signal_gives_zero_bound_and_chance_auc() -> None:
    rng = np.random.default_rng(0)
    m, n = rng.normal(size=2000), rng.normal(size=2000)
    result = mia.epsilon_lower_bound(m, n, delta=1e-5, seed=0)
    assert result["epsilon_lower_bound"] < 0.15
    assert abs(mia.attack_auc(m, n) - 0.5) < 0.03


def test_bound_never_exceeds_the_truth_of_a_known_mechanism() -> None:
    # randomized response with ε = 1: a member answers 1 w.p. e/(1+e), a non-member w.p. 1/(1+e).
    # This mechanism is exactly 1-DP, so a valid lower bound stays below 1 (with 95 % confidence).
    rng = np.random.default_rng(5)
    p = math.e / (1 + math.e)
    bounds = []
    for trial in range(5):
        m = (rng.uniform(size=5000) < p).astype(float)
        n = (rng.uniform(size=5000) < 1 - p).astype(float)
        bounds.append(mia.epsilon_lower_bound(m, n, delta=0.0, seed=trial)["epsilon_lower_bound"])
    assert max(bounds) <= 1.0
    assert min(bounds) > 0.7  # and with 2500 rows per side the audit is close to tight


def test_audit_scores_and_calibration() -> None:
    rng = np.random.default_rng(2)
    y_m, y_n = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    # some rows are easy for every model (difficulty); members get an extra boost in confidence
    easy_m, easy_n = rng.uniform(0, 3, 300), rng.uniform(0, 3, 300)
    logit_m = np.where(y_m == 1, 1, -1) * (easy_m + 0.5)
    logit_n = np.where(y_n == 1, 1, -1) * easy_n
    p_m, p_n = 1 / (1 + np.exp(-logit_m)), 1 / (1 + np.exp(-logit_n))
    ref_m = 1 / (1 + np.exp(-np.where(y_m == 1, 1, -1) * easy_m))[None, :]
    ref_n = 1 / (1 + np.exp(-np.where(y_n == 1, 1, -1) * easy_n))[None, :]
    report = mia.audit(y_m, p_m, y_n, p_n, delta=1e-5, reference_p_members=ref_m,
                       reference_p_nonmembers=ref_n, epsilon_guarantee=8.0)
    assert set(report["attacks"]) == {"loss", "calibrated"}
    # calibration removes the difficulty noise: members are exactly +0.5 logit above reference
    assert report["attacks"]["calibrated"]["auc"] == pytest.approx(1.0)
    assert 0.5 < report["attacks"]["loss"]["auc"] < 0.8
    assert report["strongest_attack"] == "calibrated" and report["attack_auc"] == pytest.approx(1.0)
    assert report["epsilon_lower_bound"] == max(
        a["epsilon_lower_bound"]["epsilon_lower_bound"] for a in report["attacks"].values()
    )
    # with two attacks each bound is computed at 97.5 % so that the maximum holds at 95 %
    assert report["attacks"]["loss"]["epsilon_lower_bound"]["confidence"] == pytest.approx(0.975)
    assert report["consistent"] is True and report["reference_models"] == 1
    np.testing.assert_allclose(mia.loss_scores([1, 0], [0.8, 0.8]), np.log([0.8, 0.2]))


def test_audit_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="non-members labels are not 0/1"):
        mia.audit([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0, 2, 0, 1], [0.1, 0.2, 0.3, 0.4], delta=1e-5)
    with pytest.raises(InputError, match="at least 4 members"):
        mia.epsilon_lower_bound([1.0, 2.0], [0.0, 1.0, 2.0, 3.0], delta=1e-5)
    with pytest.raises(InputError, match="reference predictions are needed"):
        mia.audit([0, 1, 0, 1], [0.1] * 4, [0, 1, 0, 1], [0.1] * 4, delta=1e-5, reference_p_members=[[0.1] * 4])


def test_overfit_non_private_model_leaks_more_than_the_dp_one() -> None:
    """Required: a wide MLP trained non-privately on 100 noisy rows memorizes them; the same
    training with DP-SGD at ε = 1 does not. Same rows, same code path (training.fit)."""
    from privmodel.data.features import EncodedData
    from privmodel.dp.training import TrainConfig, fit

    rng = np.random.default_rng(0)
    n, d = 200, 20
    x = rng.uniform(size=(n, d)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * rng.normal(size=n)) > 0.5).astype(np.float32)  # weak signal, noisy labels

    def encoded(idx: np.ndarray) -> EncodedData:
        return EncodedData(x[idx], np.zeros((idx.size, 0), dtype=np.int64), [], [f"x{i}" for i in range(d)], [])

    members, non_members = np.arange(100), np.arange(100, 200)
    reports = {}
    for name, eps in (("non_private", None), ("dp", 1.0)):
        config = TrainConfig(model="mlp", epsilon=eps, delta=1e-3, epochs=60, batch_size=50, lr=0.01,
                             hidden=(256,), seed=0, accountant="rdp")
        result = fit(encoded(members), y[members], config)
        reports[name] = mia.audit(
            y[members], result.predict_proba(encoded(members)), y[non_members],
            result.predict_proba(encoded(non_members)), delta=1e-3, epsilon_guarantee=result.privacy["epsilon"],
        )
        if eps is not None:
            assert 0 < result.privacy["epsilon"] <= 1.0
    leaky, private = reports["non_private"], reports["dp"]
    assert leaky["attack_auc"] > 0.72
    assert private["attack_auc"] < 0.65
    assert leaky["attack_auc"] - private["attack_auc"] > 0.15
    # the empirical lower bound of the DP model cannot exceed its guarantee
    assert private["epsilon_lower_bound"] <= 1.0 and private["consistent"] is True
    assert leaky["consistent"] is None  # no guarantee to compare with
