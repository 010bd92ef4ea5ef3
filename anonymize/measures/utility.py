"""Utility loss of a release: NCP / GIL, discernibility, normalized average class size.

NCP per value (Xu et al. 2006): numeric ranges (hi - lo) / domain span, categorical nodes
leaves / all leaves (0 for a single value), '*' and suppressed rows 1; averaged over rows and QIs.
Discernibility (Bayardo & Agrawal 2005): sum of squared class sizes plus suppressed x input rows.
C_avg (LeFevre et al. 2006): (records / classes) / k.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.generalization.hierarchies import Hierarchy
from anonymize.measures.risk import equivalence_classes


class UtilityLoss(TypedDict):
    """What `utility_loss` reports (JSON-ready; this key order is the report's)."""

    ncp: float
    per_column_ncp: dict[str, float]
    suppressed: int
    records: int
    discernibility: int
    classes: int
    avg_class_size: float


def utility_loss(
    original: pd.DataFrame,
    release: pd.DataFrame,
    qis: Mapping[str, Hierarchy],
    suppressed: int,
    k: int | None = None,
    classes: tuple[np.ndarray, int] | None = None,
) -> UtilityLoss:
    """NCP (fraction, overall and per column), discernibility, C_avg, suppressed.

    `original` is the input of generalization: it fixes each column's domain (numeric span, leaves).
    `k` is the requested k for C_avg; by default the release's achieved k. `classes`:
    `equivalence_classes(release, qis)` when the caller has it already.
    """
    if suppressed < 0:
        raise InputError("suppressed count must not be negative")
    n_kept = len(release)
    n_total = n_kept + suppressed
    if n_total == 0:
        raise InputError("utility loss of an empty table")
    per_col: dict[str, float] = {}
    for col, h in qis.items():
        if col not in release.columns or col not in original.columns:
            raise InputError(f"column {col!r} is not in both the original table and the release")
        dom = h.encode(original[col], col)
        codes, labels = pd.factorize(release[col].astype(str))
        ncp = dom.label_ncp([str(x) for x in labels])
        total = float(ncp[codes].sum()) if n_kept else 0.0
        per_col[col] = (total + suppressed) / n_total
    discernibility, n_cls, avg_class_size = int(suppressed) * n_total, 0, 0.0
    if n_kept:
        cls, n_cls = classes if classes is not None else equivalence_classes(release, list(qis))
        sizes = np.bincount(cls, minlength=n_cls)
        k_ref = k if k is not None else int(sizes.min())
        discernibility += int((sizes.astype(np.int64) ** 2).sum())
        avg_class_size = float(n_kept / n_cls / k_ref)
    return {
        "ncp": float(np.mean(list(per_col.values()))),
        "per_column_ncp": per_col,
        "suppressed": int(suppressed),
        "records": n_kept,
        "discernibility": discernibility,
        "classes": int(n_cls),
        "avg_class_size": avg_class_size,
    }
