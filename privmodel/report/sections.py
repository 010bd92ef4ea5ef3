"""Report sections for releases, models and federated runs, and the controls table.

Each section reads the JSON artifact the producing layer wrote (anonymize report, model card,
federated card); figures are shown as recorded there, which is what the ledger's hashes vouch for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from html import escape
from typing import Any

from privmodel.report.charts import bar_chart, line_chart
from privmodel.report.evidence import Artifact, Evidence


def find(data: Any, key: str) -> Any:
    """First value stored under `key` anywhere in a nested dict/list (depth-first)."""
    if isinstance(data, dict):
        if key in data:
            return data[key]
        children: Iterable[Any] = data.values()
    elif isinstance(data, list):
        children = data
    else:
        return None
    for child in children:
        found = find(child, key)
        if found is not None:
            return found
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return escape(", ".join(str(v) for v in value)) or "none"
    if isinstance(value, dict):
        return escape(", ".join(f"{k}={_plain(v)}" for k, v in value.items()))
    return escape(str(value))


def _plain(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scalars(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 12 and all(not isinstance(v, dict | list) for v in value.values()):
            yield name, value
        elif isinstance(value, dict):
            yield from _scalars(value, f"{name}.")
        elif isinstance(value, list) and len(value) > 12:
            continue
        else:
            yield name, value


def figures_table(data: dict[str, Any], groups: Iterable[str]) -> str:
    rows = []
    for group in groups:
        block = data.get(group)
        if isinstance(block, dict):
            rows.extend(
                f"<tr><td>{escape(name)}</td><td>{_fmt(value)}</td></tr>" for name, value in _scalars(block, f"{group}.")
            )
        elif block is not None:
            rows.append(f"<tr><td>{escape(group)}</td><td>{_fmt(block)}</td></tr>")
    return "<table><tr><th>figure</th><th>value</th></tr>" + "".join(rows) + "</table>" if rows else ""


def _recorded(artifact: Artifact) -> str:
    entry = artifact.recorded_by
    return (
        f'<p class="note">{escape(str(artifact.path))} · sha256 <span class="hash">{artifact.sha256[:16]}</span> · '
        f"recorded by ledger entry seq {entry.get('seq')} ({escape(str(entry.get('action')))}, "
        f"{escape(str(entry.get('actor')))})</p>"
    )


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def release_section(artifact: Artifact) -> str:
    data = artifact.data
    charts = []
    hist = find(data, "class_size_histogram")
    if isinstance(hist, dict) and hist:
        charts.append(_img(bar_chart(list(hist), list(hist.values()), "Equivalence-class sizes", "class size", "classes"),
                           "class size histogram"))
    risk_hist = find(data, "risk_histogram")
    if isinstance(risk_hist, dict) and risk_hist:
        charts.append(_img(bar_chart(list(risk_hist), list(risk_hist.values()), "Re-identification risk", "risk",
                                     "records"), "risk histogram"))
    groups = [k for k in data if k not in ("class_size_histogram", "risk_histogram")]
    return (
        f"<section><h2>Release: {escape(artifact.path.parent.name)}</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}</div>{figures_table(data, groups)}</section>'
    )


def model_section(artifact: Artifact) -> str:
    data = artifact.data
    charts = []
    roc = find(data, "roc_curve")
    if isinstance(roc, dict) and "fpr" in roc:
        charts.append(_img(line_chart({"model": (roc["fpr"], roc["tpr"])}, "ROC", "false positive rate",
                                      "true positive rate", diagonal=True), "ROC curve"))
    calibration = find(data, "calibration_curve")
    if isinstance(calibration, dict) and "predicted" in calibration:
        charts.append(_img(line_chart({"model": (calibration["predicted"], calibration["observed"])}, "Calibration",
                                      "predicted", "observed", diagonal=True), "calibration curve"))
    lift = find(data, "lift")
    if isinstance(lift, list) and lift and isinstance(lift[0], dict):
        charts.append(_img(bar_chart([str(r.get("decile")) for r in lift], [r.get("lift", 0) for r in lift],
                                     "Lift by decile", "decile", "lift"), "lift by decile"))
    history = find(data, "epsilon_history")
    if isinstance(history, list) and history:
        charts.append(_img(line_chart({"ε": (list(range(1, len(history) + 1)), history)}, "ε spent over training",
                                      "epoch", "ε"), "epsilon over training"))
    curve = find(data, "privacy_utility_curve")
    if isinstance(curve, list) and curve and isinstance(curve[0], dict):
        finite = [r for r in curve if isinstance(r.get("epsilon"), int | float)]
        charts.append(_img(line_chart({"ROC-AUC": ([r["epsilon"] for r in finite], [r.get("roc_auc") for r in finite])},
                                      "Privacy-utility curve", "ε", "ROC-AUC", xlog=True), "privacy utility curve"))
    groups = [k for k in data if k not in ("roc_curve", "calibration_curve", "epsilon_history")]
    return (
        f"<section><h2>Model: {escape(artifact.path.parent.name)}</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}</div>{figures_table(data, groups)}</section>'
    )


def federated_section(artifact: Artifact) -> str:
    data = artifact.data
    charts = []
    rounds = find(data, "rounds")
    if isinstance(rounds, list) and rounds and isinstance(rounds[0], dict):
        xs = [r.get("round") for r in rounds]
        series = {"global ROC-AUC": (xs, [r.get("roc_auc") for r in rounds])}
        silos = rounds[-1].get("per_silo_auc") or {}
        for silo in silos:
            series[f"silo {silo}"] = (xs, [(r.get("per_silo_auc") or {}).get(silo) for r in rounds])
        charts.append(_img(line_chart(series, "Federated rounds", "round", "ROC-AUC"), "federated rounds"))
    groups = [k for k in data if k != "rounds"]
    return (
        f"<section><h2>Federated model: {escape(artifact.path.parent.name)}</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}</div>{figures_table(data, groups)}</section>'
    )


def _actions(evidence: Evidence, prefix: str) -> list[dict[str, Any]]:
    return [e for le in evidence.ledgers for e in le.entries if str(e.get("action", "")).startswith(prefix)]


def controls_rows(evidence: Evidence) -> list[tuple[str, str, str]]:
    """(control, requirement, what this run shows) — stated from the evidence, never assumed."""
    anonymized = _actions(evidence, "anonymize")
    none = '<span class="note">not shown in this run</span>'

    def across(key: str) -> list[Any]:
        return [v for a in evidence.releases if (v := find(a.data, key)) is not None]

    ks = across("k")
    dropped = across("dropped_columns")
    consent = across("consent_filtered")
    eps = [c["epsilon"] for le in evidence.ledgers for e in le.entries
           if isinstance(c := e.get("privacy_cost"), dict) and isinstance(c.get("epsilon"), int | float)]
    verified = evidence.verified
    return [
        ("Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)",
         "GDPR Art. 4(5), Art. 32; PIPL Art. 73 (de-identification, which is not anonymization)",
         f"{len(anonymized)} anonymize step(s) recorded; keys held apart from the data, referenced by key id only"
         if anonymized else none),
        ("k-anonymity / l-diversity / t-closeness on quasi-identifiers",
         "GDPR Recital 26 (means reasonably likely to identify); re-identification risk",
         f"achieved k = {', '.join(str(k) for k in ks)} (computed on the released data)" if ks else none),
        ("Data minimisation", "GDPR Art. 5(1)(c)",
         f"columns dropped for the purpose: {'; '.join(_fmt(d) for d in dropped)}" if dropped else none),
        ("Consent and purpose filter", "GDPR Art. 5(1)(b) purpose limitation, Art. 6(1)(a)",
         f"rows removed for missing consent: {', '.join(_fmt(c) for c in consent)}" if consent else none),
        ("Differential privacy budget", "Accountability for model training on personal data",
         f"{len(eps)} step(s) with a privacy cost; ε each: {', '.join(f'{e:.3g}' for e in eps)}" if eps else none),
        ("Tamper-evident audit trail", "GDPR Art. 5(2) accountability, Art. 30 records of processing",
         '<span class="good">ledger verified</span>' if verified else '<span class="bad">ledger verification failed</span>'),
    ]
