"""The single-machine release of a table larger than memory: rows streamed by batch.

The input is a Parquet file (read by row-group batches) or a CSV file (`privmodel.core.csv_batches`:
batches with the whole-file read's dtypes); after the reader (`batch_reader`) both take one path.

Memory is bounded by what generalization needs of every row (the quasi-identifier and sensitive
columns, the token columns the release gate checks, 64-bit hashes), not by the table: every other
column goes through validation, consent and pseudonymization one batch at a time
(`anonymize.engines.batches`, the functions the Ray engine runs per block, which call the in-memory
path's own steps) and waits in a private spill file until the release is written, batch by batch,
with the generalized values put in.

Two passes over the input: the first validates and hashes (exact duplicates and duplicate
identifiers are whole-table questions, answered from the hashes; rows whose hash repeats are read
again and compared in full); the second validates again, removes the duplicates, applies consent,
pseudonymizes and spills. `anonymize.pipeline.run` then generalizes, measures, gates and reports
exactly as for a table in memory, so the release, report and gate are the in-memory path's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anonymize.engines.batches import (
    HASH,
    ID,
    ROW,
    aux_columns,
    check_column_values,
    column_values,
    duplicate_candidates,
    duplicate_identifiers,
    duplicate_rows,
    merge_pseudonymize,
    merge_quality,
    merge_steps,
    merge_validate,
    release_rows,
    validate_batch,
)
from anonymize.errors import InputError
from anonymize.pipeline import Minimised, Release, _removed, run
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import Keys, as_keys
from anonymize.quality import _check_shape

#: Inputs with more rows than this are streamed by default; smaller ones are released in memory.
STREAM_MIN_ROWS = 2_000_000
#: Rows per batch: the transient memory of one batch's steps (~1 KB a row at most) stays well under 1 GB.
BATCH_ROWS = 1 << 19


#: reads the input batch by batch: `read(batch_rows)` yields (frame, the input's 1-based row numbers)
Reader = Callable[[int], Iterator[tuple[pd.DataFrame, np.ndarray]]]


def text_columns(policy: Policy) -> list[str]:
    """The columns a CSV input reads as text (zip codes and IDs keep their leading zeros)."""
    return [name for name, col in policy.columns.items() if col.type in ("string", "categorical")]


def table_rows(path: Path) -> int:
    """What decides whether an input streams: a Parquet file's rows (its footer), a CSV file's lines
    after the header (each row takes at least one; counted without parsing)."""
    if path.suffix.lower() != ".csv":
        return parquet_rows(path)
    lines = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            lines += block.count(b"\n")
    return max(lines - 1, 0)


def batch_reader(path: Path, text: Iterable[str] = ()) -> Reader:
    """The input's batches, each as `read_table(path, text)` gives the whole file (same dtypes): a
    Parquet file by row groups, a CSV file checked and its dtypes decided once here (`csv_table`)."""
    if path.suffix.lower() == ".csv":
        from privmodel.core.csv_batches import csv_table

        return csv_table(path, text).batches
    return lambda batch_rows: parquet_batches(path, batch_rows)


def parquet_rows(path: Path) -> int:
    """Rows of a Parquet file from its footer (no data read); InputError for an unreadable file."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def parquet_batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Each batch of a Parquet file as `read_table` gives the whole file (same dtypes), with the input's
    1-based row numbers of its rows; an infinite number or an unreadable batch is one InputError line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anonymize.quality import _first_row

    start = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
        for batch in batches:
            frame = pa.Table.from_batches([batch]).to_pandas()
            rows = np.arange(start + 1, start + len(frame) + 1, dtype=np.int64)
            for name in frame.columns:
                if frame[name].dtype.kind == "f":
                    bad = np.isinf(frame[name].to_numpy(dtype="float64", na_value=np.nan))
                    if bad.any():
                        raise InputError(f"{path}: row {rows[_first_row(bad, pd.RangeIndex(len(frame)))]}: "
                                         f"column {name!r} holds an infinite number")
            yield frame, rows
            start += len(frame)
            del frame
            _give_back_memory()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def _give_back_memory() -> None:
    """Hand the memory of the batch just done back to the system: Arrow's allocator (mimalloc) and
    glibc's heap keep freed memory for reuse, which between batches only grows the process (measured:
    RSS after the first pass of 4M rows 980 MB kept, 360 MB given back)."""
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


