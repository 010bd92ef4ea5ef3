"""Draw the data flow recorded in ledgers as an inline SVG: one lane per actor, one node per step,
an arrow wherever a file one step wrote (by content hash) is read by a later step.

Hand-written SVG rather than Graphviz: the layout is a fixed grid (lanes x time), so a layout
engine adds a system dependency and nothing else.
"""

from __future__ import annotations

from html import escape
from typing import Any

LANE_WIDTH = 230
ROW_HEIGHT = 46
NODE_WIDTH = 200
NODE_HEIGHT = 34
TOP = 40


def _cost_label(entry: dict[str, Any]) -> str:
    cost = entry.get("privacy_cost") or {}
    eps = cost.get("epsilon")
    return f" ε={eps:.3g}" if isinstance(eps, int | float) else ""


def flow_svg(entries: list[dict[str, Any]], max_width: int = 1150) -> str:
    """SVG of steps (skipping the ledger.open bookkeeping entry) and their file lineage.

    Rows are a topological layering: a step sits one row below the previous step of its actor and
    below every step whose output it reads, so work done in parallel by different actors shares rows.
    """
    steps = [e for e in entries if e.get("action") != "ledger.open"]
    if not steps:
        return "<p>No steps recorded.</p>"
    actors = list(dict.fromkeys(str(e.get("actor")) for e in steps))
    lane = {a: i for i, a in enumerate(actors)}
    lane_width = max(150, min(LANE_WIDTH, (max_width - 40) // len(actors)))
    node_width = lane_width - 20
    producers: dict[str, int] = {}
    rows: list[int] = []
    last_row: dict[str, int] = {}
    for i, entry in enumerate(steps):
        actor = str(entry.get("actor"))
        row = last_row.get(actor, -1) + 1
        for art in entry.get("inputs") or []:
            j = producers.get(art.get("sha256", ""))
            if j is not None:
                row = max(row, rows[j] + 1)
        rows.append(row)
        last_row[actor] = row
        for art in entry.get("outputs") or []:
            producers[art.get("sha256", "")] = i
    positions = [(20 + lane[str(e.get("actor"))] * lane_width, TOP + rows[i] * ROW_HEIGHT) for i, e in enumerate(steps)]
    producers.clear()
    edges: list[str] = []
    for i, entry in enumerate(steps):
        for art in entry.get("inputs") or []:
            j = producers.get(art.get("sha256", ""))
            if j is None:
                continue
            (x1, y1), (x2, y2) = positions[j], positions[i]
            sx, sy, ex, ey = x1 + node_width / 2, y1 + NODE_HEIGHT, x2 + node_width / 2, y2
            edges.append(
                f'<path d="M{sx},{sy} C{sx},{(sy + ey) / 2} {ex},{(sy + ey) / 2} {ex},{ey}" '
                f'class="edge" marker-end="url(#arrow)"><title>{escape(str(art.get("name")))} '
                f'sha256 {escape(str(art.get("sha256", ""))[:16])}</title></path>'
            )
        for art in entry.get("outputs") or []:
            producers[art.get("sha256", "")] = i
    parts: list[str] = []
    chars = max(12, node_width // 7)
    for i, entry in enumerate(steps):
        x, y = positions[i]
        failed = entry.get("outcome") == "failed"
        label = f"{entry.get('action')}{_cost_label(entry)}"
        outs = ", ".join(str(a.get("name")) for a in entry.get("outputs") or [])
        parts.append(
            f'<g class="node{" failed" if failed else ""}"><title>seq {entry.get("seq")} by '
            f'{escape(str(entry.get("actor")))}: {escape(label)}; {escape(outs) or "no files"}</title>'
            f'<rect x="{x}" y="{y}" width="{node_width}" height="{NODE_HEIGHT}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 21}">{escape(label[:chars])}</text></g>'
        )
    heads = "".join(
        f'<text x="{20 + lane[a] * lane_width}" y="22" class="lane">{escape(a[:chars])}</text>' for a in actors
    )
    width = 40 + len(actors) * lane_width
    height = TOP + (max(rows) + 1) * ROW_HEIGHT + 10
    return (
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="data flow">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#557"/></marker></defs>'
        f"{heads}{''.join(edges)}{''.join(parts)}</svg>"
    )
