"""Optimal full-domain generalization with a suppression limit (a lattice search in the spirit of
ARX's Flash / OLA).

Every quasi-identifier is generalized to one level of its hierarchy for the whole table; a lattice
node is the vector of levels. A node is "anonymous" when the rows of classes that fail the criteria
(k, l, t) can be suppressed within the limit. Among anonymous nodes we return the one with the
smallest loss, where loss = mean NCP over all input rows and QIs, a suppressed row costing 1 per QI
(the same figure `anonymize.utility.utility_loss` reports).

Hand-written because no maintained Python library does it (anjana's full-domain search is pandas
per node and re-anonymizes heavily). Search, exact for this loss:

- a lower bound per node without touching the rows: LB(node) = mean NCP had no row been suppressed,
  a sum of per-column constants; a suppressed row costs 1 >= any generalization, so loss >= LB;
- nodes are visited by increasing LB and the search stops once LB >= the best loss found;
- predictive tagging by monotonicity (k, l): a node that is not anonymous makes every node below
  it not anonymous, so those are never evaluated; before touching the rows, single-column
  projections on one and two columns give a cheap necessary condition for k (rows in a too-small
  class of a projection stay in too-small classes of the whole node).
t-closeness is not monotone, so with t the tagging is switched off (every candidate is evaluated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.hierarchies import Domain, LevelTable
from anonymize.models import Criterion, all_satisfied
from anonymize.models.k_anonymity import KAnonymity
from anonymize.models.t_closeness import TCloseness

MAX_NODES = 500_000


@dataclass
class LatticeResult:
    levels: tuple[int, ...]
    kept: np.ndarray  # bool per input row
    labels: list[np.ndarray]  # release string per input row (object arrays), one per QI
    n_classes: int
    suppressed: int
    loss: float
    evaluated: int  # nodes whose rows were touched
    nodes: int


class _Evaluator:
    """Evaluates lattice nodes on the rows: classes, failing rows, loss."""

    def __init__(
        self,
        domains: Sequence[Domain],
        sensitive_codes: Sequence[np.ndarray],
        sensitive_sizes: Sequence[int],
        criteria: Sequence[Criterion],
    ) -> None:
        self.d = len(domains)
        self.n = len(domains[0].codes)
        self.tables: list[list[LevelTable]] = [[dom.level_table(h) for h in range(dom.height + 1)] for dom in domains]
        self.gen = [[t.gen[dom.codes] for t in tabs] for dom, tabs in zip(domains, self.tables, strict=True)]
        self.row_ncp = [[t.ncp[g] for t, g in zip(tabs, gens, strict=True)] for tabs, gens in zip(self.tables, self.gen, strict=True)]
        self.col_lb = [np.array([r.mean() for r in rows]) for rows in self.row_ncp]
        self.sens = [np.asarray(s, dtype=np.int64) for s in sensitive_codes]
        self.ms = list(sensitive_sizes)
        self.criteria = criteria
        self.need_hist = any(c.needs_sensitive for c in criteria)

    def classes(self, levels: Sequence[int]) -> tuple[np.ndarray, int]:
        """Class id per row for a node (mixed-radix key, re-compressed before it could overflow)."""
        key = np.zeros(self.n, dtype=np.int64)
        radix = 1
        for j, lvl in enumerate(levels):
            card = len(self.tables[j][lvl].labels)
            if radix * card >= 2**62:
                key = pd.factorize(key)[0].astype(np.int64)
                radix = int(key.max()) + 1
            key = key * card + self.gen[j][lvl]
            radix *= card
        # hash-based factorize is O(n); class ids need no order
        inv, uniq = pd.factorize(key)
        return inv.astype(np.int64), len(uniq)

    def failing_rows(self, levels: Sequence[int]) -> tuple[np.ndarray, int]:
        cls, n_cls = self.classes(levels)
        sizes = np.bincount(cls, minlength=n_cls)
        hists = (
            [np.bincount(cls * m + s, minlength=n_cls * m).reshape(n_cls, m) for s, m in zip(self.sens, self.ms, strict=True)]
            if self.need_hist
            else []
        )
        ok = all_satisfied(self.criteria, sizes, hists)
        return ~ok[cls], int(ok.sum())

    def loss(self, levels: Sequence[int], failing: np.ndarray) -> float:
        total = np.zeros(self.n)
        for j, lvl in enumerate(levels):
            total += self.row_ncp[j][lvl]
        n_sup = int(failing.sum())
        return float((total.sum() - total[failing].sum() + n_sup * self.d) / (self.n * self.d))


def lattice_search(
    domains: Sequence[Domain],
    sensitive_codes: Sequence[np.ndarray],
    sensitive_sizes: Sequence[int],
    criteria: Sequence[Criterion],
    suppression_limit: float,
) -> LatticeResult | None:
    """The anonymous node of least loss; None when even the top node ('*' everywhere) fails."""
    ev = _Evaluator(domains, sensitive_codes, sensitive_sizes, criteria)
    heights = [dom.height for dom in domains]
    n_nodes = math.prod(h + 1 for h in heights)
    if n_nodes > MAX_NODES:
        raise InputError(f"generalization lattice has {n_nodes} nodes (limit {MAX_NODES}); use algorithm mondrian")
    nodes = np.indices([h + 1 for h in heights]).reshape(len(heights), -1).T  # (nodes, d)
    lb = np.zeros(len(nodes))
    for j in range(ev.d):
        lb += ev.col_lb[j][nodes[:, j]]
    lb /= ev.d
    max_sup = int(math.floor(suppression_limit * ev.n + 1e-9))

    # necessary condition from one-column projections (k only: class sizes can only shrink)
    k = max((c.k for c in criteria if isinstance(c, KAnonymity)), default=1)
    proj_bad = []
    for j in range(ev.d):
        bad = []
        for g in ev.gen[j]:
            counts = np.bincount(g)
            bad.append(int(counts[counts < k].sum()))
        proj_bad.append(np.array(bad))
    lower_sup = np.zeros(len(nodes), dtype=np.int64)
    for j in range(ev.d):
        lower_sup = np.maximum(lower_sup, proj_bad[j][nodes[:, j]])
    # the same bound from two-column projections: sharper, still cheap (d^2/2 x levels^2 passes)
    for a in range(ev.d):
        for b in range(a + 1, ev.d):
            table = np.zeros((heights[a] + 1, heights[b] + 1), dtype=np.int64)
            for la, ga in enumerate(ev.gen[a]):
                for lb_, gb in enumerate(ev.gen[b]):
                    counts = np.bincount(ga * (int(gb.max()) + 1) + gb)
                    table[la, lb_] = int(counts[(counts > 0) & (counts < k)].sum())
            lower_sup = np.maximum(lower_sup, table[nodes[:, a], nodes[:, b]])
    not_anon = lower_sup > max_sup
    monotone = not any(isinstance(c, TCloseness) for c in criteria)

    order = np.lexsort((nodes.sum(axis=1), lb))
    best: tuple[float, int, np.ndarray] | None = None
    evaluated = 0
    for idx in order.tolist():
        if best is not None and lb[idx] >= best[0] - 1e-15:
            break
        if not_anon[idx]:
            continue
        levels = nodes[idx]
        failing, _ = ev.failing_rows(levels)
        evaluated += 1
        if int(failing.sum()) > max_sup:
            if monotone:
                not_anon |= (nodes <= levels).all(axis=1)
            continue
        loss = ev.loss(levels, failing)
        if best is None or loss < best[0] - 1e-15:
            best = (loss, idx, failing)
    if best is None:
        return None
    loss, idx, failing = best
    levels = tuple(int(x) for x in nodes[idx])
    kept = ~failing
    labels = []
    for j, lvl in enumerate(levels):
        table = ev.tables[j][lvl]
        labels.append(np.asarray(table.labels, dtype=object)[ev.gen[j][lvl][kept]])
    cls, _ = ev.classes(levels)
    n_classes = len(np.unique(cls[kept]))
    return LatticeResult(
        levels=levels,
        kept=kept,
        labels=labels,
        n_classes=n_classes,
        suppressed=int(failing.sum()),
        loss=loss,
        evaluated=evaluated,
        nodes=n_nodes,
    )
