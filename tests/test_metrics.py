"""Metrics: values against scikit-learn and hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from anonymize.errors import InputError
from privmodel.evaluation import metrics


def test_hand_computed_auc_and_average_precision() -> None:
    y, p = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4
    assert metrics.roc_auc(y, p) == pytest.approx(0.75)
    # ranked: 0.8 (+) precision 1 at recall 0.5; 0.4 (-); 0.35 (+) precision 2/3 at recall 1
    assert metrics.pr_auc(y, p) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert metrics.brier(y, p) == pytest.approx((0.01 + 0.16 + 0.65**2 + 0.04) / 4)


def test_matches_sklearn_on_random_scores() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 0, 1)
    result = metrics.evaluate(y, p)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert result["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert result["brier"] == pytest.approx(brier_score_loss(y, p))
    assert result["log_loss"] == pytest.approx(log_loss(y, p))
    assert result["n"] == 500 and result["positives"] == int(y.sum())
    assert result["fairness"] is None
    # the reliability table agrees with scikit-learn's calibration curve on the non-empty bins
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = [row for row in result["reliability"] if row["n"] > 0]
    assert [r["observed_rate"] for r in filled] == pytest.approx(list(prob_true))
    assert [r["mean_predicted"] for r in filled] == pytest.approx(list(prob_pred))
    assert sum(r["n"] for r in result["reliability"]) == 500


def test_ece_on_constructed_examples() -> None:
    # ten rows all predicted 0.2, half positive: one bin, ECE = |0.5 - 0.2|
    ece, table = metrics.calibration([1] * 5 + [0] * 5, [0.2] * 10)
    assert ece == pytest.approx(0.3)
    assert [r["n"] for r in table] == [0, 0, 10, 0, 0, 0, 0, 0, 0, 0]
    assert table[2]["observed_rate"] == pytest.approx(0.5) and table[2]["mean_predicted"] == pytest.approx(0.2)
    # 4 rows at 0.05 all negative (error 0.05) and 6 rows at 1.0 all positive (error 0, last bin)
    ece, table = metrics.calibration([0] * 4 + [1] * 6, [0.05] * 4 + [1.0] * 6)
    assert ece == pytest.approx(0.4 * 0.05)
    assert table[0]["n"] == 4 and table[-1]["n"] == 6
    # a perfectly calibrated two-bin case has ECE 0
    ece, _ = metrics.calibration([1, 0, 0, 0, 1, 1, 1, 0], [0.25] * 4 + [0.75] * 4)
    assert ece == pytest.approx(0.0)


def test_lift_and_gain_by_decile() -> None:
    # 100 rows, 10 positives (base rate 0.1): 5 positives in the top decile, 3 in the second,
    # 2 in the last one.
    n = 100
    p = np.linspace(1.0, 0.01, n)  # strictly descending: row i is at rank i
    y = np.zeros(n, dtype=int)
    y[[0, 2, 4, 6, 8]] = 1
    y[[10, 11, 12]] = 1
    y[[97, 99]] = 1
    table = metrics.lift_table(y, p)
    assert [r["n"] for r in table] == [10] * 10
    assert [r["positives"] for r in table] == [5, 3, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[0]["lift"] == pytest.approx(5.0)
    assert table[0]["cumulative_gain"] == pytest.approx(0.5)
    assert table[1]["cumulative_gain"] == pytest.approx(0.8)
    assert table[1]["cumulative_lift"] == pytest.approx((8 / 20) / 0.1)
    assert table[-1]["cumulative_gain"] == pytest.approx(1.0)
    assert table[-1]["cumulative_lift"] == pytest.approx(1.0)
    result = metrics.evaluate(y, p)
    assert result["top_decile_lift"] == pytest.approx(5.0)
    assert result["top_decile_gain"] == pytest.approx(0.5)


def test_lift_uneven_sizes_and_ties_are_deterministic() -> None:
    table = metrics.lift_table([1, 0, 1, 0, 0, 1, 0], [0.5] * 7, n_groups=3)
    assert [r["n"] for r in table] == [3, 2, 2]
    assert [r["positives"] for r in table] == [2, 0, 1]  # stable order on ties: rows 0-2, 3-4, 5-6


def _fairness_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group A: 40 rows, 20 positives; 15 positives and 5 negatives selected (score 0.9).
    Group B: 40 rows, 10 positives; 5 positives and 3 negatives selected. Group C: 5 rows."""
    y, p, g = [], [], []

    def add(group: str, label: int, selected: int, total: int) -> None:
        for i in range(total):
            y.append(label)
            p.append(0.9 if i < selected else 0.1)
            g.append(group)

    add("A", 1, 15, 20)
    add("A", 0, 5, 20)
    add("B", 1, 5, 10)
    add("B", 0, 3, 30)
    add("C", 1, 2, 3)
    add("C", 0, 0, 2)
    return np.array(y), np.array(p), np.array(g, dtype=object)


