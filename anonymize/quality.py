"""Steps 1-3 of a release: validate the table against the policy, measure its quality, filter it.

Every message names the file, the column and the first bad row (1-based data row, header not
counted) and never the value itself: the value may be the personal data we are protecting.
Nothing is dropped silently: each removed row is counted under a reason, each dropped column is
listed, and each keep/drop decision is written into the step's `decisions` for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.generalization.hierarchies import Hierarchy, build_hierarchy
from anonymize.policy.schema import ColumnPolicy, Policy
from anonymize.policy.spec import CsvHierarchy, TreeHierarchy

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@dataclass
class StepResult:
    """A step's output table and what it did (counts only; no values)."""

    data: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def _first_row(mask: np.ndarray | pd.Series, index: pd.Index) -> int:
    """Row number of the first True in `mask` (the frame's index holds 1-based data row numbers)."""
    position = int(np.argmax(np.asarray(mask)))
    return int(index[position])


def hierarchy_of(policy: Policy, name: str) -> Hierarchy:
    """The ALGO hierarchy of a quasi-identifier; booleans are generalized as the categories true/false."""
    col = policy.columns[name]
    if col.type is None:  # the policy validator requires a type for every role but drop
        raise InputError(f"column {name!r}: a quasi_identifier column needs a type")
    column_type = "categorical" if col.type == "boolean" else col.type
    return build_hierarchy(col.hierarchy, column_type, policy.base_dir, col.categories, column=name)


def _text(series: pd.Series) -> pd.Series:
    """Values as text; integral floats (an int column with gaps, read from CSV) lose the '.0'.

    A column that already holds only strings (what `read_table` gives: pandas' Arrow-backed `str`
    dtype) is returned as it is: no Python string per value, no object copy. Other columns are
    converted value by value, but each distinct value once (`_per_unique`).
    """
    if _all_strings(series):
        return series
    from anonymize.pseudonymize import _canonical

    return _per_unique(series, lambda v: v if isinstance(v, str) else _canonical(v))


# object columns whose equal values (by hash and ==) always get one canonical text: 1 == 1.0 and
# 0.0 == -0.0 give one text each, but True == 1 does not ('true' vs '1'), so a column mixing booleans
# with numbers (or anything else) goes value by value
_UNIQUE_SAFE = frozenset({"string", "empty", "integer", "floating", "mixed-integer-float", "date", "datetime"})


def _all_strings(series: pd.Series) -> bool:
    """Every present value is a str (a string dtype, or an object column of str only)."""
    if isinstance(series.dtype, pd.StringDtype):
        return True
    return series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def _per_unique(series: pd.Series, fn: Callable[[Any], Any]) -> pd.Series:
    """`series.map(fn, na_action="ignore")` as an object Series, computing `fn` once per distinct value.

    Exactly the per-value result: values are grouped by `pd.factorize` only where equal values
    always give equal results (see `_UNIQUE_SAFE`); otherwise every value is mapped.
    """
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in _UNIQUE_SAFE:
        return series.map(fn, na_action="ignore").astype(object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=object)
    mapped[:-1] = [fn(v) for v in uniques]
    mapped[-1] = np.nan if series.dtype == object else None
    values = mapped[codes]  # code -1 (missing) takes the last slot
    out = pd.Series(values, index=series.index, dtype=object)
    missing = codes < 0
    if missing.any():  # missing values stay what they were (None / NaN / NaT), as map(na_action="ignore") does
        out[missing] = series[missing].astype(object)
    return out


