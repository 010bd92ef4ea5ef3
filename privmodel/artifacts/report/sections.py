"""Report sections for releases, models, curves, federated and vertical runs, as plain data for the template.

Each section reads the JSON artifact the producing layer wrote (anonymize report, model card,
federated card); figures are shown as recorded there, which is what the ledger's hashes vouch for.
Nothing here builds markup: sections are titles, tables of text cells and chart images, and the
autoescaping template lays them out. Artifacts are untrusted (a forged ledger can vouch for any
file), so every field is read through accessors that tolerate any JSON type.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from privmodel.artifacts.report.charts import bar_chart, line_chart
from privmodel.artifacts.report.evidence import Artifact


@dataclass
class Cell:
    text: str
    cls: str = ""  # a CSS class name chosen by this module ("good", "bad", "num", "hash"), never from data


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Chart:
    uri: str  # data:image/png;base64,... built by charts.py
    alt: str


@dataclass
class Section:
    title: str
    note: str = ""
    charts: list[Chart] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)


# --- tolerant accessors -------------------------------------------------------------------------

def as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def as_number(value: object) -> float | None:
    """A finite int/float (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def text(value: object, depth: int = 0) -> str:
    """Any JSON value as short readable text (escaping is the template's job); nesting past a few
    levels is elided, so a crafted, deeply nested field cannot exhaust the stack."""
    if depth > 8:
        return "…"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "not a number"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(text(v, depth + 1) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {text(v, depth + 1)}" for k, v in value.items()) or "none"
    return str(value)


def eps_text(value: object) -> str:
    """ε or δ in words: 3.0 stays "3.0", 0.99123 becomes "0.991", tiny δ in scientific notation."""
    number = as_number(value)
    if number is None:
        return "∞" if isinstance(value, float) and value == math.inf else text(value)
    if number == int(number) and abs(number) < 1e6:
        return f"{number:.1f}"
    if abs(number) < 1e-3:
        return f"{number:.2g}"
    return f"{number:.3g}"


def row(*values: object) -> list[Cell]:
    return [v if isinstance(v, Cell) else Cell(text(v)) for v in values]


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    return Table(list(header), [row(*r) for r in rows])


def recorded_note(artifact: Artifact) -> str:
    entry = artifact.recorded_by
    return (f"{artifact.path} · sha256 {artifact.sha256[:16]} · recorded by ledger entry seq {text(entry.get('seq'))} "
            f"({text(entry.get('action'))}, {text(entry.get('actor'))})")


def _points(xs: Iterable[object], ys: Iterable[object]) -> tuple[list[float], list[float]]:
    pairs = [(as_number(x), as_number(y)) for x, y in zip(xs, ys, strict=False)]
    kept = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [p[0] for p in kept], [p[1] for p in kept]


def _histogram_chart(hist: object, title: str, xlabel: str, ylabel: str, alt: str) -> list[Chart]:
    bars = [(str(k), number) for k, v in as_dict(hist).items() if (number := as_number(v)) is not None]
    if not bars:
        return []
    return [Chart(bar_chart([b[0] for b in bars], [b[1] for b in bars], title, xlabel, ylabel), alt)]


# --- sections -----------------------------------------------------------------------------------

def release_section(artifact: Artifact) -> Section:
    """k / l / t achieved, risk distribution, class sizes, utility loss, filtered rows, dropped columns."""
    data = artifact.data
    privacy = as_dict(data.get("privacy"))
    achieved = as_dict(privacy.get("achieved"))
    required = as_dict(privacy.get("required"))
    risk = as_dict(data.get("risk"))
    utility = as_dict(data.get("utility"))
    counts = as_dict(data.get("counts"))
    rows = as_dict(data.get("rows"))
    charts = _histogram_chart(achieved.get("class_size_histogram"), "Equivalence-class sizes", "class size",
                              "classes", "class size histogram")
    charts += _histogram_chart(risk.get("risk_histogram"), "Re-identification risk (prosecutor)", "risk band",
                               "records", "risk histogram")
    l_text = "; ".join(f"{col}: {text(v)}" for col, v in as_dict(achieved.get("l")).items()) or "not asked"
    t_text = "; ".join(f"{col}: {text(v)}" for col, v in as_dict(achieved.get("t")).items()) or "not asked"
    tables = []
    if privacy.get("applicable") is False:
        tables.append(table(("figure", "value"), [
            ("k-anonymity / l-diversity / t-closeness", "not applicable"),
            ("why", privacy.get("note") or "no quasi-identifier is released"),
        ]))
    else:
        tables.append(table(("figure", "required", "achieved (computed on the release)"), [
            ("k-anonymity", required.get("k"), achieved.get("k")),
            ("l-diversity", required.get("l") or "-", l_text),
            ("t-closeness", required.get("t") or "-", t_text),
            ("algorithm", required.get("algorithm"), privacy.get("algorithm")),
            ("quasi-identifiers", "", privacy.get("quasi_identifiers")),
        ]))
    tables.append(table(("re-identification risk", "value"), [
        ("prosecutor max / avg", f"{text(risk.get('prosecutor_max'))} / {text(risk.get('prosecutor_avg'))}"),
        ("journalist max / avg", f"{text(risk.get('journalist_max'))} / {text(risk.get('journalist_avg'))}"),
        ("marketer", risk.get("marketer")),
        (f"records above risk {text(risk.get('threshold'))}", risk.get("records_at_risk")),
    ]))
    model_utility = [(f"model utility: {label} ROC-AUC raw -> release",
                      f"{text(as_dict(m).get('auc_raw'))} -> {text(as_dict(m).get('auc_release'))}")
                     for label, m in as_dict(data.get("model_utility")).items()]
    tables.append(table(("utility", "value"), [
        ("NCP (information loss)", utility.get("ncp")),
        ("discernibility", utility.get("discernibility")),
        ("average class size (C_avg)", utility.get("avg_class_size")),
        ("suppressed rows", utility.get("suppressed")),
        *model_utility,
    ]))
    tables.append(table(("rows", "count"), [
        ("input", rows.get("input")),
        ("exact duplicates removed", counts.get("exact_duplicates")),
        ("invalid rows removed", counts.get("invalid_rows_removed")),
        ("removed: no consent for the purpose", counts.get("consent_filtered")),
        ("released", rows.get("released")),
        ("columns dropped (minimisation)", counts.get("dropped_columns")),
    ]))
    title = data.get("partner") or artifact.path.parent.name
    return Section(f"Release: {text(title)}", recorded_note(artifact), charts, tables)


def _model_charts(card: dict[str, object]) -> list[Chart]:
    metrics = as_dict(card.get("metrics"))
    charts = []
    roc = {}
    for name, curve in as_dict(metrics.get("roc_curve")).items():
        xs, ys = _points(as_list(as_dict(curve).get("fpr")), as_list(as_dict(curve).get("tpr")))
        if xs:
            roc[str(name)] = (xs, ys)
    if roc:
        charts.append(Chart(line_chart(roc, "ROC (held-out)", "false positive rate", "true positive rate",
                                       diagonal=True), "ROC curve"))
    calibration = {}
    for name, key in (("private", "reliability"), ("baseline", "baseline_reliability")):
        bins = [as_dict(r) for r in as_list(metrics.get(key)) if as_dict(r).get("n")]
        xs, ys = _points([r.get("mean_predicted") for r in bins], [r.get("observed_rate") for r in bins])
        if xs:
            calibration[name] = (xs, ys)
    if calibration:
        charts.append(Chart(line_chart(calibration, "Calibration (held-out)", "mean predicted", "observed rate",
                                       diagonal=True), "calibration curve"))
    lift = [as_dict(r) for r in as_list(metrics.get("lift"))]
    bars = [(text(r.get("decile")), number) for r in lift if (number := as_number(r.get("lift"))) is not None]
    if bars:
        charts.append(Chart(bar_chart([b[0] for b in bars], [b[1] for b in bars],
                                      "Lift by decile (1 = highest scores)", "decile", "lift"), "lift by decile"))
        deciles = [as_number(r.get("decile")) for r in lift]
        gains = [as_number(r.get("cumulative_gain")) for r in lift]
        if lift and all(d is not None for d in deciles) and all(g is not None for g in gains):
            xs = [0.0] + [float(d) / len(lift) for d in deciles if d is not None]
            ys = [0.0] + [float(g) for g in gains if g is not None]
            charts.append(Chart(line_chart({"model": (xs, ys)}, "Cumulative gain (share of positives found)",
                                           "share of customers contacted", "share of positives", diagonal=True),
                                "cumulative gain by decile"))
    history = [as_dict(h) for h in as_list(card.get("epsilon_history"))]
    xs, ys = _points([h.get("epoch", i + 1) for i, h in enumerate(history)], [h.get("epsilon") for h in history])
    if xs:
        charts.append(Chart(line_chart({"ε": (xs, ys)}, "ε spent over training", "epoch", "ε"), "epsilon over training"))
    return charts


def model_section(artifact: Artifact) -> Section:
    """ROC, calibration, lift, ε over training, fairness gaps and the membership-inference audit."""
    card = artifact.data
    metrics = as_dict(card.get("metrics"))
    privacy = as_dict(card.get("privacy"))
    tables = [table(("metric (held-out)", "private", "non-private baseline", "difference"), [
        (name, as_dict(c).get("private"), as_dict(c).get("baseline"), as_dict(c).get("difference"))
        for name, c in as_dict(metrics.get("comparison")).items()
    ])]
    budget = as_dict(card.get("budget"))
    after, cap = as_dict(budget.get("spent_after")), as_dict(budget.get("cap"))
    tables.append(table(("privacy", "value"), [
        ("guarantee", privacy_words(privacy)),
        ("accountant", privacy.get("accountant")),
        ("noise multiplier", privacy.get("noise_multiplier")),
        ("clipping / bound", f"{text(privacy.get('clipping'))} / {text(privacy.get('max_grad_norm'))}"),
        ("sampling rate / steps", f"{text(privacy.get('sample_rate'))} / {text(privacy.get('steps'))}"),
        ("hyper-parameter selection", as_dict(card.get("hyperparameter_selection")).get("description")),
        ("budget after this run",
         f"ε {eps_text(after.get('epsilon'))} of {eps_text(cap.get('epsilon'))} spent" if after else "-"),
    ]))
    mia = as_dict(card.get("membership_inference"))
    if mia:
        tables.append(table(("membership-inference audit", "value"), [
            ("strongest attack", mia.get("strongest_attack")),
            ("attack ROC-AUC (0.5 = guessing)", mia.get("attack_auc")),
            (f"empirical ε lower bound ({text(mia.get('confidence'))} confidence)", mia.get("epsilon_lower_bound")),
            ("ε guarantee of the model", mia.get("epsilon_guarantee")),
            ("consistent with the guarantee", mia.get("consistent")),
        ]))
    fairness_rows = [
        (column, as_dict(block).get("demographic_parity_difference"),
         as_dict(block).get("equal_opportunity_difference"), ", ".join(str(g) for g in as_dict(as_dict(block).get("groups"))))
        for column, block in as_dict(as_dict(card.get("fairness")).get("columns")).items()
    ]
    if fairness_rows:
        tables.append(table(("fairness group column", "demographic parity gap", "equal opportunity gap", "groups"),
                            fairness_rows))
    model = as_dict(card.get("model"))
    title = f"Model: {artifact.path.parent.name} ({text(model.get('type'))}, label {text(model.get('label'))})"
    return Section(title, recorded_note(artifact), _model_charts(card), tables)


def privacy_words(privacy: dict[str, object]) -> str:
    """A model's guarantee in one sentence, honest about non-private and reproducible-noise runs."""
    eps, delta = privacy.get("epsilon"), privacy.get("delta")
    if privacy.get("private") is False or as_number(eps) is None:
        return "NOT differentially private (no finite ε)"
    if "INSECURE" in str(privacy.get("noise", "")):
        return f"NOT differentially private: reproducible test noise (nominal ε {eps_text(eps)})"
    return f"(ε {eps_text(eps)}, δ {eps_text(delta)})-differentially private"


def curve_section(artifact: Artifact) -> Section:
    rows = [as_dict(r) for r in as_list(artifact.data.get("rows"))]
    xs, ys = _points([r.get("epsilon") for r in rows], [r.get("roc_auc") for r in rows])
    charts = []
    if xs and all(x > 0 for x in xs):
        charts.append(Chart(line_chart({"ROC-AUC": (xs, ys)}, "Privacy-utility curve", "ε (log scale)",
                                       "held-out ROC-AUC", xlog=True), "privacy utility curve"))
    tables = [table(("ε", "ROC-AUC", "± std", "Brier"),
                    [(r.get("epsilon"), r.get("roc_auc"), r.get("roc_auc_std"), r.get("brier")) for r in rows])]
    return Section(f"Privacy-utility curve: {artifact.path.parent.name}", recorded_note(artifact), charts, tables)


def federated_section(artifact: Artifact) -> Section:
    """Per-round global and per-silo ROC-AUC, each partner's ε and rounds, rejected updates."""
    card = artifact.data
    rounds = [as_dict(r) for r in as_list(card.get("rounds_detail"))]
    charts = []
    if rounds:
        xs = [r.get("round") for r in rounds]
        series = {}
        gx, gy = _points(xs, [as_dict(r.get("global")).get("auc") for r in rounds])
        if gx:
            series["global"] = (gx, gy)
        for silo in sorted(str(s) for s in as_dict(rounds[-1].get("per_silo"))):
            sx, sy = _points(xs, [as_dict(as_dict(r.get("per_silo")).get(silo)).get("auc") for r in rounds])
            if sx:
                series[silo] = (sx, sy)
        if series:
            charts.append(Chart(line_chart(series, "Federated rounds: ROC-AUC of the model each round received",
                                           "round", "ROC-AUC"), "federated rounds"))
    final = as_dict(card.get("final_metrics"))
    partners = table(("partner", "rounds joined", "ε spent (local DP)", "final local ROC-AUC", "confirmed model hash"), [
        (name, len(as_list(as_dict(p).get("rounds"))), as_dict(p).get("epsilon"),
         as_dict(as_dict(final.get("per_silo")).get(name)).get("auc"), as_dict(p).get("confirmed_hash"))
        for name, p in as_dict(card.get("partners")).items()
    ])
    privacy = as_dict(card.get("privacy"))
    final_global = as_dict(final.get("global"))
    summary = table(("federated run", "value"), [
        ("strategy / rounds", f"{text(card.get('strategy'))} / {text(card.get('rounds'))}"),
        ("final global ROC-AUC", f"{text(final_global.get('auc'))} ({text(final_global.get('source', ''))})"),
        ("privacy unit", privacy.get("unit")),
        ("target ε per partner / δ",
         f"{text(privacy.get('target_epsilon_per_partner'))} / {text(privacy.get('delta'))}"),
        ("client-level DP / secure aggregation",
         f"{text(privacy.get('client_level_dp'))} / {text(privacy.get('secure_aggregation'))}"),
        ("rejected updates", len(as_list(card.get("rejected_updates")))),
        ("model hash", text(as_dict(card.get("model")).get("hash", ""))[:16]),
    ])
    caveat = card.get("caveat")
    return Section(f"Federated model ({text(as_dict(card.get('model')).get('kind'))})", recorded_note(artifact),
                   charts, [summary, partners], [text(caveat)] if caveat else [])


def party_privacy_words(card: dict[str, object], party: object) -> str:
    """One vertical party's guarantee: its own ε and δ, under the run's noise (test noise is not DP)."""
    p = as_dict(party)
    return privacy_words({"epsilon": p.get("epsilon"), "delta": p.get("delta"), "noise": card.get("noise")})


def _vertical_parties(card: dict[str, object]) -> Table:
    rows = []
    for name, party in as_dict(card.get("parties")).items():
        p = as_dict(party)
        budget = as_dict(p.get("budget"))
        after, cap = as_dict(budget.get("spent_after")), as_dict(budget.get("cap"))
        epsilon = "not private (no noise)" if p.get("epsilon") is None else eps_text(p.get("epsilon"))
        spent = f"ε {eps_text(after.get('epsilon'))} of {eps_text(cap.get('epsilon'))}" if after else "-"
        rows.append((name, p.get("role"), epsilon, eps_text(p.get("delta")), p.get("covers"), spent))
    return table(("party", "role", "ε", "δ", "what ε covers", "budget spent after / cap"), rows)


def _vertical_overview(card: dict[str, object]) -> Table:
    overlap, metrics = as_dict(card.get("overlap")), as_dict(card.get("metrics"))
    share = as_number(overlap.get("share_of_label_party"))
    words = [party_privacy_words(card, p) for p in as_dict(card.get("parties")).values()]
    guarantee = next((w for w in words if w.startswith("NOT")), "each party's ε and δ above, per shared customer")
    rows: list[tuple[object, object]] = [
        ("guarantee", guarantee if words else "no party is named"),
        ("overlap: shared customers", overlap.get("size")),
        ("share of the label party's consenting rows", f"{share:.1%}" if share is not None else overlap.get("share_of_label_party")),
        ("intersection digest (sha256)", text(overlap.get("sha256"))[:16]),
    ]
    if "pairs" in overlap:
        rows.append(("feature parties in the common set", len(as_list(overlap.get("pairs"))) or overlap.get("pairs")))
    rows += [
        ("held-out ROC-AUC (label party)", metrics.get("roc_auc")),
        ("held-out / training customers", f"{text(metrics.get('test_customers'))} / {text(metrics.get('train_customers'))}"),
        ("noise", card.get("noise")),
        ("noise multipliers", card.get("noise_multipliers")),
        ("model hash (every party's ledger)", text(card.get("model_hash"))[:16]),
    ]
    return table(("vertical run", "value"), rows)


def vertical_section(artifact: Artifact) -> Section:
    """Every party's ε (what it covers, its budget), the overlap, the held-out ROC-AUC, the noise, and
    what was released without DP: the facts of federated.vertical's card, as the label party recorded them."""
    card = artifact.data
    released = card.get("released_without_dp")
    items = [text(r) for r in as_list(released)] if released is None or isinstance(released, list) else [text(released)]
    paragraphs = [
        "ε is per shared customer and per party: it covers that party's columns (and, for the label party, its "
        "labels) in every message the other parties saw.",
        "Released without DP: " + ("; ".join(items) or "nothing stated") + ".",
    ]
    if card.get("scoring") is not None:
        paragraphs.append(f"Scoring: {text(card.get('scoring'))}.")
    return Section(f"Vertical model ({text(card.get('kind'))})", recorded_note(artifact), [],
                   [_vertical_overview(card), _vertical_parties(card)], paragraphs)
