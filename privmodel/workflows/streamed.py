"""`privmodel anonymize` on a Parquet table larger than memory: the streamed engine's release written
batch by batch, and the content hashes (budget identities) of the input and the release computed batch
by batch, so no step holds the whole table (`anonymize.engines.stream`, docs/scale.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def batches_frame_id(frames: Iterable[pd.DataFrame]) -> str:
    """`privmodel.dp.budget.frame_id` of the table the `frames` make up, one frame at a time: each row's
    normal-form digest depends on that row alone and the digests are sorted, so batches give the whole
    table's digest (tests/test_stream.py checks it against `frame_id`). Only the 32-byte row digests are
    held, in one buffer sorted in place (byte order, as `budget._sorted_bytes` orders them) and hashed
    in slices. (A candidate for `budget` itself, beside `frame_id`, which this reuses piece by piece.)"""
    import numpy as np

    from anonymize.errors import InputError
    from privmodel.artifacts.ledger import canonical_json
    from privmodel.dp import budget

    columns: list[str] | None = None
    digests = bytearray()
    for frame in frames:
        named = frame.set_axis([str(c) for c in frame.columns], axis=1)
        if columns is None:
            columns = sorted(named.columns)
        plans = {name: budget._text_plan(named[name]) for name in columns}
        for start in range(0, len(named), budget._HASH_ROWS):
            rows = named.iloc[start : start + budget._HASH_ROWS]
            digests += b"".join(budget._row_digests([budget._column_text(rows[n], plans[n]) for n in columns]))
    if not columns:
        raise InputError("a dataset's content hash needs a table with at least one column")
    total = hashlib.sha256(b"privmodel-table-v1\0" + canonical_json(columns))
    ordered = np.frombuffer(digests, dtype="V32")
    ordered.sort()  # numpy compares void items byte by byte: the digests' byte order, in place
    for start in range(0, len(ordered), 1 << 20):
        total.update(ordered[start : start + (1 << 20)].tobytes())
    return total.hexdigest()


def parquet_frame_id(path: Path, batch_rows: int) -> str:
    """`budget.content_id` of a Parquet file, read batch by batch."""
    from anonymize.engines.stream import parquet_batches

    return batches_frame_id(frame for frame, _rows in parquet_batches(path, batch_rows))


def write_batches(path: Path, frames: Iterable[pd.DataFrame], fmt: str) -> int:
    """Write the release batch by batch into its staged file (Parquet: one row group per batch; CSV: the
    header once); returns the rows written. An empty release is written from the first batch's columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for frame in frames:
            if fmt == "csv":
                frame.to_csv(path, index=False, mode="w" if rows == 0 else "a", header=rows == 0)
            else:
                table = pa.Table.from_pandas(frame, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table if table.schema == writer.schema else table.cast(writer.schema))
            rows += len(frame)
    finally:
        if writer is not None:
            writer.close()
    return rows