def _coerce(series: pd.Series, col: ColumnPolicy) -> tuple[pd.Series, np.ndarray, str]:
    """Convert to the declared type; returns (converted, bad-value mask, what a bad value is)."""
    present = series.notna().to_numpy()
    kind = col.type
    if kind in ("integer", "float"):
        if series.dtype == bool or str(series.dtype) == "boolean":
            series = series.astype("Float64")
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = present & ~np.isfinite(values)
        if kind == "integer":
            with np.errstate(invalid="ignore"):
                bad |= present & np.isfinite(values) & (values != np.round(values))
            out = pd.Series(np.where(bad, np.nan, values), index=series.index).round().astype("Int64")
            return out, bad, "not an integer"
        return pd.Series(np.where(bad, np.nan, values), index=series.index, dtype="float64"), bad, "not a number"
    if kind == "boolean":
        if series.dtype == bool or str(series.dtype) == "boolean":
            return series.astype("boolean"), np.zeros(len(series), dtype=bool), ""
        # each distinct text once: factorize, then strip / lower / look up the few distinct values
        codes, uniques = pd.factorize(_text(series), use_na_sentinel=True)
        lowered = pd.Series(uniques, dtype=object).str.strip().str.lower()
        is_true = np.append(lowered.isin(_TRUE).to_numpy(), False)[codes]
        is_false = np.append(lowered.isin(_FALSE).to_numpy(), False)[codes]
        out = pd.Series(pd.NA, index=series.index, dtype="boolean")
        out[is_true] = True
        out[is_false] = False
        bad = present & out.isna().to_numpy()
        return out, bad, "not a boolean (true/false, yes/no, 1/0)"
    if kind == "date":
        if pd.api.types.is_datetime64_any_dtype(series):
            parsed = series
        else:
            # each distinct date text parsed once (a birth-date column holds some 30,000 of 1M)
            codes, uniques = pd.factorize(_text(series), use_na_sentinel=True)
            parsed_uniques = pd.to_datetime(pd.Series(uniques, dtype=object), errors="coerce", format="ISO8601")
            # a date pandas cannot hold in nanoseconds (year 0, 3000) is a bad value, not a traceback
            outside = parsed_uniques.notna() & ((parsed_uniques < pd.Timestamp.min) | (parsed_uniques > pd.Timestamp.max))
            parsed_uniques = parsed_uniques.mask(outside)
            parsed = pd.Series(
                pd.DatetimeIndex(parsed_uniques).append(pd.DatetimeIndex([pd.NaT])).take(codes), index=series.index
            )
        bad = present & parsed.isna().to_numpy()
        return parsed.astype("datetime64[ns]"), bad, "not an ISO date"
    return _text(series), np.zeros(len(series), dtype=bool), ""  # string / categorical


def _domain(series: pd.Series, name: str, col: ColumnPolicy, policy: Policy) -> tuple[np.ndarray, str]:
    """Values outside the column's public domain: bounds, categories, or the hierarchy's leaves."""
    present = series.notna().to_numpy()
    bad = np.zeros(len(series), dtype=bool)
    if col.bounds is not None:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            out = present & ((values < col.bounds[0]) | (values > col.bounds[1]))
        if out.any():
            return out, "outside the declared bounds"
    allowed: set[str] | None = None
    what = ""
    if col.categories is not None:
        allowed, what = {str(c) for c in col.categories}, "not one of the declared categories"
    elif col.role == "quasi_identifier" and isinstance(col.hierarchy, TreeHierarchy | CsvHierarchy):
        tree = hierarchy_of(policy, name).tree or ()
        allowed, what = {leaf for leaf, _ in tree}, "not in the column's hierarchy"
    if allowed is not None:
        if _all_strings(series):  # strings are their own text: one hash look-up per value
            inside = series.isin(allowed).to_numpy(dtype=bool, na_value=False)
        else:  # value by value: str(0.0) != str(-0.0) although they are equal, so no grouping here
            text = series.astype(object).map(
                lambda v: ("true" if v else "false") if isinstance(v, bool | np.bool_) else str(v), na_action="ignore"
            )
            inside = text.isin(allowed).to_numpy()
        bad = present & ~inside
    return bad, what


