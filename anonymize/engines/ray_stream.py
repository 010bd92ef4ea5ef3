"""`--engine ray` on a Parquet table larger than memory: the streamed engine's two passes as Ray blocks.

The streamed single-machine engine (`anonymize.engines.stream`) with its per-batch work on Ray Data, so
neither the driver nor Ray's object store ever holds the table:

- the input is read by the blocks themselves: one Ray task per Parquet row group, which reads its row
  group batch by batch (`batch_rows`) and numbers its rows from the row groups' offsets in the footer
  (no row-number column zipped on, nothing materialized);
- pass 1 (`_validate_unit`) and pass 2 (`_release_unit`) call the per-batch functions the local streamed
  engine calls (`batches.validate_batch`, `batches.release_rows`), batch for batch; each batch reports
  its step records to the actor of `ray_engine` (keyed by its first row: a retried task does not count
  twice), and a bad value comes back as its one line (`block_failures`);
- the driver gets back only what the local streamed engine keeps in memory: pass 1's row numbers and
  hashes, pass 2's quasi-identifier, sensitive and token columns (text quasi-identifiers as
  categoricals) and identifier hashes;
- pass 2's blocks write their whole minimised rows to one spill file per row group in a private
  directory (0700), named by first row so that they sort in row order: `stream.Spill` reads them as one.
  In local mode that is local disk; on a cluster `spill_dir` must be storage that every node and the
  driver share (NFS, a mounted bucket);
- `anonymize.pipeline.run` then generalizes with `RayGeneralizer`, measures, gates and reports as
  `run_on_ray` does, and the caller writes the release from the spill batch by batch
  (`stream.StreamedRelease.released_batches`), exactly as for the local streamed engine.

With row groups that are multiples of `batch_rows`, the batches are the local streamed engine's and so
are the step records; the release, escrow and report are equal in any case (tests/test_ray_stream.py).
A file of one huge row group is one task: write inputs with row groups of ~100k-1M rows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
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
    input_rows,
    merge_validate,
    release_rows,
    validate_batch,
)
from anonymize.engines.ray_engine import block_failures, block_input_error, ray_session, report_block, stats_actor
from anonymize.engines.stream import (
    BATCH_ROWS,
    Spill,
    SpillWriter,
    StreamedRelease,
    categorical_texts,
    close_spill,
    compact_concat,
    merged_minimised,
    narrow_columns,
    parquet_rows,
)
from anonymize.errors import InputError
from anonymize.pipeline import Minimised, run
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import Keys, as_keys
from anonymize.quality import _check_shape

GROUP, FIRST = "group", "first"  # a unit of work: a row group and the input row number of its first row


def row_groups(path: Path) -> list[dict[str, int]]:
    """The file's non-empty row groups with the 1-based input row number of each one's first row."""
    import pyarrow.parquet as pq

    parquet_rows(path)  # an unreadable file is one InputError line
    meta = pq.ParquetFile(path).metadata
    units, first = [], 1
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if rows:
            units.append({GROUP: group, FIRST: first})
        first += rows
    return units


def _unit_batches(path: Path, group: int, first: int, batch_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """One row group batch by batch, as `stream.parquet_batches` gives it (same dtypes, infinite numbers
    refused by `fileio`'s check), with the input's row numbers of its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from privmodel.core.fileio import _check_finite

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=[group]):
            frame = pa.Table.from_batches([batch]).to_pandas()
            rows = np.arange(first, first + len(frame), dtype=np.int64)
            try:
                _check_finite(frame, path, None)
            except InputError as exc:
                raise input_rows(exc, rows) from None
            yield frame, rows
            first += len(frame)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None


def _units(batch: pd.DataFrame) -> Iterator[tuple[int, int]]:
    return ((int(g), int(f)) for g, f in zip(batch[GROUP], batch[FIRST], strict=True))


def _validate_unit(batch: pd.DataFrame, path: Path, policy: Policy, source: str, batch_rows: int,
                   sink: Any) -> pd.DataFrame:
    """Pass 1 on row groups: each batch validated (`validate_batch`); its row numbers and hashes returned,
    its record, rows and the columns holding values reported."""
    parts = []
    for group, first in _units(batch):
        key = first
        try:
            for frame, rows in _unit_batches(path, group, first, batch_rows):
                key = int(rows[0])
                if key == 1:
                    _check_shape(frame, policy, source)
                out, info = validate_batch(frame, rows, policy, source)
                report_block(sink, key, {"info": info, "rows": len(frame),
                                         "present": sorted(column_values(frame, policy))})
                parts.append(out[[c for c in out.columns if c in (ROW, HASH) or str(c).startswith(ID)]])
        except InputError as exc:
            raise block_input_error(sink, key, exc) from None
    return pd.concat(parts, ignore_index=True)


