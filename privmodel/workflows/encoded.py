"""Encode once, to memory-mapped arrays: the rows a model may use, read batch by batch (issue 13).

Why: `privmodel train` on 10M customers cannot hold the table as a DataFrame (a few GB a million
rows of object strings). Each batch (a Parquet record batch; a CSV batch by `csv_batches`) goes
through the steps `rows.model_rows` and `prepare.prepare` apply to a whole table -- the consent
filter and minimisation (`rows.minimised_rows` -> `anonymize.pipeline.minimise`), labels and feature
checks -- is encoded by the policy's encoder and written into memory-mapped arrays on disk
(`x_num` float32, `x_cat` int64). DP-SGD then samples training rows by index over them
(`training.fit(rows=...)`), and the held-out metrics, the baseline and the membership audit read
the rows they need by position.

The encoder needs no pass over the data and no sample: its bounds and categories are the policy's
PUBLIC metadata (`TabularEncoder.from_policy`); a scaler or category list fitted on the rows would
itself release something about them.

What a whole-table read did at once, done across batches:
- exact duplicate rows: `minimise` removes them within a batch; a row repeating one of an earlier
  batch is found by its normal-form row digest (the one the content hash uses) and removed first,
  counted under the same reason;
- the budget identity: `budget.TableHasher` (the digest `frame_id` gives the whole table);
- fairness groups: category codes (4 bytes a row);
- the card's raw-value check: identifier / sensitive columns still present after minimisation are
  spilled to Arrow files on disk and checked against the card a slice at a time (`check_card`).
Held in memory per row: the label (8 bytes), the group codes (4 each), the digest-prefix index
(8 bytes) and the digests for the content hash (32 bytes); the encoded features live in the page
cache of the memory-mapped files.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anonymize.errors import InputError
from privmodel.workflows import prepare as prep
from privmodel.workflows.rows import (
    UNIT_CUSTOMER,
    UNIT_RELEASE_ROW,
    ModelRows,
    ReleaseSource,
    minimised_rows,
    release_beside,
)

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.data.features import EncodedData, TabularEncoder
    from privmodel.dp.budget import TableHasher

#: rows per batch: a few tens of MB of pandas objects at a time
BATCH_ROWS = 262_144
#: rows of a spilled raw-value column checked against the card at a time
CHECK_ROWS = 2_000_000


@dataclass
class EncodedRows:
    """A table's model rows, encoded: arrays (memory-mapped), labels, fairness groups, counts."""

    data: EncodedData
    y: np.ndarray
    encoder: TabularEncoder
    rows: ModelRows  # counts, unit and release (its frame is empty: the rows are in `data`)
    content: str | None  # the table's content hash (None: `budget.dataset_of` hashes the file)
    group_codes: dict[str, np.ndarray] = field(default_factory=dict)
    group_values: dict[str, list[object]] = field(default_factory=dict)
    spilled: dict[str, Path] = field(default_factory=dict)  # raw-value column -> its Arrow file

    def groups(self, positions: np.ndarray) -> dict[str, np.ndarray] | None:
        """The fairness groups of these rows (as `prepare.groups` gives them from a frame)."""
        out = {}
        for name, codes in self.group_codes.items():
            values = np.array([*self.group_values[name], None], dtype=object)  # code -1 = missing
            out[name] = values[codes[positions]]
        return out or None

    def check_card(self, text: str) -> None:
        """`model_card.check_no_raw_values` over every spilled column, a slice at a time."""
        import pandas as pd
        import pyarrow as pa

        from privmodel.artifacts.model_card import check_no_raw_values

        for name, path in self.spilled.items():
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
            for start in range(0, table.num_rows, CHECK_ROWS):
                part = table.slice(start, CHECK_ROWS).column(0).to_pandas()
                check_no_raw_values(text, pd.DataFrame({name: part}), [name])


