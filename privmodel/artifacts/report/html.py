"""Render the report page with Jinja2, autoescaping everything: no markup is built from strings.

Every value reaching the page (ledger fields, artifact figures, paths, actor names) is plain data
passed to `templates/report.html.j2`; the environment escapes it in text and attributes alike, so a
crafted ledger can neither run script nor add elements, and the verification banner's colour comes
only from `Evidence.status`. The page has no script and fetches nothing: CSS is inline and charts
are base64 PNG data URIs, so the file opens offline and can be archived as evidence as it is.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from jinja2 import Environment, PackageLoader, StrictUndefined

from privmodel.artifacts.report.evidence import Evidence
from privmodel.artifacts.report.flow import flow_layout
from privmodel.artifacts.report.sections import (
    as_dict,
    as_list,
    as_number,
    curve_section,
    eps_text,
    federated_section,
    model_section,
    release_section,
    text,
    vertical_section,
)
from privmodel.artifacts.report.summary import summarise

BANNERS = {
    "ok": "All ledgers verified against trusted keys: chains, signatures and heads intact",
    "tofu": "All ledgers verified against their own keys only (trust on first use): intact, authorship not checked",
    "fail": "LEDGER VERIFICATION FAILED",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The one Jinja2 environment of the report: autoescape on for every template, strict undefined."""
    return Environment(
        loader=PackageLoader("privmodel.artifacts.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _cost_words(value: object) -> str:
    cost = as_dict(value)
    if not cost:
        return ""
    if as_number(cost.get("epsilon")) is None:
        return text(cost)
    words = f"ε {eps_text(cost.get('epsilon'))}, δ {eps_text(cost.get('delta'))}"
    after = as_dict(cost.get("spent_after"))
    if after:
        words += f" (dataset total ε {eps_text(after.get('epsilon'))})"
    return words


def _files(files: object) -> list[tuple[str, str]]:
    return [(text(as_dict(a).get("name")), text(as_dict(a).get("sha256", ""))[:12]) for a in as_list(files)]


def _steps(entries: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{
        "seq": text(e.get("seq")),
        "time": text(e.get("time", ""))[:19],
        "actor": text(e.get("actor")),
        "action": text(e.get("action")),
        "inputs": _files(e.get("inputs")),
        "outputs": _files(e.get("outputs")),
        "cost": _cost_words(e.get("privacy_cost")),
        "failed": e.get("outcome") == "failed",
        "outcome": text(e.get("outcome")),
        "reason": text(e.get("reason") or ""),
    } for e in entries]


def render(evidence: Evidence) -> str:
    """The whole page as one HTML string."""
    everything = sorted((e for le in evidence.ledgers for e in le.entries), key=lambda e: str(e.get("time", "")))
    sections = [
        *(release_section(a) for a in evidence.releases),
        *(model_section(a) for a in evidence.models),
        *(curve_section(a) for a in evidence.curves),
        *(federated_section(a) for a in evidence.federated),
        *(vertical_section(a) for a in evidence.vertical),
    ]
    return environment().get_template("report.html.j2").render(
        status=evidence.status,
        banner=BANNERS[evidence.status],
        evidence=evidence,
        entries_total=sum(le.verification.entries for le in evidence.ledgers),
        made=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        summary=summarise(evidence),
        ledgers=[{"path": str(le.path), "ok": le.verification.ok, "entries": le.verification.entries,
                  "problems": [str(p) for p in le.verification.problems[:5]],
                  "more": max(0, len(le.verification.problems) - 5)} for le in evidence.ledgers],
        flow=flow_layout(everything),
        steps=[(str(le.path), _steps(le.entries)) for le in evidence.ledgers],
        sections=sections,
    )