def _check_shape(df: pd.DataFrame, policy: Policy, source: str) -> None:
    """Rows present, no column twice, every declared column there (one line naming the first problem)."""
    if df.shape[0] == 0:
        raise InputError(f"{source}: table has no rows")
    if df.columns.duplicated().any():
        raise InputError(f"{source}: column {str(df.columns[df.columns.duplicated()][0])!r} appears twice")
    missing = [name for name in policy.columns if name not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{source}: policy column {missing[0]!r} is not in the data{more}")


def validate(df: pd.DataFrame, policy: Policy, source: str = "input", *, whole_table: bool = True) -> StepResult:
    """Step 1: the table has every declared column, parseable values in the declared domains.

    `whole_table=False`: `df` is one batch of a larger table, so a column missing throughout it is not
    refused here (the engine asks that of the whole table: `anonymize.engines.batches.check_column_values`)."""
    _check_shape(df, policy, source)
    data = df.copy(deep=False)  # copy-on-write: converted columns replace, never overwrite, the input's
    data.index = pd.RangeIndex(1, len(data) + 1)  # row numbers in messages = 1-based data rows
    undeclared = [str(c) for c in data.columns if c not in policy.columns]
    removed: dict[str, int] = {}
    drop_mask = np.zeros(len(data), dtype=bool)
    coerced: dict[str, str] = {}
    for name, col in policy.columns.items():
        if col.role == "drop":
            continue
        series = data[name]
        if whole_table and series.isna().all():
            raise InputError(f"{source}: column {name!r} has no values (every row is missing)")
        converted, bad, what = _coerce(series, col)
        if not bad.any():
            out_of_domain, what = _domain(converted, name, col, policy)
            bad = out_of_domain
        if bad.any():
            if col.on_invalid == "error":
                raise InputError(f"{source}: column {name!r}, row {_first_row(bad, data.index)}: value {what}")
            removed[f"invalid:{name}"] = int((bad & ~drop_mask).sum())
            drop_mask |= bad
        # text columns count as converted to text unless they already were object columns (as the report
        # said before text stayed in pandas' string dtype): the figure does not depend on the in-memory form
        text_kind = col.type not in ("integer", "float", "boolean", "date")
        if str(series.dtype) != ("object" if text_kind else str(converted.dtype)):
            coerced[name] = col.type or ""
        data[name] = converted
    if drop_mask.any():  # a boolean filter copies every column: only when a row goes
        data = data[~drop_mask]
    if data.empty and whole_table:
        raise InputError(f"{source}: no rows left after removing invalid values")
    info = {
        "rows_in": len(df),
        "rows_out": len(data),
        "removed": removed,
        "undeclared_columns": undeclared,
        "coerced_columns": coerced,
        "decisions": [
            "values are converted to the declared type; a value that does not convert, or lies outside "
            "the declared bounds / categories / hierarchy, is an error unless the column says "
            "on_invalid: drop_row (then the row is removed and counted)",
        ],
    }
    return StepResult(data, info)


def quality(df: pd.DataFrame, policy: Policy) -> StepResult:
    """Step 2: exact duplicates (removed), duplicate identifiers (kept, counted), missing values (counted)."""
    declared = [c for c in policy.columns if c in df.columns]
    # every input column, not only the declared ones: with few declared columns (age, churn) two
    # different customers would otherwise count as one record and lose a row
    dup = _exact_duplicates(df, [n for n in policy.identifiers if n in df.columns])
    data = df[~dup] if dup.any() else df
    duplicate_ids = {}
    for name in policy.identifiers:
        ids = data[name]
        # present values minus distinct present values: the repeats `duplicated(keep="first")` marks
        duplicate_ids[name] = int(ids.count()) - int(ids.nunique(dropna=True))
    missing = {c: int(data[c].isna().sum()) for c in declared if policy.columns[c].role != "drop"}
    info = {
        "rows_in": len(df),
        "rows_out": len(data),
        "removed": {"exact_duplicates": int(dup.sum())} if dup.any() else {},
        "exact_duplicates": int(dup.sum()),
        "duplicate_identifiers": duplicate_ids,
        "missing_values": {c: n for c, n in missing.items() if n},
        "rows_with_missing_values": int(data[declared].isna().any(axis=1).sum()),
        "decisions": [
            "exact duplicate rows (equal in every column of the input) are removed; the first is kept",
            "rows sharing an identifier value but differing elsewhere are kept and counted "
            "(one person may hold several records; k counts records)",
            "missing values are kept; rows missing a released quasi-identifier are removed "
            "before generalization (counted there)",
        ],
    }
    return StepResult(data, info)


def _exact_duplicates(df: pd.DataFrame, probes: list[str]) -> np.ndarray:
    """`df.duplicated(keep="first")` over every column, hashing whole rows only where it can matter.

    A row equal to an earlier one repeats that row's value in every column, so only rows whose
    value repeats in each probe column (an identifier: mostly distinct) can be duplicates, and
    their first occurrences are among them too; the full-row comparison runs on those rows alone,
    in table order, which gives exactly the result of running it on the whole table.
    """
    candidates = np.ones(len(df), dtype=bool)
    for name in probes[:2]:
        candidates &= df[name].duplicated(keep=False).to_numpy()
        if not candidates.any():
            return candidates
    if candidates.all():
        return df.duplicated(keep="first").to_numpy()
    dup = np.zeros(len(df), dtype=bool)
    dup[candidates] = df[candidates].duplicated(keep="first").to_numpy()
    return dup


def consent_rule(flag: pd.Series) -> tuple[np.ndarray, dict[str, int]]:
    """THE consent rule of the project: a row is kept only when its (validated, boolean) consent flag is
    true; false and missing are removed and counted. Returns (keep mask, removed by reason)."""
    no = (flag == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712 - nullable boolean
    unknown = flag.isna().to_numpy()
    removed = {k: v for k, v in {"no_consent": int(no.sum()), "consent_missing": int(unknown.sum())}.items() if v}
    return ~(no | unknown), removed


def consent_flags(series: pd.Series, policy: Policy, source: str) -> pd.Series:
    """The consent column of a table that did not go through `validate` (e.g. an estimator's X),
    parsed by the same boolean rule; one line naming the first bad row."""
    consent = policy.purpose.consent
    if consent is None:
        raise InputError(f"{policy.source}: the policy declares no consent column")
    values, bad, why = _coerce(series, policy.columns[consent])
    if bad.any():
        raise InputError(f"{source}: column {consent!r}, row {int(np.flatnonzero(bad)[0]) + 1}: value {why}")
    return values


def consent_and_purpose(df: pd.DataFrame, policy: Policy, undeclared: list[str], *,
                        whole_table: bool = True) -> StepResult:
    """Step 3: remove rows without consent for the purpose; drop columns the purpose does not need.

    `whole_table=False`: `df` is one batch of a larger table, which may have no consenting row while
    others have; the caller refuses a table left empty."""
    data = df
    removed: dict[str, int] = {}
    consent = policy.purpose.consent
    keep_rows = None
    if consent is not None:
        keep_rows, removed = consent_rule(data[consent])
    if whole_table and (data.empty or (keep_rows is not None and not keep_rows.any())):
        raise InputError(f"{policy.source}: no rows left after the consent filter for purpose {policy.purpose.name!r}")
    keep = set(policy.released_columns()) | {n for n in policy.identifiers if policy.columns[n].method == "drop"}
    dropped = {
        "undeclared": undeclared,
        "role_drop": policy.with_role("drop"),
        "consent": policy.with_role("consent"),
        "not_in_purpose": [
            n for n in policy.columns if n not in keep and policy.columns[n].role not in ("drop", "consent")
        ],
    }
    all_dropped = [c for group in dropped.values() for c in group]
    data = data.drop(columns=[c for c in all_dropped if c in data.columns])
    if keep_rows is not None and not keep_rows.all():  # filter after the drop: copy only what is kept
        data = data[keep_rows]
    info = {
        "rows_in": len(df),
        "rows_out": len(data),
        "removed": removed,
        "consent_column": consent,
        "consent_applicable": consent is not None,
        "purpose": policy.purpose.name,
        "dropped_columns": {k: v for k, v in dropped.items() if v},
        "decisions": [
            "rows whose consent is false or missing are removed"
            if consent is not None
            else "consent filter not applicable: the purpose names no consent column, no row was checked",
            "columns not needed for the purpose are dropped (data minimization); pseudonymized "
            "identifiers are kept as linkage keys",
        ],
    }
    return StepResult(data, info)
