"""Mondrian multidimensional partitioning (LeFevre, DeWitt, Ramakrishnan 2006), strict and relaxed.

Hand-written because no maintained Python library offers a fast Mondrian: pycanon only checks
k / l / t, anjana does full-domain generalization in pandas (seconds per run on Adult), and the
reference Basic Mondrian code is pure-Python recursion over lists of records.

Why it is fast: every quasi-identifier is an integer code column (sorted distinct values for numbers
and dates, depth-first leaf order for hierarchies, see `anonymize.generalization.hierarchies`), stacked into one
(rows x QIs) int32 matrix. Partitions are contiguous row ranges of that matrix, refined in place by
an explicit stack (no recursion): a split reorders only its block, so every partition's extent is
one `min`/`max` over a view, and children need no copies. The widest normalized dimension is split
at the median (numeric: `np.partition`; categorical: the children of the node that covers the
block), and a split is kept only when every child satisfies all criteria (k, l, t), so every final
partition does too.

On a large table the blocks of the first cuts are shared out between this process and one forked
child (the second core): the matrix lives in shared memory, each process refines disjoint row
ranges of it in place, and since a block's split depends on its own rows alone, the partitions are
exactly the one-process ones.

Strict mode releases non-overlapping ranges and hierarchy nodes. Relaxed mode cuts numeric blocks
exactly in half (the median value may fall on both sides) and, when a categorical node's children
cannot all satisfy the criteria, cuts the depth-first leaf order in half; such blocks release as a
"{a,b}" set when they do not cover a whole node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anonymize.criteria import Criterion, all_satisfied
from anonymize.criteria.k_anonymity import KAnonymity
from anonymize.generalization.hierarchies import Domain, NumericDomain, TreeDomain

#: From this many rows, the splitting is shared with a forked child (`_Splitter.partition`).
PARALLEL_MIN_ROWS = 200_000

Block = tuple[int, int, list[np.ndarray]]  # rows [start, stop) of the matrix and their sensitive histograms
Candidate = tuple[float, int, int, int]  # (normalized width, QI, LCA level, lowest code) of one dimension


@dataclass
class Partitioning:
    """Final partitions: `classes[i]` = class id of input row i; `labels[j][c]` = release string."""

    classes: np.ndarray
    labels: list[list[str]]
    n_classes: int


def _k_of(criteria: Sequence[Criterion]) -> int:
    return max((c.k for c in criteria if isinstance(c, KAnonymity)), default=1)


def mondrian(
    domains: Sequence[Domain],
    sensitive_codes: Sequence[np.ndarray],
    sensitive_sizes: Sequence[int],
    criteria: Sequence[Criterion],
    relaxed: bool = False,
) -> Partitioning | None:
    """Partition the rows; None when the whole table already fails the criteria (nothing to split)."""
    splitter = _Splitter(domains, sensitive_codes, sensitive_sizes, criteria, relaxed)
    root_h = splitter.root_hists()
    if not all_satisfied(criteria, np.array([splitter.n]), [h[None, :] for h in root_h])[0]:
        return None
    finals = splitter.partition(root_h)
    return _assemble(domains, splitter.X, splitter.rows, finals, relaxed)


class _Splitter:
    """One Mondrian run: the (rows x QIs) code matrix, refined in place, and what a split checks.

    `X`, `rows` and the sensitive code columns are reordered together, block by block, so that every
    partition stays a contiguous row range of all of them.
    """

    def __init__(
        self,
        domains: Sequence[Domain],
        sensitive_codes: Sequence[np.ndarray],
        sensitive_sizes: Sequence[int],
        criteria: Sequence[Criterion],
        relaxed: bool,
    ) -> None:
        self.n = n = len(domains[0].codes)
        self.d = len(domains)
        self.shared = n >= PARALLEL_MIN_ROWS
        array = _shared_array if self.shared else np.empty
        self.X = array((n, self.d), np.int32)
        for j, dom in enumerate(domains):
            self.X[:, j] = dom.codes
        self.rows = array((n,), np.int64)
        self.rows[:] = np.arange(n, dtype=np.int64)
        self.S = []
        for s in sensitive_codes:
            self.S.append(array((n,), np.int64))
            self.S[-1][:] = s
        self.ms = list(sensitive_sizes)
        self.criteria = criteria
        self.relaxed = relaxed
        self.need_hist = any(c.needs_sensitive for c in criteria)
        self.k = _k_of(criteria)
        self.numeric = [isinstance(dom, NumericDomain) for dom in domains]
        self.spans = [dom.span if isinstance(dom, NumericDomain) else float(dom.n_leaves) for dom in domains]
        self.vals = {j: dom.values.tolist() for j, dom in enumerate(domains) if isinstance(dom, NumericDomain)}
        self.trees = {j: dom for j, dom in enumerate(domains) if isinstance(dom, TreeDomain)}
        self.anc_lists = {j: t._anc_lists for j, t in self.trees.items()}

    def root_hists(self) -> list[np.ndarray]:
        """Sensitive histograms of the whole table (none when no criterion needs them)."""
        if not self.need_hist:
            return []
        return [np.bincount(s, minlength=m) for s, m in zip(self.S, self.ms, strict=True)]

    def partition(self, root_h: list[np.ndarray]) -> list[int]:
        """The final blocks' starts. A large table: the first cuts here, then the blocks they made in two
        groups of about equal rows, one refined by a forked child (in the shared matrix), one here."""
        if not self.shared:
            return self.partition_from([(0, self.n, root_h)])
        from anonymize.forked import Pending

        finals: list[int] = []
        queue: list[Block] = [(0, self.n, root_h)]
        while queue and len(queue) < 8:  # breadth first: blocks of similar size to share out
            s, e, h = queue.pop(0)
            kids = self.split_block(s, e, h) if e - s >= 2 * self.k else None
            if kids is None:
                finals.append(s)
            else:
                queue.extend(kids)
        mine: list[Block] = []
        theirs: list[Block] = []
        for block in sorted(queue, key=lambda b: b[0] - b[1]):  # largest first, each to the lighter side
            lighter = mine if sum(e - s for s, e, _ in mine) <= sum(e - s for s, e, _ in theirs) else theirs
            lighter.append(block)
        child = Pending(self.partition_from, theirs)
        try:
            finals += self.partition_from(mine)
            finals += child.result()
        finally:
            child.close()
        return finals

    def partition_from(self, stack: list[Block]) -> list[int]:
        """Split blocks (explicit stack, no recursion) until none can split; the final blocks' starts."""
        finals: list[int] = []
        while stack:
            s, e, h = stack.pop()
            kids = self.split_block(s, e, h) if e - s >= 2 * self.k else None
            if kids is None:
                finals.append(s)
            else:
                stack.extend(kids)
        return finals

    def split_block(self, s: int, e: int, h: list[np.ndarray]) -> list[Block] | None:
        """Split on the widest dimension that allows it; None when no dimension does."""
        for _w, j, lvl, a in self.widest_first(s, e):
            kids = self.split_numeric(s, e, j, h) if self.numeric[j] else self.split_tree(s, e, j, lvl, a, h)
            if kids is not None:
                return kids
        return None

    def widest_first(self, s: int, e: int) -> list[Candidate]:
        """The block's non-constant dimensions, widest normalized extent first."""
        block = self.X[s:e]
        mins = block.min(axis=0).tolist()
        maxs = block.max(axis=0).tolist()
        cands: list[Candidate] = []
        for j in range(self.d):
            a, b = mins[j], maxs[j]
            if a == b:
                continue
            if self.numeric[j]:
                w = (self.vals[j][b] - self.vals[j][a]) / self.spans[j]
                cands.append((w, j, 0, a))
            else:
                tree = self.trees[j]
                lvl = tree.lca_level(a, b)
                w = tree.leafcount[lvl][self.anc_lists[j][lvl][a]] / self.spans[j]
                cands.append((w, j, lvl, a))
        cands.sort(key=lambda c: -c[0])
        return cands

    def reorder(self, s: int, e: int, order: np.ndarray) -> None:
        self.X[s:e] = self.X[s:e][order]
        self.rows[s:e] = self.rows[s:e][order]
        for sj in self.S:
            sj[s:e] = sj[s:e][order]

    def hists_for(self, s: int, e: int, groups: np.ndarray, n_groups: int) -> list[np.ndarray]:
        return [
            np.bincount(groups * m + sj[s:e], minlength=n_groups * m).reshape(n_groups, m)
            for sj, m in zip(self.S, self.ms, strict=True)
        ]

    def binary_ok(self, s: int, e: int, mask: np.ndarray, nl: int, h: list[np.ndarray]) -> bool:
        """Whether both sides of a two-way cut (`mask` = left rows, `nl` of them) pass every criterion."""
        size = e - s
        if nl < self.k or size - nl < self.k:
            return False
        if not self.need_hist:
            return bool(all_satisfied(self.criteria, np.array([nl, size - nl]), []).all())
        hl = [np.bincount(sj[s:e][mask], minlength=m) for sj, m in zip(self.S, self.ms, strict=True)]
        hs = [np.stack([a, b - a]) for a, b in zip(hl, h, strict=True)]
        return bool(all_satisfied(self.criteria, np.array([nl, size - nl]), hs).all())

    def cut_binary(self, s: int, e: int, nl: int, mask: np.ndarray, h: list[np.ndarray]) -> list[Block]:
        """Move the `mask` rows to the front of the block; the two children."""
        order = np.concatenate((np.flatnonzero(mask), np.flatnonzero(~mask)))
        self.reorder(s, e, order)
        return self.children_binary(s, e, nl, h)

    def children_binary(self, s: int, e: int, nl: int, h: list[np.ndarray]) -> list[Block]:
        if self.need_hist:
            # hist of the left child, recomputed after the reorder on its now-contiguous rows
            hl = [np.bincount(sj[s : s + nl], minlength=m) for sj, m in zip(self.S, self.ms, strict=True)]
            return [(s, s + nl, hl), (s + nl, e, [b - a for a, b in zip(hl, h, strict=True)])]
        return [(s, s + nl, h), (s + nl, e, h)]

    def split_halves(self, s: int, e: int, col: np.ndarray, h: list[np.ndarray]) -> list[Block] | None:
        """Relaxed cut at the exact middle of the block sorted on `col`."""
        order = np.argsort(col, kind="stable")
        half = (e - s) // 2
        mask = np.zeros(e - s, dtype=bool)
        mask[order[:half]] = True
        if not self.binary_ok(s, e, mask, half, h):
            return None
        self.reorder(s, e, order)
        return self.children_binary(s, e, half, h)

    def split_numeric(self, s: int, e: int, j: int, h: list[np.ndarray]) -> list[Block] | None:
        """Strict: values below / up to the median, the more balanced side first. Relaxed: halves."""
        col = self.X[s:e, j]
        if self.relaxed:
            return self.split_halves(s, e, col, h)
        size = e - s
        half = size // 2
        med = np.partition(col, half)[half]
        lt = col < med
        le = col <= med
        cands = sorted(((int(lt.sum()), lt), (int(le.sum()), le)), key=lambda c: -min(c[0], size - c[0]))
        for nl, mask in cands:
            if 0 < nl < size and self.binary_ok(s, e, mask, nl, h):
                return self.cut_binary(s, e, nl, mask, h)
        return None

    def split_tree(self, s: int, e: int, j: int, level: int, a: int, h: list[np.ndarray]) -> list[Block] | None:
        """Split into the children of the node covering the block; failing that, into two groups of
        whole children; failing that (relaxed only), into halves of the depth-first leaf order."""
        col = self.X[s:e, j]
        local = self.trees[j].anc[level - 1][col] - self.anc_lists[j][level - 1][a]
        sizes = np.bincount(local, minlength=int(local.max()) + 1)
        present = np.flatnonzero(sizes)
        kids = self.split_into_children(s, e, local, sizes, present, h)
        if kids is None:
            kids = self.split_children_in_two(s, e, local, sizes, present, h)
        if kids is None and self.relaxed:
            kids = self.split_halves(s, e, col, h)
        return kids

    def split_into_children(
        self, s: int, e: int, local: np.ndarray, sizes: np.ndarray, present: np.ndarray, h: list[np.ndarray]
    ) -> list[Block] | None:
        """One block per child node present (`local` = child index per row), if every one passes."""
        if sizes[present].min() < self.k:
            return None
        hs = [hh[present] for hh in self.hists_for(s, e, local, len(sizes))] if self.need_hist else []
        if not all_satisfied(self.criteria, sizes[present], hs).all():
            return None
        self.reorder(s, e, np.argsort(local, kind="stable"))
        out: list[Block] = []
        start = s
        for i, g in enumerate(present):
            stop = start + int(sizes[g])
            out.append((start, stop, [hh[i] for hh in hs] if self.need_hist else h))
            start = stop
        return out

    def split_children_in_two(
        self, s: int, e: int, local: np.ndarray, sizes: np.ndarray, present: np.ndarray, h: list[np.ndarray]
    ) -> list[Block] | None:
        """Some child fails on its own: cut the children, in depth-first order, into two groups at the
        boundary nearest the median (regions stay disjoint whole subtrees, as strict needs)."""
        cum = np.cumsum(sizes[present])[:-1]
        size = e - s
        for i in np.argsort(np.abs(cum - size / 2), kind="stable").tolist():
            nl = int(cum[i])
            if nl < self.k or size - nl < self.k:
                continue
            mask = local <= present[i]
            if self.binary_ok(s, e, mask, nl, h):
                return self.cut_binary(s, e, nl, mask, h)
        return None


