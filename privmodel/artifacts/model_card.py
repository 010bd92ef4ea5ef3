"""Model card: what was trained on what, under which guarantee, and how well it does (JSON + Markdown).

The card is the document a compliance officer signs off and a data scientist cites. It records:
the data and policy by content hash (never by content), the features and how each was
preprocessed (public bounds / categories from the policy, never data statistics), the privacy
guarantee as computed by the accountant (ε, δ, accountant, noise multiplier, clipping, sampling
rate, steps), the total privacy cost charged to the dataset's budget including hyper-parameter
selection, every metric beside the non-private baseline, the membership-inference audit with its
empirical ε lower bound, and the fairness gaps across the policy's groups.

Never raw values: group names appear only when they are public categories declared in the policy
(otherwise "group 1", "group 2", ...); `check_no_raw_values` scans the rendered card for cell
values of identifier / sensitive columns before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError
from anonymize.json_values import json_ready
from privmodel.core.fileio import atomic_write_text
from privmodel.dp.secure_noise import INSECURE_WARNING, SECURE

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.evaluation.metrics import Fairness

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
CARD_VERSION = 1
PRIVACY_FIELDS = ("epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm", "clipping",
                  "sample_rate", "steps")
METRICS_CAVEAT = (
    "Metrics and the fairness table are computed on a held-out split of the same dataset; they are "
    "not differentially private and are meant for the data owner, not for publication."
)
NO_SELECTION = {
    "method": "fixed",
    "description": "hyper-parameters were fixed before training; no search on the data",
    "trials": 1,
    "epsilon": 0.0,
    "delta": 0.0,
}


def feature_statements(policy: Policy | None, features: Sequence[str]) -> list[dict[str, Any]]:
    """How each feature was preprocessed, from the policy's public metadata only."""
    rows: list[dict[str, Any]] = []
    for name in features:
        col = policy.columns.get(name) if policy is not None else None
        entry: dict[str, Any] = {"name": name, "type": getattr(col, "type", None),
                                 "role": getattr(col, "role", None)}
        if col is not None and col.bounds is not None:
            lo, hi = col.bounds
            entry["bounds"] = [lo, hi]
            entry["preprocessing"] = f"clipped to the public bounds [{lo:g}, {hi:g}] from the policy and scaled to [0, 1]"
            if getattr(col, "transform", "none") == "log1p":
                entry["transform"] = "log1p"
                entry["preprocessing"] = (f"clipped to the public bounds [{lo:g}, {hi:g}] from the policy, log1p "
                                          "applied to the value and the bounds alike, then scaled to [0, 1]")
        elif col is not None and col.categories is not None:
            entry["categories"] = len(col.categories)
            entry["preprocessing"] = (f"one code per public category ({len(col.categories)} declared in the policy); "
                                      "values outside them (or missing) share the unknown code")
        elif col is not None and col.type == "boolean":
            entry["preprocessing"] = "0/1"
        else:
            entry["preprocessing"] = "generalized release value mapped with public metadata only"
        rows.append(entry)
    return rows


def public_fairness(fairness: Mapping[str, Any] | None, public_categories: Mapping[str, Iterable[str]]) -> Fairness | None:
    """Fairness results with group names kept only where they are public policy categories."""
    if not fairness:
        return None
    out = json.loads(json.dumps(json_ready(fairness)))
    for column, stats in out.get("columns", {}).items():
        allowed = {str(c) for c in public_categories.get(column, ())}
        renamed, index = {}, 0
        for name, rates in stats.get("groups", {}).items():
            if name in allowed:
                renamed[name] = rates
            else:
                index += 1
                renamed[f"group {index}"] = rates
        stats["groups"] = renamed
        stats["small_groups"] = [n if n in allowed else "(undeclared group)" for n in stats.get("small_groups", [])]
    return out


