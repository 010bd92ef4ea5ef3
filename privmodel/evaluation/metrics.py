"""Honest metrics for a propensity model: discrimination, calibration, lift, fairness, baselines.

A churn or purchase model is judged by more than its AUC:
- ROC-AUC and PR-AUC (average precision; the number that matters when positives are rare),
- the Brier score and the expected calibration error with its reliability table: a propensity is
  used as a probability (expected revenue, retention budget), so it has to be calibrated,
- lift and cumulative gain by decile: what a marketing team reads ("the top decile holds 38 % of
  the churners, 3.8 times the base rate"),
- fairness gaps across the groups the policy names (`fairness_groups`): demographic parity
  difference (gap in selection rates) and equal opportunity difference (gap in true positive
  rates), with the per-group rates behind them.

Everything here is computed from labels and scores only, so the same code scores the private
model and its non-private baseline; `compare` puts the two side by side. These metrics are
computed on a held-out split and are NOT differentially private: they are for the data owner and
the model card states so. Groups smaller than `min_group_size` are left out of the gaps and
reported by name only, so that a tiny group's rates cannot single out its members.

numpy is imported at module level (cheap); scikit-learn inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

#: Scalar metrics that `compare` puts side by side (higher-is-better flag for the reader).
SCALAR_METRICS: dict[str, bool] = {
    "roc_auc": True,
    "pr_auc": True,
    "brier": False,
    "log_loss": False,
    "ece": False,
    "top_decile_lift": True,
    "top_decile_gain": True,
}

DEFAULT_SELECTION_RATE = 0.10  # fairness decision rule: the top decile is "selected" (high-risk tier)


class CalibrationBin(TypedDict):
    """One row of the reliability table (rates are None for an empty bin)."""

    bin: int
    lower: float
    upper: float
    n: int
    mean_predicted: float | None
    observed_rate: float | None


class LiftRow(TypedDict):
    """One score decile of the lift table (decile 1 = the highest scores)."""

    decile: int
    n: int
    positives: int
    response_rate: float
    lift: float | None
    cumulative_gain: float | None
    cumulative_lift: float | None
    min_score: float
    max_score: float


class GroupRates(TypedDict):
    """Decision rates of one group of a fairness column."""

    n: int
    base_rate: float
    selection_rate: float
    true_positive_rate: float | None
    false_positive_rate: float | None
    roc_auc: float | None


class ColumnFairness(TypedDict):
    groups: dict[str, GroupRates]
    small_groups: list[str]
    demographic_parity_difference: float | None
    equal_opportunity_difference: float | None


class Fairness(TypedDict):
    decision_rule: str
    threshold: float
    min_group_size: int
    columns: dict[str, ColumnFairness]


class Evaluation(TypedDict):
    """Every metric of one model on one labelled set (JSON-ready; `evaluate` builds it)."""

    n: int
    positives: int
    base_rate: float
    roc_auc: float | None
    roc_curve: dict[str, list[float]] | None
    pr_auc: float | None
    brier: float
    log_loss: float
    ece: float
    reliability: list[CalibrationBin]
    lift: list[LiftRow]
    top_decile_lift: float | None
    top_decile_gain: float | None
    fairness: Fairness | None


class MetricComparison(TypedDict):
    """One metric of the private model beside the non-private baseline."""

    private: float | None
    baseline: float | None
    difference: float | None
    higher_is_better: bool


def _as_labels_scores(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (0/1) and probabilities ([0, 1]); one-line InputError otherwise."""
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float).ravel()
    if y_arr.shape != p_arr.shape:
        raise InputError(f"metrics: {y_arr.size} labels but {p_arr.size} scores")
    if y_arr.size == 0:
        raise InputError("metrics: no rows to evaluate")
    if np.isnan(y_arr).any():
        raise InputError(f"metrics: label is missing at row {int(np.flatnonzero(np.isnan(y_arr))[0])}")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise InputError(f"metrics: label is not 0/1 at row {int(np.flatnonzero(~np.isin(y_arr, (0.0, 1.0)))[0])}")
    bad = ~np.isfinite(p_arr) | (p_arr < 0.0) | (p_arr > 1.0)
    if bad.any():
        raise InputError(f"metrics: score is not a probability in [0, 1] at row {int(np.flatnonzero(bad)[0])}")
    return y_arr.astype(int), p_arr


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.min() != y.max())


