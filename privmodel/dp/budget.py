"""One privacy budget per dataset, per organisation: a signed, hash-chained store beside its keys.

Why a store of its own and not the ledger: a ledger belongs to one output (`--ledger`, `--out`,
`--workdir`), so keeping the budget there gave every new ledger a fresh budget. The budget belongs to
the organisation: by default a SQLite file beside its keys (`<keys dir>/budget.sqlite`), or, for a
team, a shared database given by URL in `$PRIVMODEL_BUDGET_URL` (e.g. `postgresql+psycopg://...`),
so one data scientist's laptop does not hold a budget another cannot see. Ledgers still get a
`budget.charge` entry for each charge (the audit trail of the run), but they are not the budget.

Store layout (SQLAlchemy Core): `privmodel_budget_meta` (one signed row: the store id) and
`privmodel_budget_events` (charges, refusals and lineage records). Every event carries the hash of
the previous one and is signed with the organisation's Ed25519 key; on every read the whole chain is
verified against the organisation's OWN public key from its keys dir (never a key the store brings),
so an edited, deleted, reordered or re-signed event is refused. A signed head (event count and last
hash per store) is kept in a second place, `<keys dir>/budget.head`, so a deleted or rolled-back store
is refused too ("budget store missing or rolled back"). docs/budget.md says what is not detectable.

Check-and-charge is one transaction: SQLite `BEGIN IMMEDIATE` (one writer at a time), PostgreSQL
`SELECT ... FOR UPDATE` on the store's meta row, so two concurrent charges cannot both fit the cap.

Identity (`dataset_of`): the policy's declared `dataset:` id, else the root of the file's recorded
lineage (a release, split or silo charges the dataset it came from), else the table's content hash:
the sorted SHA-256 of each row in a normal form (columns sorted by name, numbers, booleans and dates
written one way), so the same table with a newline appended, CRLF line ends, its rows or columns
reordered, or re-encoded as Parquet keeps its budget.

Composition: BASIC -- epsilons add, deltas add (valid for any mix of mechanisms and accountants).
No torch, no pandas at import (pandas only inside `content_id`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.pool import NullPool

from anonymize.errors import InputError
from privmodel.artifacts.ledger import Ledger, canonical_json, refuse_key_material
from privmodel.core.fileio import atomic_write_text, sha256_file
from privmodel.core.keys import Signer, ensure_keys, key_id_of, load_public_key, load_signer

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from anonymize.policy.schema import Budget, Policy

ACTION = "budget.charge"
COMPOSITION = "basic (epsilons add, deltas add)"
URL_ENV = "PRIVMODEL_BUDGET_URL"
STORE_FILE = "budget.sqlite"
HEAD_FILE = "budget.head"
DEFAULT_LOCATION = f"keys-dir/{STORE_FILE}"  # the default store's name in the head: survives moving the keys dir
FORMAT = 1
_TOLERANCE = 1e-12  # float slack when a charge exactly fills the cap
_COST_FIELDS = ("accountant", "noise_multiplier", "sample_rate", "steps", "clipping", "max_grad_norm",
                "target_epsilon", "epsilon_preprocessing", "delta_preprocessing")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TABLE_SUFFIXES = (".csv", ".parquet")

_meta = sa.MetaData()
META = sa.Table(
    "privmodel_budget_meta", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("store_id", sa.String(64), nullable=False),
    sa.Column("format", sa.Integer, nullable=False),
    sa.Column("created", sa.String(40), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("signature", sa.String(100), nullable=False),
)
EVENTS = sa.Table(
    "privmodel_budget_events", _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("time", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # charge | refusal | lineage
    sa.Column("dataset", sa.String(200), nullable=False),  # charged dataset; for lineage: the source
    sa.Column("derived", sa.String(200), nullable=True),  # lineage only: the derived file's hash
    sa.Column("epsilon", sa.Double, nullable=False),
    sa.Column("delta", sa.Double, nullable=False),
    sa.Column("cap_epsilon", sa.Double, nullable=True),
    sa.Column("cap_delta", sa.Double, nullable=True),
    sa.Column("outcome", sa.String(8), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(100), nullable=False),
)
_HASHED = ("seq", "time", "kind", "dataset", "derived", "epsilon", "delta", "cap_epsilon", "cap_delta",
           "outcome", "reason", "params", "actor", "key_id", "prev_hash")


# --- public value types --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    """The policy's budget cap for one dataset (policy.budget)."""

    epsilon: float
    delta: float

    @classmethod
    def of(cls, budget: Budget) -> Cap:
        """From a policy's `budget` (its epsilon / delta)."""
        return cls(float(budget.epsilon), float(budget.delta))

    def as_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta}


@dataclass(frozen=True)
class Spent:
    """Budget spent so far on one dataset (successful charges only)."""

    epsilon: float
    delta: float
    charges: int

    def as_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta}