class _Repeats:
    """Rows seen in an earlier batch, by their normal-form digest (exact duplicates across batches)."""

    def __init__(self) -> None:
        self.prefixes = np.empty(0, dtype=np.uint64)  # first 8 bytes of every earlier digest, sorted
        self.earlier: list[np.ndarray] = []  # each earlier batch's digests as (rows, 4) uint64

    def mark(self, digests: bytes) -> np.ndarray:
        """Boolean mask of the rows whose digest an earlier batch had; then remember this batch.
        `digests`: the batch's 32-byte row digests, concatenated (viewed, not copied)."""
        words = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 4)
        first = words[:, 0]
        repeated = np.zeros(len(first), dtype=bool)
        if self.prefixes.size:
            at = np.minimum(np.searchsorted(self.prefixes, first), self.prefixes.size - 1)
            hit = np.flatnonzero(self.prefixes[at] == first)
            if hit.size:  # confirm on the whole digest (a shared 8-byte prefix may be chance)
                wanted = first[hit]
                known = {row.tobytes() for part in self.earlier for row in part[np.isin(part[:, 0], wanted)]}
                repeated[hit] = [words[i].tobytes() in known for i in hit]
        self.earlier.append(words)
        # two sorted runs: the stable sort merges them in linear time
        self.prefixes = np.sort(np.concatenate([self.prefixes, np.sort(first)]), kind="stable")
        return repeated


def table_batches(path: Path, text_columns: list[str]) -> tuple[int, Iterator[pd.DataFrame]]:
    """(rows in the file, its batches as DataFrames): Parquet by record batch, CSV by `csv_batches` (the
    dtypes `read_table` gives the whole file, decided in a first pass); neither is held whole."""
    from privmodel.core.fileio import check_readable

    check_readable(path)
    if path.suffix.lower() == ".csv":
        from privmodel.core.csv_batches import csv_batches

        return csv_batches(path, text_columns, BATCH_ROWS)
    if path.suffix.lower() != ".parquet":
        raise InputError(f"{path}: unsupported table format {path.suffix!r} (use .csv or .parquet)")
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        total = int(parquet.metadata.num_rows)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None
    if total == 0:
        raise InputError(f"{path}: table has no rows")

    def read() -> Iterator[pd.DataFrame]:
        try:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield batch.to_pandas()
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({type(exc).__name__})") from None

    return total, read()


@dataclass
class _Sink:
    """The arrays the batches are written into (memory-mapped files in `directory`)."""

    x_num: np.ndarray
    x_cat: np.ndarray
    y: np.ndarray
    used: int = 0

    @classmethod
    def open(cls, directory: Path, total: int, encoder: TabularEncoder) -> _Sink:
        from numpy.lib.format import open_memmap

        def array(name: str, dtype: type, width: int) -> np.ndarray:
            if width == 0:  # a zero-length mapping is not allowed
                return np.empty((total, 0), dtype=dtype)
            return open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype, shape=(total, width))

        return cls(array("x_num", np.float32, len(encoder.numeric)),
                   array("x_cat", np.int64, len(encoder.categorical)), np.empty(total, dtype=np.float64))

    def add(self, data: EncodedData, y: np.ndarray) -> None:
        end = self.used + len(y)
        self.x_num[self.used:end] = data.x_num
        self.x_cat[self.used:end] = data.x_cat
        self.y[self.used:end] = y
        self.used = end


@dataclass
class _Groups:
    """Fairness-group columns as codes into value lists that grow batch by batch."""

    names: list[str]
    total: int
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, list[object]] = field(default_factory=dict)
    index: dict[str, dict[object, int]] = field(default_factory=dict)

    def add(self, frame: pd.DataFrame, start: int) -> None:
        import pandas as pd

        for name in self.names:
            if name not in frame.columns:
                continue
            codes = self.codes.setdefault(name, np.full(self.total, -1, dtype=np.int32))
            index, values = self.index.setdefault(name, {}), self.values.setdefault(name, [])
            local, uniques = pd.factorize(frame[name].to_numpy(dtype=object), use_na_sentinel=True)
            mapping = []
            for value in uniques:
                if value not in index:
                    index[value] = len(values)
                    values.append(value)
                mapping.append(index[value])
            codes[start:start + len(local)] = np.array([*mapping, -1], dtype=np.int32)[local]


