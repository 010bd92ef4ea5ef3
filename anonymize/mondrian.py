"""Mondrian multidimensional partitioning (LeFevre, DeWitt, Ramakrishnan 2006), strict and relaxed.

Hand-written because no maintained Python library offers a fast Mondrian: pycanon only checks
k / l / t, anjana does full-domain generalization in pandas (seconds per run on Adult), and the
reference Basic Mondrian code is pure-Python recursion over lists of records.

Why it is fast: every quasi-identifier is an integer code column (sorted distinct values for numbers
and dates, depth-first leaf order for hierarchies, see `anonymize.hierarchies`), stacked into one
(rows x QIs) int32 matrix. Partitions are contiguous row ranges of that matrix, refined in place by
an explicit stack (no recursion): a split reorders only its block, so every partition's extent is
one `min`/`max` over a view, and children need no copies. The widest normalized dimension is split
at the median (numeric: `np.partition`; categorical: the children of the node that covers the
block), and a split is kept only when every child satisfies all criteria (k, l, t), so every final
partition does too.

Strict mode releases non-overlapping ranges and hierarchy nodes. Relaxed mode cuts numeric blocks
exactly in half (the median value may fall on both sides) and, when a categorical node's children
cannot all satisfy the criteria, cuts the depth-first leaf order in half; such blocks release as a
"{a,b}" set when they do not cover a whole node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anonymize.hierarchies import Domain, NumericDomain, TreeDomain
from anonymize.models import Criterion, all_satisfied
from anonymize.models.k_anonymity import KAnonymity


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
    n = len(domains[0].codes)
    d = len(domains)
    X = np.empty((n, d), dtype=np.int32)
    for j, dom in enumerate(domains):
        X[:, j] = dom.codes
    rows = np.arange(n, dtype=np.int64)
    S = [np.ascontiguousarray(s, dtype=np.int64) for s in sensitive_codes]
    ms = list(sensitive_sizes)
    need_hist = any(c.needs_sensitive for c in criteria)
    k = _k_of(criteria)

    root_h = [np.bincount(s, minlength=m) for s, m in zip(S, ms, strict=True)] if need_hist else []
    if not all_satisfied(criteria, np.array([n]), [h[None, :] for h in root_h])[0]:
        return None

    numeric = [isinstance(dom, NumericDomain) for dom in domains]
    vals = [dom.values.tolist() if isinstance(dom, NumericDomain) else None for dom in domains]
    spans = [dom.span if isinstance(dom, NumericDomain) else float(dom.n_leaves) for dom in domains]
    trees: list[TreeDomain | None] = [dom if isinstance(dom, TreeDomain) else None for dom in domains]
    leafcounts = [t.leafcount if t is not None else None for t in trees]
    anc_lists = [t._anc_lists if t is not None else None for t in trees]

    def reorder(s: int, e: int, order: np.ndarray) -> None:
        X[s:e] = X[s:e][order]
        rows[s:e] = rows[s:e][order]
        for sj in S:
            sj[s:e] = sj[s:e][order]

    def hists_for(s: int, e: int, groups: np.ndarray, n_groups: int) -> list[np.ndarray]:
        return [
            np.bincount(groups * m + sj[s:e], minlength=n_groups * m).reshape(n_groups, m)
            for sj, m in zip(S, ms, strict=True)
        ]

    def binary_ok(s: int, e: int, mask: np.ndarray, nl: int, h: list[np.ndarray]) -> bool:
        size = e - s
        if nl < k or size - nl < k:
            return False
        if not need_hist:
            return bool(all_satisfied(criteria, np.array([nl, size - nl]), []).all())
        hl = [np.bincount(sj[s:e][mask], minlength=m) for sj, m in zip(S, ms, strict=True)]
        hs = [np.stack([a, b - a]) for a, b in zip(hl, h, strict=True)]
        return bool(all_satisfied(criteria, np.array([nl, size - nl]), hs).all())

    def split_halves(s: int, e: int, col: np.ndarray, h: list[np.ndarray]) -> list | None:
        """Relaxed cut at the exact middle of the block sorted on `col`."""
        order = np.argsort(col, kind="stable")
        half = (e - s) // 2
        mask = np.zeros(e - s, dtype=bool)
        mask[order[:half]] = True
        if not binary_ok(s, e, mask, half, h):
            return None
        reorder(s, e, order)
        return _children_binary(s, e, half, mask, h)

    def _children_binary(s: int, e: int, nl: int, mask: np.ndarray, h: list[np.ndarray]) -> list:
        if need_hist:
            # hist of the left child, recomputed after the reorder on its now-contiguous rows
            hl = [np.bincount(sj[s : s + nl], minlength=m) for sj, m in zip(S, ms, strict=True)]
            return [(s, s + nl, hl), (s + nl, e, [b - a for a, b in zip(hl, h, strict=True)])]
        return [(s, s + nl, h), (s + nl, e, h)]

    def split_numeric(s: int, e: int, j: int, h: list[np.ndarray]) -> list | None:
        col = X[s:e, j]
        if relaxed:
            return split_halves(s, e, col, h)
        size = e - s
        half = size // 2
        med = np.partition(col, half)[half]
        lt = col < med
        nlt = int(lt.sum())
        le = col <= med
        nle = int(le.sum())
        cands = sorted(((nlt, lt), (nle, le)), key=lambda c: -min(c[0], size - c[0]))
        for nl, mask in cands:
            if 0 < nl < size and binary_ok(s, e, mask, nl, h):
                order = np.concatenate((np.flatnonzero(mask), np.flatnonzero(~mask)))
                reorder(s, e, order)
                return _children_binary(s, e, nl, mask, h)
        return None

    def split_tree(s: int, e: int, j: int, level: int, a: int, h: list[np.ndarray]) -> list | None:
        tree = trees[j]
        col = X[s:e, j]
        child = tree.anc[level - 1][col]
        first = anc_lists[j][level - 1][a]
        local = child - first
        n_groups = int(local.max()) + 1
        sizes = np.bincount(local, minlength=n_groups)
        present = np.flatnonzero(sizes)
        ok = sizes[present].min() >= k
        if ok:
            hs = [hh[present] for hh in hists_for(s, e, local, n_groups)] if need_hist else []
            ok = bool(all_satisfied(criteria, sizes[present], hs).all())
        if ok:
            order = np.argsort(local, kind="stable")
            reorder(s, e, order)
            out, start = [], s
            for i, g in enumerate(present):
                stop = start + int(sizes[g])
                out.append((start, stop, [hh[i] for hh in hs] if need_hist else h))
                start = stop
            return out
        # Some child fails on its own: cut the children, in depth-first order, into two groups at
        # the boundary nearest the median (regions stay disjoint whole subtrees, as strict needs).
        cum = np.cumsum(sizes[present])[:-1]
        size = e - s
        for i in np.argsort(np.abs(cum - size / 2), kind="stable").tolist():
            nl = int(cum[i])
            if nl < k or size - nl < k:
                continue
            mask = local <= present[i]
            if binary_ok(s, e, mask, nl, h):
                order = np.concatenate((np.flatnonzero(mask), np.flatnonzero(~mask)))
                reorder(s, e, order)
                return _children_binary(s, e, nl, mask, h)
        if relaxed:
            return split_halves(s, e, col, h)
        return None

    finals: list[int] = []
    stack: list[tuple[int, int, list[np.ndarray]]] = [(0, n, root_h)]
    while stack:
        s, e, h = stack.pop()
        if e - s < 2 * k:
            finals.append(s)
            continue
        block = X[s:e]
        mins = block.min(axis=0).tolist()
        maxs = block.max(axis=0).tolist()
        cands = []
        for j in range(d):
            a, b = mins[j], maxs[j]
            if a == b:
                continue
            if numeric[j]:
                w = (vals[j][b] - vals[j][a]) / spans[j]
                cands.append((w, j, 0, a))
            else:
                lvl = trees[j].lca_level(a, b)
                w = leafcounts[j][lvl][anc_lists[j][lvl][a]] / spans[j]
                cands.append((w, j, lvl, a))
        cands.sort(key=lambda c: -c[0])
        for _w, j, lvl, a in cands:
            kids = split_numeric(s, e, j, h) if numeric[j] else split_tree(s, e, j, lvl, a, h)
            if kids is not None:
                stack.extend(kids)
                break
        else:
            finals.append(s)

    starts = np.array(sorted(finals), dtype=np.int64)
    sizes = np.diff(np.append(starts, n))
    n_classes = len(starts)
    cls_pos = np.repeat(np.arange(n_classes), sizes)
    classes = np.empty(n, dtype=np.int64)
    classes[rows] = cls_pos
    mins = np.minimum.reduceat(X, starts, axis=0)
    maxs = np.maximum.reduceat(X, starts, axis=0)
    labels = [
        _render_column(domains[j], mins[:, j], maxs[:, j], X[:, j], cls_pos, n_classes, relaxed) for j in range(d)
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
