"""Front door of generalization: validate, encode, run the chosen algorithm, build the release.

`generalize(df, qis, privacy, sensitive)` returns the kept rows (original order and index) with
every quasi-identifier replaced by its release string (docs/architecture.md, "Release
representation"); other columns are untouched. Algorithms: "mondrian" (strict, the default),
"mondrian_relaxed", and "lattice" (optimal full-domain generalization with suppression).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anonymize.criteria import SensitiveColumn, criteria_for
from anonymize.errors import InputError
from anonymize.generalization.hierarchies import Hierarchy, parse_range
from anonymize.generalization.lattice import lattice_search
from anonymize.generalization.mondrian import mondrian
from anonymize.policy.spec import PrivacyModel

__all__ = ["Generalized", "encode_sensitive", "generalize", "parse_range"]


@dataclass
class Generalized:
    """A release: `data` holds the kept rows; `levels` only for full-domain (lattice) results."""

    data: pd.DataFrame
    suppressed: int
    algorithm: str
    levels: dict[str, int] | None
    classes: int


def encode_sensitive(
    series: pd.Series, column: str, kind: str | None = None
) -> tuple[np.ndarray, int, np.ndarray, str]:
    """Sensitive values -> (codes in sorted value order, #values, counts per code, EMD kind)."""
    missing = series.isna().to_numpy()
    if missing.any():
        row = series.index[int(np.argmax(missing))]
        raise InputError(f"column {column!r} row {row}: missing value in a sensitive column")
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    kind = kind or ("ordered" if numeric else "equal")
    if kind not in ("ordered", "equal"):
        raise InputError(f"column {column!r}: t-closeness distance must be 'ordered' or 'equal'")
    codes, uniques = pd.factorize(series, sort=True)
    codes = codes.astype(np.int64)
    m = len(uniques)
    return codes, m, np.bincount(codes, minlength=m), kind


def _check_inputs(df: pd.DataFrame, qis: Mapping[str, Hierarchy], privacy: PrivacyModel, sensitive: Sequence[str]) -> None:
    if not qis:
        raise InputError("no quasi-identifier columns to generalize")
    for col in [*qis, *sensitive]:
        if col not in df.columns:
            raise InputError(f"column {col!r} is not in the table")
    overlap = set(qis) & set(sensitive)
    if overlap:
        raise InputError(f"column {sorted(overlap)[0]!r} is both a quasi-identifier and sensitive")
    if len(df) == 0:
        raise InputError("the table has no rows")
    if privacy.k > len(df):
        raise InputError(f"k={privacy.k} is larger than the table ({len(df)} rows)")
    if (privacy.l is not None or privacy.t is not None) and not sensitive:
        raise InputError("l-diversity / t-closeness need at least one sensitive column")


def generalize(
    df: pd.DataFrame,
    qis: Mapping[str, Hierarchy],
    privacy: PrivacyModel,
    sensitive: Sequence[str] = (),
    t_kinds: Mapping[str, str] | None = None,
    categorical: bool = False,
) -> Generalized:
    """Generalize `qis` of `df` until every released class satisfies `privacy` (k, l, t).

    `categorical`: Mondrian's release strings as pandas categoricals (one string per distinct label and
    a code per row) instead of a string per row: the same values (`.astype(str)` gives the string
    columns), for a streamed release that writes them batch by batch."""
    sensitive = list(sensitive)
    _check_inputs(df, qis, privacy, sensitive)
    domains = [h.encode(df[col], col) for col, h in qis.items()]
    sens_codes, sens_sizes, sens_cols = [], [], []
    needs_sensitive = privacy.l is not None or privacy.t is not None
    for col in sensitive if needs_sensitive else []:
        codes, m, counts, kind = encode_sensitive(df[col], col, (t_kinds or {}).get(col))
        sens_codes.append(codes)
        sens_sizes.append(m)
        sens_cols.append(SensitiveColumn(name=col, counts=counts, kind=kind))
    criteria = criteria_for(privacy, sens_cols)
    names = list(qis)

    if privacy.algorithm == "lattice":
        res = lattice_search(domains, sens_codes, sens_sizes, criteria, privacy.suppression_limit)
        if res is None:
            raise InputError(_unsatisfiable(privacy))
        data = df.loc[res.kept].copy()
        for col, kept_labels in zip(names, res.labels, strict=True):
            data[col] = pd.Series(kept_labels, index=data.index, dtype=object).astype(str)
        return Generalized(
            data=data,
            suppressed=res.suppressed,
            algorithm="lattice",
            levels=dict(zip(names, res.levels, strict=True)),
            classes=res.n_classes,
        )

    relaxed = privacy.algorithm == "mondrian_relaxed"
    part = mondrian(domains, sens_codes, sens_sizes, criteria, relaxed=relaxed)
    if part is None:
        raise InputError(_unsatisfiable(privacy))
    data = df.copy(deep=False)  # copy-on-write: only the replaced QI columns are new
    for col, labels in zip(names, part.labels, strict=True):
        if categorical:
            class_codes, distinct = pd.factorize(np.asarray(labels, dtype=object))
            data[col] = pd.Series(pd.Categorical.from_codes(class_codes[part.classes], categories=pd.Index(distinct, dtype=object)),
                                  index=data.index)
        else:
            data[col] = pd.Series(np.asarray(labels, dtype=object)[part.classes], index=data.index, dtype=object).astype(str)
    return Generalized(data=data, suppressed=0, algorithm=privacy.algorithm, levels=None, classes=part.n_classes)


def _unsatisfiable(privacy: PrivacyModel) -> str:
    asked = [f"k={privacy.k}"]
    if privacy.l is not None:
        asked.append(f"{privacy.l.variant} l={privacy.l.value}")
    if privacy.t is not None:
        asked.append(f"t={privacy.t}")
    return f"the table cannot satisfy {', '.join(asked)} even fully generalized within the suppression limit"
