"""`privmodel train --engine ray`: training's data preparation on Ray Data (issue 13, "Scale").

The input is read as a Ray dataset (Parquet: `ray.data.read_parquet`, zipped with a row-number
column; CSV: read as `encoded` reads it, so the same text columns, then handed to Ray in slices) and
goes through two passes of per-block maps, with the whole-table steps on the driver in block order:

The zipped dataset is materialized once in Ray's object store (shared memory, spilled to disk past its
size), so the driver process itself holds one batch at a time and the digests (32 bytes a row).

1. each block's row digests (`budget.TableHasher.add`, the normal form the content hash uses); the
   driver takes them in row order into the table's hasher and `encoded._Repeats`, which gives the rows
   repeating an earlier row (exact duplicates across blocks);
2. each block through `encoded.encode_batch` -- the very step the local engine runs per batch (the
   consent rule via `rows.minimised_rows` -> `anonymize.pipeline.minimise`, labels, feature checks, the
   policy's encoder) -- returning its encoded arrays, labels and the per-row columns the driver keeps;
   the driver streams them in order (`iter_batches`, order preserved) into the memory-mapped arrays
   (`encoded.Gathered`, as the local engine does), so it holds one batch at a time.

Rows removed per block are reported to a small actor keyed by the block's first row (a retried task
does not count twice), as `anonymize.engines.ray_engine` does; so are a block's bad-input lines. Ray
is started as for `anonymize --engine ray` (`ray_session`: local mode with 2 CPUs and a temp dir under
/tmp, shut down afterwards; a cluster with `address`). Minimisation pseudonymizes identifiers with the
key directory's secret: the driver loads it once and, as for anonymize, it travels to the workers in
task arguments (a worker node has no key directory; on a cluster Ray's TLS must protect it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from privmodel.workflows import encoded

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.data.features import TabularEncoder

ROW = "__row"  # 0-based row of the input file
DIGEST = "__digest"  # the row's 32-byte normal-form digest, as 4 uint64 words
Y, X_NUM, X_CAT = "__y", "__x_num", "__x_cat"
KEPT = "__kept_"  # prefix of a per-row column the driver keeps (fairness groups, raw values)
#: rows per block of both passes (Ray slices its blocks into batches of this size)
BLOCK_ROWS = encoded.BATCH_ROWS


def encode_file_on_ray(path: Path, policy: Policy, label: str, keys: Path | None, directory: Path,
                       hash_content: bool = True, address: str | None = None) -> encoded.EncodedRows:
    """`encoded.encode_file` with its per-batch step in Ray blocks: the same arrays, labels, counts,
    fairness groups, raw-value spill and content hash."""
    from anonymize.engines.ray_engine import ray_session
    from privmodel.workflows.rows import text_columns

    text = text_columns(policy)
    with ray_session(address):
        import ray.data

        # the driver's steps take the blocks in row order (a Ray the caller started may not ask for it)
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        total, dataset = _dataset(path, text)
        table = encoded.Gathered.open(path, policy, label, total, directory)
        secret = table.secret(keys)  # before any pass: a missing key directory is refused at once
        repeated = _digests(dataset, table)
        _encode(dataset, table, repeated, label, secret, path)
        return table.finish(label, hash_content, text)


def _dataset(path: Path, text: list[str]) -> tuple[int, Any]:
    """(rows, the input as a Ray dataset with a ROW column)."""
    import ray.data

    if path.suffix.lower() != ".parquet":
        from privmodel.core.fileio import read_table

        frame = read_table(path, text_columns=text)  # as the local engine reads a CSV: whole, then sliced
        frame.insert(0, ROW, np.arange(len(frame), dtype=np.int64))
        parts = [frame.iloc[a:a + BLOCK_ROWS] for a in range(0, len(frame), BLOCK_ROWS)]
        return len(frame), ray.data.from_pandas(parts)
    total, _batches = encoded.table_batches(path, text)  # the row count (and the checks) of the local engine
    del _batches
    rows = ray.data.range(total).rename_columns({"id": ROW})
    # the zip aligns the row numbers with the file's rows by buffering both in the object store (it
    # spills to disk past its size); materialized once, both passes read it instead of the file twice
    return total, rows.zip(ray.data.read_parquet(str(path))).materialize()


def _split(batch: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    rows = batch[ROW].to_numpy(dtype=np.int64)
    return rows, batch.drop(columns=[ROW]).reset_index(drop=True)


def _digest_block(batch: pd.DataFrame, sink: Any) -> dict[str, np.ndarray]:
    """Pass 1 on one block: its rows' digests, and (to the actor) its columns and text plans."""
    from anonymize.engines.ray_engine import block_input_error, report_block
    from privmodel.dp.budget import TableHasher

    rows, frame = _split(batch)
    hasher = TableHasher()
    try:
        hasher.add(frame)
    except InputError as exc:
        raise block_input_error(sink, int(rows[0]), exc) from None
    report_block(sink, int(rows[0]), {"columns": hasher.columns,
                                 "plans": {k: sorted(v) for k, v in hasher.plans.items()}})
    words = np.frombuffer(hasher.chunks[-1], dtype=np.uint64).reshape(-1, 4)
    return {ROW: rows, DIGEST: words}


