"""Re-identification risk of a release under the prosecutor, journalist and marketer models.

Prosecutor: the attacker knows the target is in the release, risk 1 / |class|. Journalist: the
attacker only knows the target is in a wider population, risk 1 / (population records matching
the class). Marketer: expected share of records re-identified when linking everyone.
(El Emam's definitions, as in ARX's risk view.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NotRequired, TypedDict

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.generalization.hierarchies import Hierarchy, NumericDomain

_CHUNK_CELLS = 20_000_000


class RiskFigures(TypedDict):
    """What `reidentification_risk` reports (journalist figures only with a population)."""

    records: int
    prosecutor_max: float
    prosecutor_avg: float
    journalist_max: float | None
    journalist_avg: float | None
    marketer: float
    records_at_risk: int
    share_at_risk: float
    threshold: float
    risk_histogram: NotRequired[dict[str, int]]


def equivalence_classes(release: pd.DataFrame, qis: Sequence[str]) -> tuple[np.ndarray, int]:
    """Class id per row (rows with equal released QI strings share one) and the number of classes."""
    key = np.zeros(len(release), dtype=np.int64)
    radix = 1
    for col in qis:
        codes, uniques = pd.factorize(release[col].astype(str), sort=False)
        card = max(len(uniques), 1)
        if radix * card >= 2**62:
            _, key = np.unique(key, return_inverse=True)
            radix = int(key.max()) + 1 if len(key) else 1
        key = key * card + codes
        radix *= card
    uniq, inv = np.unique(key, return_inverse=True)
    return inv.astype(np.int64), len(uniq)


def _population_counts_labels(release: pd.DataFrame, qis: Sequence[str], population: pd.DataFrame) -> np.ndarray:
    """Per release row: population rows with identical released strings (population generalized alike)."""
    both = pd.concat([release[list(qis)].astype(str), population[list(qis)].astype(str)], ignore_index=True)
    cls, n_cls = equivalence_classes(both, qis)
    pop_counts = np.bincount(cls[len(release) :], minlength=n_cls)
    return pop_counts[cls[: len(release)]]


def _population_counts_raw(
    release: pd.DataFrame, qis: Sequence[str], population: pd.DataFrame, hierarchies: Mapping[str, Hierarchy]
) -> np.ndarray:
    """Per release row: raw population records whose values every released label contains."""
    rel_cls, n_cls = equivalence_classes(release, qis)
    first = np.zeros(n_cls, dtype=np.int64)
    first[rel_cls[::-1]] = np.arange(len(release))[::-1]
    pop_codes, label_masks, label_idx = [], [], []
    for col in qis:
        dom = hierarchies[col].encode(population[col], col)
        raw = dom.values[dom.codes] if isinstance(dom, NumericDomain) else dom.codes
        uniq_raw, raw_inv = np.unique(raw, return_inverse=True)
        lab_inv, labels = pd.factorize(release[col].astype(str).to_numpy()[first])
        label_masks.append(np.stack([dom.contains(str(lab), uniq_raw) for lab in labels]))
        label_idx.append(lab_inv)
        pop_codes.append(raw_inv)
    tuples, counts = np.unique(np.stack(pop_codes, axis=1), axis=0, return_counts=True)
    F = np.zeros(n_cls, dtype=np.int64)
    chunk = max(1, _CHUNK_CELLS // max(len(tuples), 1))
    for c0 in range(0, n_cls, chunk):
        c1 = min(c0 + chunk, n_cls)
        match = np.ones((c1 - c0, len(tuples)), dtype=bool)
        for j in range(len(qis)):
            match &= label_masks[j][label_idx[j][c0:c1]][:, tuples[:, j]]
        F[c0:c1] = match.astype(np.int64) @ counts
    return F[rel_cls]


RISK_BINS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


def risk_histogram(risk: np.ndarray) -> dict[str, int]:
    """Records per prosecutor-risk band, e.g. {"(0.05, 0.1]": 1200}: the distribution behind max/avg."""
    # bands are (lo, hi]: a risk of exactly 0.1 (class of 10) belongs to (0.05, 0.1]
    edges = np.searchsorted(RISK_BINS, risk, side="left")
    counts = np.bincount(np.clip(edges, 1, len(RISK_BINS) - 1) - 1, minlength=len(RISK_BINS) - 1)
    return {f"({lo:g}, {hi:g}]": int(c) for lo, hi, c in zip(RISK_BINS[:-1], RISK_BINS[1:], counts, strict=True)}


def reidentification_risk(
    release: pd.DataFrame,
    qis: Sequence[str],
    population: pd.DataFrame | None = None,
    threshold: float = 0.2,
    hierarchies: Mapping[str, Hierarchy] | None = None,
    classes: tuple[np.ndarray, int] | None = None,
) -> RiskFigures:
    """Prosecutor max / avg, journalist (when a population is given), marketer, records at risk.

    `population` holds either released-style strings for the QIs (generalized the same way) or, when
    `hierarchies` is given, raw QI values that are matched to release classes by containment.
    `classes`: `equivalence_classes(release, qis)` when the caller has it already (one pass for all figures).
    """
    if not 0 < threshold <= 1:
        raise InputError("risk threshold must be in (0, 1]")
    for col in qis:
        if col not in release.columns:
            raise InputError(f"column {col!r} is not in the release")
        if population is not None and col not in population.columns:
            raise InputError(f"column {col!r} is not in the population table")
    n = len(release)
    if n == 0:
        return {"records": 0, "prosecutor_max": 0.0, "prosecutor_avg": 0.0, "journalist_max": None,
                "journalist_avg": None, "marketer": 0.0, "records_at_risk": 0, "share_at_risk": 0.0,
                "threshold": threshold}
    cls, n_cls = classes if classes is not None else equivalence_classes(release, qis)
    size = np.bincount(cls, minlength=n_cls)[cls]
    risk = 1.0 / size
    out: RiskFigures = {
        "records": n,
        "prosecutor_max": float(risk.max()),
        "prosecutor_avg": float(risk.mean()),
        "journalist_max": None,
        "journalist_avg": None,
        "marketer": float(n_cls / n),
        "records_at_risk": int((risk > threshold).sum()),
        "share_at_risk": float((risk > threshold).mean()),
        "threshold": threshold,
        "risk_histogram": risk_histogram(risk),
    }
    if population is not None:
        if hierarchies is None:
            F = _population_counts_labels(release, qis, population)
        else:
            F = _population_counts_raw(release, qis, population, hierarchies)
        F = np.maximum(F, 1)
        jr = 1.0 / F
        out["journalist_max"] = float(jr.max())
        out["journalist_avg"] = float(jr.mean())
        out["marketer"] = float(jr.mean())  # each record is re-identified with chance 1 / F
    return out
