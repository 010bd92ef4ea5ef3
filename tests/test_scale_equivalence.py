"""The fast paths of issue 13 give exactly what the per-value code they replace gave.

Each test runs the new code and an independent per-value reference (the code as it was before
the change, kept here verbatim) on tables of tricky values and asserts identical results: the
same accepted and refused values, the same converted values, the same duplicate rows, the same
dataset content hash, the same AES-SIV ciphertexts whether one process or several encrypt.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from anonymize import pseudonymize as pz
from anonymize.policy.schema import ColumnPolicy
from anonymize.quality import _coerce, _domain, _exact_duplicates
from privmodel.dp import budget

# --- references: the per-value code before issue 13 ------------------------------------------

_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


def _old_text(series: pd.Series) -> pd.Series:
    return series.map(lambda v: v if isinstance(v, str) else pz._canonical(v), na_action="ignore").astype(object)


def _old_coerce(series: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray]:
    present = series.notna().to_numpy()
    if kind == "boolean":
        if series.dtype == bool or str(series.dtype) == "boolean":
            return series.astype("boolean"), np.zeros(len(series), dtype=bool)
        lowered = _old_text(series).str.strip().str.lower()
        out = pd.Series(pd.NA, index=series.index, dtype="boolean")
        out[lowered.isin(_TRUE).to_numpy()] = True
        out[lowered.isin(_FALSE).to_numpy()] = False
        return out, present & out.isna().to_numpy()
    if kind == "date":
        if pd.api.types.is_datetime64_any_dtype(series):
            parsed = series
        else:
            parsed = pd.to_datetime(_old_text(series), errors="coerce", format="ISO8601")
        return parsed.astype("datetime64[ns]"), present & parsed.isna().to_numpy()
    return _old_text(series), np.zeros(len(series), dtype=bool)


def _old_in_categories(series: pd.Series, allowed: set[str]) -> np.ndarray:
    text = series.astype(object).map(
        lambda v: ("true" if v else "false") if isinstance(v, bool | np.bool_) else str(v), na_action="ignore"
    )
    return series.notna().to_numpy() & ~text.isin(allowed).to_numpy()


def _same_values(new: pd.Series, old: pd.Series) -> None:
    """Equal value by value (missing where the other is missing), whatever the dtype holding them."""
    a, b = new.astype(object).tolist(), old.astype(object).tolist()
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if pd.isna(x) or pd.isna(y):
            assert pd.isna(x) and pd.isna(y), (x, y)
        else:
            assert type(x) is type(y) and x == y, (x, y)


TRICKY: list[object] = [
    " yes", "TRUE", "1.0", "", None, "nan", "no ", "Y", "0", "0.0", "maybe", np.nan, "1", "t\n", "\tF",
    "2020-01-01", "2020-01-01 10:30", "2020-01-01T10:30:00", "2020-13-01", "1999-12-31", " 2020-02-29",
    "2021-02-29", "20200101", "yes", "YES", "ja", "N", "1e0", "é", "\u00a0yes",
]
MIXED: list[object] = [1, 0, 1.0, 0.0, -0.0, True, False, 2, 2.5, np.True_, "1", "true", None, np.nan, pd.NA,
                       dt.date(2020, 1, 1), dt.datetime(2020, 1, 1, 10, 30), pd.Timestamp("2020-01-02"), 12.0]


def _series_variants() -> list[pd.Series]:
    idx = pd.RangeIndex(1, len(TRICKY) + 1)
    return [
        pd.Series(TRICKY, index=idx, dtype=object),
        pd.Series(TRICKY, index=idx, dtype="str"),  # what read_table gives for text columns
        pd.Series([v for v in TRICKY if v is not None and v is not np.nan] * 3, dtype=object),  # strings only
        pd.Series(MIXED, dtype=object),
        pd.Series([1, 0, 1, 2, 0]),
        pd.Series([1.0, 0.0, np.nan, -0.0, 2.5]),
        pd.Series([True, False, True]),
        pd.Series([True, None, False], dtype="boolean"),
        pd.Series([1, None, 0], dtype="Int64"),
        pd.Series([dt.date(2020, 1, 1), None, dt.date(1999, 12, 31), dt.date(2020, 1, 1)], dtype=object),
        pd.Series([dt.datetime(2020, 1, 1, 5), dt.datetime(2020, 1, 1), None], dtype=object),
        pd.Series(pd.to_datetime(["2020-01-01", None, "2020-01-01 10:00"], format="ISO8601")),
    ]


@pytest.mark.parametrize("kind", ["boolean", "date", "string", "categorical"])
@pytest.mark.parametrize("case", range(len(_series_variants())))
def test_vectorised_coercion_accepts_and_refuses_what_the_per_value_code_did(kind: str, case: int) -> None:
    series = _series_variants()[case]
    col = ColumnPolicy(role="feature", type=kind)  # type: ignore[arg-type]
    converted, bad, _ = _coerce(series, col)
    old_converted, old_bad = _old_coerce(series, kind)
    assert bad.tolist() == old_bad.tolist()
    _same_values(converted, old_converted)


def test_tricky_values_are_sorted_as_before() -> None:
    """Spelled out for the reader: which of the tricky texts are booleans and which dates."""
    col = ColumnPolicy(role="feature", type="boolean")  # type: ignore[arg-type]
    out, bad, _ = _coerce(pd.Series([" yes", "TRUE", "1.0", "", None, "nan", "\tF"], dtype=object), col)
    assert out.tolist()[:3] == [True, True, True] and out.iloc[6] == False  # noqa: E712 - nullable boolean
    assert out.iloc[[3, 4, 5]].isna().all()
    assert bad.tolist() == [False, False, False, True, False, True, False]
    dates, bad, _ = _coerce(pd.Series(["2020-01-01 10:30", "2020-13-01", None]), ColumnPolicy(role="feature", type="date"))  # type: ignore[arg-type]
    assert dates.iloc[0] == pd.Timestamp("2020-01-01 10:30") and bad.tolist() == [False, True, False]


def test_dates_pandas_cannot_hold_are_bad_values_not_a_traceback() -> None:
    """Before issue 13 '-0' (year 0) and '3000-01-01' raised OutOfBoundsDatetime from validation."""
    col = ColumnPolicy(role="feature", type="date")  # type: ignore[arg-type]
    out, bad, what = _coerce(pd.Series(["-0", "3000-01-01", "2020-01-01", None], dtype=object), col)
    assert bad.tolist() == [True, True, False, False] and what == "not an ISO date"
    assert out.iloc[2] == pd.Timestamp("2020-01-01") and out.dtype == "datetime64[ns]"


@pytest.mark.parametrize("case", range(len(_series_variants())))
def test_category_check_refuses_what_the_per_value_code_did(case: int) -> None:
    series = _series_variants()[case]
    categories = ["yes", "1", "true", "2020-01-01", "", "0", "2020-01-01 00:00:00", "False"]
    col = ColumnPolicy(role="feature", type="categorical", categories=categories)  # type: ignore[arg-type]
    converted, _, _ = _coerce(series, col)
    bad, _ = _domain(converted, "c", col, None)  # type: ignore[arg-type]
    assert bad.tolist() == _old_in_categories(_old_text(series), set(categories)).tolist()


def test_exact_duplicates_equal_a_full_row_comparison() -> None:
    rng = np.random.default_rng(3)
    n = 3_000
    df = pd.DataFrame({
        "id": rng.integers(0, 2_500, n).astype(str),
        "other_id": rng.integers(0, 2_800, n),
        "x": rng.integers(0, 3, n).astype(float),
        "y": rng.choice(["a", "b", None], n),
    })
    df.loc[rng.choice(n, 50), "x"] = np.nan
    df = pd.concat([df, df.iloc[rng.choice(n, 400)]], ignore_index=True)  # real duplicates, late in the table
    expected = df.duplicated(keep="first").to_numpy()
    assert expected.sum() >= 400
    for probes in ([], ["id"], ["id", "other_id"], ["y"], ["x", "id"]):
        assert _exact_duplicates(df, probes).tolist() == expected.tolist(), probes
    unique = df.drop_duplicates(subset="id")
    assert not _exact_duplicates(unique, ["id"]).any()


# --- dataset content hash ------------------------------------------------------------------------


def _ref_number_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    number = float(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def _ref_time_text(value: Any) -> str:
    if pd.isna(value):
        return ""
    stamp = pd.Timestamp(value)
    return stamp.date().isoformat() if stamp == stamp.normalize() and stamp.tzinfo is None else stamp.isoformat()


def _ref_value_text(value: Any) -> str:
    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _ref_number_text(value)
    if isinstance(value, dt.datetime | dt.date):
        return _ref_time_text(value)
    return str(value).strip()


def _ref_frame_id(frame: pd.DataFrame) -> str:
    from privmodel.artifacts.ledger import canonical_json

    columns = sorted(str(c) for c in frame.columns)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    parts = []
    for name in columns:
        col = frame[name]
        if pd.api.types.is_bool_dtype(col.dtype):
            text = col.map(lambda v: "" if pd.isna(v) else ("true" if v else "false"))
        elif pd.api.types.is_integer_dtype(col.dtype) and not col.isna().any():
            text = col.astype("int64").astype(str)
        elif pd.api.types.is_numeric_dtype(col.dtype):
            text = col.map(_ref_number_text)
        elif pd.api.types.is_datetime64_any_dtype(col.dtype):
            text = col.map(_ref_time_text)
        elif pd.api.types.infer_dtype(col, skipna=True) in ("string", "empty"):
            text = col.where(col.notna(), "").astype(str).str.strip()
        else:
            text = col.map(_ref_value_text)
        parts.append(text.astype(str).str.replace("\\", "\\\\", regex=False).str.replace("\x1f", "\\x1f", regex=False))
    rows = parts[0].str.cat(parts[1:], sep="\x1f") if len(parts) > 1 else parts[0]
    digests = sorted(hashlib.sha256(row.encode("utf-8")).digest() for row in rows)
    total = hashlib.sha256(b"privmodel-table-v1\0" + canonical_json(columns))
    for digest in digests:
        total.update(digest)
    return total.hexdigest()


@pytest.mark.parametrize("slice_rows", [200_000, 5, 1])
def test_dataset_content_hash_is_unchanged_by_the_fast_path(slice_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # small slices: a column's rows are written in pieces (strings first, a number in a later slice)
    monkeypatch.setattr(budget, "_HASH_ROWS", slice_rows)
    frame = pd.DataFrame({
        "f": [1.0, -0.0, 0.5, np.nan, np.inf, -np.inf, 1e16, 2.0**53, 1e-5, 123456789.125, 0.1, 3.0],
        "b": [True, False] * 6,
        "s": ["x\x1fy", " a\\b ", None, "", "nan", "é", "  ", "q", "z", "\u00a0w", "1", "1.0"],
        "d": [dt.date(2000, 1, 1), None, dt.date(1999, 12, 31)] * 4,
        "t": pd.to_datetime(["2000-01-01", "2000-01-01 10:00", None] * 4, format="ISO8601"),
        "m": [1, "1", True, 1.0, None, "x\\", 2.5, dt.date(2000, 1, 1), -0.0, "y", np.nan, False],
        "nb": pd.array([True, None, False] * 4, dtype="boolean"),
        "i": np.arange(12),
        "dt": [dt.datetime(2000, 1, 1), dt.datetime(2000, 1, 1, 5)] * 6,
        "late": ["a", "b\x1c", "c", "d", "e", " f ", 7, "g", None, 1.5, True, "h"],
    })
    assert budget.frame_id(frame) == _ref_frame_id(frame)
    for name in frame.columns:
        assert budget.frame_id(frame[[name]]) == _ref_frame_id(frame[[name]]), name
    changed = frame.copy()
    changed.loc[3, "s"] = "different"
    assert budget.frame_id(changed) != budget.frame_id(frame)


# --- AES-SIV over several processes --------------------------------------------------------------


def _reference_ciphertexts(values: list[object], siv: bytes, column: str) -> list[str | None]:
    cipher = AESSIV(siv)
    return [
        None if v is None else base64.urlsafe_b64encode(cipher.encrypt(pz._canonical(v).encode("utf-8"), [column.encode()]))
        .rstrip(b"=").decode("ascii")
        for v in values
    ]


def test_parallel_aes_siv_is_byte_identical_to_one_process() -> None:
    key = pz.Keys(bytes(range(32))).column_key("p", "national_id")
    n = 2 * pz._SIV_CHUNK + 1234  # three chunks: the parallel path really splits
    values = [f"{i:09d}-{'é' * (i % 5)}" for i in range(n)]
    series = pd.Series(values, dtype="str")
    assert pz.siv_workers(n) >= 1
    serial = pz.encrypt_series(series, key, workers=1)
    parallel = pz.encrypt_series(series, key, workers=2)
    expected = _reference_ciphertexts(values, key.siv, "national_id")
    assert serial.tolist() == expected
    assert parallel.tolist() == expected
    assert pz.decrypt_series(parallel.iloc[:50], key).tolist() == values[:50]


def test_parallel_aes_siv_keeps_missing_values_and_numbers() -> None:
    key = pz.Keys(bytes(range(32))).column_key("p", "national_id")
    values: list[object] = [None if i % 7 == 0 else (i if i % 3 else f"v{i}") for i in range(2 * pz._SIV_CHUNK + 10)]
    series = pd.Series(values, dtype=object)
    parallel = pz.encrypt_series(series, key, workers=2)
    assert parallel.tolist() == _reference_ciphertexts(values, key.siv, "national_id")
    assert parallel.tolist() == pz.encrypt_series(series, key, workers=1).tolist()
    assert parallel[0] is None and parallel.dtype == object


def test_dataset_content_hash_of_arrow_written_columns_equals_the_per_value_texts() -> None:
    """Numbers over every magnitude, strings edged with Python-only whitespace, dates old and new:
    the Arrow kernels write each exactly as the per-value normal form does."""
    rng = np.random.default_rng(5)
    n = 4_000
    floats = rng.uniform(0, 1, n) * 10.0 ** rng.integers(-12, 24, n) * rng.choice([-1, 1], n)
    floats[::7] = np.round(floats[::7], 2)
    floats[::11] = rng.integers(-10**6, 10**6, len(floats[::11]))
    floats[:8] = [np.nan, np.inf, -np.inf, 1e-4, 9.999e-5, 1e16 - 2, 2.0**53 + 2, 5e-324]
    edges = [" ", "\t", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "é", "", "a", "\\"]
    texts = [f"{rng.choice(edges)}v{i}{rng.choice(edges)}" for i in range(n)]
    texts[:3] = [None, "", "   "]  # type: ignore[list-item]
    days = rng.integers(-200_000, 60_000, n)
    dates: list[object] = [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in days]
    dates[::13] = [None] * len(dates[::13])
    frame = pd.DataFrame({"f": floats, "s": pd.Series(texts, dtype="str"), "o": pd.Series(texts, dtype=object),
                          "d": dates, "recent": [d if isinstance(d, dt.date) and d.year >= 1800 else None for d in dates]})
    for name in frame.columns:
        assert budget.frame_id(frame[[name]]) == _ref_frame_id(frame[[name]]), name
    assert budget.frame_id(frame) == _ref_frame_id(frame)


def _old_category_codes(series: pd.Series, lookup: dict[str, int]) -> list[int]:
    text = series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else str(v).strip())
    return text.map(lookup).fillna(0).to_numpy(dtype=np.int64).tolist()


@pytest.mark.parametrize("case", range(len(_series_variants())))
def test_category_encoding_per_distinct_value_equals_the_per_value_code(case: int) -> None:
    from privmodel.data.features import _category_codes

    series = _series_variants()[case]
    categories = ["yes", "1", "true", "True", "1.0", "2020-01-01", "", "0", "2020-01-01 00:00:00", "False", "nan"]
    lookup = {c: i + 1 for i, c in enumerate(categories)}
    assert _category_codes(series, lookup).tolist() == _old_category_codes(series, lookup)
    as_category = series.astype("category") if series.map(type).nunique() <= 1 else series
    assert _category_codes(as_category, lookup).tolist() == _old_category_codes(as_category, lookup)


def test_card_raw_value_check_refuses_exactly_what_the_per_value_scan_did() -> None:
    from anonymize.errors import InputError
    from privmodel.artifacts import model_card as card

    rng = np.random.default_rng(11)
    alphabet = list("abcé€ 12-")
    text = "".join(rng.choice(alphabet, 3_000))
    for trial in range(40):
        values = ["".join(rng.choice(alphabet, int(rng.integers(1, 9)))) for _ in range(300)]
        frame = pd.DataFrame({"id": pd.Series(values + [None], dtype="str"), "n": rng.integers(0, 10**6, 301)})
        for column in ("id", "n"):
            expected = any(len(v) >= 4 and v in text for v in frame[column].dropna().astype(str))
            try:
                card.check_no_raw_values(text, frame, [column])
                refused = False
            except InputError:
                refused = True
            assert refused == expected, (trial, column)