def _digests(dataset: Any, table: encoded.Gathered) -> np.ndarray:
    """Pass 1: the table's hasher and the rows (0-based) repeating an earlier row, taken in row order."""
    import ray

    from anonymize.engines.ray_engine import block_failures, stats_actor

    sink = stats_actor()
    repeated: list[np.ndarray] = []
    chunks: list[bytes] = []
    with block_failures(sink):
        digests = dataset.map_batches(_digest_block, batch_format="pandas", batch_size=BLOCK_ROWS,
                                      fn_kwargs={"sink": sink})
        for batch in _in_order(digests.iter_batches(batch_size=BLOCK_ROWS, batch_format="numpy"), strict=True):
            chunks.append(np.ascontiguousarray(batch[DIGEST], dtype=np.uint64).tobytes())
            if table.release is None:
                repeated.append(batch[ROW][table.repeats.mark(chunks[-1])])
    blocks = ray.get(sink.all.remote())
    plans: dict[str, set[str]] = {}
    for block in blocks:
        if block["columns"] != blocks[0]["columns"]:
            raise InputError("a dataset's content hash met slices with different columns")
        for name, seen in block["plans"].items():
            plans.setdefault(name, set()).update(seen)
    table.hasher.add_digests(blocks[0]["columns"], plans, chunks)
    return np.concatenate(repeated) if repeated else np.empty(0, dtype=np.int64)


def _in_order(batches: Iterator[dict[str, np.ndarray]], strict: bool) -> Iterator[dict[str, np.ndarray]]:
    """The batches as they come, refused if a row comes out of the input's order (the driver's steps
    need it: the first copy of a repeated row is the one kept). `strict`: ROW is the row itself, not
    the first row of its block."""
    last = -1
    for batch in batches:
        rows = batch[ROW]
        if len(rows):
            step = np.diff(rows, prepend=last)
            if np.any(step <= 0 if strict else step < 0):
                raise RuntimeError("Ray Data returned rows out of order (preserve_order is off)")
            last = int(rows[-1])
        yield batch


def _encode_block(batch: pd.DataFrame, policy: Policy, label: str, secret: bytes | None, encoder: TabularEncoder,
                  repeated: np.ndarray | None, path: Path, total: int, sink: Any) -> dict[str, np.ndarray]:
    """Pass 2 on one block: `encoded.encode_batch`, its arrays and kept columns returned, its removed
    rows reported to the actor."""
    from anonymize.engines.ray_engine import block_input_error, report_block

    rows, frame = _split(batch)
    first = int(rows[0])
    mask = None if repeated is None else np.isin(rows, repeated)
    try:
        out = encoded.encode_batch(frame, mask, policy, label, secret, encoder,
                                   encoded.batch_source(path, first, len(frame), total),
                                   one_of_many=len(frame) < total)
    except InputError as exc:
        raise block_input_error(sink, first, exc) from None
    report_block(sink, first, {"removed": out.removed})
    n = len(out.y)
    result = {ROW: np.full(n, first, dtype=np.int64), Y: np.asarray(out.y, dtype=np.float64)}
    for key, width, part in ((X_NUM, len(encoder.numeric), "x_num"), (X_CAT, len(encoder.categorical), "x_cat")):
        if width:  # a zero-width column is left out (Ray has no (n, 0) tensors)
            result[key] = getattr(out.data, part) if out.data is not None else np.empty((0, width))
    for name in out.kept.columns:  # None for a missing value (what the driver's steps read as missing)
        values = out.kept[name].to_numpy(dtype=object, copy=True)
        values[out.kept[name].isna().to_numpy()] = None
        result[KEPT + str(name)] = values
    return result


def _encode(dataset: Any, table: encoded.Gathered, repeated: np.ndarray, label: str, secret: bytes | None,
            path: Path) -> None:
    """Pass 2: every block through `encoded.encode_batch`; the results streamed into `table` in row order."""
    import pandas as pd
    import ray

    from anonymize.engines.ray_engine import block_failures, stats_actor
    from privmodel.data.features import EncodedData

    sink = stats_actor()
    encoder = table.encoder
    with block_failures(sink):
        results = dataset.map_batches(
            _encode_block, batch_format="pandas", batch_size=BLOCK_ROWS,
            fn_kwargs={"policy": table.policy, "label": label, "secret": secret, "encoder": encoder,
                       "repeated": None if table.release else repeated, "path": path, "total": table.total,
                       "sink": sink})
        for batch in _in_order(results.iter_batches(batch_size=BLOCK_ROWS, batch_format="numpy"), strict=False):
            n = len(batch[Y])
            if not n:
                continue
            kept = pd.DataFrame({name[len(KEPT):]: batch[name] for name in batch if name.startswith(KEPT)})
            data = EncodedData(_array(batch, X_NUM, n, len(encoder.numeric), np.float32),
                               _array(batch, X_CAT, n, len(encoder.categorical), np.int64),
                               [s.cardinality for s in encoder.categorical], [s.name for s in encoder.numeric],
                               [s.name for s in encoder.categorical])
            table.add(encoded.BatchRows(data, batch[Y], kept, {}))
    for record in ray.get(sink.all.remote()):
        table.add(encoded.BatchRows(None, np.empty(0), pd.DataFrame(), record["removed"]))


def _array(batch: dict[str, np.ndarray], key: str, rows: int, width: int, dtype: type) -> np.ndarray:
    if not width:
        return np.empty((rows, 0), dtype=dtype)
    return np.asarray(batch[key], dtype=dtype).reshape(rows, width)
