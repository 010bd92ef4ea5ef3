"""Lay out the report page: verification status first, then data flow, releases, models, controls.

Everything is inline (CSS, SVG, PNG data URIs) and there is no script, so the file opens offline,
fetches nothing and can be archived as evidence as it is.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from privmodel.report.evidence import Evidence, LedgerEvidence
from privmodel.report.flow import flow_svg
from privmodel.report.sections import controls_rows, curve_section, federated_section, model_section, release_section

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{padding:18px 28px;color:#fff}
header.ok{background:#1f7a3f} header.fail{background:#b3261e}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px} h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.bad{color:#b3261e;font-weight:600} .good{color:#1f7a3f;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:10px} .charts img{border:1px solid #dde1e8;border-radius:4px}
svg .node rect{fill:#e8eef8;stroke:#4a6fa5} svg .node.failed rect{fill:#fbe3e1;stroke:#b3261e}
svg text{font-size:12px;font-family:system-ui,sans-serif} svg .lane{font-weight:600}
svg .edge{fill:none;stroke:#557;stroke-width:1.2}
.note{color:#5b6270;font-size:12px}
"""


def _ledger_status(le: LedgerEvidence) -> str:
    v = le.verification
    if v.ok:
        return (
            f'<tr><td><code>{escape(str(le.path))}</code></td><td class="good">intact</td>'
            f'<td class="num">{v.entries}</td><td>{escape(v.trust)}</td></tr>'
        )
    problems = "<br>".join(escape(str(p)) for p in v.problems[:5])
    return (
        f'<tr><td><code>{escape(str(le.path))}</code></td><td class="bad">FAILED</td>'
        f'<td class="num">{v.entries}</td><td>{problems}</td></tr>'
    )


def _steps_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        files_in = "<br>".join(
            f'{escape(str(a.get("name")))} <span class="hash">{escape(str(a.get("sha256", ""))[:12])}</span>'
            for a in e.get("inputs") or []
        )
        files_out = "<br>".join(
            f'{escape(str(a.get("name")))} <span class="hash">{escape(str(a.get("sha256", ""))[:12])}</span>'
            for a in e.get("outputs") or []
        )
        cost = e.get("privacy_cost") or {}
        cost_text = ", ".join(f"{escape(str(k))}={escape(str(v))}" for k, v in cost.items())
        outcome = escape(str(e.get("outcome")))
        if e.get("outcome") == "failed":
            outcome = f'<span class="bad">failed: {escape(str(e.get("reason") or ""))}</span>'
        rows.append(
            f'<tr><td class="num">{e.get("seq")}</td><td>{escape(str(e.get("time", ""))[:19])}</td>'
            f'<td>{escape(str(e.get("actor")))}</td><td>{escape(str(e.get("action")))}</td>'
            f"<td>{files_in}</td><td>{files_out}</td><td>{cost_text}</td><td>{outcome}</td></tr>"
        )
    return (
        "<table><tr><th>seq</th><th>time (UTC)</th><th>who</th><th>step</th><th>inputs (sha256)</th>"
        "<th>outputs (sha256)</th><th>privacy cost</th><th>outcome</th></tr>" + "".join(rows) + "</table>"
    )


def render(evidence: Evidence) -> str:
    ok = evidence.verified
    status = "All ledgers verified: chains, signatures and heads intact" if ok else "LEDGER VERIFICATION FAILED"
    n_entries = sum(le.verification.entries for le in evidence.ledgers)
    body = [
        f'<header class="{"ok" if ok else "fail"}" id="status"><h1>{escape(status)}</h1>'
        f"<p>{len(evidence.ledgers)} ledger(s), {n_entries} entries · run {escape(str(evidence.root))} · "
        f"report made {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}</p></header><main>",
        "<section><h2>Ledger verification</h2><table><tr><th>ledger</th><th>status</th><th>entries</th>"
        "<th>trust / problems</th></tr>"
        + "".join(_ledger_status(le) for le in evidence.ledgers)
        + "</table></section>",
    ]
    everything = sorted((e for le in evidence.ledgers for e in le.entries), key=lambda e: str(e.get("time", "")))
    body.append(
        "<section><h2>Data flow across all ledgers</h2>"
        '<p class="note">One lane per actor (organisation / node); an arrow wherever a file written by one step '
        "(matched by SHA-256) is read by a later step, also across organisations.</p>"
        f"<div style='overflow-x:auto'>{flow_svg(everything)}</div></section>"
    )
    for le in evidence.ledgers:
        body.append(
            f"<section><h2>Steps in <code>{escape(str(le.path))}</code></h2>{_steps_table(le.entries)}</section>"
        )
    body.extend(release_section(a) for a in evidence.releases)
    body.extend(model_section(a) for a in evidence.models)
    body.extend(curve_section(a) for a in evidence.curves)
    body.extend(federated_section(a) for a in evidence.federated)
    body.append(
        "<section><h2>Controls</h2>"
        '<p class="note">What this run evidences for each control. This is a record of what was done, '
        "not a claim of legal compliance.</p><table><tr><th>control</th><th>requirement it evidences</th>"
        "<th>what this run shows</th></tr>"
        + "".join(
            f"<tr><td>{escape(c)}</td><td>{escape(r)}</td><td>{shown}</td></tr>"
            for c, r, shown in controls_rows(evidence)
        )
        + "</table></section></main>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>privmodel report</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )
