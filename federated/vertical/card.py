"""The vertical model card as Markdown: every party's epsilon, the overlap, and what was not DP.

Party names are restricted by the party file's pattern ([A-Za-z0-9_.-]); everything else printed is a
number or a fixed sentence, so nothing here can inject Markdown or HTML.
"""

from __future__ import annotations

import math
from typing import Any


def _eps(value: Any) -> str:
    if value is None:
        return "not private (no noise)"
    return "infinite" if not math.isfinite(value) else f"{value:.3f}"


def card_markdown(card: dict[str, Any]) -> str:
    """Markdown for `card.json`'s facts."""
    lines = ["# Vertical model card", "", f"Protocol: {card['kind']}.", ""]
    if card["noise"] != "secure":
        lines += [f"**{card['noise']}**", ""]
    lines += [f"Model hash (every party's ledger): `{card['model_hash']}`", "",
              "| party | role | epsilon | delta | covers | budget spent after |", "|---|---|---|---|---|---|"]
    for name, p in card["parties"].items():
        spent = (p.get("budget") or {}).get("spent_after", {})
        after = f"{spent['epsilon']:.3f} of {p['budget']['cap']['epsilon']:.3f}" if spent else "-"
        delta = "-" if p["delta"] is None else f"{p['delta']:.1e}"
        lines.append(f"| {name} | {p['role']} | {_eps(p['epsilon'])} | {delta} | {p['covers']} | {after} |")
    ov = card["overlap"]
    auc = card["metrics"].get("roc_auc")
    lines += ["", f"Overlap: {ov['size']:,} shared customers ({ov['share_of_label_party']:.1%} of the label party's "
              f"consenting rows); intersection digest `{ov['sha256'][:16]}`.",
              *([f"Common set: the customers of every party ({len(ov['pairs'])} feature parties); each pair's digest "
                 "of it is in both parties' ledgers."] if "pairs" in ov else []),
              f"Test ROC-AUC (label party, {card['metrics']['test_customers']:,} held-out shared customers): "
              + ("-" if auc is None else f"{auc:.4f}"), "",
              "Epsilon is per shared customer and per party: it covers that party's columns (and, for the label "
              "party, its labels) in every message the other parties saw. See docs/vertical.md.", "",
              "Released without DP: " + "; ".join(card["released_without_dp"]) + ".",
              f"Scoring: {card['scoring']}.", ""]
    return "\n".join(lines)
