"""Report sections for releases, models and federated runs, and the controls table.

Each section reads the JSON artifact the producing layer wrote (anonymize report, model card,
federated card); figures are shown as recorded there, which is what the ledger's hashes vouch for.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from privmodel.report.charts import bar_chart, line_chart
from privmodel.report.evidence import Artifact, Evidence


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


def _recorded(artifact: Artifact) -> str:
    entry = artifact.recorded_by
    return (
        f'<p class="note">{escape(str(artifact.path))} · sha256 <span class="hash">{artifact.sha256[:16]}</span> · '
        f"recorded by ledger entry seq {entry.get('seq')} ({escape(str(entry.get('action')))}, "
        f"{escape(str(entry.get('actor')))})</p>"
    )


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def release_section(artifact: Artifact) -> str:
    """k / l / t achieved, risk distribution, class sizes, utility loss, filtered rows, dropped columns."""
    data = artifact.data
    privacy = data.get("privacy") or {}
    achieved = privacy.get("achieved") or {}
    required = privacy.get("required") or {}
    risk = data.get("risk") or {}
    utility = data.get("utility") or {}
    counts = data.get("counts") or {}
    rows = data.get("rows") or {}
    charts = []
    if achieved.get("class_size_histogram"):
        hist = achieved["class_size_histogram"]
        charts.append(_img(bar_chart(list(hist), list(hist.values()), "Equivalence-class sizes", "class size",
                                     "classes"), "class size histogram"))
    if risk.get("risk_histogram"):
        hist = risk["risk_histogram"]
        charts.append(_img(bar_chart(list(hist), list(hist.values()), "Re-identification risk (prosecutor)",
                                     "risk band", "records"), "risk histogram"))
    l_text = "; ".join(f"{col}: {_fmt(v)}" for col, v in (achieved.get("l") or {}).items()) or "not asked"
    t_text = "; ".join(f"{col}: {_fmt(v)}" for col, v in (achieved.get("t") or {}).items()) or "not asked"
    figures = _table(("figure", "required", "achieved (computed on the release)"), [
        ("k-anonymity", required.get("k"), achieved.get("k")),
        ("l-diversity", required.get("l") or "-", l_text),
        ("t-closeness", required.get("t") or "-", t_text),
        ("algorithm", required.get("algorithm"), privacy.get("algorithm")),
        ("quasi-identifiers", "", privacy.get("quasi_identifiers")),
    ])
    risk_table = _table(("re-identification risk", "value"), [
        ("prosecutor max / avg", f"{_fmt(risk.get('prosecutor_max'))} / {_fmt(risk.get('prosecutor_avg'))}"),
        ("journalist max / avg", f"{_fmt(risk.get('journalist_max'))} / {_fmt(risk.get('journalist_avg'))}"),
        ("marketer", risk.get("marketer")),
        (f"records above risk {_fmt(risk.get('threshold'))}", risk.get("records_at_risk")),
    ])
    utility_table = _table(("utility", "value"), [
        ("NCP (information loss)", utility.get("ncp")),
        ("discernibility", utility.get("discernibility")),
        ("average class size (C_avg)", utility.get("avg_class_size")),
        ("suppressed rows", utility.get("suppressed")),
        *[(f"model utility: {label} ROC-AUC raw -> release",
           f"{_fmt(m.get('auc_raw'))} -> {_fmt(m.get('auc_release'))}")
          for label, m in (data.get("model_utility") or {}).items() if isinstance(m, dict)],
    ])
    flow_table = _table(("rows", "count"), [
        ("input", rows.get("input")),
        ("exact duplicates removed", counts.get("exact_duplicates")),
        ("invalid rows removed", counts.get("invalid_rows_removed")),
        ("removed: no consent for the purpose", counts.get("consent_filtered")),
        ("released", rows.get("released")),
        ("columns dropped (minimisation)", counts.get("dropped_columns")),
    ])
    title = f"{data.get('partner') or artifact.path.parent.name}"
    return (
        f"<section><h2>Release: {escape(str(title))}</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}</div><div class="charts">{figures}{risk_table}</div>'
        f'<div class="charts">{utility_table}{flow_table}</div></section>'
    )


def _history_points(history: Any) -> tuple[list[float], list[float]]:
    points = [(h.get("epoch", i + 1), h.get("epsilon")) for i, h in enumerate(history or []) if isinstance(h, dict)]
    return [p[0] for p in points], [p[1] for p in points]


def model_section(artifact: Artifact) -> str:
    """ROC, calibration, lift, ε over training, fairness gaps and the membership-inference audit."""
    card = artifact.data
    metrics = card.get("metrics") or {}
    privacy = card.get("privacy") or {}
    charts = []
    roc = {name: (c["fpr"], c["tpr"]) for name, c in (metrics.get("roc_curve") or {}).items() if c}
    if roc:
        charts.append(_img(line_chart(roc, "ROC (held-out)", "false positive rate", "true positive rate",
                                      diagonal=True), "ROC curve"))
    calibration = {}
    for name, key in (("private", "reliability"), ("baseline", "baseline_reliability")):
        table = [r for r in metrics.get(key) or [] if r.get("n")]
        if table:
            calibration[name] = ([r["mean_predicted"] for r in table], [r["observed_rate"] for r in table])
    if calibration:
        charts.append(_img(line_chart(calibration, "Calibration (held-out)", "mean predicted", "observed rate",
                                      diagonal=True), "calibration curve"))
    lift = metrics.get("lift") or []
    if lift:
        charts.append(_img(bar_chart([str(r["decile"]) for r in lift], [r["lift"] for r in lift],
                                     "Lift by decile (1 = highest scores)", "decile", "lift"), "lift by decile"))
        if all("cumulative_gain" in r for r in lift):
            deciles = [0.0] + [r["decile"] / len(lift) for r in lift]
            gains = [0.0] + [r["cumulative_gain"] for r in lift]
            charts.append(_img(line_chart({"model": (deciles, gains)}, "Cumulative gain (share of positives found)",
                                          "share of customers contacted", "share of positives", diagonal=True),
                               "cumulative gain by decile"))
    xs, ys = _history_points(card.get("epsilon_history"))
    if xs:
        charts.append(_img(line_chart({"ε": (xs, ys)}, "ε spent over training", "epoch", "ε"), "epsilon over training"))
    comparison = metrics.get("comparison") or {}
    metric_table = _table(("metric (held-out)", "private", "non-private baseline", "difference"), [
        (name, c.get("private"), c.get("baseline"), c.get("difference")) for name, c in comparison.items()
    ])
    privacy_table = _table(("privacy", "value"), [
        ("ε (accountant) / δ", f"{_fmt(privacy.get('epsilon'))} / {_fmt(privacy.get('delta'))}"),
        ("accountant", privacy.get("accountant")),
        ("noise multiplier", privacy.get("noise_multiplier")),
        ("clipping / bound", f"{privacy.get('clipping')} / {_fmt(privacy.get('max_grad_norm'))}"),
        ("sampling rate / steps", f"{_fmt(privacy.get('sample_rate'))} / {privacy.get('steps')}"),
        ("hyper-parameter selection", (card.get("hyperparameter_selection") or {}).get("description")),
        ("budget after this run", (card.get("budget") or {}).get("spent_after")),
    ])
    mia = card.get("membership_inference") or {}
    mia_table = _table(("membership-inference audit", "value"), [
        ("strongest attack", mia.get("strongest_attack")),
        ("attack ROC-AUC (0.5 = guessing)", mia.get("attack_auc")),
        (f"empirical ε lower bound ({_fmt(mia.get('confidence'))} confidence)", mia.get("epsilon_lower_bound")),
        ("ε guarantee of the model", mia.get("epsilon_guarantee")),
        ("consistent with the guarantee", mia.get("consistent")),
    ]) if mia else ""
    fairness_rows = []
    for column, block in ((card.get("fairness") or {}).get("columns") or {}).items():
        fairness_rows.append((column, block.get("demographic_parity_difference"),
                              block.get("equal_opportunity_difference"), ", ".join(block.get("groups") or {})))
    fairness_table = _table(("fairness group column", "demographic parity gap", "equal opportunity gap", "groups"),
                            fairness_rows) if fairness_rows else ""
    model = card.get("model") or {}
    return (
        f"<section><h2>Model: {escape(artifact.path.parent.name)} ({escape(str(model.get('type')))}, "
        f"label {escape(str(model.get('label')))})</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}</div><div class="charts">{metric_table}{privacy_table}</div>'
        f'<div class="charts">{mia_table}{fairness_table}</div></section>'
    )


def curve_section(artifact: Artifact) -> str:
    rows = [r for r in artifact.data.get("rows") or [] if isinstance(r, dict)]
    finite = [r for r in rows if isinstance(r.get("epsilon"), int | float) and r.get("roc_auc") is not None]
    chart = ""
    if finite:
        chart = _img(line_chart({"ROC-AUC": ([r["epsilon"] for r in finite], [r["roc_auc"] for r in finite])},
                                "Privacy-utility curve", "ε (log scale)", "held-out ROC-AUC", xlog=True),
                     "privacy utility curve")
    table = _table(("ε", "ROC-AUC", "± std", "Brier"),
                   [(r.get("epsilon"), r.get("roc_auc"), r.get("roc_auc_std"), r.get("brier")) for r in rows])
    return (f"<section><h2>Privacy-utility curve: {escape(artifact.path.parent.name)}</h2>{_recorded(artifact)}"
            f'<div class="charts">{chart}{table}</div></section>')


def federated_section(artifact: Artifact) -> str:
    """Per-round global and per-silo ROC-AUC, each partner's ε and rounds, rejected updates."""
    card = artifact.data
    rounds = [r for r in card.get("rounds_detail") or [] if isinstance(r, dict)]
    charts = []
    if rounds:
        xs = [r.get("round") for r in rounds]
        series = {"global": (xs, [(r.get("global") or {}).get("auc") for r in rounds])}
        for silo in sorted(rounds[-1].get("per_silo") or {}):
            series[silo] = (xs, [((r.get("per_silo") or {}).get(silo) or {}).get("auc") for r in rounds])
        charts.append(_img(line_chart(series, "Federated rounds: ROC-AUC of the model each round received",
                                      "round", "ROC-AUC"), "federated rounds"))
    final = card.get("final_metrics") or {}
    partners = _table(("partner", "rounds joined", "ε spent (local DP)", "final local ROC-AUC", "confirmed model hash"), [
        (name, len(p.get("rounds") or []), p.get("epsilon"), ((final.get("per_silo") or {}).get(name) or {}).get("auc"),
         p.get("confirmed_hash")) for name, p in (card.get("partners") or {}).items()
    ])
    privacy = card.get("privacy") or {}
    summary = _table(("federated run", "value"), [
        ("strategy / rounds", f"{card.get('strategy')} / {card.get('rounds')}"),
        ("final global ROC-AUC", f"{_fmt((final.get('global') or {}).get('auc'))} "
                                 f"({(final.get('global') or {}).get('source', '')})"),
        ("privacy unit", privacy.get("unit")),
        ("target ε per partner / δ", f"{_fmt(privacy.get('target_epsilon_per_partner'))} / {_fmt(privacy.get('delta'))}"),
        ("client-level DP / secure aggregation", f"{privacy.get('client_level_dp')} / {privacy.get('secure_aggregation')}"),
        ("rejected updates", len(card.get("rejected_updates") or [])),
        ("model hash", str((card.get("model") or {}).get("hash", ""))[:16]),
    ])
    return (
        f"<section><h2>Federated model ({escape(str((card.get('model') or {}).get('kind')))})</h2>{_recorded(artifact)}"
        f'<div class="charts">{"".join(charts)}{summary}</div>{partners}'
        f'<p class="note">{escape(str(card.get("caveat", "")))}</p></section>'
    )


