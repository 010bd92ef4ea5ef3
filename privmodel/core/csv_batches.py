"""A CSV table read batch by batch, each batch with the dtypes `read_table` gives the whole file.

Why: a CSV of 20M customers does not fit in memory, yet every step after reading (validation, hashing,
the budget identity) must see the values and types the whole-file read gives. pandas infers a column's
type from the whole file: int64 only when every value is an integer and none is missing, float64 when
numbers meet a missing value, text when any value is not a number (then every value keeps its raw text),
object for booleans with missing values. So the file is read twice: a first pass decides each column's
whole-file dtype from the batches' own (`_whole_dtype`), the second reads each batch and casts it to
that. The file's checks are `read_table`'s, streamed: UTF-8 without NUL, a ragged row is one line
naming 'line N', the csv module and pandas must agree on the rows, an infinite number is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from privmodel.core.fileio import _check_finite, check_readable, check_text, scan_csv_records

if TYPE_CHECKING:
    import pandas as pd

#: rows per chunk of the first pass (only the dtypes of each chunk are kept)
_SCAN_ROWS = 1 << 16


@dataclass(frozen=True)
class CsvTable:
    """A CSV file checked and its columns' whole-file dtypes decided (`csv_table`); `batches` reads it."""

    path: Path
    text_columns: tuple[str, ...]
    rows: int
    dtypes: dict[str, Any]  # whole-file dtype of each column, in file order
    first_line: int  # the line of the first data row when every row is one line, else -1
    lines: np.ndarray | None  # the start line of each data row when some row is not one line

    def lines_of(self, start: int, stop: int) -> Sequence[int]:
        """The file line each data row `start`..`stop` (0-based) starts on."""
        if self.lines is not None:
            return self.lines[start:stop].tolist()
        return range(self.first_line + start, self.first_line + stop)

    def batches(self, batch_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """Each batch of `batch_rows` rows as the whole-file read has them (same dtypes and values, index
        from 0 in each batch), with the input's 1-based row numbers of its rows."""
        start = 0
        for chunk in _chunks(self.path, batch_rows, self._read_as_text()):
            for name, dtype in self.dtypes.items():
                if chunk[name].dtype != dtype:
                    chunk[name] = chunk[name].astype(dtype)
            _check_finite(chunk, self.path, self.lines_of(start, start + len(chunk)))
            yield chunk, np.arange(start + 1, start + len(chunk) + 1, dtype=np.int64)
            start += len(chunk)
        if start != self.rows:  # the file changed since the first pass
            raise InputError(f"{self.path}: changed while it was read ({start} rows, first read {self.rows})")

    def _read_as_text(self) -> list[str]:
        """Columns the second pass reads as text: declared text, and those the whole file makes text."""
        import pandas as pd

        return [name for name, dtype in self.dtypes.items() if isinstance(dtype, pd.StringDtype)]


def csv_batches(path: Path, text_columns: Iterable[str], batch_rows: int) -> tuple[int, Iterator[pd.DataFrame]]:
    """The number of data rows of a CSV file and its batches of `batch_rows` rows: `pd.concat(batches)`
    equals `read_table(path, text_columns)` (dtypes and values; each batch indexed from 0)."""
    table = csv_table(path, text_columns)
    return table.rows, (frame for frame, _rows in table.batches(batch_rows))


def csv_table(path: Path, text_columns: Iterable[str] = ()) -> CsvTable:
    """The first pass over a CSV file: `read_table`'s checks, the row count and each column's dtype."""
    import pandas as pd

    src = Path(path)
    check_readable(src)
    check_text(src)
    header, starts = scan_csv_records(src)
    text = tuple(c for c in text_columns if c in header)
    lines = np.fromiter(starts, dtype=np.int64)  # the csv module's rows, first: its errors come first
    names = [str(n) for n in next(_chunks(src, 1, list(text))).columns]  # pandas' names ('Unnamed: 1' for '')
    if len(names) != len(header):
        raise InputError(f"{src}: malformed CSV (ambiguous quoting or line breaks)")
    text_names = {names[position] for position, name in enumerate(header) if name in text}
    seen: dict[str, list[Any]] = {name: [pd.api.types.pandas_dtype("str")] for name in text_names}
    # the declared text columns are text whatever they hold: the first pass parses only the others
    others = [position for position, name in enumerate(header) if name not in text] or [0]
    rows = 0
    for chunk in _chunks(src, _SCAN_ROWS, list(text), others):
        rows += len(chunk)
        for name in chunk.columns:
            if name in text_names:
                continue
            kinds = seen.setdefault(name, [])
            kind = None if chunk[name].isna().all() else chunk[name].dtype
            if kind not in kinds:
                kinds.append(kind)
    if rows == 0:
        raise InputError(f"{src}: table has a header but no rows")
    if rows != len(lines):  # the two parsers disagree: refuse rather than guess
        raise InputError(f"{src}: malformed CSV (ambiguous quoting or line breaks)")
    one_line_each = bool(lines[-1] - lines[0] == len(lines) - 1)
    return CsvTable(src, text, rows, {name: _whole_dtype(seen[name]) for name in names},
                    int(lines[0]) if one_line_each else -1, None if one_line_each else lines)


def _chunks(src: Path, rows: int, as_text: list[str], columns: list[int] | None = None) -> Iterator[pd.DataFrame]:
    """`_read_csv`'s pandas read of the file, `rows` at a time; `as_text` columns read as text; only the
    columns at positions `columns` (None: all)."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            reader = pd.read_csv(src, skipinitialspace=True, dtype=dict.fromkeys(as_text, "str") or None,
                                 index_col=False, chunksize=rows, usecols=columns)
            with reader:
                yield from reader
    except pd.errors.EmptyDataError:
        raise InputError(f"{src}: empty file (no header row)") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        raise InputError(f"{src}: malformed CSV ({type(exc).__name__})") from None


def _whole_dtype(kinds: list[Any]) -> Any:
    """The dtype pandas gives a column of the whole file from its chunks' dtypes (None: a chunk with no
    value): text if any chunk is text; else pandas' common type of the chunks (int64 and float64 make
    float64, booleans with anything else object), a chunk with no value counting as float64."""
    import pandas as pd

    present = [k for k in kinds if k is not None]
    text = [k for k in present if isinstance(k, pd.StringDtype)]
    if text:
        return text[0]
    if not present:
        return np.dtype("float64")
    if len(kinds) == 1:
        return kinds[0]
    samples = [pd.Series([np.nan]) if k is None else pd.Series([_one(k)], dtype=k) for k in kinds]
    return pd.concat(samples, ignore_index=True).dtype


def _one(dtype: Any) -> Any:
    """A value of `dtype` (for `_whole_dtype`'s samples)."""
    kind = getattr(dtype, "kind", "O")
    return {"b": True, "i": 0, "u": 0, "f": 0.0}.get(kind, True)
