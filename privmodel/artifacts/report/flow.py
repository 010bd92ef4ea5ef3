"""Lay out the data flow recorded in ledgers: one lane per actor, one node per step, an edge
wherever a file one step wrote (by content hash) is read by a later step.

This module only computes geometry and label text; the template draws the SVG (and escapes every
label). Hand-made layout rather than Graphviz: the layout is a fixed grid (lanes x time), so a
layout engine adds a system dependency and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privmodel.artifacts.report.sections import as_dict, as_list, as_number, eps_text, text

LANE_WIDTH = 230
ROW_HEIGHT = 46
NODE_HEIGHT = 34
TOP = 40


@dataclass
class Node:
    x: float
    y: float
    label: str  # shortened to fit the box
    title: str  # the tooltip: seq, actor, step, files
    failed: bool


@dataclass
class Edge:
    path: str  # SVG path data made of numbers only
    title: str


@dataclass
class Lane:
    x: float
    name: str


@dataclass
class FlowLayout:
    width: int = 0
    height: int = 0
    node_width: int = 0
    node_height: int = NODE_HEIGHT
    lanes: list[Lane] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def _cost_label(entry: dict[str, object]) -> str:
    eps = as_number(as_dict(entry.get("privacy_cost")).get("epsilon"))
    return f" ε {eps_text(eps)}" if eps is not None else ""


def _hashes(files: object) -> list[tuple[str, str]]:
    """(name, sha256) of each well-formed file record of an entry's inputs or outputs."""
    out = []
    for art in as_list(files):
        art = as_dict(art)
        digest = art.get("sha256")
        if isinstance(digest, str):
            out.append((text(art.get("name")), digest))
    return out


def flow_layout(entries: list[dict[str, object]], max_width: int = 1150) -> FlowLayout:
    """Steps (skipping the ledger.open bookkeeping entry) and their file lineage.

    Rows are a topological layering: a step sits one row below the previous step of its actor and
    below every step whose output it reads, so work done in parallel by different actors shares rows.
    """
    steps = [e for e in entries if e.get("action") != "ledger.open"]
    if not steps:
        return FlowLayout()
    actors = list(dict.fromkeys(text(e.get("actor")) for e in steps))
    lane = {a: i for i, a in enumerate(actors)}
    lane_width = max(150, min(LANE_WIDTH, (max_width - 40) // len(actors)))
    node_width = lane_width - 20
    producers: dict[str, int] = {}
    rows: list[int] = []
    last_row: dict[str, int] = {}
    for i, entry in enumerate(steps):
        actor = text(entry.get("actor"))
        row = last_row.get(actor, -1) + 1
        for _, digest in _hashes(entry.get("inputs")):
            j = producers.get(digest)
            if j is not None:
                row = max(row, rows[j] + 1)
        rows.append(row)
        last_row[actor] = row
        for _, digest in _hashes(entry.get("outputs")):
            producers[digest] = i
    positions = [(20 + lane[text(e.get("actor"))] * lane_width, TOP + rows[i] * ROW_HEIGHT) for i, e in enumerate(steps)]
    layout = FlowLayout(width=40 + len(actors) * lane_width, height=TOP + (max(rows) + 1) * ROW_HEIGHT + 10,
                        node_width=node_width)
    chars = max(12, node_width // 7)
    layout.lanes = [Lane(20 + lane[a] * lane_width, a[:chars]) for a in actors]
    producers.clear()
    for i, entry in enumerate(steps):
        for name, digest in _hashes(entry.get("inputs")):
            j = producers.get(digest)
            if j is None:
                continue
            (x1, y1), (x2, y2) = positions[j], positions[i]
            sx, sy, ex, ey = x1 + node_width / 2, y1 + NODE_HEIGHT, x2 + node_width / 2, y2
            mid = (sy + ey) / 2
            layout.edges.append(Edge(f"M{sx},{sy} C{sx},{mid} {ex},{mid} {ex},{ey}", f"{name} sha256 {digest[:16]}"))
        for _, digest in _hashes(entry.get("outputs")):
            producers[digest] = i
    for i, entry in enumerate(steps):
        x, y = positions[i]
        label = f"{text(entry.get('action'))}{_cost_label(entry)}"
        outs = ", ".join(name for name, _ in _hashes(entry.get("outputs"))) or "no files"
        layout.nodes.append(Node(x, y, label[:chars], f"seq {text(entry.get('seq'))} by {text(entry.get('actor'))}: "
                                 f"{label}; {outs}", entry.get("outcome") == "failed"))
    return layout