def build_card(
    *,
    model_type: str,
    label: str,
    features: Sequence[Mapping[str, Any]],
    data: Mapping[str, Any],
    privacy: Mapping[str, Any],
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    baseline_metrics: Mapping[str, Any] | None,
    comparison: Mapping[str, Any],
    mia: Mapping[str, Any] | None,
    selection: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    public_categories: Mapping[str, Iterable[str]] | None = None,
    epsilon_history: Sequence[Mapping[str, Any]] | None = None,
    created: str | None = None,
    guarantee: str | None = None,
    released_without_dp: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the card dict. `privacy` is FitResult.privacy, copied field for field.

    `total_privacy_cost` is what the budget was charged: the training run, or the whole search
    when hyper-parameters were selected on the data (`selection`).
    """
    missing = [f for f in PRIVACY_FIELDS if f not in privacy]
    if missing:
        raise InputError(f"model card: privacy record lacks {', '.join(missing)}")
    selection = dict(selection or NO_SELECTION)
    eps = privacy["epsilon"]
    # private only when the accountant produced a finite ε AND the run says it added noise
    private = eps is not None and math.isfinite(float(eps)) and bool(privacy.get("private", True))
    if selection.get("method", "fixed") != "fixed":
        total = {"epsilon": selection["epsilon"], "delta": selection["delta"]}
    else:
        total = {"epsilon": eps, "delta": privacy["delta"]}
    categories = public_categories or {}
    card = {
        "card_version": CARD_VERSION,
        "created": created or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {"type": model_type, "label": label, "n_features": len(features)},
        "data": dict(data),
        "features": [dict(f) for f in features],
        "preprocessing": "Features are encoded with the policy's public bounds and categories only; no "
        "statistic of the data (mean, min, max, vocabulary) enters the encoder, so preprocessing "
        "spends no privacy budget.",
        "privacy": {**{k: privacy[k] for k in PRIVACY_FIELDS},
                    **{k: v for k, v in privacy.items() if k not in PRIVACY_FIELDS}, "private": private},
        "epsilon_history": list(epsilon_history or []),
        "total_privacy_cost": total,
        "hyperparameter_selection": selection,
        "budget": dict(budget) if budget else None,
        "training": dict(training),
        "metrics": {"private": _strip_tables(metrics), "baseline": _strip_tables(baseline_metrics),
                    "comparison": dict(comparison), "caveat": METRICS_CAVEAT,
                    "lift": metrics.get("lift"), "reliability": metrics.get("reliability"),
                    "baseline_reliability": (baseline_metrics or {}).get("reliability"),
                    "roc_curve": {"private": metrics.get("roc_curve"),
                                  "baseline": (baseline_metrics or {}).get("roc_curve")}},
        "fairness": public_fairness(metrics.get("fairness"), categories),
        "baseline_fairness": public_fairness((baseline_metrics or {}).get("fairness"), categories),
        "membership_inference": dict(mia) if mia else None,
        "guarantee": guarantee,
        "released_without_dp": [dict(item) for item in released_without_dp or []],
    }
    if privacy.get("noise", SECURE) != SECURE:  # test-only reproducible noise: say so before anything else
        card = {"warning": INSECURE_WARNING, **card}
    return json_ready(card)


def _strip_tables(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Scalar metrics only (the lift / reliability tables are stored once, fairness separately)."""
    if m is None:
        return None
    return {k: v for k, v in m.items() if k not in ("lift", "reliability", "fairness", "roc_curve")}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _md(value: Any) -> str:
    """A name or value from data or policy as inert Markdown text: no raw HTML, link or table break."""
    out = _fmt(value).replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "|`[]":
        out = out.replace(char, "\\" + char)
    return " ".join(out.splitlines())


def render_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown a reviewer can read top to bottom."""
    model = card["model"]
    lines = [f"**{card['warning']}**", ""] if card.get("warning") else []
    lines += [
        f"# Model card: {_md(model['type'])} propensity model for **{_md(model['label'])}**",
        "",
        f"Created {card['created']}.",
        "",
    ]
    lines += _warning_lines(card.get("warnings") or [])
    lines += _privacy_lines(card)
    lines += _budget_lines(card.get("budget"))
    lines += _data_and_metrics_lines(card)
    lines += _fairness_lines(card)
    lines += _not_dp_lines(card.get("released_without_dp") or [])
    lines += _audit_lines(card.get("membership_inference"))
    lines += _timing_lines(card.get("timings") or {}, card.get("engine"))
    return "\n".join(lines) + "\n"


def _timing_lines(timings: Mapping[str, float], engine: str | None = None) -> list[str]:
    """Wall seconds of each stage of the run that made the model (what a larger table will cost), and
    the engine its data preparation ran on."""
    if not timings:
        return []
    on = f" (data preparation on the {_md(engine)} engine)" if engine else ""
    return ["## Run time", "", f"Wall seconds per stage{on}: "
            + ", ".join(f"{_md(stage.replace('_', ' '))} {seconds:.2f}" for stage, seconds in timings.items()) + ".", ""]


def _warning_lines(warnings: Sequence[str]) -> list[str]:
    """Quality warnings (a private model no better than a constant) before anything else."""
    return [line for w in warnings for line in (f"**WARNING: {_md(w)}**", "")]


def _privacy_lines(card: Mapping[str, Any]) -> list[str]:
    """The guarantee, its parameters, the total cost and how the hyper-parameters were chosen."""
    p, total, sel = card["privacy"], card["total_privacy_cost"], card["hyperparameter_selection"]
    lines = ["## Privacy guarantee", ""]
    if p["private"]:
        lines += [
            f"The model was trained with DP-SGD and is **({_fmt(p['epsilon'])}, {_fmt(p['delta'])})-differentially "
            f"private**, as computed by the {_md(p['accountant'])} accountant.",
            "",
        ]
        if card.get("guarantee"):
            lines += [f"**{card['guarantee']}**", ""]
    else:
        lines += ["**This model is not differentially private** (no noise was added).", ""]
    lines += ["| parameter | value |", "|---|---|"]
    for key in PRIVACY_FIELDS:
        lines.append(f"| {key} | {_md(p.get(key))} |")
    return [
        *lines,
        "",
        f"Total privacy cost charged to the dataset's budget: ε = {_fmt(total['epsilon'])}, "
        f"δ = {_fmt(total['delta'])}.",
        "",
        "## Hyper-parameter selection",
        "",
        f"Method: **{_md(sel.get('method'))}** ({_md(sel.get('trials', 1))} trial(s)); privacy cost ε = "
        f"{_fmt(sel.get('epsilon'))}, δ = {_fmt(sel.get('delta'))}. {_md(sel.get('description', ''))}",
        "",
    ]


def _budget_lines(b: Mapping[str, Any] | None) -> list[str]:
    if not b:
        return []
    lines = ["## Budget", "", "| | ε | δ |", "|---|---|---|"]
    for key in ("cap", "spent_before", "spent_after"):
        if b.get(key):
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(b[key].get('epsilon'))} | {_fmt(b[key].get('delta'))} |")
    return [*lines, ""]


def _data_and_metrics_lines(card: Mapping[str, Any]) -> list[str]:
    """Data fingerprint, feature preprocessing, metrics beside the baseline and lift by decile."""
    lines = [
        "## Data",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {_md(k)} | {_md(v)} |" for k, v in card["data"].items()],
        "",
        "## Features and preprocessing",
        "",
        card["preprocessing"],
        "",
        "| feature | type | preprocessing |",
        "|---|---|---|",
        *[f"| {_md(f['name'])} | {_md(f.get('type') or '')} | {_md(f.get('preprocessing', ''))} |"
          for f in card["features"]],
        "",
        "## Metrics (held-out split) beside the non-private baseline",
        "",
        card["metrics"]["caveat"],
        "",
        "| metric | private | baseline | difference |",
        "|---|---|---|---|",
    ]
    for name, row in card["metrics"]["comparison"].items():
        diff = row.get("difference")
        lines.append(f"| {_md(name)} | {_fmt(row.get('private'))} | {_fmt(row.get('baseline'))} | "
                     f"{'n/a' if diff is None else f'{diff:+.4f}'} |")
    lift = card["metrics"].get("lift") or []
    if lift:
        lines += ["", "Lift by decile (private model; decile 1 = highest scores):", "",
                  "| decile | rows | positives | response rate | lift | cumulative gain |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['decile']} | {r['n']} | {r['positives']} | {_fmt(r['response_rate'])} | {_fmt(r['lift'])} | "
                  f"{_fmt(r['cumulative_gain'])} |" for r in lift]
    return lines


def _fairness_lines(card: Mapping[str, Any]) -> list[str]:
    """Per declared group column: parity gaps beside the baseline's and the per-group table."""
    lines = ["", "## Fairness", ""]
    fair = card.get("fairness")
    if not fair:
        lines.append("No fairness groups are declared in the policy.")
        return lines
    lines += [f"Decision rule: {fair['decision_rule']} (threshold {_fmt(fair['threshold'])}).", ""]
    base = (card.get("baseline_fairness") or {}).get("columns", {})
    for column, stats in fair["columns"].items():
        b = base.get(column, {})
        lines += [
            f"**{_md(column)}**: demographic parity difference {_fmt(stats['demographic_parity_difference'])} "
            f"(baseline {_fmt(b.get('demographic_parity_difference'))}), equal opportunity difference "
            f"{_fmt(stats['equal_opportunity_difference'])} (baseline {_fmt(b.get('equal_opportunity_difference'))}).",
            "",
            "| group | rows | base rate | selection rate | true positive rate |",
            "|---|---|---|---|---|",
            *[f"| {_md(g)} | {r['n']} | {_fmt(r['base_rate'])} | {_fmt(r['selection_rate'])} | "
              f"{_fmt(r['true_positive_rate'])} |" for g, r in stats["groups"].items()],
            "",
        ]
        if stats.get("small_groups"):
            lines += [f"{len(stats['small_groups'])} group(s) below {fair['min_group_size']} rows are left out.", ""]
    return lines


def _audit_lines(audit: Mapping[str, Any] | None) -> list[str]:
    """The membership-inference attacks and the empirical epsilon lower bound against the guarantee."""
    lines = ["## Membership-inference audit", ""]
    if not audit:
        lines.append("Not run.")
        return lines
    verdict = ("" if audit.get("consistent") is None else
               (" — consistent." if audit["consistent"] else " — **exceeds the guarantee: investigate**."))
    return [
        *lines,
        f"{_md(audit['method'])}. Members: {audit['members']} training rows; non-members: "
        f"{audit['non_members']} held-out rows.",
        "",
        "| attack | ROC-AUC | TPR at 1% FPR | TPR at 10% FPR | empirical ε lower bound |",
        "|---|---|---|---|---|",
        *[f"| {_md(name)} | {_fmt(a['auc'])} | {_fmt(a['tpr_at_1pct_fpr'])} | {_fmt(a['tpr_at_10pct_fpr'])} | "
          f"{_fmt(a['epsilon_lower_bound']['epsilon_lower_bound'])} |" for name, a in audit["attacks"].items()],
        "",
        f"Empirical ε lower bound (all attacks, {audit['confidence']:.0%} confidence): "
        f"**{_fmt(audit['epsilon_lower_bound'])}** against the guarantee ε = {_fmt(audit.get('epsilon_guarantee'))}"
        + verdict
        + " A bound from one model on natural rows is loose by design: it detects gross failures, "
        "it does not show the accountant is tight.",
        "",
    ]


def _not_dp_lines(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """The card's list of figures computed from private rows WITHOUT differential privacy."""
    lines = ["## Released without differential privacy", ""]
    if not items:
        return [*lines, "Nothing: every figure on this card computed from private rows is DP-accounted.", ""]
    lines += ["These figures were computed from private rows and are NOT covered by the ε above; they are for "
              "the data owner, not for publication.", "", "| figure | computed from |", "|---|---|"]
    lines += [f"| {item['figure']} | {item['source']} |" for item in items]
    return [*lines, ""]


def check_no_raw_values(text: str, frame: pd.DataFrame | None, columns: Iterable[str], min_length: int = 4) -> None:
    """Refuse (InputError naming the column, never the value) if a cell of `columns` appears in text.

    Used on the rendered card before writing: identifiers and sensitive attributes must never leak
    into a document meant for reviewers. Short values (< `min_length` characters) are skipped:
    "F" or "12" occur in any text by chance.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in columns:
        if frame is None or column not in frame.columns:
            continue
        values = pa.array(frame[column].dropna().astype(str).array, from_pandas=True).cast(pa.large_string())
        values = values.filter(pc.greater_equal(pc.utf8_length(values), min_length))
        lengths = sorted(set(pc.unique(pc.utf8_length(values)).to_pylist()))
        if len(lengths) * len(text) <= max(10 * len(values), 1_000_000):
            # every substring of the text as long as some value, looked up in one hash join: the same
            # test as `value in text` per value, without a scan of the text per value (1M tokens)
            pieces = pa.array(sorted({text[i:i + n] for n in lengths for i in range(len(text) - n + 1)}),
                              type=pa.large_string())
            found = bool(pc.any(pc.is_in(values, value_set=pieces)).as_py())
        else:
            found = any(value in text for value in values.to_pylist())
        if found:
            raise InputError(f"model card: would contain a raw value of column {column}; refusing to write it")


def write_card(directory: str | os.PathLike[str], card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write model_card.json and model_card.md atomically into `directory`."""
    out = Path(directory)
    json_path, md_path = out / CARD_JSON, out / CARD_MD
    atomic_write_text(json_path, json.dumps(card, indent=2, sort_keys=False, allow_nan=False) + "\n")
    atomic_write_text(md_path, render_markdown(card))
    return json_path, md_path


def read_card(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a model directory's card (one-line error if it is missing or corrupt)."""
    path = Path(directory) / CARD_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no model card (not a model directory?)") from None
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: unreadable model card") from None