def test_fairness_gaps_on_constructed_case() -> None:
    y, p, g = _fairness_case()
    result = metrics.fairness(y, p, {"gender": g}, threshold=0.5, min_group_size=20)
    col = result["columns"]["gender"]
    assert set(col["groups"]) == {"A", "B"} and col["small_groups"] == ["C"]
    assert col["groups"]["A"]["selection_rate"] == pytest.approx(0.5)
    assert col["groups"]["A"]["true_positive_rate"] == pytest.approx(0.75)
    assert col["groups"]["A"]["false_positive_rate"] == pytest.approx(0.25)
    assert col["groups"]["B"]["selection_rate"] == pytest.approx(0.2)
    assert col["groups"]["B"]["true_positive_rate"] == pytest.approx(0.5)
    assert col["groups"]["B"]["base_rate"] == pytest.approx(0.25)
    assert col["demographic_parity_difference"] == pytest.approx(0.3)
    assert col["equal_opportunity_difference"] == pytest.approx(0.25)
    # the default decision rule is the top decile of scores
    default = metrics.fairness(y, p, {"gender": g})
    assert default["threshold"] == pytest.approx(0.9)  # 30 of 85 rows score 0.9; the top 9 are among them
    assert "top 10%" in default["decision_rule"]


def test_compare_puts_baseline_beside_private() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good = np.clip(0.6 * y + rng.uniform(0, 0.4, 300), 0, 1)
    weak = np.clip(0.2 * y + rng.uniform(0, 0.8, 300), 0, 1)
    private, baseline = metrics.evaluate(y, weak), metrics.evaluate(y, good)
    table = metrics.compare(private, baseline)
    assert table["roc_auc"]["private"] == private["roc_auc"]
    assert table["roc_auc"]["baseline"] == baseline["roc_auc"]
    assert table["roc_auc"]["difference"] == pytest.approx(private["roc_auc"] - baseline["roc_auc"])
    assert table["roc_auc"]["difference"] < 0 and table["brier"]["higher_is_better"] is False
    no_base = metrics.compare(private, None)
    assert no_base["roc_auc"]["baseline"] is None and no_base["roc_auc"]["difference"] is None
    rows = metrics.summary_rows(table)
    assert rows[0][0] == "roc_auc" and rows[0][3].startswith("-")


def test_single_class_auc_is_undefined_not_wrong() -> None:
    assert metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert metrics.pr_auc([0, 0, 0], [0.2, 0.5, 0.9]) is None


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "label is not 0/1 at row 2"),
        ([0, 1, np.nan], [0.1, 0.2, 0.3], "label is missing at row 2"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "not a probability in \\[0, 1\\] at row 1"),
        ([0, 1, 1], [0.1, 0.2, 1.5], "at row 2"),
        ([0, 1], [0.1, 0.2, 0.3], "2 labels but 3 scores"),
        ([], [], "no rows"),
    ],
)
def test_bad_input_is_one_line(y: list, p: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        metrics.evaluate(y, p)
