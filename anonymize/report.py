"""The release report: JSON for machines, a readable text summary for the compliance team.

Every figure comes from code that computed it on the released table (k, l, t, risk, utility) or
counted it during the steps (rows removed by reason, columns dropped). The report holds counts,
column names and policy settings only: never a raw value, token or key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from anonymize.json_values import json_ready

REPORT_FORMAT = 1

#: The model-utility check fits its two logistic regressions on at most this many released rows (a
#: uniform random sample, seeded); the report states the sample and the AUCs' standard errors. At
#: 50,000 rows (15,000 test rows) an AUC near 0.75 has a standard error of about 0.005. Fewer
#: training rows also cost the models a little: on 1M synthetic customers (849,645 released) the
#: release AUC was 0.767 on all rows and 0.748 on 50,000 (0.761 on 100,000, for 3 s more of a
#: 20 s run); the gap raw - release, the figure the check is for, was -0.025 and -0.020.
UTILITY_SAMPLE_ROWS = 50_000


def to_json(report: Mapping[str, object]) -> str:
    return json.dumps(json_ready(report), indent=2, sort_keys=False, allow_nan=False) + "\n"


# --- model utility: does the release still predict the label? ----------------------------------


def label_auc(
    raw: pd.DataFrame,
    release: pd.DataFrame,
    label: str,
    features: Sequence[str],
    seed: int = 0,
    test_size: float = 0.3,
    sampled_from: int | None = None,
) -> dict[str, Any]:
    """ROC-AUC of a logistic regression trained on the release vs on the raw rows (same split).

    `sampled_from`: the number of released rows when `release` is a random sample of them (the
    report then says so); each AUC comes with its Hanley-McNeil standard error on the test split.

    Both models see the same rows (the released ones), the same split and the same preprocessing:
    numeric columns standardized, everything else one-hot. So the gap measures what generalization
    cost the model, not a difference in sample. The model is `anonymize.logit`'s (scikit-learn's
    LogisticRegression fitted by NumPy/SciPy: importing scikit-learn cost more than the fits).
    """
    from anonymize.logit import fit_predict, roc_auc, stratified_split

    y_all = pd.to_numeric(release[label].astype("Float64"), errors="coerce")
    keep = y_all.notna().to_numpy()
    y = y_all[keep].astype(int).to_numpy()
    features = [f for f in features if f in release.columns and f in raw.columns and f != label]
    result: dict[str, Any] = {"label": label, "features": list(features), "rows": int(keep.sum())}
    if sampled_from is not None and sampled_from > len(release):
        result["sample"] = {
            "rows": len(release),
            "of": int(sampled_from),
            "seed": seed,
            "method": "uniform random sample of the released rows, without replacement",
        }
    if not features:
        return {**result, "skipped": "no feature columns"}
    if len(np.unique(y)) < 2 or np.bincount(y).min() < 4:
        return {**result, "skipped": "label has fewer than 4 rows of each class"}
    train, test = stratified_split(y, test_size, seed)
    if len(np.unique(y[test])) < 2:
        return {**result, "skipped": "test split holds one class only"}
    result.update({"train_rows": len(train), "test_rows": len(test), "split_seed": seed})
    for name, frame in (("release", release), ("raw", raw.loc[release.index])):
        x = _model_frame(frame.loc[keep, features])
        score = fit_predict(x.iloc[train], y[train], x.iloc[test])
        result[f"auc_{name}"] = roc_auc(y[test], score)
        result[f"auc_{name}_se"] = auc_standard_error(result[f"auc_{name}"], y[test])
    result["auc_loss"] = result["auc_raw"] - result["auc_release"]
    return result


def auc_standard_error(auc: float, y: np.ndarray) -> float:
    """Hanley & McNeil (1982) standard error of a ROC-AUC on a test set with labels `y` (0/1)."""
    positives, negatives = int(np.sum(y == 1)), int(np.sum(y == 0))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return float(math.sqrt(max(variance, 0.0)))


def _model_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as float with missing -> column mean; everything else as text ('<missing>' for NA)."""
    out: dict[str, pd.Series] = {}
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.astype("Float64").astype(float)
            out[column] = values.fillna(values.mean() if values.notna().any() else 0.0)
        elif pd.api.types.is_datetime64_any_dtype(series):
            days = (series - pd.Timestamp("1970-01-01")).dt.days.astype(float)
            out[column] = days.fillna(days.mean() if days.notna().any() else 0.0)
        else:
            out[column] = series.astype(object).where(series.notna(), "<missing>").astype(str)
    return pd.DataFrame(out, index=frame.index)


# --- text ----------------------------------------------------------------------------------------


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_text(report: Mapping[str, object]) -> str:
    """A readable summary of the JSON report (same figures, no values)."""
    r = json_ready(report)
    lines = [
        f"Release report: policy {r['policy']['name']} (purpose {r['policy']['purpose']}, partner {r['partner']})",
        f"Rows: {r['rows']['input']} in, {r['rows']['released']} released",
        "",
        "Steps",
    ]
    for step in r["steps"]:
        removed = step.get("removed") or {}
        removed_text = ", ".join(f"{k} {v}" for k, v in removed.items()) or "none"
        lines.append(f"  {step['step']:<14} rows {step['rows_in']} -> {step['rows_out']}  (removed: {removed_text})")
    lines += _quality_lines(r["counts"])
    lines += _pseudonymization_lines(r["pseudonymization"])
    lines += _privacy_lines(r)
    lines += _gate_lines(r.get("gate"))
    lines += _model_utility_lines(r.get("model_utility") or {})
    lines += ["", "Decisions"]
    for step in r["steps"]:
        lines += [f"  - {d}" for d in step.get("decisions", [])]
    lines += _timing_lines(r.get("timings") or {})
    return "\n".join(lines) + "\n"