@dataclass
class BatchRows:
    """One batch's model rows (`encode_batch`): encoded features, labels, the columns the whole-table
    steps keep per row (fairness groups, raw values for the card check) and the rows removed, by reason."""

    data: EncodedData | None  # None: the policy removed every row of the batch
    y: np.ndarray
    kept: pd.DataFrame
    removed: dict[str, int]


def kept_columns(policy: Policy) -> list[str]:
    """Columns a batch hands back per kept row: fairness groups and the card check's raw-value columns."""
    return list(dict.fromkeys([*(str(c) for c in policy.fairness_groups),
                               *policy.with_role("identifier", "sensitive", "drop")]))


def encode_batch(frame: pd.DataFrame, repeated: np.ndarray | None, policy: Policy, label: str, secret: bytes | None,
                 encoder: TabularEncoder, source: str, one_of_many: bool) -> BatchRows:
    """THE per-batch step of training's data preparation, on every engine (this process, a Ray block):
    rows repeating an earlier batch out, the consent rule and minimisation (`_minimised` ->
    `rows.minimised_rows`, with the pseudonymization `secret` of `Gathered.secret`), labels, feature
    checks, the policy's encoder. `repeated` None: the input is an anonymize release (its rows are used
    as they are). `frame` has a 0-based RangeIndex."""
    kept, positions = frame, np.arange(len(frame))
    removed: dict[str, int] = {}
    if repeated is not None:
        kept, positions = _minimised(frame, repeated, policy, secret, source, removed, one_of_many)
    columns = [c for c in kept_columns(policy) if c in kept.columns]
    if kept.empty:
        return BatchRows(None, np.empty(0), kept[columns], removed)
    y = prep.labels(kept, label, source, positions, both_classes=False)  # checked on the whole table
    prep.check_features(kept, encoder, source, positions)
    return BatchRows(encoder.transform(kept), y, kept[columns], removed)


@dataclass
class Gathered:
    """What the batches are gathered into on the driver, in table order (every engine)."""

    path: Path
    policy: Policy
    total: int
    release: ReleaseSource | None
    encoder: TabularEncoder
    sink: _Sink
    groups: _Groups
    spill: _Spill
    hasher: TableHasher = field(default_factory=lambda: _table_hasher())
    repeats: _Repeats = field(default_factory=_Repeats)
    removed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, policy: Policy, label: str, total: int, directory: Path) -> Gathered:
        from privmodel.data.features import TabularEncoder

        encoder = TabularEncoder.from_policy(policy, label)
        return cls(path, policy, total, release_beside(path, total, policy), encoder,
                   _Sink.open(directory, total, encoder), _Groups([str(c) for c in policy.fairness_groups], total),
                   _Spill(directory, policy))

    def secret(self, keys: Path | None) -> bytes | None:
        """The pseudonymization secret `minimise` needs, loaded once on the driver (None for a release,
        whose rows are used as they are: no key directory is needed or made then)."""
        from privmodel.core.keys import ensure_keys, load_pseudonym_secret

        return None if self.release else load_pseudonym_secret(ensure_keys(keys))

    def add(self, batch: BatchRows) -> None:
        """A batch's result, after every earlier batch's."""
        for reason, count in batch.removed.items():
            self.removed[reason] = self.removed.get(reason, 0) + int(count)
        if batch.data is None:
            return
        self.groups.add(batch.kept, self.sink.used)
        self.spill.add(batch.kept)
        self.sink.add(batch.data, batch.y)

    def finish(self, label: str, hash_content: bool, text: list[str]) -> EncodedRows:
        """The whole-table checks (rows left, both classes) and the EncodedRows of the gathered batches."""
        import pandas as pd

        from privmodel.data.features import EncodedData

        self.spill.close()
        path, sink, encoder, used = self.path, self.sink, self.encoder, self.sink.used
        if used == 0:
            raise InputError(f"{path}: no rows left after the policy's consent filter")
        prep.check_both_classes(sink.y[:used], label, str(path))
        data = EncodedData(sink.x_num[:used], sink.x_cat[:used], [s.cardinality for s in encoder.categorical],
                           [s.name for s in encoder.numeric], [s.name for s in encoder.categorical])
        rows = ModelRows(frame=pd.DataFrame(), unit=UNIT_RELEASE_ROW if self.release else UNIT_CUSTOMER,
                         rows_in=self.total, positions=np.empty(0, dtype=np.int64), removed=self.removed,
                         release=self.release, used=used)
        hashed = path.suffix.lower() == ".parquet" or not text
        content = (self.hasher.result() if hash_content and hashed and not getattr(self.policy, "dataset", None)
                   else None)
        return EncodedRows(data=data, y=sink.y[:used], encoder=encoder, rows=rows, content=content,
                           group_codes={k: v[:used] for k, v in self.groups.codes.items()},
                           group_values=self.groups.values, spilled=self.spill.paths)