@dataclass(frozen=True)
class ChargeRecord:
    """One accepted charge, as the card and the ledger report it."""

    dataset: str
    epsilon: float
    delta: float
    cap: Cap
    spent_before: Spent
    spent_after: Spent
    store: str
    store_seq: int
    params: Mapping[str, Any] = field(default_factory=dict)
    ledger_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "charged": {"epsilon": self.epsilon, "delta": self.delta},
            "cap": self.cap.as_dict(),
            "spent_before": self.spent_before.as_dict(),
            "spent_after": self.spent_after.as_dict(),
            "charges": self.spent_after.charges,
            "composition": COMPOSITION,
            "store": self.store,
            "store_seq": self.store_seq,
            "ledger_seq": self.ledger_seq,
        }


class BudgetExceeded(InputError):
    """A charge would pass the dataset's cap; the message names the dataset and the cap."""

    def __init__(self, dataset: str, cap: Cap, spent: Spent, asked_epsilon: float, asked_delta: float) -> None:
        self.dataset = dataset
        self.cap_epsilon, self.cap_delta = cap.epsilon, cap.delta
        self.spent_epsilon, self.spent_delta = spent.epsilon, spent.delta
        self.asked_epsilon, self.asked_delta = asked_epsilon, asked_delta
        if spent.epsilon + asked_epsilon > cap.epsilon + _TOLERANCE:
            what = f"spent {spent.epsilon:.4g} + asked {asked_epsilon:.4g} > cap {cap.epsilon:.4g} (epsilon)"
        else:
            what = f"spent {spent.delta:.3g} + asked {asked_delta:.3g} > cap {cap.delta:.3g} (delta)"
        super().__init__(f"privacy budget exceeded for dataset {label(dataset)}: {what}")


def label(dataset: str) -> str:
    """How messages and tables name a dataset: a declared id as is, a content hash by 16 hex chars."""
    return f"sha256:{dataset[:16]}" if _HEX64.match(dataset) else dataset


# --- dataset identity --------------------------------------------------------------------------