def _timing_lines(timings: Mapping[str, Any]) -> list[str]:
    if not timings:
        return []
    total = sum(float(v) for v in timings.values() if isinstance(v, int | float))
    return [
        "",
        f"Timings (wall seconds on the machine that made the release; {total:.2f} s in all)",
        *(f"  {stage:<14} {float(seconds):.2f}" for stage, seconds in timings.items()),
    ]


def _quality_lines(counts: Mapping[str, Any]) -> list[str]:
    return [
        "",
        "Data quality",
        f"  exact duplicates removed: {counts['exact_duplicates']}",
        f"  duplicate identifiers (kept): {_pairs(counts['duplicate_identifiers'])}",
        f"  token collisions: {_pairs(counts.get('token_collisions'))}",
        f"  missing values: {_pairs(counts['missing_values'])}",
        f"  consent-filtered rows: {counts['consent_filtered']}"
        if counts.get("consent_applicable", True)
        else "  consent filter: not applicable (the purpose names no consent column)",
        f"  dropped columns: {', '.join(counts['dropped_columns']) or 'none'}",
    ]


def _pseudonymization_lines(pseudonymization: Mapping[str, Any]) -> list[str]:
    lines = ["", "Pseudonymization"]
    if not pseudonymization:
        lines.append("  not applicable: the policy declares no identifier column")
    for name, info in pseudonymization.items():
        extra = f", {info['length']} hex chars" if info.get("length") else ""
        extra += ", escrow kept" if info.get("escrow") else ""
        lines.append(f"  {name}: {info['method']}{extra} ({info['values']} values, {info['missing']} missing)")
    return lines


def _privacy_lines(r: Mapping[str, Any]) -> list[str]:
    """Criteria required and achieved, then risk and utility (only when generalization applied)."""
    privacy = r["privacy"]
    lines = ["", "Privacy (computed on the release)"]
    if not privacy.get("applicable", True):
        return [*lines, f"  {privacy['note']}"]
    req, got = privacy["required"], privacy["achieved"]
    req_l = req.get("l") or {}
    lines += [
        f"  algorithm: {privacy['algorithm']}",
        f"  k: required {req['k']}, achieved {_fmt(got.get('k'))}",
        f"  equivalence classes: {_fmt(got.get('classes'))}",
    ]
    l_req = f"{req_l['variant']} {req_l['value']}" if req_l else "none"
    t_req = _fmt(req.get("t")) if req.get("t") is not None else "none"
    for column, l_got in (got.get("l") or {}).items():
        lines.append(
            f"  l ({column}): required {l_req}; achieved distinct {_fmt(l_got.get('distinct'))}, "
            f"entropy {_fmt(l_got.get('entropy'), 3)}"
        )
    for column, t_got in (got.get("t") or {}).items():
        lines.append(f"  t ({column}): required {t_req}; achieved {_fmt(t_got, 3)}")
    if got.get("class_size_histogram"):
        lines.append(f"  class sizes: {_pairs(got['class_size_histogram'])}")
    lines += ["", "Re-identification risk", *_scalar_lines(r.get("risk") or {})]
    utility = r.get("utility") or {}
    lines += ["", "Utility", *_scalar_lines(utility)]
    if utility.get("levels"):
        lines.append(f"  generalization levels: {_pairs(utility['levels'])}")
    return lines


def _scalar_lines(figures: Mapping[str, object]) -> list[str]:
    return [f"  {key}: {_fmt(value)}" for key, value in figures.items() if not isinstance(value, dict | list)]


def _gate_lines(gate: Mapping[str, Any] | None) -> list[str]:
    if not gate:
        return []
    checks = [
        f"  {c['criterion']}: required {c['required']}; achieved {c['achieved']} -- {'passed' if c['passed'] else 'FAILED'}"
        for c in gate["checks"]
    ]
    return [
        "",
        "Release gate (every criterion re-checked on the final table)",
        *(checks or ["  not applicable: the policy states no criterion that applies to this table"]),
    ]


def _model_utility_lines(model_utility: Mapping[str, Any]) -> list[str]:
    if not model_utility:
        return []
    lines = ["", "Model utility (ROC-AUC, same rows and split)"]
    for label, auc in model_utility.items():
        if "skipped" in auc:
            lines.append(f"  {label}: skipped ({auc['skipped']})")
        else:
            sample = auc.get("sample")
            rows = f"{auc['test_rows']} test rows"
            if sample:
                rows += f" of a random sample of {sample['rows']} of the {sample['of']} released rows, seed {sample['seed']}"
            se = auc.get("auc_release_se"), auc.get("auc_raw_se")
            precision = f"; standard error {se[0]:.3f} / {se[1]:.3f}" if None not in se else ""
            lines.append(
                f"  {label}: release {auc['auc_release']:.3f} vs raw {auc['auc_raw']:.3f} "
                f"(logistic regression, {rows}{precision})"
            )
    return lines


def _pairs(mapping: Mapping[str, object] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (mapping or {}).items()) or "none"