def _candidate_unit(batch: pd.DataFrame, path: Path, policy: Policy, source: str, batch_rows: int,
                    wanted: np.ndarray) -> pd.DataFrame:
    """The validated rows at `wanted` (the rows that may be exact duplicates), compared on the driver."""
    parts = []
    for group, first in _units(batch):
        for frame, rows in _unit_batches(path, group, first, batch_rows):
            out, _ = validate_batch(frame, rows, policy, source)
            parts.append(out[out[ROW].isin(wanted)])
    return pd.concat(parts, ignore_index=True)


def _release_unit(batch: pd.DataFrame, path: Path, policy: Policy, keys: Keys, source: str, batch_rows: int,
                  duplicates: np.ndarray, undeclared: list[str], spill_dir: Path, sink: Any) -> pd.DataFrame:
    """Pass 2 on row groups: each batch through `release_rows`; the whole minimised rows spilled to the
    row group's file, the narrow columns returned (text quasi-identifiers as categoricals), records reported."""
    keep = narrow_columns(policy)
    narrow = []
    for group, first in _units(batch):
        writer = SpillWriter(Spill(spill_dir / f"{first:015d}.parquet", batch_rows))
        key = first
        try:
            for frame, rows in _unit_batches(path, group, first, batch_rows):
                key = int(rows[0])
                validated, _ = validate_batch(frame, rows, policy, source)
                out, record = release_rows(validated, policy, keys, duplicates, undeclared)
                report_block(sink, key, record)
                part = out[[c for c in out.columns if c in keep or c == ROW or str(c).startswith(ID)]]
                narrow.append(part)
                writer.write(out.drop(columns=[c for c in aux_columns(out.columns) if c != ROW]))
        except InputError as exc:
            raise block_input_error(sink, key, exc) from None
        finally:
            writer.close()
    part = pd.concat(narrow, ignore_index=True) if len(narrow) > 1 else narrow[0]
    return part.astype({c: "category" for c in categorical_texts(part, policy)})


def _in_row_order(frames: Iterable[Any]) -> Iterator[pd.DataFrame]:
    """The blocks' frames as they come, refused if a row comes out of the input's order (the driver's
    steps take rows in order, as the local streamed engine does)."""
    last = 0
    for frame in frames:
        rows = frame[ROW].to_numpy()
        if len(rows):
            if rows[0] <= last or np.any(np.diff(rows) <= 0):
                raise RuntimeError("Ray Data returned rows out of order (preserve_order is off)")
            last = int(rows[-1])
        yield frame


def _map(units: list[dict[str, int]], fn: Callable[..., pd.DataFrame], **kwargs: Any) -> Iterator[pd.DataFrame]:
    """`fn` on every row group (one Ray task each), the results in row order."""
    import ray.data

    dataset = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
        fn, batch_format="pandas", batch_size=1, fn_kwargs=kwargs)
    return _in_row_order(dataset.iter_batches(batch_size=None, batch_format="pandas"))


def _first_pass(path: Path, units: list[dict[str, int]], policy: Policy, source: str,
                batch_rows: int) -> tuple[list[dict[str, Any]], pd.DataFrame, int]:
    """`stream._first_pass` on Ray: the batches' validate records, the row numbers and hashes, the row count."""
    import ray

    sink = stats_actor()
    with block_failures(sink):
        smalls = list(_map(units, _validate_unit, path=path, policy=policy, source=source, batch_rows=batch_rows,
                           sink=sink))
    records = ray.get(sink.all.remote())
    rows_in = sum(int(r["rows"]) for r in records)
    check_column_values(set().union(*(set(r["present"]) for r in records)), policy, source)
    infos = [r["info"] for r in records]
    if not sum(int(i["rows_out"]) for i in infos):
        raise InputError(f"{source}: no rows left after removing invalid values")
    # column by column, each block's part let go as it is joined: never two copies of the table's hashes
    columns: dict[str, pd.Series] = {}
    for name in [str(c) for c in smalls[0].columns]:
        columns[name] = pd.concat([part.pop(name) for part in smalls], ignore_index=True)
    small = pd.DataFrame(columns)
    return infos, small, rows_in