def content_id(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a table's normal form (None for a file that is not .csv / .parquet).

    Each row becomes one string (columns sorted by name; integral numbers without ".0", other
    numbers by repr, booleans true/false, timestamps ISO with midnight dropped, missing as empty,
    text stripped); the digest covers the sorted column names and the sorted row hashes. So byte
    variants of the same table (a newline appended, CRLF, rows or columns reordered, CSV <-> Parquet)
    share an identity; any changed value makes a new one (lineage covers derived files).
    """
    from privmodel.core.fileio import read_table

    src = Path(path)
    if src.suffix.lower() not in _TABLE_SUFFIXES:
        return None
    return frame_id(read_table(src))


def frame_id(frame: object) -> str:
    """`content_id` of an in-memory table (a pandas DataFrame, else InputError): the same normal form and digest."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or frame.shape[1] == 0:
        raise InputError("a dataset's content hash needs a table with at least one column")
    columns = sorted(str(c) for c in frame.columns)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    # how each column is written is decided on the whole column; the rows are then written and hashed
    # in slices, so the texts of only one slice are in memory at a time (the digests are sorted anyway)
    plans = {name: _text_plan(frame[name]) for name in columns}
    digests: list[bytes] = []
    for start in range(0, len(frame), _HASH_ROWS):
        rows = frame.iloc[start : start + _HASH_ROWS]
        digests += _row_digests([_column_text(rows[name], plans[name]) for name in columns])
    total = hashlib.sha256(b"privmodel-table-v1\0" + canonical_json(columns))
    for piece in _sorted_bytes(digests):
        total.update(piece)
    return total.hexdigest()


#: column plans that write every value alike (an int column is "float64" in a slice with a missing
#: value, and float64 writes integral values as integers; likewise for booleans, which a slice with a
#: missing value may hold as objects ("value" writes each boolean as the boolean plans do))
_SAME_TEXT = ({"int", "float64"}, {"bool", "nullable-bool", "value"})


class TableHasher:
    """`frame_id` of a table read slice by slice (Parquet batches), without holding the table.

    Why: a table too large for memory still needs its budget identity. `frame_id` decides how a
    column is written from the whole column; here each slice decides, and `result()` is the same
    digest whenever every slice's plan writes values as the whole column's would (`_SAME_TEXT`), else
    None (the caller then hashes the file with `content_id`). `add` returns the slice's row digests
    (the normal form of each row), which also tell repeated rows apart; `chunks[-1]` holds them
    concatenated.
    """

    def __init__(self) -> None:
        self.columns: list[str] | None = None
        self.plans: dict[str, set[str]] = {}
        self.chunks: list[bytes] = []  # each slice's row digests, concatenated (32 bytes a row)

    def add(self, frame: pd.DataFrame) -> list[bytes]:
        if frame.shape[1] == 0:
            raise InputError("a dataset's content hash needs a table with at least one column")
        frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
        columns = sorted(frame.columns)
        if self.columns is None:
            self.columns = columns
        elif columns != self.columns:
            raise InputError("a dataset's content hash met slices with different columns")
        plans = {name: _text_plan(frame[name]) for name in columns}
        for name, plan in plans.items():
            self.plans.setdefault(name, set()).add(plan)
        digests: list[bytes] = []
        for start in range(0, len(frame), _HASH_ROWS):
            rows = frame.iloc[start : start + _HASH_ROWS]
            digests += _row_digests([_column_text(rows[name], plans[name]) for name in columns])
        self.chunks.append(b"".join(digests))
        return digests

    def add_digests(self, columns: list[str], plans: Mapping[str, set[str]], chunks: list[bytes]) -> None:
        """Slices hashed elsewhere (`add` in Ray blocks): their sorted columns, each column's plans and
        their row digests in table order."""
        if self.columns is None:
            self.columns = list(columns)
        elif list(columns) != self.columns:
            raise InputError("a dataset's content hash met slices with different columns")
        for name, seen in plans.items():
            self.plans.setdefault(name, set()).update(seen)
        self.chunks.extend(chunks)

    def result(self) -> str | None:
        """`frame_id` of the whole table, or None when the slices' plans could write it differently."""
        if self.columns is None:
            raise InputError("a dataset's content hash needs a table with at least one column")
        if any(len(seen) > 1 and not any(seen <= same for same in _SAME_TEXT) for seen in self.plans.values()):
            return None
        total = hashlib.sha256(b"privmodel-table-v1\0" + canonical_json(self.columns))
        for piece in _sorted_bytes(self.chunks):  # the concatenation of the slices' digests
            total.update(piece)
        return total.hexdigest()


def _sorted_bytes(digests: list[bytes]) -> Iterator[bytes]:
    """The 32-byte digests in byte order, concatenated, in pieces (hashing them = hashing them one by
    one after `sorted`): one buffer sorted in place by numpy (void items compare byte by byte, as bytes
    do), not as millions of Python objects and with no second sorted copy; handed out a million at a time."""
    import numpy as np

    ordered = np.frombuffer(bytearray().join(digests), dtype="V32")
    ordered.sort()
    for start in range(0, len(ordered), 1 << 20):
        yield ordered[start:start + (1 << 20)].tobytes()


_HASH_ROWS = 200_000  # rows written and hashed at a time by `frame_id`


def _text_plan(col: pd.Series) -> str:
    """How `frame_id` writes a column, from the whole column (dtype, missing values, inferred kind)."""
    import numpy as np
    import pandas as pd

    if col.dtype == bool:
        return "bool"
    if pd.api.types.is_bool_dtype(col.dtype):
        return "nullable-bool"
    if pd.api.types.is_integer_dtype(col.dtype) and not col.isna().any():
        return "int"
    if col.dtype == np.float64:
        return "float64"
    if pd.api.types.is_numeric_dtype(col.dtype):
        return "number"
    if pd.api.types.is_datetime64_any_dtype(col.dtype):
        return "time"
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind in ("string", "empty"):
        return "string"
    return "date" if kind in ("date", "datetime") else "value"  # equal dates (datetimes) give one text


def _column_text(col: pd.Series, plan: str) -> pa.Array:
    """One column's normal-form texts (see `content_id`) as an Arrow large_string array, escaped for
    joining with U+001F. Plain numbers, booleans, strings and dates are written by Arrow kernels;
    anything else value by value, as the normal form defines it."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if plan == "bool":  # numpy bool: no missing value
        return pc.if_else(pa.array(col.to_numpy(dtype=bool)), pa.scalar("true", pa.large_string()),
                          pa.scalar("false", pa.large_string()))
    if plan == "int":
        return pa.array(col.to_numpy(dtype="int64")).cast(pa.large_string())
    if plan == "float64":
        return _numbers_text(col)
    if plan == "string":
        return _escaped(_stripped(col))
    text: pd.Series
    if plan == "nullable-bool":
        text = col.map(lambda v: "" if pd.isna(v) else ("true" if v else "false"))
    elif plan == "number":
        text = col.map(_number_text)
    elif plan == "time":
        text = _per_unique_text(col, _time_text)
    elif plan == "date":
        dates = _dates_text(col)
        if dates is not None:
            return dates
        text = _per_unique_text(col, _value_text)
    else:
        text = col.map(_value_text)
    array = pa.array(text.astype(str).to_numpy(dtype=object), type=pa.large_string())
    # numbers, booleans and ISO times hold neither a backslash nor U+001F
    return _escaped(array) if plan == "value" else array


def _stripped(col: pd.Series) -> pa.Array:
    """`col.where(col.notna(), "").astype(str).str.strip()` of a column of strings, as Arrow text
    (pandas strips its Arrow strings with this same kernel)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(col.array if col.dtype != object else col.to_numpy(dtype=object), from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pc.utf8_trim_whitespace(array.cast(pa.large_string()).fill_null(""))


def _escaped(array: pa.Array) -> pa.Array:
    """Backslash and U+001F escaped (the row separator must not occur inside a value); the replace
    kernels run only when the text buffer holds either byte at all."""
    import numpy as np
    import pyarrow.compute as pc

    data = array.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, dtype=np.uint8)
    if (raw == ord("\\")).any():
        array = pc.replace_substring(array, "\\", "\\\\")
    if (raw == 0x1F).any():
        array = pc.replace_substring(array, "\x1f", "\\x1f")
    return array


def _dates_text(col: pd.Series) -> pa.Array | None:
    """ISO texts of a column of `datetime.date` values by Arrow (missing -> ""), or None when the
    column holds anything else or a year outside 1700-2200 (those take the per-value path)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        array = pa.array(col.to_numpy(dtype=object), from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if array.type != pa.date32():
        return None
    years = pc.min_max(pc.year(array)).as_py()
    if years["min"] is not None and not (years["min"] >= 1700 and years["max"] <= 2200):
        return None
    return array.cast(pa.large_string()).fill_null("")


def _row_digests(parts: list[pa.Array]) -> list[bytes]:
    """SHA-256 of each row's column texts joined by U+001F: the rows joined by Arrow in one pass
    (what `Series.str.cat` gives, without a Python string per row), hashed from the one buffer."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    joined = pc.binary_join_element_wise(*parts, pa.scalar("\x1f", pa.large_string())) if len(parts) > 1 else parts[0]
    if joined.null_count:  # cannot happen: every text above is a string, missing values are ""
        raise InputError("a dataset's content hash met a missing value in its normal form")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + len(joined) + 1]
    data = memoryview(joined.buffers()[2] or b"")
    sha = hashlib.sha256
    bounds = offsets.tolist()
    return [sha(data[a:b]).digest() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _numbers_text(col: pd.Series) -> pa.Array:
    """`col.map(_number_text)` for a float64 column: integral values as int64 by Arrow, the others
    by Arrow's shortest round-trip text where that is what `repr` writes (positional, 1e-4 <= |x| <
    1e16), by `repr` otherwise (exponents, infinities)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    values = col.to_numpy()
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        integral = finite & (np.floor(values) == values) & (np.abs(values) < 2**53)
        positional = finite & ~integral & (np.abs(values) >= 1e-4) & (np.abs(values) < 1e16)
    shortest = pa.array(np.where(positional, values, 0.0)).cast(pa.large_string())
    if positional.any():  # Arrow writes some of these with an exponent where repr does not
        positional &= ~pc.match_substring(shortest, "e").to_numpy(zero_copy_only=False)
    text = pa.array(np.where(integral, values, 0.0).astype(np.int64)).cast(pa.large_string())
    text = pc.if_else(pa.array(positional), shortest, text)
    other = ~integral & ~positional & ~np.isnan(values)  # other numbers, by repr as before
    if other.any():
        text = pc.replace_with_mask(text, pa.array(other),
                                    pa.array([repr(v) for v in values[other].tolist()], type=pa.large_string()))
    missing = np.isnan(values)
    if missing.any():
        text = pc.if_else(pa.array(missing), pa.scalar("", pa.large_string()), text)
    return text


def _per_unique_text(col: pd.Series, fn: Callable[[Any], str]) -> pd.Series:
    """`col.map(fn)` computing `fn` once per distinct value (missing values map to fn(None) = "")."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    texts = np.array([*(fn(v) for v in uniques), fn(None)], dtype=object)
    return pd.Series(texts[codes], index=col.index)


def _number_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    number = float(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def _time_text(value: Any) -> str:
    import pandas as pd

    if pd.isna(value):
        return ""
    stamp = pd.Timestamp(value)
    return stamp.date().isoformat() if stamp == stamp.normalize() and stamp.tzinfo is None else stamp.isoformat()


def _value_text(value: Any) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, list | tuple | dict) and pd.isna(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number_text(value)
    if isinstance(value, dt.datetime | dt.date):
        return _time_text(value)
    return str(value).strip()


def dataset_of(policy: Policy | None, data_path: str | os.PathLike[str], keys: str | os.PathLike[str] | None,
               content: str | None = None) -> str:
    """The budget identity of a data file: the policy's declared `dataset` id, else the root of the
    file's recorded lineage, else its table content hash (file SHA-256 for a non-table file).
    `content`: the file's table content hash when the caller has it already (`frame_id` of the table
    exactly as `read_table(data_path)` gives it), so the file is not read and hashed again."""
    declared = getattr(policy, "dataset", None) if policy is not None else None
    if declared:
        return _check_dataset(declared)
    path = Path(data_path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    names = _file_names(path, content)
    store = _Store.open(keys, create=False)
    if store is not None:
        lineage = store.read().lineage
        for name in names:
            if name in lineage:
                return _root(name, lineage)
    return names[-1]


def dataset_of_frame(policy: Policy | None, frame: pd.DataFrame, keys: str | os.PathLike[str] | None) -> str:
    """`dataset_of` for rows already in memory (the estimator's X): the policy's declared id, else the
    lineage root of the frame's content hash, else that hash. X without its label column hashes
    differently from the file it came from: declare `dataset:` in the policy to share one budget."""
    declared = getattr(policy, "dataset", None) if policy is not None else None
    if declared:
        return _check_dataset(declared)
    name = frame_id(frame)
    store = _Store.open(keys, create=False)
    if store is not None:
        lineage = store.read().lineage
        if name in lineage:
            return _root(name, lineage)
    return name


def _file_names(path: Path, content: str | None = None) -> list[str]:
    """The hashes a file is known by in lineage: its bytes, then its table content (the identity;
    `content` when the caller computed it from the table in memory)."""
    names = [sha256_file(path)]
    if content is None or path.suffix.lower() not in _TABLE_SUFFIXES:
        content = content_id(path)
    if content is not None:
        names.append(content)
    return names


def _root(name: str, lineage: Mapping[str, str]) -> str:
    seen = {name}
    while name in lineage:
        name = lineage[name]
        if name in seen:
            break
        seen.add(name)
    return name


def record_lineage(source_sha256_or_dataset: str | os.PathLike[str], derived_sha256: str | os.PathLike[str],
                   keys: str | os.PathLike[str] | None, derived_content: str | None = None) -> str:
    """Record that a file was derived from customer rows of `source`, so it charges the source's budget.

    `source`: the source's dataset id (best: `dataset_of(policy, source_path, keys)`), a hash, or the
    source file's Path. `derived`: the derived file's SHA-256, or its Path (then both its byte hash
    and its table content hash are recorded, so a re-encoded copy of the derived file follows too).
    The first record for a derived hash wins: lineage cannot be re-pointed to a fresh budget.
    `derived_content`: the derived file's content hash when the caller has it (`frame_id` of the
    table as `read_table` reads the file back), so the file is not read and hashed again.
    Returns the root dataset the derived file now charges.
    """
    if isinstance(source_sha256_or_dataset, os.PathLike):
        source = dataset_of(None, source_sha256_or_dataset, keys)
    else:
        source = _check_dataset(str(source_sha256_or_dataset).strip())
    if isinstance(derived_sha256, os.PathLike):
        derived = _file_names(Path(derived_sha256), derived_content)
    else:
        text = str(derived_sha256).strip().lower()
        if not _HEX64.match(text):
            raise InputError("derived file hash must be a 64-character hex SHA-256")
        derived = [text]
    store = _Store.open(keys, create=True)
    assert store is not None
    with store.transaction() as txn:
        lineage = txn.state.lineage
        root = _root(source, lineage)
        for name in derived:
            if name in lineage or name == root:
                continue
            txn.append("lineage", dataset=source, derived=name, params={})
            lineage[name] = source
    return root


# --- charging ----------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> str:
    text = str(dataset)
    if _HEX64.match(text.lower()):
        return text.lower()
    if not _DATASET_RE.match(text):
        raise InputError("dataset id must be 1-128 characters: letters, digits and _ . : - (starting with a letter or digit)")
    return text


def _number(name: str, value: float, allow_zero: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number") from None
    if not (math.isfinite(v) and (v >= 0.0 if allow_zero else v > 0.0)):
        raise InputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number")
    return v


def _check_cap(cap: Cap) -> Cap:
    return Cap(_number("budget epsilon cap", cap.epsilon, False), _number("budget delta cap", cap.delta, True))


def spent(dataset: str, keys: str | os.PathLike[str] | None) -> Spent:
    """Epsilon and delta charged so far to `dataset` in the organisation's store (verified)."""
    dataset = _check_dataset(dataset)
    store = _Store.open(keys, create=False)
    if store is None:
        return Spent(0.0, 0.0, 0)
    return store.read().spent(dataset)


def check(dataset: str, epsilon: float, delta: float, cap: Cap, *, keys: str | os.PathLike[str] | None,
          ledger: Ledger | None = None, params: Mapping[str, Any] | None = None) -> Spent:
    """Refuse (BudgetExceeded, recorded like a refused charge) when (epsilon, delta) would not fit;
    spend nothing. For refusing before compute; the spending itself is `charge`."""
    return _charge(dataset, epsilon, delta, cap, keys=keys, ledger=ledger, params=params, spend=False)[0]


def charge(dataset: str, epsilon: float, delta: float, cap: Cap, *, keys: str | os.PathLike[str] | None,
           ledger: Ledger | None = None, params: Mapping[str, Any] | None = None) -> ChargeRecord:
    """Charge (epsilon, delta) to the dataset's budget, or refuse with BudgetExceeded past the cap.

    THE one function every DP path calls. Check and charge are one transaction on the
    organisation's store; the refusal is recorded (store event and, when given, a failed ledger
    entry); an accepted charge also appends a signed `budget.charge` entry to `ledger`.
    """
    record = _charge(dataset, epsilon, delta, cap, keys=keys, ledger=ledger, params=params, spend=True)[1]
    assert record is not None
    return record


def _charge(dataset: str, epsilon: float, delta: float, cap: Cap, *, keys: str | os.PathLike[str] | None,
            ledger: Ledger | None, params: Mapping[str, Any] | None, spend: bool) -> tuple[Spent, ChargeRecord | None]:
    dataset = _check_dataset(dataset)
    epsilon = _number("epsilon", epsilon, False)
    delta = _number("delta", delta, True)
    cap = _check_cap(Cap(getattr(cap, "epsilon", float("nan")), getattr(cap, "delta", float("nan"))))
    extra = dict(params or {})
    store = _Store.open(keys, create=True)
    assert store is not None
    refused: BudgetExceeded | None = None
    with store.transaction() as txn:
        before = txn.state.spent(dataset)
        over = (before.epsilon + epsilon > cap.epsilon + _TOLERANCE) or (before.delta + delta > cap.delta + _TOLERANCE)
        if over:
            refused = BudgetExceeded(dataset, cap, before, epsilon, delta)
            seq = txn.append("refusal", dataset=dataset, epsilon=epsilon, delta=delta, cap=cap, outcome="failed",
                             reason=str(refused), params=extra)
        elif spend:
            seq = txn.append("charge", dataset=dataset, epsilon=epsilon, delta=delta, cap=cap, params=extra)
    entry_params = {**extra, "dataset": dataset, "composition": COMPOSITION, "cap": cap.as_dict(),
                    "budget_store": store.location}
    if refused is not None:
        if ledger is not None:
            ledger.record_failure(ACTION, params={**entry_params, "store_seq": seq,
                                                  "asked": {"epsilon": epsilon, "delta": delta},
                                                  "spent_before": before.as_dict()},
                                  exc=refused)
        raise refused
    if not spend:
        return before, None
    after = Spent(before.epsilon + epsilon, before.delta + delta, before.charges + 1)
    ledger_seq = None
    if ledger is not None:
        cost = {"epsilon": epsilon, "delta": delta,
                **{k: extra[k] for k in _COST_FIELDS if k in extra and extra[k] is not None},
                "spent_before": before.as_dict(), "spent_after": after.as_dict()}
        entry = ledger.append(ACTION, params={**entry_params, "store_seq": seq}, privacy_cost=cost)
        ledger_seq = entry["seq"]
    return before, ChargeRecord(dataset, epsilon, delta, cap, before, after, store.location, seq, extra, ledger_seq)


# --- the store ---------------------------------------------------------------------------------


@dataclass
class DatasetSummary:
    """What `privmodel budget show` prints for one dataset."""

    dataset: str
    spent: Spent
    cap: Cap | None
    refusals: int


@dataclass
class StoreState:
    """A verified read of the whole store."""

    location: str
    store_id: str
    key_id: str
    events: list[dict[str, Any]]
    lineage: dict[str, str]

    def spent(self, dataset: str) -> Spent:
        eps = delta = 0.0
        count = 0
        for event in self.events:
            if event["kind"] == "charge" and event["dataset"] == dataset:
                eps += event["epsilon"]
                delta += event["delta"]
                count += 1
        return Spent(eps, delta, count)

    def datasets(self) -> list[DatasetSummary]:
        out: dict[str, DatasetSummary] = {}
        for event in self.events:
            if event["kind"] not in ("charge", "refusal"):
                continue
            item = out.setdefault(event["dataset"], DatasetSummary(event["dataset"], Spent(0.0, 0.0, 0), None, 0))
            if event["kind"] == "charge":
                item.spent = Spent(item.spent.epsilon + event["epsilon"], item.spent.delta + event["delta"],
                                   item.spent.charges + 1)
            else:
                item.refusals += 1
            if event["cap_epsilon"] is not None:
                item.cap = Cap(event["cap_epsilon"], event["cap_delta"])
        return list(out.values())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _hash(body: Mapping[str, Any], store_id: str) -> str:
    return hashlib.sha256(b"privmodel-budget-v1\0" + canonical_json({"store_id": store_id, **body})).hexdigest()


def _genesis(store_id: str) -> str:
    return hashlib.sha256(b"privmodel-budget-genesis\0" + store_id.encode()).hexdigest()


def _sign(signer: Signer, data: bytes) -> str:
    return base64.b64encode(signer.sign(data)).decode("ascii")


def _valid(key: Ed25519PublicKey, signature: str, data: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _meta_body(row: Mapping[str, Any]) -> bytes:
    return canonical_json({k: row[k] for k in ("store_id", "format", "created", "key_id")})


_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> sa.Engine:
    """One engine per URL (NullPool: no connection outlives a transaction, safe across fork)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            try:
                if url.startswith("sqlite"):
                    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 120})

                    @sa.event.listens_for(engine, "connect")
                    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
                        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves

                    @sa.event.listens_for(engine, "begin")
                    def _begin_immediate(connection: sa.Connection) -> None:
                        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, before any read
                elif url.startswith("postgresql"):  # an unreachable server fails in seconds, not never
                    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 15})
                else:
                    engine = sa.create_engine(url, poolclass=NullPool)
            except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
                raise InputError(f"${URL_ENV}: not a usable database URL ({type(exc).__name__})") from None
            _ENGINES[url] = engine
        return engine


class _Store:
    """The organisation's budget store: where it lives, whose key signs it, where its head is kept."""

    def __init__(self, keys_dir: Path, url: str, location: str, sqlite_file: Path | None) -> None:
        self.keys_dir = keys_dir
        self.url = url
        self.location = location
        self.sqlite_file = sqlite_file
        self.head_path = keys_dir / HEAD_FILE
        self.public_key = load_public_key(keys_dir)
        self.key_id = key_id_of(self.public_key)
        self._signer: Signer | None = None

    @classmethod
    def open(cls, keys: str | os.PathLike[str] | None, create: bool) -> _Store | None:
        """The store of the organisation whose keys are `keys`; None when it does not exist yet and
        `create` is false. A missing store whose signed head exists is refused."""
        keys_dir = ensure_keys(Path(keys) if keys is not None else None)
        env = os.environ.get(URL_ENV, "").strip()
        if env:
            try:
                parsed = sa.engine.make_url(env)
            except sa.exc.ArgumentError:
                raise InputError(f"${URL_ENV}: not a database URL") from None
            store = cls(keys_dir, env, parsed.render_as_string(hide_password=True), None)
        else:
            file = keys_dir / STORE_FILE
            store = cls(keys_dir, f"sqlite:///{file.resolve()}", DEFAULT_LOCATION, file)
        if not store._exists():
            head = store._head()
            if head is not None:
                raise InputError(
                    f"budget store missing or rolled back: {store.location} does not exist but the signed head "
                    f"{store.head_path} records {head['seq']} event(s); refusing to start a fresh budget"
                )
            if not create:
                return None
            store._create()
        return store

    # -- keys and head --

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            signer = load_signer(self.keys_dir)
            if signer.key_id != self.key_id:
                raise InputError(f"{self.keys_dir}: signing key does not match the public key beside it")
            self._signer = signer
        return self._signer

    def _head_lock(self) -> contextlib.AbstractContextManager[None]:
        from privmodel.core.fileio import file_lock

        return file_lock(self.keys_dir / (HEAD_FILE + ".lock"))

    def _head_file(self) -> dict[str, Any]:
        """All heads in budget.head, verified against the organisation's key ({} when absent)."""
        if not self.head_path.is_file():
            return {}
        try:
            doc = json.loads(self.head_path.read_text())
            body = {"format": doc["format"], "key_id": doc["key_id"], "stores": doc["stores"]}
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{self.head_path}: budget head is corrupt; the budget cannot be trusted") from None
        if body["key_id"] != self.key_id or not _valid(self.public_key, doc.get("signature", ""), canonical_json(body)):
            raise InputError(f"{self.head_path}: budget head is not signed by the organisation's key {self.key_id}")
        return dict(body["stores"])

    def _head(self) -> dict[str, Any] | None:
        return self._head_file().get(self.location)

    def _write_head(self, store_id: str, seq: int, last_hash: str) -> None:
        """Advance this store's head (never move it back: another process may have gone further)."""
        with self._head_lock():
            heads = self._head_file()
            current = heads.get(self.location)
            if current is not None and current.get("store_id") == store_id and int(current["seq"]) >= seq:
                return
            heads[self.location] = {"store_id": store_id, "seq": seq, "hash": last_hash}
            body = {"format": FORMAT, "key_id": self.key_id, "stores": heads}
            doc = {**body, "signature": _sign(self.signer, canonical_json(body))}
            atomic_write_text(self.head_path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    # -- database --

    def _exists(self) -> bool:
        if self.sqlite_file is not None and not self.sqlite_file.is_file():
            return False
        try:
            with _engine(self.url).connect() as conn:
                return sa.inspect(conn).has_table(META.name)
        except sa.exc.SQLAlchemyError as exc:
            raise InputError(f"budget store {self.location}: cannot connect ({type(exc).__name__})") from None

    def _create(self) -> None:
        if self.sqlite_file is not None and not self.sqlite_file.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.sqlite_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        engine = _engine(self.url)
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7303371950)"))  # one creator at a time
                _meta.create_all(conn, checkfirst=True)
                if conn.execute(sa.select(META.c.id)).first() is None:
                    store_id = uuid.uuid4().hex
                    row = {"id": 1, "store_id": store_id, "format": FORMAT, "created": _now(),
                           "key_id": self.key_id}
                    row["signature"] = _sign(self.signer, _meta_body(row))
                    conn.execute(META.insert().values(**row))
                    created = store_id
                else:
                    created = None
        except sa.exc.SQLAlchemyError as exc:
            raise InputError(f"budget store {self.location}: cannot create ({type(exc).__name__})") from None
        if created is not None:
            self._write_head(created, 0, _genesis(created))

    def _load(self, conn: sa.Connection, lock: bool) -> StoreState:
        query = sa.select(META)
        if lock:
            query = query.with_for_update()
        meta = conn.execute(query).mappings().first()
        if meta is None:
            raise InputError(f"budget store {self.location}: no store record (emptied); the budget cannot be trusted")
        events = [dict(r) for r in conn.execute(sa.select(EVENTS).order_by(EVENTS.c.seq)).mappings()]
        return self._verify(dict(meta), events)

    def _verify(self, meta: dict[str, Any], events: list[dict[str, Any]]) -> StoreState:
        where = f"budget store {self.location}"
        if meta["key_id"] != self.key_id or not _valid(self.public_key, meta["signature"], _meta_body(meta)):
            raise InputError(f"{where}: store record is not signed by the organisation's key {self.key_id}")
        store_id = meta["store_id"]
        prev = _genesis(store_id)
        lineage: dict[str, str] = {}
        for expected, event in enumerate(events, start=1):
            seq = event["seq"]
            if seq != expected:
                raise InputError(f"{where}: event {expected} is missing (deleted); the budget cannot be trusted")
            body = {k: event[k] for k in _HASHED}
            try:
                body["params"] = json.loads(event["params"])
            except ValueError:
                raise InputError(f"{where}: event {seq} is corrupt") from None
            if event["prev_hash"] != prev:
                raise InputError(f"{where}: event {seq} does not follow event {seq - 1} (chain broken)")
            if _hash(body, store_id) != event["hash"]:
                raise InputError(f"{where}: event {seq} was edited (content does not match its hash)")
            if event["key_id"] != self.key_id or not _valid(self.public_key, event["signature"], event["hash"].encode()):
                raise InputError(f"{where}: event {seq} is not signed by the organisation's key {self.key_id}")
            if event["kind"] == "lineage" and event["derived"] and event["derived"] not in lineage:
                lineage[event["derived"]] = event["dataset"]
            prev = event["hash"]
        head = self._head()
        if head is not None:
            count = len(events)
            seq = int(head.get("seq", -1))
            if head.get("store_id") != store_id:
                raise InputError(f"budget store missing or rolled back: {self.location} is not the store the signed "
                                 f"head {self.head_path} records (another store put in its place)")
            if seq > count or (events[seq - 1]["hash"] if seq > 0 else _genesis(store_id)) != head.get("hash"):
                raise InputError(f"budget store missing or rolled back: {self.location} has {count} event(s) but the "
                                 f"signed head {self.head_path} records {seq}")
        return StoreState(self.location, store_id, self.key_id, events, lineage)

    def read(self) -> StoreState:
        """The whole store, verified (chain, signatures, head)."""
        try:
            with _engine(self.url).begin() as conn:
                state = self._load(conn, lock=False)
        except sa.exc.SQLAlchemyError as exc:
            raise InputError(f"budget store {self.location}: cannot read ({type(exc).__name__})") from None
        with contextlib.suppress(InputError):  # a read may run where the key is encrypted or the dir read-only
            self._witness(state)
        return state

    def _witness(self, state: StoreState) -> None:
        """Advance the signed head to what was just verified (other laptops' charges included)."""
        last = state.events[-1]["hash"] if state.events else _genesis(state.store_id)
        self._write_head(state.store_id, len(state.events), last)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """Exclusive: SQLite BEGIN IMMEDIATE / PostgreSQL FOR UPDATE on the meta row; verified state."""
        try:
            with _engine(self.url).begin() as conn:
                txn = _Transaction(self, conn, self._load(conn, lock=True))
                yield txn
        except sa.exc.SQLAlchemyError as exc:
            raise InputError(f"budget store {self.location}: transaction failed ({type(exc).__name__})") from None
        self._witness(txn.state)


class _Transaction:
    def __init__(self, store: _Store, conn: sa.Connection, state: StoreState) -> None:
        self.store = store
        self.conn = conn
        self.state = state

    def append(self, kind: str, *, dataset: str, params: Mapping[str, Any], derived: str | None = None,
               epsilon: float = 0.0, delta: float = 0.0, cap: Cap | None = None, outcome: str = "ok",
               reason: str | None = None) -> int:
        """Sign and insert the next event of the chain; returns its seq."""
        signer = self.store.signer
        events = self.state.events
        refuse_key_material(params, record="budget charge")
        try:
            plain = json.loads(canonical_json(dict(params)))
        except (TypeError, ValueError):
            raise InputError("budget charge params must be plain JSON values") from None
        body: dict[str, Any] = {
            "seq": len(events) + 1, "time": _now(), "kind": kind, "dataset": dataset, "derived": derived,
            "epsilon": float(epsilon), "delta": float(delta),
            "cap_epsilon": cap.epsilon if cap else None, "cap_delta": cap.delta if cap else None,
            "outcome": outcome, "reason": reason, "params": plain,
            "actor": signer.actor, "key_id": signer.key_id,
            "prev_hash": events[-1]["hash"] if events else _genesis(self.state.store_id),
        }
        digest = _hash(body, self.state.store_id)
        row = {**body, "params": canonical_json(body["params"]).decode("utf-8"), "hash": digest,
               "signature": _sign(signer, digest.encode())}
        self.conn.execute(EVENTS.insert().values(**row))
        events.append(row)
        return body["seq"]


def read_store(keys: str | os.PathLike[str] | None) -> StoreState | None:
    """The verified store of the organisation (None when it has none yet): for `budget show`."""
    store = _Store.open(keys, create=False)
    return store.read() if store is not None else None
