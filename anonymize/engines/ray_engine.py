"""`privmodel anonymize --engine ray`: the release pipeline with its work over rows on Ray Data.

The same functions as the single-machine engine, run per block (`map_batches`), so one rule stays in
one place: `validate`, `quality`, `consent_and_purpose` (the consent rule) and the pseudonymize step
of `anonymize.pipeline`; the same keys give the same tokens and ciphertexts on every worker. What
needs the whole table is done across blocks:

- exact duplicates: a 64-bit hash of each validated row; rows whose hash repeats are compared in
  full, in row order, so the rows removed are the single-machine ones;
- duplicate identifiers, token collisions and distinct tokens: from per-row hashes / tokens;
- generalization: `anonymize.engines.ray_generalize` (class counting and lattice roll-ups from a
  distributed group-by; Mondrian top cuts from per-block histograms, partitions finished in parallel).

Each block reports its step records to a small actor (keyed by the block's first row, so a retried
task does not count twice); they are summed into the single-machine records. Then
`anonymize.pipeline.run` does the rest with these results (measures, the release gate on the final
table, the report), so policy, report, gate and ledger entry are those of the local engine.

Local mode by default: `ray.init(num_cpus=2)` with its temp dir under /tmp, shut down afterwards; a
cluster with `address` (`ray start --head` / KubeRay / Ray on Spark). Ray ships the pseudonymization
secret to the workers inside task arguments: on a cluster, Ray's TLS (RAY_USE_TLS) must protect it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.pipeline import Minimised, Release, _pseudonymize_step, _removed, run
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import Keys, _canonical, as_keys, colliding_tokens
from anonymize.quality import _all_strings, _check_shape, consent_and_purpose, consent_rule, quality, validate

ROW = "__row"  # 1-based row number of the input (the local engine's index)
HASH = "__hash"  # hash of the whole validated row (exact duplicates)
LOCAL_CPUS = 2


def _reachable(address: str) -> None:
    """A HOST:PORT head must accept a connection within 5 s (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray's own checks
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        raise InputError(f"--ray-address {address}: no Ray head answers there") from None


def _cpus(default: int) -> int:
    """CPUs of the Ray cluster this process is connected to."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", default)))  # type: ignore[no-untyped-call]


@contextmanager
def ray_session(address: str | None = None, num_cpus: int = LOCAL_CPUS) -> Iterator[int]:
    """Ray for one release: a local instance (temp dir under /tmp) or the cluster at `address`.

    Yields the cluster's CPU count; shuts down the Ray it started (and removes a local temp dir). A Ray
    already initialized in this process is used as it is and left running."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray
    import ray.data

    if ray.is_initialized() and not address:  # the caller's Ray (a test's, a notebook's): theirs to shut down
        yield _cpus(num_cpus)
        return
    if address:
        _reachable(address)
    temp_dir = None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            temp_dir = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
            ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
                     configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise InputError(f"--engine ray: cannot start or reach Ray{f' at {address}' if address else ''} "
                         f"({type(exc).__name__})") from None
    try:
        for name in ("ray", "ray.data"):  # Ray Data logs each dataset it runs, and sizing advice, on stderr
            logging.getLogger(name).setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        yield _cpus(num_cpus)
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def run_on_ray(
    df: pd.DataFrame,
    policy: Policy,
    keys: Keys | bytes,
    *,
    address: str | None = None,
    population: pd.DataFrame | None = None,
    partner: str | None = None,
    source: str = "input",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    partition_rows: int | None = None,
) -> Release:
    """`anonymize.pipeline.run` with steps 1-5 on Ray (see the module docstring); the same Release."""
    from anonymize.engines.ray_generalize import RayGeneralizer

    with ray_session(address) as cpus:
        blocks = max(2, 2 * cpus)
        minimised = minimise_on_ray(df, policy, keys, source=source, partner=partner, progress=progress,
                                    blocks=blocks)
        return run(df, policy, keys, population=population, partner=partner, source=source, seed=seed,
                   progress=progress, minimised=minimised,
                   generalizer=RayGeneralizer(blocks=blocks, partition_rows=partition_rows))


# --- steps 1-4 in blocks ----------------------------------------------------------------------------


def _stats_actor() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class BlockRecords:
        """Step records of each block, by the block's first input row (a retried task overwrites)."""

        def __init__(self) -> None:
            self.records: dict[int, dict[str, Any]] = {}
            self.failures: dict[int, str] = {}  # a block's InputError (Ray passes the driver only its text)

        def add(self, first_row: int, record: dict[str, Any]) -> None:
            self.records[first_row] = record

        def all(self) -> list[dict[str, Any]]:
            return [self.records[r] for r in sorted(self.records)]

        def fail(self, first_row: int, message: str) -> None:
            self.failures[first_row] = message

        def first_failure(self) -> str | None:
            return self.failures[min(self.failures)] if self.failures else None

    return BlockRecords.remote()  # type: ignore[attr-defined]


def _report(sink: Any, first_row: int, record: dict[str, Any]) -> None:
    import ray

    ray.get(sink.add.remote(first_row, json.loads(json.dumps(record, default=str))))


def _id_hash(series: pd.Series) -> pd.Series:
    """64-bit hash of each identifier value as it is tokenized (12 and 12.0 are one value); missing stays missing."""
    present = series.notna().to_numpy()
    out = pd.Series(pd.NA, index=series.index, dtype="Int64")
    if present.any():
        values = series[present].to_numpy(dtype=object)
        if not _all_strings(series):  # text is its own canonical form; other values go one by one
            values = np.array([_canonical(v) for v in values], dtype=object)
        out[present] = pd.util.hash_array(values).view(np.int64)
    return out


def _input_error(sink: Any, first_row: int, exc: InputError, rows: np.ndarray | None = None) -> InputError:
    """Hand a block's bad-input line to the driver (Ray keeps only the traceback text of a task's
    exception); `rows` maps the block's own row numbers in the message to the input's."""
    import ray

    message = str(exc)
    if rows is not None:
        message = _ROW_IN_MESSAGE.sub(lambda m: f"{m.group(1)}{rows[int(m.group(2)) - 1]}", message)
    ray.get(sink.fail.remote(first_row, message))
    return exc


_ROW_IN_MESSAGE = re.compile(r"(\brow )(\d+)")


def _validate_block(batch: pd.DataFrame, policy: Policy, source: str, sink: Any) -> pd.DataFrame:
    """Step 1 on one block; adds the input row numbers, a whole-row hash and identifier hashes."""
    rows = batch[ROW].to_numpy(dtype=np.int64)
    try:
        result = validate(batch.drop(columns=[ROW]), policy, source)
    except InputError as exc:
        raise _input_error(sink, int(rows[0]), exc, rows) from None
    data = result.data
    _report(sink, int(rows[0]), result.info)
    out = data.reset_index(drop=True)
    out[HASH] = pd.util.hash_pandas_object(data, index=False).to_numpy().view(np.int64)
    for name in policy.identifiers:
        if name in data.columns:
            out[f"__id_{name}"] = _id_hash(data[name]).to_numpy()
    out[ROW] = rows[data.index.to_numpy() - 1]
    return out


def _aux(columns: pd.Index) -> list[str]:
    return [c for c in columns if str(c).startswith("__")]


def _release_block(batch: pd.DataFrame, policy: Policy, keys: Keys, duplicates: np.ndarray,
                   undeclared: list[str], sink: Any) -> pd.DataFrame:
    """Steps 2-4 on one block: exact duplicates (found across blocks) out, quality counts, consent and
    purpose, pseudonymization. Adds the row numbers and, per token column, the identifier hashes."""
    rows = batch[ROW].to_numpy(dtype=np.int64)
    try:
        return _release_rows(batch, rows, policy, keys, duplicates, undeclared, sink)
    except InputError as exc:
        raise _input_error(sink, int(rows[0]), exc) from None


def _release_rows(batch: pd.DataFrame, rows: np.ndarray, policy: Policy, keys: Keys, duplicates: np.ndarray,
                  undeclared: list[str], sink: Any) -> pd.DataFrame:
    keep = ~np.isin(rows, duplicates)
    ids = {c: batch.loc[keep, c].to_numpy() for c in batch.columns if str(c).startswith("__id_")}
    data = batch.loc[keep].drop(columns=_aux(batch.columns))
    data.index = pd.Index(rows[keep])
    checked = quality(data, policy)
    consent = policy.purpose.consent
    kept_any = len(data) > 0 and (consent is None or consent_rule(data[consent])[0].any())
    if kept_any:
        purpose = consent_and_purpose(checked.data, policy, undeclared)
        pseudo, pseudo_record = _pseudonymize_step(purpose.data, policy, keys)
        purpose_info, escrow = purpose.info, pseudo.escrow
    else:  # no row of this block goes on: the step records of an empty block, from one probe row
        probe = batch.drop(columns=_aux(batch.columns)).iloc[:1]
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
        if f"__id_{name}" in ids and name in out.columns:
            out[f"__id_{name}"] = ids[f"__id_{name}"][positions]
    out = out.reset_index(drop=True)
    out[ROW] = rows[keep][positions]
    record = {"quality": checked.info, "purpose": purpose_info, "pseudonymize": pseudo_record,
              "escrow": escrow.to_dict(orient="list") if escrow is not None else None}
    _report(sink, int(rows[0]), record)
    return out


def _dataset(frame: pd.DataFrame, blocks: int) -> Any:
    import ray.data

    bounds = np.linspace(0, len(frame), max(1, min(blocks, len(frame))) + 1).astype(int)
    return ray.data.from_pandas([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def minimise_on_ray(
    df: pd.DataFrame,
    policy: Policy,
    keys: Keys | bytes,
    *,
    source: str = "input",
    partner: str | None = None,
    progress: Callable[[str], None] | None = None,
    blocks: int = 4,
) -> Minimised:
    """`anonymize.pipeline.minimise(..., fixed_recoding=False)` with its per-row work in Ray blocks:
    the same rows, tokens, step records and counts."""
    key_set = as_keys(keys, partner)
    say = progress or (lambda _step: None)
    _check_shape(df, policy, source)
    timings: dict[str, float] = {}
    frame = df.copy(deep=False)
    frame[ROW] = np.arange(1, len(df) + 1, dtype=np.int64)
    sink = _stats_actor()

    say("validate")
    started = time.perf_counter()
    import ray

    with _block_failures(sink):
        validated = _dataset(frame, blocks).map_batches(
            _validate_block, batch_format="pandas", batch_size=None, zero_copy_batch=True,
            fn_kwargs={"policy": policy, "source": source, "sink": sink}).materialize()

    block_infos = ray.get(sink.all.remote())
    steps = [_merge_validate(block_infos, len(df), policy)]
    timings["validate"] = time.perf_counter() - started

    say("quality")
    started = time.perf_counter()
    small = validated.select_columns([ROW, HASH, *[f"__id_{n}" for n in policy.identifiers]]).to_pandas()
    small = small.sort_values(ROW, kind="stable").reset_index(drop=True)
    duplicates = _exact_duplicates(validated, small)
    unique_rows = small[~small[ROW].isin(duplicates)]
    duplicate_ids = {n: int((unique_rows[f"__id_{n}"].notna() & unique_rows[f"__id_{n}"].duplicated()).sum())
                     for n in policy.identifiers}
    timings["quality"] = time.perf_counter() - started

    say("consent and purpose")
    started = time.perf_counter()
    sink = _stats_actor()
    with _block_failures(sink):
        released = validated.map_batches(
            _release_block, batch_format="pandas", batch_size=None,
            fn_kwargs={"policy": policy, "keys": key_set, "duplicates": duplicates,
                       "undeclared": steps[0]["undeclared_columns"], "sink": sink}).to_pandas()
    block_records = ray.get(sink.all.remote())
    data = released.sort_values(ROW, kind="stable")
    data.index = pd.Index(data.pop(ROW).to_numpy(), dtype=np.int64)
    steps.append(_merge_quality(block_records, policy, len(small), len(duplicates), duplicate_ids))
    steps.append({"step": "purpose", **_merge_steps([r["purpose"] for r in block_records])})
    timings["purpose"] = time.perf_counter() - started
    started = time.perf_counter()
    pseudo_record, colliding, escrow = _merge_pseudonymize(block_records, data, policy)
    steps.append(pseudo_record)
    data = data.drop(columns=_aux(data.columns))
    timings["pseudonymize"] = time.perf_counter() - started
    return Minimised(data=data, steps=steps, removed=_removed(steps), rows_in=int(len(df)),
                     pseudonymization=pseudo_record["columns"], escrow=escrow, partner=key_set.partner,
                     colliding=colliding, timings=timings)


@contextmanager
def _block_failures(sink: Any) -> Iterator[None]:
    """A block's bad input comes out as its one-line InputError (the first block's, by row), not as
    Ray's wrapped traceback."""
    import ray

    try:
        yield
    except Exception:
        message = ray.get(sink.first_failure.remote())
        if message is None:
            raise
        raise InputError(message) from None


def _exact_duplicates(validated: Any, small: pd.DataFrame) -> np.ndarray:
    """Row numbers of exact duplicate rows (each after the first of its kind), as `quality` removes them:
    rows whose whole-row hash repeats are fetched and compared in full, in row order."""
    repeated = small.loc[small[HASH].duplicated(keep=False), HASH].unique()
    if not len(repeated):
        return np.zeros(0, dtype=np.int64)
    wanted = set(repeated.tolist())
    candidates = validated.map_batches(lambda b: b[b[HASH].isin(wanted)], batch_format="pandas",
                                       batch_size=None).to_pandas().sort_values(ROW, kind="stable")
    values = candidates.drop(columns=_aux(candidates.columns))
    return np.asarray(candidates.loc[values.duplicated(keep="first").to_numpy(), ROW], dtype=np.int64)


def _sum_counts(dicts: list[dict[str, int]], order: list[str] | None = None) -> dict[str, int]:
    """Counts summed over blocks; keys in `order` first (the single-machine key order)."""
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in (d or {}).items():
            total[key] = total.get(key, 0) + int(n)
    rank = {key: i for i, key in enumerate(order or [])}
    return dict(sorted(total.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _merge_steps(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One step record from its blocks': rows and removals summed, the rest as the first block says."""
    merged = dict(records[0])
    merged["rows_in"] = sum(int(r["rows_in"]) for r in records)
    merged["rows_out"] = sum(int(r["rows_out"]) for r in records)
    merged["removed"] = _sum_counts([r.get("removed") or {} for r in records], list(merged.get("removed") or {}))
    return merged


def _merge_validate(infos: list[dict[str, Any]], rows_in: int, policy: Policy) -> dict[str, Any]:
    merged = _merge_steps(infos)
    merged["rows_in"] = rows_in
    merged["removed"] = _sum_counts([i["removed"] for i in infos], [f"invalid:{n}" for n in policy.columns])
    coerced: dict[str, str] = {}
    for info in infos:
        coerced.update(info.get("coerced_columns") or {})
    merged["coerced_columns"] = {n: coerced[n] for n in policy.columns if n in coerced}
    return {"step": "validate", **merged}


def _merge_quality(records: list[dict[str, Any]], policy: Policy, rows_in: int, duplicates: int,
                   duplicate_ids: dict[str, int]) -> dict[str, Any]:
    infos = [r["quality"] for r in records]
    merged = _merge_steps(infos)
    merged["rows_in"] = rows_in
    merged["removed"] = {"exact_duplicates": duplicates} if duplicates else {}
    merged["exact_duplicates"] = duplicates
    merged["duplicate_identifiers"] = duplicate_ids
    merged["missing_values"] = _sum_counts([i["missing_values"] for i in infos], list(policy.columns))
    merged["rows_with_missing_values"] = sum(int(i["rows_with_missing_values"]) for i in infos)
    return {"step": "quality", **merged}


def _merge_pseudonymize(records: list[dict[str, Any]], data: pd.DataFrame,
                        policy: Policy) -> tuple[dict[str, Any], dict[str, frozenset[str]], pd.DataFrame | None]:
    """The pseudonymize record over all blocks: counts summed, distinct tokens, collisions and escrow
    over the whole table (a token column's collisions from the identifier hashes beside it)."""
    merged = _merge_steps([r["pseudonymize"] for r in records])
    columns: dict[str, Any] = {}
    colliding: dict[str, frozenset[str]] = {}
    for name, first in merged["columns"].items():
        info = dict(first)
        for key in ("values", "missing"):
            info[key] = sum(int(r["pseudonymize"]["columns"][name][key]) for r in records)
        if "collisions" in info:
            colliding[name] = colliding_tokens(data[f"__id_{name}"], data[name])
            info["collisions"] = len(colliding[name])
        if "distinct" in info:
            info["distinct"] = int(data[name].nunique(dropna=True))
        columns[name] = info
    merged["columns"] = columns
    parts = [pd.DataFrame(r["escrow"], dtype=object) for r in records if r["escrow"] is not None]
    escrow = None
    if parts:  # per column in the policy's order, each token once (its first row's), as `pseudonymize` keeps it
        rows = pd.concat(parts, ignore_index=True)
        escrow = pd.concat([rows[rows["column"] == n].drop_duplicates(subset="token") for n in policy.identifiers],
                           ignore_index=True)
    return {"step": "pseudonymize", **merged}, colliding, escrow