def roc_auc(y: ArrayLike, p: ArrayLike) -> float | None:
    """Area under the ROC curve; None when only one class is present (it is undefined then)."""
    from sklearn.metrics import roc_auc_score

    y_arr, p_arr = _as_labels_scores(y, p)
    return float(roc_auc_score(y_arr, p_arr)) if _both_classes(y_arr) else None


def roc_points(y: ArrayLike, p: ArrayLike, max_points: int = 60) -> dict[str, list[float]] | None:
    """The ROC curve thinned to at most `max_points` (for charts); None with a single class."""
    from sklearn.metrics import roc_curve

    y_arr, p_arr = _as_labels_scores(y, p)
    if not _both_classes(y_arr):
        return None
    fpr, tpr, _ = roc_curve(y_arr, p_arr, drop_intermediate=True)
    keep = np.unique(np.linspace(0, fpr.size - 1, min(max_points, fpr.size)).round().astype(int))
    return {"fpr": [round(float(v), 5) for v in fpr[keep]], "tpr": [round(float(v), 5) for v in tpr[keep]]}


def pr_auc(y: ArrayLike, p: ArrayLike) -> float | None:
    """Average precision (step-wise PR-AUC, no optimistic interpolation); None without positives."""
    from sklearn.metrics import average_precision_score

    y_arr, p_arr = _as_labels_scores(y, p)
    return float(average_precision_score(y_arr, p_arr)) if y_arr.any() else None


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probability: calibration and sharpness in one number."""
    from sklearn.metrics import brier_score_loss

    y_arr, p_arr = _as_labels_scores(y, p)
    return float(brier_score_loss(y_arr, p_arr, pos_label=1))


def log_loss(y: ArrayLike, p: ArrayLike) -> float:
    """Binary cross-entropy (scores clipped to [1e-15, 1 - 1e-15] so a hard 0/1 stays finite)."""
    from sklearn.metrics import log_loss as sk_log_loss

    y_arr, p_arr = _as_labels_scores(y, p)
    return float(sk_log_loss(y_arr, np.clip(p_arr, 1e-15, 1 - 1e-15), labels=[0, 1]))


def calibration(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> tuple[float, list[CalibrationBin]]:
    """Expected calibration error over equal-width bins, and the reliability table behind it.

    ECE = sum_b (n_b / n) * |observed rate_b - mean predicted_b|. Bin b covers [b/B, (b+1)/B)
    (the last bin includes 1.0). Empty bins are listed with n = 0 and no rates.
    """
    if n_bins < 1:
        raise InputError("metrics: n_bins must be at least 1")
    y_arr, p_arr = _as_labels_scores(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p_arr, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=p_arr, minlength=n_bins)
    sum_y = np.bincount(index, weights=y_arr, minlength=n_bins)
    table: list[CalibrationBin] = []
    ece = 0.0
    for b in range(n_bins):
        n_b = int(counts[b])
        row: CalibrationBin = {"bin": b + 1, "lower": float(edges[b]), "upper": float(edges[b + 1]), "n": n_b,
                               "mean_predicted": None, "observed_rate": None}
        if n_b:
            mean_p, rate = sum_p[b] / n_b, sum_y[b] / n_b
            row["mean_predicted"], row["observed_rate"] = float(mean_p), float(rate)
            ece += n_b / y_arr.size * abs(rate - mean_p)
        table.append(row)
    return float(ece), table


def lift_table(y: ArrayLike, p: ArrayLike, n_groups: int = 10) -> list[LiftRow]:
    """Lift and cumulative gain by decile (decile 1 = the highest scores).

    Rows are sorted by score, descending (ties keep row order: a stable sort, so the table is
    deterministic), and split into `n_groups` groups whose sizes differ by at most one. Per group:
    n, positives, response rate, lift (rate / base rate), cumulative share of all positives
    captured (gain) and cumulative lift.
    """
    y_arr, p_arr = _as_labels_scores(y, p)
    if n_groups < 1 or n_groups > y_arr.size:
        raise InputError(f"metrics: cannot split {y_arr.size} rows into {n_groups} groups")
    order = np.argsort(-p_arr, kind="stable")
    total_pos = int(y_arr.sum())
    base_rate = total_pos / y_arr.size
    rows: list[LiftRow] = []
    cum_n = cum_pos = 0
    for number, idx in enumerate(np.array_split(order, n_groups), start=1):
        n_g, pos = int(idx.size), int(y_arr[idx].sum())
        cum_n += n_g
        cum_pos += pos
        rate = pos / n_g if n_g else 0.0
        rows.append({
            "decile": number,
            "n": n_g,
            "positives": pos,
            "response_rate": rate,
            "lift": rate / base_rate if base_rate > 0 else None,
            "cumulative_gain": cum_pos / total_pos if total_pos else None,
            "cumulative_lift": (cum_pos / cum_n) / base_rate if base_rate > 0 else None,
            "min_score": float(p_arr[idx].min()),
            "max_score": float(p_arr[idx].max()),
        })
    return rows


def selection_threshold(p: ArrayLike, rate: float = DEFAULT_SELECTION_RATE) -> float:
    """Score at or above which the top `rate` share of rows is selected (the decision rule)."""
    p_arr = np.asarray(p, dtype=float).ravel()
    if not 0.0 < rate <= 1.0:
        raise InputError("metrics: selection rate must be in (0, 1]")
    k = max(1, math.ceil(rate * p_arr.size))
    return float(np.sort(p_arr)[::-1][k - 1])


def fairness(
    y: ArrayLike,
    p: ArrayLike,
    groups: Mapping[str, ArrayLike],
    threshold: float | None = None,
    min_group_size: int = 20,
) -> Fairness:
    """Per-group rates and the largest gaps between groups, per declared group column.

    Decision rule: a row is selected when its score >= `threshold`; the default threshold selects
    the top decile (the high-risk tier that the `score` command flags), so the gaps describe the
    action the business takes. Per group: n, base rate, selection rate, true positive rate and
    the within-group ROC-AUC. demographic_parity_difference = max - min selection rate;
    equal_opportunity_difference = max - min true positive rate (groups without positives are
    skipped for it). Groups under `min_group_size` rows are named in `small_groups` only.
    """
    y_arr, p_arr = _as_labels_scores(y, p)
    thr = selection_threshold(p_arr) if threshold is None else float(threshold)
    selected = p_arr >= thr
    result: Fairness = {
        "decision_rule": "selected = score >= threshold"
        + (f" (top {DEFAULT_SELECTION_RATE:.0%} of scores)" if threshold is None else ""),
        "threshold": thr,
        "min_group_size": min_group_size,
        "columns": {},
    }
    for column, values in groups.items():
        labels = np.asarray(values, dtype=object).ravel()
        if labels.size != y_arr.size:
            raise InputError(f"metrics: fairness column {column} has {labels.size} values for {y_arr.size} rows")
        keys = np.array(["<missing>" if _is_missing(v) else str(v) for v in labels], dtype=object)
        per_group: dict[str, GroupRates] = {}
        small: list[str] = []
        for name in sorted(set(keys.tolist())):
            mask = keys == name
            n_g = int(mask.sum())
            if n_g < min_group_size:
                small.append(name)
                continue
            y_g, s_g = y_arr[mask], selected[mask]
            pos = y_g == 1
            per_group[name] = {
                "n": n_g,
                "base_rate": float(y_g.mean()),
                "selection_rate": float(s_g.mean()),
                "true_positive_rate": float(s_g[pos].mean()) if pos.any() else None,
                "false_positive_rate": float(s_g[~pos].mean()) if (~pos).any() else None,
                "roc_auc": roc_auc(y_g, p_arr[mask]),
            }
        sel = [g["selection_rate"] for g in per_group.values()]
        tpr = [g["true_positive_rate"] for g in per_group.values() if g["true_positive_rate"] is not None]
        result["columns"][column] = {
            "groups": per_group,
            "small_groups": small,
            "demographic_parity_difference": float(max(sel) - min(sel)) if len(sel) >= 2 else None,
            "equal_opportunity_difference": float(max(tpr) - min(tpr)) if len(tpr) >= 2 else None,
        }
    return result


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def evaluate(
    y: ArrayLike,
    p: ArrayLike,
    groups: Mapping[str, ArrayLike] | None = None,
    n_bins: int = 10,
    threshold: float | None = None,
    min_group_size: int = 20,
) -> Evaluation:
    """All metrics of one model on one labelled set, as a JSON-ready dict.

    Keys: n, positives, base_rate, roc_auc, roc_curve (thinned points), pr_auc, brier, log_loss, ece, reliability, lift,
    top_decile_lift, top_decile_gain, fairness (None when no group columns are given).
    """
    y_arr, p_arr = _as_labels_scores(y, p)
    ece, reliability = calibration(y_arr, p_arr, n_bins)
    n_groups = min(10, y_arr.size)
    lift = lift_table(y_arr, p_arr, n_groups)
    return {
        "n": int(y_arr.size),
        "positives": int(y_arr.sum()),
        "base_rate": float(y_arr.mean()),
        "roc_auc": roc_auc(y_arr, p_arr),
        "roc_curve": roc_points(y_arr, p_arr),
        "pr_auc": pr_auc(y_arr, p_arr),
        "brier": brier(y_arr, p_arr),
        "log_loss": log_loss(y_arr, p_arr),
        "ece": ece,
        "reliability": reliability,
        "lift": lift,
        "top_decile_lift": lift[0]["lift"],
        "top_decile_gain": lift[0]["cumulative_gain"],
        "fairness": fairness(y_arr, p_arr, groups, threshold, min_group_size) if groups else None,
    }


def compare(private: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, MetricComparison]:
    """Side by side: each scalar metric of the private model beside the non-private baseline.

    The baseline is the same model trained the same way with no clipping and no noise, so the
    difference is the price of privacy. Fairness gaps are compared per group column as well.
    Returns {metric: {private, baseline, difference, higher_is_better}}.
    """
    rows: dict[str, MetricComparison] = {}
    for key, higher_better in SCALAR_METRICS.items():
        priv = private.get(key)
        base = baseline.get(key) if baseline else None
        rows[key] = {
            "private": priv,
            "baseline": base,
            "difference": (priv - base) if priv is not None and base is not None else None,
            "higher_is_better": higher_better,
        }
    priv_fair = (private.get("fairness") or {}).get("columns", {})
    base_fair = ((baseline or {}).get("fairness") or {}).get("columns", {})
    for column, stats in priv_fair.items():
        for gap in ("demographic_parity_difference", "equal_opportunity_difference"):
            priv = stats.get(gap)
            base = base_fair.get(column, {}).get(gap)
            rows[f"{gap}[{column}]"] = {
                "private": priv,
                "baseline": base,
                "difference": (priv - base) if priv is not None and base is not None else None,
                "higher_is_better": False,
            }
    return rows


def summary_rows(comparison: Mapping[str, MetricComparison]) -> list[Sequence[str]]:
    """Rows (metric, private, baseline, difference) formatted for a table or Markdown."""
    def fmt(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.4f}" if signed else f"{value:.4f}"

    return [(name, fmt(row["private"]), fmt(row["baseline"]), fmt(row["difference"], signed=True))
            for name, row in comparison.items()]