@dataclass
class Spill:
    """The minimised rows (validated, consented, pseudonymized: every column the release may keep) in a
    private Parquet file, by input row number (`ROW`), until the release is written. `path` may also be
    a directory of per-block files whose names sort in row order (`anonymize.engines.ray_stream`)."""

    path: Path
    batch_rows: int
    columns: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        """The spill's files in row order."""
        if self.path.is_dir():
            return sorted(self.path.glob("*.parquet"))
        return [self.path] if self.path.exists() else []

    def batches(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The spilled rows batch by batch, indexed by input row number (every file's in the first's types)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        wanted = None if columns is None else [*columns, ROW]
        first: Any = None
        for path in self.files():
            handle = pq.ParquetFile(path)
            first = handle.schema_arrow if first is None else first
            for batch in handle.iter_batches(batch_size=self.batch_rows, columns=wanted):
                table = pa.Table.from_batches([batch])
                target = pa.schema([first.field(n) for n in table.column_names], metadata=first.metadata)
                frame = (table if table.schema.types == target.types else table.cast(target)).to_pandas()
                frame.index = pd.Index(frame.pop(ROW).to_numpy(dtype=np.int64))
                yield frame

    def rows(self, wanted: np.ndarray) -> pd.DataFrame:
        """The spilled rows at input row numbers `wanted` (ascending), indexed by them."""
        parts = [frame[frame.index.isin(wanted)] for frame in self.batches()]
        return pd.concat(parts) if parts else pd.DataFrame(columns=self.columns)


class SpillWriter:
    """Appends minimised batches to the spill file, every batch in the first batch's schema."""

    def __init__(self, spill: Spill) -> None:
        self.spill = spill
        self._writer: Any = None
        self._schema: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._schema = table.schema
            self.spill.columns = [c for c in frame.columns if c != ROW]
            self._writer = pq.ParquetWriter(self.spill.path, self._schema)
        self._writer.write_table(table.cast(self._schema) if table.schema != self._schema else table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def narrow_columns(policy: Policy) -> list[str]:
    """What every row keeps in memory: the quasi-identifiers and sensitive columns (generalization) and
    the token columns (the release gate's token check, collisions, escrow)."""
    tokens = [n for n in policy.identifiers if policy.columns[n].method == "token"]
    return [*policy.quasi_identifiers, *policy.sensitive, *tokens]


def _first_pass(read: Reader, policy: Policy, source: str, batch_rows: int) -> tuple[list[dict[str, Any]], pd.DataFrame, int]:
    """Validate every batch: the batches' validate records, the small per-row columns (row numbers,
    hashes) and the input's row count."""
    infos: list[dict[str, Any]] = []
    smalls: list[dict[str, pd.Series]] = []
    present: set[str] = set()
    rows_in = 0
    for frame, rows in read(batch_rows):
        if rows_in == 0:
            _check_shape(frame, policy, source)
        rows_in += len(frame)
        present |= column_values(frame, policy)
        out, info = validate_batch(frame, rows, policy, source)
        infos.append(info)
        smalls.append({c: out[c].copy() for c in out.columns if c in (ROW, HASH) or str(c).startswith(ID)})
    if rows_in == 0:
        raise InputError(f"{source}: table has no rows")
    check_column_values(present, policy, source)
    if not sum(int(i["rows_out"]) for i in infos):
        raise InputError(f"{source}: no rows left after removing invalid values")
    # column by column, each batch's part let go as it is joined: never two copies of the table's hashes
    small = pd.DataFrame({name: pd.concat([part.pop(name) for part in smalls], ignore_index=True)
                          for name in list(smalls[0])})
    return infos, small, rows_in


def _duplicates(read: Reader, policy: Policy, source: str, batch_rows: int, small: pd.DataFrame) -> np.ndarray:
    """Exact duplicate rows: the candidates (`duplicate_candidates`), read again and compared in full."""
    wanted = duplicate_candidates(small, policy)
    if not len(wanted):
        return np.zeros(0, dtype=np.int64)
    parts = []
    for frame, rows in read(batch_rows):
        out, _ = validate_batch(frame, rows, policy, source)
        parts.append(out[out[ROW].isin(wanted)])
    return duplicate_rows(pd.concat(parts, ignore_index=True))


def _second_pass(read: Reader, policy: Policy, keys: Keys, source: str, batch_rows: int, duplicates: np.ndarray,
                 undeclared: list[str], spill: Spill) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Steps 2-4 batch by batch: each batch's records; the narrow columns of every row kept in memory,
    the whole minimised rows spilled."""
    records: list[dict[str, Any]] = []
    narrow: list[pd.DataFrame] = []
    keep = narrow_columns(policy)
    writer = SpillWriter(spill)
    try:
        for frame, rows in read(batch_rows):
            validated, _ = validate_batch(frame, rows, policy, source)
            out, record = release_rows(validated, policy, keys, duplicates, undeclared)  # indexed by input rows
            records.append(record)
            part = out[[c for c in out.columns if c in keep or c == ROW or str(c).startswith(ID)]]
            narrow.append(part.astype({c: "category" for c in categorical_texts(part, policy)}))
            writer.write(out.drop(columns=[c for c in aux_columns(out.columns) if c != ROW]))
    finally:
        writer.close()
    return records, compact_concat(narrow, policy)


def categorical_texts(part: pd.DataFrame, policy: Policy) -> list[str]:
    """The text quasi-identifiers of a batch (kept as categoricals: each distinct text once)."""
    return [c for c in policy.quasi_identifiers if c in part.columns and isinstance(part[c].dtype, pd.StringDtype)]


def compact_concat(parts: list[pd.DataFrame], policy: Policy) -> pd.DataFrame:
    """The batches' narrow columns as one frame indexed by input row; text quasi-identifiers as one
    categorical each (a code per row, each distinct text once: what generalization reads of them)."""
    from pandas.api.types import union_categoricals

    columns: dict[str, Any] = {}
    for name in parts[0].columns:
        if isinstance(parts[0][name].dtype, pd.CategoricalDtype):
            columns[name] = union_categoricals([p[name] for p in parts], sort_categories=True)
        else:
            columns[name] = pd.concat([p[name] for p in parts], ignore_index=True)
    data = pd.DataFrame(columns)
    data.index = pd.Index(data.pop(ROW).to_numpy(dtype=np.int64))
    return data


def minimise_streamed(path: Path, policy: Policy, keys: Keys | bytes, spill: Spill, *, source: str = "input",
                      partner: str | None = None, progress: Callable[[str], None] | None = None) -> Minimised:
    """`anonymize.pipeline.minimise(..., fixed_recoding=False)` of a Parquet or CSV file, batch by batch: the
    same step records and counts; `data` holds only the narrow columns of each row (the rest is in `spill`)."""
    key_set = as_keys(keys, partner)
    say = progress or (lambda _step: None)
    timings: dict[str, float] = {}
    say("validate")
    started = time.perf_counter()
    read = batch_reader(path, text_columns(policy))
    infos, small, rows_in = _first_pass(read, policy, source, spill.batch_rows)
    steps = [merge_validate(infos, rows_in, policy)]
    timings["validate"] = time.perf_counter() - started
    say("quality")
    started = time.perf_counter()
    duplicates = _duplicates(read, policy, source, spill.batch_rows, small)
    duplicate_ids = duplicate_identifiers(small, duplicates, policy)
    validated_rows = len(small)
    del small
    timings["quality"] = time.perf_counter() - started
    say("consent and purpose")
    started = time.perf_counter()
    records, data = _second_pass(read, policy, key_set, source, spill.batch_rows, duplicates,
                                 steps[0]["undeclared_columns"], spill)
    return merged_minimised(records, data, steps, policy, key_set, rows_in=rows_in, validated_rows=validated_rows,
                            duplicates=len(duplicates), duplicate_ids=duplicate_ids, timings=timings, started=started)


def merged_minimised(records: list[dict[str, Any]], data: pd.DataFrame, steps: list[dict[str, Any]], policy: Policy,
                     key_set: Keys, *, rows_in: int, validated_rows: int, duplicates: int, duplicate_ids: Any,
                     timings: dict[str, float], started: float) -> Minimised:
    """After the second pass (batches here, Ray tasks in `ray_stream`): the batches' records merged into
    the in-memory path's quality, purpose and pseudonymize steps, and the consent filter's empty check."""
    steps.append(merge_quality(records, policy, validated_rows, duplicates, duplicate_ids))
    steps.append({"step": "purpose", **merge_steps([r["purpose"] for r in records])})
    if not len(data):
        raise InputError(f"{policy.source}: no rows left after the consent filter for purpose {policy.purpose.name!r}")
    timings["purpose"] = time.perf_counter() - started
    started = time.perf_counter()
    pseudo_record, colliding, escrow = merge_pseudonymize(records, data, policy)
    steps.append(pseudo_record)
    data = data.drop(columns=aux_columns(data.columns))
    timings["pseudonymize"] = time.perf_counter() - started
    return Minimised(data=data, steps=steps, removed=_removed(steps), rows_in=rows_in,
                     pseudonymization=pseudo_record["columns"], escrow=escrow, partner=key_set.partner,
                     colliding=colliding, timings=timings)


@dataclass
class StreamedRelease:
    """A release whose rows are written from the spill (`released_batches`); `release.data` holds the
    narrow released columns only, `release.rows` their input row numbers."""

    release: Release
    spill: Spill
    columns: list[str]  # the release's columns, in order

    def released_batches(self) -> Iterator[pd.DataFrame]:
        """The released rows batch by batch: the spilled rows kept by generalization, with the released
        values of the narrow columns put in, in the release's column order."""
        narrow = self.release.data
        rows = self.release.rows
        assert rows is not None
        written = False
        for frame in self.spill.batches([c for c in self.columns if c not in narrow.columns]):
            kept = frame.index.isin(rows)
            if written and not kept.any():
                continue
            written = True  # the first batch goes out even when empty: the release's columns and types
            frame = frame[kept]
            positions = np.searchsorted(rows, frame.index.to_numpy())
            out = frame.copy(deep=False)
            for name in narrow.columns:
                values = narrow[name].iloc[positions].set_axis(frame.index)
                out[name] = values.astype(str) if isinstance(values.dtype, pd.CategoricalDtype) else values
            yield out[self.columns].reset_index(drop=True)


def run_streamed(path: Path, policy: Policy, keys: Keys | bytes, *, population: pd.DataFrame | None = None,
                 partner: str | None = None, source: str = "input", seed: int = 0,
                 progress: Callable[[str], None] | None = None, batch_rows: int = BATCH_ROWS,
                 spill_dir: Path | None = None) -> StreamedRelease:
    """`anonymize.pipeline.run` on a Parquet or CSV file streamed by batches (module docstring). The caller writes
    `released_batches()` and then calls `close_spill`."""
    work = Path(tempfile.mkdtemp(prefix="privmodel-spill-", dir=spill_dir))  # 0700: raw quasi-identifiers
    spill = Spill(work / "minimised.parquet", batch_rows)
    try:
        minimised = minimise_streamed(path, policy, keys, spill, source=source, partner=partner, progress=progress)
        columns = [c for c in policy.released_columns() if c in spill.columns or c in minimised.data.columns]
        release = run(pd.DataFrame(index=pd.RangeIndex(minimised.rows_in)), policy, keys, population=population,
                      partner=partner, source=source, seed=seed, progress=progress, minimised=minimised,
                      rows_of=spill.rows, columns=columns, compact=True)
    except BaseException:
        close_spill(spill)
        raise
    return StreamedRelease(release, spill, columns)


def close_spill(spill: Spill) -> None:
    """Remove the spill directory (the minimised rows never outlive the command)."""
    shutil.rmtree(spill.path.parent, ignore_errors=True)