def _table_hasher() -> TableHasher:
    from privmodel.dp.budget import TableHasher

    return TableHasher()


def batch_source(path: Path, first: int, rows: int, total: int) -> str:
    """How a batch's messages name it: the file, or its data rows (1-based) when it is one of many."""
    return str(path) if rows == total else f"{path} (data rows {first + 1}-{first + rows})"


def encode_file(path: Path, policy: Policy, label: str, keys: Path | None, directory: Path,
                hash_content: bool = True) -> EncodedRows:
    """Read, filter, check and encode `path` batch by batch into memory-mapped arrays in `directory`."""
    from pyarrow import default_memory_pool

    from privmodel.workflows.rows import text_columns

    # Arrow's allocator keeps freed batches for reuse; handing them back keeps the process at one
    # batch's worth (measured: 360 MB less held after 1M rows)
    release_unused = default_memory_pool().release_unused

    text = text_columns(policy)
    total, batches = table_batches(path, text)
    table = Gathered.open(path, policy, label, total, directory)
    secret = table.secret(keys)
    offset = 0
    for frame in batches:
        source = batch_source(path, offset, len(frame), total)
        frame = frame.reset_index(drop=True)
        table.hasher.add(frame)
        repeated = None if table.release else table.repeats.mark(table.hasher.chunks[-1])
        table.add(encode_batch(frame, repeated, policy, label, secret, table.encoder, source,
                               one_of_many=len(frame) < total))
        offset += len(frame)
        release_unused()
    del batches, frame
    gc.collect()  # the last batch's frames, then their Arrow buffers handed back
    release_unused()
    return table.finish(label, hash_content, text)


def _minimised(frame: pd.DataFrame, repeated: np.ndarray, policy: Policy, secret: bytes | None, source: str,
               removed: dict[str, int], one_of_many: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """A batch through `minimised_rows`, rows repeating an earlier batch removed first; `one_of_many`: a
    batch without a consenting customer is not an error (the whole table is judged after the pass)."""
    fresh = np.flatnonzero(~repeated)
    if repeated.any():
        removed["exact_duplicates"] = removed.get("exact_duplicates", 0) + int(repeated.sum())
        frame = frame.iloc[fresh].reset_index(drop=True)
    rows = minimised_rows(frame, policy, None, source=source, empty_ok=one_of_many, secret=secret)
    for reason, count in rows.removed.items():
        removed[reason] = removed.get(reason, 0) + int(count)
    return rows.frame, fresh[rows.positions]


class _Spill:
    """The columns `check_no_raw_values` must check, written to Arrow files as the batches pass."""

    def __init__(self, directory: Path, policy: Policy) -> None:
        self.directory = directory
        self.columns = policy.with_role("identifier", "sensitive", "drop")
        self.paths: dict[str, Path] = {}
        self.writers: dict[str, object] = {}

    def add(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa

        for name in self.columns:
            if name not in frame.columns:
                continue
            values = pa.array(frame[name].dropna().astype(str).to_numpy(dtype=object), type=pa.large_string())
            batch = pa.record_batch([values], names=["value"])
            writer = self.writers.get(name)
            if writer is None:
                self.paths[name] = self.directory / f"check_{len(self.paths)}.arrow"
                writer = self.writers[name] = pa.ipc.new_file(str(self.paths[name]), batch.schema)
            writer.write_batch(batch)  # type: ignore[attr-defined]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()  # type: ignore[attr-defined]