def minimise_streamed_on_ray(path: Path, policy: Policy, keys: Keys | bytes, spill: Spill, *, source: str = "input",
                             partner: str | None = None,
                             progress: Callable[[str], None] | None = None) -> Minimised:
    """`stream.minimise_streamed` with its batches in Ray tasks (module docstring): the same step records,
    counts and narrow columns; `spill.path` is the directory the blocks write their files to."""
    import ray

    key_set = as_keys(keys, partner)
    say = progress or (lambda _step: None)
    units = row_groups(path)
    if not units:
        raise InputError(f"{source}: table has no rows")
    timings: dict[str, float] = {}
    say("validate")
    started = time.perf_counter()
    infos, small, rows_in = _first_pass(path, units, policy, source, spill.batch_rows)
    steps = [merge_validate(infos, rows_in, policy)]
    timings["validate"] = time.perf_counter() - started
    say("quality")
    started = time.perf_counter()
    wanted = duplicate_candidates(small, policy)
    duplicates = np.zeros(0, dtype=np.int64)
    if len(wanted):
        duplicates = duplicate_rows(pd.concat(list(_map(units, _candidate_unit, path=path, policy=policy,
                                                        source=source, batch_rows=spill.batch_rows,
                                                        wanted=wanted)), ignore_index=True))
    duplicate_ids = duplicate_identifiers(small, duplicates, policy)
    validated_rows = len(small)
    del small
    timings["quality"] = time.perf_counter() - started
    say("consent and purpose")
    started = time.perf_counter()
    spill.path.mkdir(mode=0o700, exist_ok=True)
    sink = stats_actor()
    with block_failures(sink):
        narrow = list(_map(units, _release_unit, path=path, policy=policy, keys=key_set, source=source,
                           batch_rows=spill.batch_rows, duplicates=duplicates,
                           undeclared=steps[0]["undeclared_columns"], spill_dir=spill.path, sink=sink))
    records = ray.get(sink.all.remote())
    data = compact_concat(narrow, policy)
    del narrow
    spill.columns = _spilled_columns(spill)
    return merged_minimised(records, data, steps, policy, key_set, rows_in=rows_in, validated_rows=validated_rows,
                            duplicates=len(duplicates), duplicate_ids=duplicate_ids, timings=timings, started=started)


def _spilled_columns(spill: Spill) -> list[str]:
    """The spilled columns (the first block file's, as `SpillWriter` keeps the first batch's)."""
    import pyarrow.parquet as pq

    files = spill.files()
    return [c for c in pq.read_schema(files[0]).names if c != ROW] if files else []


def run_streamed_on_ray(path: Path, policy: Policy, keys: Keys | bytes, *, address: str | None = None,
                        population: pd.DataFrame | None = None, partner: str | None = None, source: str = "input",
                        seed: int = 0, progress: Callable[[str], None] | None = None, batch_rows: int = BATCH_ROWS,
                        spill_dir: Path | None = None, partition_rows: int | None = None) -> StreamedRelease:
    """`stream.run_streamed` on Ray (module docstring); generalization by `RayGeneralizer` as in
    `run_on_ray`. The caller writes `released_batches()` (Ray no longer needed) and then calls `close_spill`.
    `spill_dir`: where the private spill directory is made (on a cluster: storage all nodes share)."""
    from anonymize.engines.ray_generalize import RayGeneralizer

    work = Path(tempfile.mkdtemp(prefix="privmodel-spill-", dir=spill_dir))  # 0700: raw quasi-identifiers
    spill = Spill(work / "blocks", batch_rows)
    try:
        with ray_session(address) as cpus:
            blocks = max(2, 2 * cpus)
            minimised = minimise_streamed_on_ray(path, policy, keys, spill, source=source, partner=partner,
                                                 progress=progress)
            columns = [c for c in policy.released_columns() if c in spill.columns or c in minimised.data.columns]
            release = run(pd.DataFrame(index=pd.RangeIndex(minimised.rows_in)), policy, keys, population=population,
                          partner=partner, source=source, seed=seed, progress=progress, minimised=minimised,
                          rows_of=spill.rows, columns=columns, compact=True,
                          generalizer=RayGeneralizer(blocks=blocks, partition_rows=partition_rows))
    except BaseException:
        close_spill(spill)
        raise
    return StreamedRelease(release, spill, columns)
