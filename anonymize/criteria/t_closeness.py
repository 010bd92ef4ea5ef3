"""t-closeness (Li et al. 2007): each class's sensitive distribution is within EMD t of the table's.

Ground distances as in the paper: numeric columns use the ordered distance (EMD = sum of absolute
cumulative differences / (m - 1)); categorical columns use the equal distance (EMD = half the L1
distance). pycanon computes the same two, which the tests use as the independent check.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anonymize.criteria.base import Criterion, SensitiveColumn


def emd(hist: np.ndarray, global_counts: np.ndarray, kind: str) -> np.ndarray:
    """EMD per class row between the class distribution and the global one."""
    sizes = hist.sum(axis=1, keepdims=True)
    p = hist / np.maximum(sizes, 1)
    q = global_counts / max(global_counts.sum(), 1)
    diff = p - q[None, :]
    m = hist.shape[1]
    if kind == "ordered":
        if m <= 1:
            return np.zeros(len(hist))
        return np.abs(np.cumsum(diff, axis=1)).sum(axis=1) / (m - 1)
    return 0.5 * np.abs(diff).sum(axis=1)


class TCloseness(Criterion):
    name = "t-closeness"
    needs_sensitive = True

    def __init__(self, t: float, columns: Sequence[SensitiveColumn]) -> None:
        self.t = float(t)
        self.columns = list(columns)

    def satisfied(self, sizes: np.ndarray, hists: Sequence[np.ndarray]) -> np.ndarray:
        ok = np.ones(len(sizes), dtype=bool)
        for col, hist in zip(self.columns, hists, strict=True):
            ok &= emd(hist, col.counts, col.kind) <= self.t + 1e-12
        return ok
