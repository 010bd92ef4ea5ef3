"""Optimal full-domain generalization with a suppression limit (a lattice search in the spirit of
ARX's Flash / OLA).

Every quasi-identifier is generalized to one level of its hierarchy for the whole table; a lattice
node is the vector of levels. A node is "anonymous" when the rows of classes that fail the criteria
(k, l, t) can be suppressed within the limit. Among anonymous nodes we return the one with the
smallest loss, where loss = mean NCP over all input rows and QIs, a suppressed row costing 1 per QI
(the same figure `anonymize.measures.utility.utility_loss` reports).

Hand-written because no maintained Python library does it (anjana's full-domain search is pandas
per node and re-anonymizes heavily). Search, exact for this loss:

- nodes are checked by roll-up from the class table of a node below (see `_Evaluator`);
- a lower bound per node without touching the rows: LB(node) = mean NCP had no row been suppressed,
  a sum of per-column constants; a suppressed row costs 1 >= any generalization, so loss >= LB;
- nodes are visited by increasing LB and the search stops once LB >= the best loss found;
- predictive tagging by monotonicity (k, l): a node that is not anonymous makes every node below
  it not anonymous, so those are never evaluated; before touching the rows, single-column
  projections on one and two columns give a cheap necessary condition for k (rows in a too-small
  class of a projection stay in too-small classes of the whole node).
Tagging is on only for criteria that are monotone under suppression (`_monotone`): k, distinct l,
and entropy / recursive l without suppression; otherwise every candidate is evaluated.

t-closeness is judged on what is released: a candidate's kept rows are re-checked against their
own sensitive distribution (`_Evaluator.final_failing`), and the release gate checks it once more
on the final table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anonymize.criteria import Criterion, SensitiveColumn, all_satisfied
from anonymize.criteria.k_anonymity import KAnonymity
from anonymize.criteria.l_diversity import LDiversityCriterion
from anonymize.criteria.t_closeness import TCloseness
from anonymize.errors import InputError
from anonymize.generalization.hierarchies import Domain, LevelTable

MAX_NODES = 500_000
Levels = Sequence[int] | np.ndarray  # a lattice node: one hierarchy level per quasi-identifier


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
    """Evaluates lattice nodes: failing-row counts by roll-up, and on the rows for the final answer.

    Roll-up (as in ARX): generalizing a node only merges its equivalence classes, so the class
    table of a more general node can be computed from the class table (codes, sizes, sensitive
    histograms) of any node below it instead of from every row. The evaluator keeps a few recent
    class tables and rolls up from the smallest one below the node asked for.
    """

    CACHE = 16

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
        maps = [_level_maps(tabs) for tabs in self.tables]
        # roll-up maps per QI; None when some QI's levels do not nest (then the cache stays empty)
        self.up = [m for m in maps if m is not None] if all(m is not None for m in maps) else None
        # (levels, code columns, class sizes, sensitive histograms) of recently checked nodes
        self.cache: list[tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]] = []
        if self.up is not None:
            bottom = np.zeros(self.d, dtype=np.int64)
            cls, n_cls = self.classes(bottom)
            rep = _representatives(cls, n_cls)
            sizes, hists = _merge(cls, n_cls, np.ones(self.n, dtype=np.int64), self._row_hists())
            self.cache.append((bottom, [self.gen[j][0][rep] for j in range(self.d)], sizes, hists))

    def cards(self, levels: Levels) -> list[int]:
        return [len(self.tables[j][lvl].labels) for j, lvl in enumerate(levels)]

    def classes(self, levels: Levels) -> tuple[np.ndarray, int]:
        """Class id per row for a node."""
        return _class_ids([self.gen[j][lvl] for j, lvl in enumerate(levels)], self.cards(levels))

    def failing_rows(self, levels: Levels) -> tuple[np.ndarray, int]:
        cls, n_cls = self.classes(levels)
        sizes = np.bincount(cls, minlength=n_cls)
        hists = (
            [np.bincount(cls * m + s, minlength=n_cls * m).reshape(n_cls, m) for s, m in zip(self.sens, self.ms, strict=True)]
            if self.need_hist
            else []
        )
        ok = all_satisfied(self.criteria, sizes, hists)
        return ~ok[cls], int(ok.sum())

    def final_failing(self, levels: Levels) -> np.ndarray:
        """Rows to suppress so that what is KEPT satisfies every criterion, per row.

        k and l look at one class at a time, so removing failing classes cannot break them. t
        compares a class with the table's distribution, and the table that is released is the
        kept rows: once failing classes go, that distribution moves and a passing class can fail
        (issue 10, finding 6: t 0.3019 > 0.3 after suppressing 901 rows). So t is re-checked
        against the kept rows' distribution, suppressing newly failing classes, until nothing
        changes (each round removes a class, so this ends).
        """
        cls, n_cls = self.classes(levels)
        sizes = np.bincount(cls, minlength=n_cls)
        hists = (
            [np.bincount(cls * m + s, minlength=n_cls * m).reshape(n_cls, m) for s, m in zip(self.sens, self.ms, strict=True)]
            if self.need_hist
            else []
        )
        failing = ~all_satisfied(self.criteria, sizes, hists)
        t_criteria = [c for c in self.criteria if isinstance(c, TCloseness)]
        while t_criteria and failing.any() and not failing.all():
            kept = ~failing
            relative = [
                TCloseness(
                    c.t,
                    [SensitiveColumn(col.name, h[kept].sum(axis=0), col.kind) for col, h in zip(c.columns, hists, strict=True)],
                )
                for c in t_criteria
            ]
            newly = kept & ~all_satisfied(relative, sizes, hists)
            if not newly.any():
                break
            failing |= newly
        return failing[cls]

    def failing_count(self, levels: np.ndarray) -> int:
        """Rows in classes that fail the criteria, by roll-up from a cached node below (same figure
        as failing_rows(levels)[0].sum(); a test checks that on every node of a lattice)."""
        below = [c for c in self.cache if (c[0] <= levels).all()]
        if not below or self.up is None:
            return int(self.failing_rows(levels)[0].sum())
        base, codes, counts, hists = min(below, key=lambda c: len(c[2]))
        cols = [self.up[j][int(base[j])][int(levels[j])][codes[j]] for j in range(self.d)]
        cls, n_cls = _class_ids(cols, self.cards(levels))
        sizes, new_hists = _merge(cls, n_cls, counts, hists)
        ok = all_satisfied(self.criteria, sizes, new_hists)
        if n_cls < len(counts):
            rep = _representatives(cls, n_cls)
            if len(self.cache) >= self.CACHE:
                del self.cache[max(range(1, len(self.cache)), key=lambda i: len(self.cache[i][2]))]
            self.cache.append((levels.copy(), [c[rep] for c in cols], sizes, new_hists))
        return int(sizes[~ok].sum())

    def _row_hists(self) -> list[np.ndarray]:
        """Per-row one-hot sensitive histograms, merged into the bottom node's class table."""
        if not self.need_hist:
            return []
        return [np.eye(m, dtype=np.int64)[s] for s, m in zip(self.sens, self.ms, strict=True)]

    def loss(self, levels: Levels, failing: np.ndarray) -> float:
        total = np.zeros(self.n)
        for j, lvl in enumerate(levels):
            total += self.row_ncp[j][lvl]
        n_sup = int(failing.sum())
        return float((total.sum() - total[failing].sum() + n_sup * self.d) / (self.n * self.d))