def _shared_array(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A zeroed array in anonymous shared memory: what a forked child writes there, this process sees."""
    import mmap

    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def _assemble(
    domains: Sequence[Domain], X: np.ndarray, rows: np.ndarray, finals: list[int], relaxed: bool
) -> Partitioning:
    """Class id per input row and release strings per class from the final blocks' starts."""
    n = len(rows)
    starts = np.array(sorted(finals), dtype=np.int64)
    sizes = np.diff(np.append(starts, n))
    n_classes = len(starts)
    cls_pos = np.repeat(np.arange(n_classes), sizes)
    classes = np.empty(n, dtype=np.int64)
    classes[rows] = cls_pos
    mins = np.minimum.reduceat(X, starts, axis=0)
    maxs = np.maximum.reduceat(X, starts, axis=0)
    labels = [
        _render_column(domains[j], mins[:, j], maxs[:, j], X[:, j], cls_pos, n_classes, relaxed)
        for j in range(len(domains))
    ]
    return Partitioning(classes=classes, labels=labels, n_classes=n_classes)


def _render_column(
    dom: Domain,
    lo: np.ndarray,
    hi: np.ndarray,
    codes: np.ndarray,
    cls_pos: np.ndarray,
    n_classes: int,
    relaxed: bool,
) -> list[str]:
    """Release string per class; each distinct (lo, hi) pair is rendered once."""
    width = int(max(lo.max(), hi.max())) + 1
    pair = lo.astype(np.int64) * width + hi
    uniq, inv = np.unique(pair, return_inverse=True)
    if isinstance(dom, NumericDomain):
        rendered = [dom.render(dom.values[p // width], dom.values[p % width]) for p in uniq.tolist()]
        return [rendered[i] for i in inv.tolist()]
    rendered = [dom.render_node(p // width, p % width) for p in uniq.tolist()]
    out = [rendered[i] for i in inv.tolist()]
    if not relaxed:
        return out
    # relaxed blocks may hold only part of their covering node: release the set of values instead
    L = dom.n_leaves
    present = np.unique(cls_pos * L + codes)
    present_cls = present // L
    n_present = np.bincount(present_cls, minlength=n_classes)
    starts = np.searchsorted(present_cls, np.arange(n_classes))
    for c in range(n_classes):
        a, b = int(lo[c]), int(hi[c])
        lvl = dom.lca_level(a, b)
        node_leaves = int(dom.leafcount[lvl][dom._anc_lists[lvl][a]])
        if n_present[c] < node_leaves:
            leafs = (present[starts[c] : starts[c] + n_present[c]] % L).tolist()
            out[c] = dom.render_set(leafs)
    return out
