"""Privacy figures computed on a release: achieved k, l (distinct / entropy / recursive) and t.

Everything is recomputed from the released strings alone (never taken from the algorithm's own
bookkeeping), so a report states what the output satisfies. Risk and utility live in
`anonymize.measures.risk` and `anonymize.measures.utility` and are re-exported here for one import site.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import NotRequired, TypedDict

import numpy as np
import pandas as pd

from anonymize.criteria.l_diversity import distinct_values, entropy, recursive_c_needed
from anonymize.criteria.t_closeness import emd
from anonymize.errors import InputError
from anonymize.generalization.generalize import encode_sensitive
from anonymize.measures.risk import equivalence_classes, reidentification_risk
from anonymize.measures.utility import utility_loss

__all__ = ["equivalence_classes", "privacy_measures", "reidentification_risk", "utility_loss"]

_HIST_BINS = [(1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, 999), (1000, None)]
_DENSE_CELLS = 20_000_000  # classes x sensitive values evaluated per chunk


class RecursiveL(TypedDict):
    """Every class is recursive (c, l)-diverse for any c above `c`."""

    l: int  # noqa: E741 - the report's JSON key
    c: float


class LValues(TypedDict):
    """Achieved l of one sensitive column."""

    distinct: int
    entropy: float
    recursive: NotRequired[RecursiveL]


class PrivacyMeasures(TypedDict):
    """What `privacy_measures` finds on a release (JSON-ready)."""

    records: int
    k: int
    classes: int
    class_size_histogram: dict[str, int]
    l: dict[str, LValues]  # noqa: E741 - the report's JSON key
    t: dict[str, float]
    t_kind: dict[str, str]


def class_size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Number of classes per size bucket ('1', '2', '3-4', ..., '1000+')."""
    out = {}
    for lo, hi in _HIST_BINS:
        sel = sizes >= lo if hi is None else (sizes >= lo) & (sizes <= hi)
        name = f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")
        out[name] = int(sel.sum())
    return out


def _per_class(
    cls: np.ndarray, n_cls: int, codes: np.ndarray, m: int, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply `fn(hist_chunk)` to dense (classes x values) counts, chunked to bound memory."""
    chunk = max(1, _DENSE_CELLS // max(m, 1))
    order = np.argsort(cls, kind="stable")
    cls_sorted, codes_sorted = cls[order], codes[order]
    bounds = np.searchsorted(cls_sorted, np.arange(0, n_cls + chunk, chunk))
    parts = []
    for i, c0 in enumerate(range(0, n_cls, chunk)):
        c1 = min(c0 + chunk, n_cls)
        a, b = bounds[i], bounds[i + 1]
        local = (cls_sorted[a:b] - c0) * m + codes_sorted[a:b]
        hist = np.bincount(local, minlength=(c1 - c0) * m).reshape(c1 - c0, m)
        parts.append(fn(hist))
    return np.concatenate(parts) if parts else np.empty(0)


def privacy_measures(
    release: pd.DataFrame,
    qis: Sequence[str],
    sensitive: Sequence[str] = (),
    t_kinds: Mapping[str, str] | None = None,
    recursive_l: int | None = None,
    classes: tuple[np.ndarray, int] | None = None,
) -> PrivacyMeasures:
    """k, classes, class-size histogram; per sensitive column l (distinct, entropy, recursive) and t.

    - l "distinct": fewest distinct sensitive values in a class; "entropy": exp(min class entropy)
      (the largest l the release is entropy-l-diverse for; pycanon reports its floor);
    - "recursive" (only when `recursive_l` is given): the smallest c such that every class is
      recursive (c, l)-diverse is any c above the reported value (r_1 / (r_l + ... + r_m), counts
      sorted in decreasing order; inf when some class has fewer than l values);
    - t: largest EMD between a class's and the release's sensitive distribution; `t_kinds[col]` is
      "ordered" (default for numeric columns) or "equal" (default otherwise).
    `classes`: `equivalence_classes(release, qis)` when the caller has it already.
    """
    qis = list(qis)
    for col in [*qis, *sensitive]:
        if col not in release.columns:
            raise InputError(f"column {col!r} is not in the release")
    n = len(release)
    out: PrivacyMeasures = {"records": n, "k": 0, "classes": 0, "class_size_histogram": class_size_histogram(np.empty(0)), "l": {}, "t": {}, "t_kind": {}}
    if n == 0:
        return out
    cls, n_cls = classes if classes is not None else equivalence_classes(release, qis)
    sizes = np.bincount(cls, minlength=n_cls)
    out["k"], out["classes"], out["class_size_histogram"] = int(sizes.min()), int(n_cls), class_size_histogram(sizes)
    for col in sensitive:
        codes, m, counts, kind = encode_sensitive(release[col], col, (t_kinds or {}).get(col))
        l_info: LValues = {
            "distinct": int(_per_class(cls, n_cls, codes, m, distinct_values).min()),
            "entropy": float(np.exp(_per_class(cls, n_cls, codes, m, entropy).min())),
        }
        if recursive_l is not None:
            c_needed = _per_class(cls, n_cls, codes, m, lambda h: recursive_c_needed(h, recursive_l))
            l_info["recursive"] = {"l": int(recursive_l), "c": float(c_needed.max())}
        out["l"][col] = l_info
        out["t"][col] = float(_per_class(cls, n_cls, codes, m, partial(emd, global_counts=counts, kind=kind)).max())
        out["t_kind"][col] = kind
    return out