def _actions(evidence: Evidence, prefix: str) -> list[dict[str, Any]]:
    return [e for le in evidence.ledgers for e in le.entries if str(e.get("action", "")).startswith(prefix)]


def controls_rows(evidence: Evidence) -> list[tuple[str, str, str]]:
    """(control, requirement, what this run shows) — stated from the evidence, never assumed."""
    anonymized = _actions(evidence, "anonymize")
    none = '<span class="note">not shown in this run</span>'

    ks = [((a.data.get("privacy") or {}).get("achieved") or {}).get("k") for a in evidence.releases]
    ks = [k for k in ks if k is not None]
    dropped = [(a.data.get("counts") or {}).get("dropped_columns") for a in evidence.releases]
    dropped = [d for d in dropped if d is not None]
    consent = [c for a in evidence.releases if (c := (a.data.get("counts") or {}).get("consent_filtered")) is not None]
    # budget.charge entries are the charges (model.train repeats the same cost for the record)
    eps = [c["epsilon"] for le in evidence.ledgers for e in le.entries
           if e.get("action") == "budget.charge" and e.get("outcome") == "ok"
           and isinstance(c := e.get("privacy_cost"), dict) and isinstance(c.get("epsilon"), int | float)]
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
         f"{len(eps)} budget charge(s) in the ledgers; ε each: {', '.join(f'{e:.3g}' for e in eps)}" if eps else none),
        ("Tamper-evident audit trail", "GDPR Art. 5(2) accountability, Art. 30 records of processing",
         '<span class="good">ledger verified</span>' if verified else '<span class="bad">ledger verification failed</span>'),
    ]
