"""`privmodel anonymize` on a Parquet or CSV table larger than memory: the streamed engine's release written
batch by batch, and the content hashes (budget identities) of the input and the release computed batch
by batch, so no step holds the whole table (`anonymize.engines.stream`, docs/scale.md)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def batches_frame_id(frames: Iterable[pd.DataFrame]) -> str | None:
    """`privmodel.dp.budget.frame_id` of the table the `frames` make up, one frame at a time
    (`budget.TableHasher`: only the 32-byte row digests are held); None when the frames' values could
    be written differently from the whole table's (the caller then hashes the file)."""
    from privmodel.dp.budget import TableHasher

    hasher = TableHasher()
    for frame in frames:
        hasher.add(frame)
    return hasher.result()


def table_frame_id(path: Path, batch_rows: int) -> str:
    """`budget.content_id` of a Parquet or CSV file, read batch by batch (as `content_id` reads it: a CSV
    without text columns)."""
    from anonymize.engines.stream import batch_reader
    from privmodel.dp.budget import content_id

    found = batches_frame_id(frame for frame, _rows in batch_reader(path)(batch_rows)) or content_id(path)
    assert found is not None  # a .parquet or .csv file always has a content id
    return found


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
