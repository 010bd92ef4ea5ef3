"""Steps 1-4 of a release on one batch of rows, and how the batches' results add up to the table's.

Every engine that splits the rows calls these (the streamed single-machine path,
`anonymize.engines.stream`, and Ray, `anonymize.engines.ray_engine`), and these call the functions of
the in-memory path (`validate`, `quality`, `consent_and_purpose`, the pseudonymize step), so each rule
stays in one place. What needs the whole table is found from small per-row columns the batches add:

- `ROW`: the input's 1-based row number (the in-memory path's index);
- `__id_<column>`: a 64-bit hash of each identifier value as it is tokenized (duplicate identifiers,
  token collisions and distinct values across batches; equal hashes count as equal values, a 64-bit
  coincidence among 20M values has odds of about 1 in 100,000);
- exact duplicates: an exact duplicate row repeats every value of an earlier row, so only rows whose
  first two identifiers' hashes both repeat can be one (as in `quality._exact_duplicates`); those
  rows are compared in full, in row order, so the rows removed are the in-memory path's. A policy
  without identifiers hashes whole rows instead (`HASH`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.pipeline import _pseudonymize_step
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import Keys, _canonical, colliding_tokens
from anonymize.quality import _all_strings, consent_and_purpose, consent_rule, quality, validate

if TYPE_CHECKING:
    import pyarrow as pa

ROW = "__row"  # 1-based row number of the input (the in-memory path's index)
HASH = "__hash"  # hash of the whole validated row (exact duplicates)
ID = "__id_"  # prefix of the identifier hash columns

_ROW_IN_MESSAGE = re.compile(r"(\brow )(\d+)")


def aux_columns(columns: pd.Index) -> list[str]:
    """The columns the batches add (row numbers, hashes), which no step of the release sees."""
    return [c for c in columns if str(c).startswith("__")]


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's multipliers


def text_hash(array: pa.Array) -> np.ndarray:
    """64-bit hash of each string of an Arrow string array (nulls hash as the empty string), from its
    UTF-8 bytes eight at a time by numpy: no Python string per value (pandas' `hash_array` makes one)."""
    import pyarrow as pa

    array = array.cast(pa.large_string())
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    base, end = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(end - base + 8, dtype=np.uint8)  # 8 zero bytes after the last value
    if end > base:
        padded[: end - base] = np.frombuffer(array.buffers()[2], dtype=np.uint8)[base:end]
    words = np.ndarray(shape=(end - base + 1,), dtype="<u8", buffer=padded, strides=(1,))  # the 8 bytes at each offset
    starts, lengths = offsets[:-1] - base, np.diff(offsets)
    h = (lengths.astype(np.uint64) + np.uint64(1)) * _M2
    todo = np.arange(n)
    step = 0
    while todo.size:
        left = lengths[todo] - 8 * step
        word = words[starts[todo] + 8 * step]
        short = left < 8  # the value's last bytes: the word's bytes past its end are masked off
        word[short] &= (np.uint64(1) << (left[short] * 8).astype(np.uint64)) - np.uint64(1)
        x = h[todo] ^ word
        x *= _M1
        x ^= x >> np.uint64(29)
        x *= _M2
        x ^= x >> np.uint64(32)
        h[todo] = x
        todo = todo[left > 8]
        step += 1
    return h


def id_hash(series: pd.Series) -> pd.Series:
    """64-bit hash of each identifier value as it is tokenized (12 and 12.0 are one value); missing stays missing."""
    import pyarrow as pa

    present = series.notna().to_numpy()
    out = pd.Series(pd.NA, index=series.index, dtype="Int64")
    if present.any():
        kept = series[present]
        if _all_strings(series):  # text is its own canonical form
            text = pa.array(kept.array if kept.dtype != object else kept.to_numpy(dtype=object), from_pandas=True)
        else:  # other values one by one
            text = pa.array([_canonical(v) for v in kept.to_numpy(dtype=object)], type=pa.large_string())
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        out[present] = text_hash(text).view(np.int64)
    return out


def input_rows(exc: InputError, rows: np.ndarray) -> InputError:
    """The batch's bad-input line with the batch's own row numbers replaced by the input's."""
    message = _ROW_IN_MESSAGE.sub(lambda m: f"{m.group(1)}{rows[int(m.group(2)) - 1]}", str(exc))
    return InputError(message)


def validate_batch(batch: pd.DataFrame, rows: np.ndarray, policy: Policy, source: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Step 1 on one batch (`rows`: the input's row numbers of its rows); adds the input row numbers,
    the whole-row hash and the identifier hashes. A column missing throughout the batch is not refused
    here: whether it has no value at all is the whole table's question (`column_values`)."""
    try:
        result = validate(batch, policy, source, whole_table=False)
    except InputError as exc:
        raise input_rows(exc, rows) from None
    data = result.data
    out = data.reset_index(drop=True)
    if not any(name in data.columns for name in policy.identifiers):  # no identifier to find duplicates by
        out[HASH] = pd.util.hash_pandas_object(data, index=False).to_numpy().view(np.int64)
    for name in policy.identifiers:
        if name in data.columns:
            out[f"{ID}{name}"] = id_hash(data[name]).to_numpy()
    out[ROW] = rows[data.index.to_numpy() - 1]
    return out, result.info


def column_values(batch: pd.DataFrame, policy: Policy) -> set[str]:
    """The policy's columns that hold at least one value in `batch` (raw, before validation)."""
    return {name for name, col in policy.columns.items()
            if col.role != "drop" and name in batch.columns and bool(batch[name].notna().any())}


def check_column_values(present: set[str], policy: Policy, source: str) -> None:
    """The whole table's check `validate` makes on one table: a policy column with no value at all."""
    for name, col in policy.columns.items():
        if col.role != "drop" and name not in present:
            raise InputError(f"{source}: column {name!r} has no values (every row is missing)")


def duplicate_candidates(small: pd.DataFrame, policy: Policy) -> np.ndarray:
    """Row numbers of the rows that can be exact duplicates (module docstring): their first two identifiers'
    hashes (else their whole-row hash) each repeat."""
    probes = [f"{ID}{n}" for n in policy.identifiers if f"{ID}{n}" in small.columns][:2] or [HASH]
    candidates = np.ones(len(small), dtype=bool)
    for name in probes:
        candidates &= small[name].duplicated(keep=False).to_numpy()
    return small.loc[candidates, ROW].to_numpy(dtype=np.int64)


def duplicate_rows(candidates: pd.DataFrame) -> np.ndarray:
    """Row numbers of exact duplicates (each after the first of its kind) among the validated
    `candidates` (`duplicate_candidates`' rows), compared in full in row order, as `quality` does."""
    if not len(candidates):
        return np.zeros(0, dtype=np.int64)
    candidates = candidates.sort_values(ROW, kind="stable")
    values = candidates.drop(columns=aux_columns(candidates.columns))
    return np.asarray(candidates.loc[values.duplicated(keep="first").to_numpy(), ROW], dtype=np.int64)


def duplicate_identifiers(small: pd.DataFrame, duplicates: np.ndarray, policy: Policy) -> dict[str, int]:
    """Per identifier: present values that repeat an earlier one, exact duplicates left out."""
    unique_rows = small[~small[ROW].isin(duplicates)] if len(duplicates) else small
    return {n: int((unique_rows[f"{ID}{n}"].notna() & unique_rows[f"{ID}{n}"].duplicated()).sum())
            for n in policy.identifiers if f"{ID}{n}" in unique_rows.columns}


def release_rows(batch: pd.DataFrame, policy: Policy, keys: Keys, duplicates: np.ndarray,
                 undeclared: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Steps 2-4 on one validated batch (`validate_batch`'s output): exact duplicates (found across
    batches) out, quality counts, consent and purpose, pseudonymization. The rows that go on, with their
    `ROW` and, per token column, the identifier hashes; and the batch's step records and escrow rows."""
    rows = batch[ROW].to_numpy(dtype=np.int64)
    keep = ~np.isin(rows, duplicates)
    ids = {c: batch.loc[keep, c].to_numpy() for c in batch.columns if str(c).startswith(ID)}
    data = batch.loc[keep].drop(columns=aux_columns(batch.columns))
    data.index = pd.Index(rows[keep])
    checked = quality(data, policy)
    consent = policy.purpose.consent
    kept_any = len(data) > 0 and (consent is None or consent_rule(data[consent])[0].any())
    if kept_any:
        purpose = consent_and_purpose(checked.data, policy, undeclared)
        pseudo, pseudo_record = _pseudonymize_step(purpose.data, policy, keys)
        purpose_info, escrow = purpose.info, pseudo.escrow
    else:  # no row of this batch goes on: the step records of an empty batch, from one probe row
        probe = batch.drop(columns=aux_columns(batch.columns)).iloc[:1]
        if consent is not None:
            probe = probe.assign(**{consent: pd.array([True], dtype="boolean")})
        purpose = consent_and_purpose(probe, policy, undeclared)
        pseudo, pseudo_record = _pseudonymize_step(purpose.data.iloc[:0], policy, keys)
        removed = consent_rule(data[consent])[1] if consent is not None else {}
        purpose_info = {**purpose.info, "rows_in": len(data), "rows_out": 0, "removed": removed}
        escrow = None
    out = pseudo.data
    positions = pd.Index(rows[keep]).get_indexer(out.index)
    for name in policy.identifiers:
        if f"{ID}{name}" in ids and name in out.columns:
            out[f"{ID}{name}"] = ids[f"{ID}{name}"][positions]
    out = out.reset_index(drop=True)
    out[ROW] = rows[keep][positions]
    record = {"quality": checked.info, "purpose": purpose_info, "pseudonymize": pseudo_record,
              "escrow": escrow.to_dict(orient="list") if escrow is not None else None}
    return out, record


# --- the batches' records summed into the in-memory path's ------------------------------------------


def sum_counts(dicts: list[dict[str, int]], order: list[str] | None = None) -> dict[str, int]:
    """Counts summed over batches; keys in `order` first (the in-memory path's key order)."""
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in (d or {}).items():
            total[key] = total.get(key, 0) + int(n)
    rank = {key: i for i, key in enumerate(order or [])}
    return dict(sorted(total.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def merge_steps(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One step record from its batches': rows and removals summed, the rest as the first batch says."""
    merged = dict(records[0])
    merged["rows_in"] = sum(int(r["rows_in"]) for r in records)
    merged["rows_out"] = sum(int(r["rows_out"]) for r in records)
    merged["removed"] = sum_counts([r.get("removed") or {} for r in records], list(merged.get("removed") or {}))
    return merged


def merge_validate(infos: list[dict[str, Any]], rows_in: int, policy: Policy) -> dict[str, Any]:
    merged = merge_steps(infos)
    merged["rows_in"] = rows_in
    merged["removed"] = sum_counts([i["removed"] for i in infos], [f"invalid:{n}" for n in policy.columns])
    coerced: dict[str, str] = {}
    for info in infos:
        coerced.update(info.get("coerced_columns") or {})
    merged["coerced_columns"] = {n: coerced[n] for n in policy.columns if n in coerced}
    return {"step": "validate", **merged}


def merge_quality(records: list[dict[str, Any]], policy: Policy, rows_in: int, duplicates: int,
                  duplicate_ids: dict[str, int]) -> dict[str, Any]:
    infos = [r["quality"] for r in records]
    merged = merge_steps(infos)
    merged["rows_in"] = rows_in
    merged["removed"] = {"exact_duplicates": duplicates} if duplicates else {}
    merged["exact_duplicates"] = duplicates
    merged["duplicate_identifiers"] = duplicate_ids
    merged["missing_values"] = sum_counts([i["missing_values"] for i in infos], list(policy.columns))
    merged["rows_with_missing_values"] = sum(int(i["rows_with_missing_values"]) for i in infos)
    return {"step": "quality", **merged}


def merge_pseudonymize(records: list[dict[str, Any]], data: pd.DataFrame,
                       policy: Policy) -> tuple[dict[str, Any], dict[str, frozenset[str]], pd.DataFrame | None]:
    """The pseudonymize record over all batches: counts summed, distinct tokens, collisions and escrow
    over the whole table (a token column's collisions from the identifier hashes beside it in `data`)."""
    merged = merge_steps([r["pseudonymize"] for r in records])
    columns: dict[str, Any] = {}
    colliding: dict[str, frozenset[str]] = {}
    for name, first in merged["columns"].items():
        info = dict(first)
        for key in ("values", "missing"):
            info[key] = sum(int(r["pseudonymize"]["columns"][name][key]) for r in records)
        if "collisions" in info:
            colliding[name] = colliding_tokens(data[f"{ID}{name}"], data[name])
            info["collisions"] = len(colliding[name])
        if "distinct" in info:
            # deterministic encryption maps distinct values to distinct ciphertexts: their count is the
            # identifier hashes' (the ciphertexts of a streamed table are never all in memory)
            counted = data[f"{ID}{name}"] if info.get("method") == "encrypt" and f"{ID}{name}" in data else data[name]
            info["distinct"] = int(counted.nunique(dropna=True))
        columns[name] = info
    merged["columns"] = columns
    parts = [pd.DataFrame(r["escrow"], dtype=object) for r in records if r["escrow"] is not None]
    escrow = None
    if parts:  # per column in the policy's order, each token once (its first row's), as `pseudonymize` keeps it
        rows = pd.concat(parts, ignore_index=True)
        escrow = pd.concat([rows[rows["column"] == n].drop_duplicates(subset="token") for n in policy.identifiers],
                           ignore_index=True)
    return {"step": "pseudonymize", **merged}, colliding, escrow