def _monotone(criterion: Criterion, max_sup: int) -> bool:
    """Whether "anonymous within the suppression limit" can only improve as nodes generalize.

    k and distinct-l: merging a failing class into a passing one gives a passing class. Entropy and
    recursive l: merged passing classes pass (concavity), but a failing class merged into a passing
    one can make both fail, so only without suppression. t-closeness: never assumed.
    """
    if isinstance(criterion, KAnonymity):
        return True
    if isinstance(criterion, LDiversityCriterion):
        return criterion.variant == "distinct" or max_sup == 0
    return False


def _class_ids(columns: Sequence[np.ndarray], cards: Sequence[int]) -> tuple[np.ndarray, int]:
    """Class id per entry of equal-length code columns (mixed-radix key, re-compressed before it
    could overflow); hash-based factorize is O(n) and class ids need no order."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    radix = 1
    for col, card in zip(columns, cards, strict=True):
        if radix * card >= 2**62:
            key = pd.factorize(key)[0].astype(np.int64)
            radix = int(key.max()) + 1
        key = key * card + col
        radix *= card
    inv, uniq = pd.factorize(key)
    return inv.astype(np.int64), len(uniq)


def _representatives(cls: np.ndarray, n_cls: int) -> np.ndarray:
    """One entry index per class (the last one: any member carries the class's codes)."""
    rep = np.empty(n_cls, dtype=np.int64)
    rep[cls] = np.arange(len(cls))
    return rep


def _merge(cls: np.ndarray, n_cls: int, counts: np.ndarray, hists: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sizes and sensitive histograms of merged classes."""
    sizes = np.bincount(cls, weights=counts, minlength=n_cls).astype(np.int64)
    merged = [
        np.stack([np.bincount(cls, weights=h[:, c], minlength=n_cls) for c in range(h.shape[1])], axis=1).astype(np.int64)
        for h in hists
    ]
    return sizes, merged


def _level_maps(tables: Sequence[LevelTable]) -> list[list[np.ndarray]] | None:
    """maps[a][b][code at level a] = code at level b (b >= a), or None when the levels do not nest
    (then roll-up is off and every node is evaluated on the rows)."""
    maps: list[list[np.ndarray]] = []
    for a, ta in enumerate(tables):
        row: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * a
        for tb in tables[a:]:
            m = np.zeros(len(ta.labels), dtype=np.int64)
            m[ta.gen] = tb.gen
            if not np.array_equal(m[ta.gen], tb.gen):
                return None
            row.append(m)
        maps.append(row)
    return maps


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
    max_sup = int(math.floor(suppression_limit * ev.n + 1e-9))
    k = max((c.k for c in criteria if isinstance(c, KAnonymity)), default=1)
    search = _Search(
        ev,
        nodes,
        heights,
        not_anon=_projection_bound(ev, nodes, heights, k) > max_sup,
        max_sup=max_sup,
        monotone=all(_monotone(c, max_sup) for c in criteria),
    )
    best = search.least_loss(_loss_lower_bound(ev, nodes))
    if best is None:
        return None
    return _result(ev, nodes, best, search.evaluated, n_nodes)


def _loss_lower_bound(ev: _Evaluator, nodes: np.ndarray) -> np.ndarray:
    """Per node, the mean NCP had no row been suppressed: a sum of per-column constants <= loss."""
    lb = np.zeros(len(nodes))
    for j in range(ev.d):
        lb += ev.col_lb[j][nodes[:, j]]
    return lb / ev.d


def _projection_bound(ev: _Evaluator, nodes: np.ndarray, heights: Sequence[int], k: int) -> np.ndarray:
    """Per node, a lower bound on the rows in classes smaller than k, from one- and two-column
    projections (k only: class sizes can only shrink when columns are added)."""
    lower_sup = np.zeros(len(nodes), dtype=np.int64)
    for j in range(ev.d):
        bad = np.array([_rows_in_small_classes(g, k) for g in ev.gen[j]])
        lower_sup = np.maximum(lower_sup, bad[nodes[:, j]])
    # the same bound from two-column projections: sharper, still cheap (d^2/2 x levels^2 passes)
    for a in range(ev.d):
        for b in range(a + 1, ev.d):
            table = np.zeros((heights[a] + 1, heights[b] + 1), dtype=np.int64)
            for la, ga in enumerate(ev.gen[a]):
                for lb_, gb in enumerate(ev.gen[b]):
                    table[la, lb_] = _rows_in_small_classes(ga * (int(gb.max()) + 1) + gb, k)
            lower_sup = np.maximum(lower_sup, table[nodes[:, a], nodes[:, b]])
    return lower_sup


def _rows_in_small_classes(codes: np.ndarray, k: int) -> int:
    counts = np.bincount(codes)
    return int(counts[(counts > 0) & (counts < k)].sum())


Best = tuple[float, int, np.ndarray]  # (loss, node index, failing rows)


class _Search:
    """Nodes by increasing lower bound, with predictive tagging: what is known anonymous or not
    anonymous without evaluation (`anon`, `not_anon`), and how many nodes touched the rows."""

    def __init__(
        self,
        ev: _Evaluator,
        nodes: np.ndarray,
        heights: Sequence[int],
        not_anon: np.ndarray,
        max_sup: int,
        monotone: bool,
    ) -> None:
        self.ev = ev
        self.nodes = nodes
        self.heights = heights
        self.dims = tuple(h + 1 for h in heights)
        self.not_anon = not_anon
        self.anon = np.zeros(len(nodes), dtype=bool)  # known anonymous (tagged upward from an anonymous node)
        self.max_sup = max_sup
        self.monotone = monotone
        self.evaluated = 0
        # tallest first: fewer checks measured on Adult
        self.climb_order = sorted(range(len(heights)), key=lambda j: -heights[j])

    def least_loss(self, lb: np.ndarray) -> Best | None:
        """Visit nodes by increasing lower bound; stop once it reaches the best loss found."""
        order = np.lexsort((self.nodes.sum(axis=1), lb))
        best: Best | None = None
        for idx in order.tolist():
            if best is not None and lb[idx] >= best[0] - 1e-15:
                break
            if self.not_anon[idx]:
                continue
            found = self.candidate(idx)
            if found is not None and (best is None or found[0] < best[0] - 1e-15):
                best = found
        return best

    def candidate(self, idx: int) -> Best | None:
        """The node's loss and failing rows when it is anonymous within the suppression limit."""
        levels = self.nodes[idx]
        if not self.is_anonymous(levels):
            if self.monotone:
                self.climb(levels)
            return None
        failing = self.ev.final_failing(levels)
        if int(failing.sum()) > self.max_sup:  # t failed again against the kept rows' distribution
            return None
        return self.ev.loss(levels, failing), idx, failing

    def is_anonymous(self, levels: np.ndarray) -> bool:
        """Checked once per node; the answer is spread by monotonicity (k, l) to the nodes above
        (anonymous) or below (not anonymous)."""
        i = int(np.ravel_multi_index(tuple(levels), self.dims))
        if self.anon[i] or self.not_anon[i]:
            return bool(self.anon[i])
        self.evaluated += 1
        ok = self.ev.failing_count(levels) <= self.max_sup
        if self.monotone:
            if ok:
                self.anon[(self.nodes >= levels).all(axis=1)] = True
            else:
                self.not_anon[(self.nodes <= levels).all(axis=1)] = True
        return ok

    def climb(self, levels: np.ndarray) -> None:
        """From a node that is not anonymous, raise one QI after another as far as the node stays
        not anonymous (binary search per QI, as Flash searches paths): the maximal node reached
        tags its whole down-set in one go."""
        cur = levels.copy()
        for j in self.climb_order:
            lo, hi = int(cur[j]), self.heights[j]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                cand = cur.copy()
                cand[j] = mid
                if self.is_anonymous(cand):
                    hi = mid - 1
                else:
                    lo = mid
            cur[j] = lo


def _result(ev: _Evaluator, nodes: np.ndarray, best: Best, evaluated: int, n_nodes: int) -> LatticeResult:
    """The release of the best node: kept rows, their labels, and the search's figures."""
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
