"""`privmodel anonymize --engine ray`: the release pipeline with its work over rows on Ray Data.

The per-batch functions of `anonymize.engines.batches` run per block (`map_batches`), the ones the
streamed single-machine engine runs per Parquet batch; they call `validate`, `quality`,
`consent_and_purpose` (the consent rule) and the pseudonymize step of `anonymize.pipeline`, so one
rule stays in one place; the same keys give the same tokens and ciphertexts on every worker. What
needs the whole table is done across blocks:

- exact duplicates: only rows whose first two identifiers' hashes both repeat can be one; those are
  compared in full, in row order, so the rows removed are the single-machine ones;
- duplicate identifiers, token collisions and distinct values: from per-row identifier hashes / tokens;
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
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    # Ray Data logs each dataset it runs and sizing advice (INFO/WARNING), and a failed block's whole
    # traceback (ERROR), on stderr; a block's bad input reaches the user as its one line (`block_failures`)
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
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


def stats_actor() -> Any:
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


def report_block(sink: Any, first_row: int, record: dict[str, Any]) -> None:
    import ray

    ray.get(sink.add.remote(first_row, json.loads(json.dumps(record, default=str))))


def block_input_error(sink: Any, first_row: int, exc: InputError, rows: np.ndarray | None = None) -> InputError:
    """Hand a block's bad-input line to the driver (Ray keeps only the traceback text of a task's
    exception); `rows` maps the block's own row numbers in the message to the input's."""
    import ray

    if rows is not None:
        exc = input_rows(exc, rows)
    ray.get(sink.fail.remote(first_row, str(exc)))
    return exc


def _validate_block(batch: pd.DataFrame, policy: Policy, source: str, sink: Any) -> pd.DataFrame:
    """Step 1 on one block (`batches.validate_batch`); reports its record and which columns hold values."""
    rows = batch[ROW].to_numpy(dtype=np.int64)
    raw = batch.drop(columns=[ROW])
    try:
        out, info = validate_batch(raw, rows, policy, source)
    except InputError as exc:
        raise block_input_error(sink, int(rows[0]), exc) from None
    report_block(sink, int(rows[0]), {"info": info, "present": sorted(column_values(raw, policy))})
    return out


def _release_block(batch: pd.DataFrame, policy: Policy, keys: Keys, duplicates: np.ndarray,
                   undeclared: list[str], sink: Any) -> pd.DataFrame:
    """Steps 2-4 on one block (`batches.release_rows`); reports its records."""
    rows = batch[ROW].to_numpy(dtype=np.int64)
    try:
        out, record = release_rows(batch, policy, keys, duplicates, undeclared)
    except InputError as exc:
        raise block_input_error(sink, int(rows[0]), exc) from None
    report_block(sink, int(rows[0]), record)
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
    sink = stats_actor()

    say("validate")
    started = time.perf_counter()
    import ray

    with block_failures(sink):
        validated = _dataset(frame, blocks).map_batches(
            _validate_block, batch_format="pandas", batch_size=None, zero_copy_batch=True,
            fn_kwargs={"policy": policy, "source": source, "sink": sink}).materialize()

    block_infos = ray.get(sink.all.remote())
    check_column_values(set().union(*(set(b["present"]) for b in block_infos)), policy, source)
    steps = [merge_validate([b["info"] for b in block_infos], len(df), policy)]
    timings["validate"] = time.perf_counter() - started

    say("quality")
    started = time.perf_counter()
    small = validated.select_columns([c for c in validated.columns() if c in (ROW, HASH) or c.startswith(ID)]).to_pandas()
    small = small.sort_values(ROW, kind="stable").reset_index(drop=True)
    duplicates = _exact_duplicates(validated, small, policy)
    duplicate_ids = duplicate_identifiers(small, duplicates, policy)
    timings["quality"] = time.perf_counter() - started

    say("consent and purpose")
    started = time.perf_counter()
    sink = stats_actor()
    with block_failures(sink):
        released = validated.map_batches(
            _release_block, batch_format="pandas", batch_size=None,
            fn_kwargs={"policy": policy, "keys": key_set, "duplicates": duplicates,
                       "undeclared": steps[0]["undeclared_columns"], "sink": sink}).to_pandas()
    block_records = ray.get(sink.all.remote())
    data = released.sort_values(ROW, kind="stable")
    data.index = pd.Index(data.pop(ROW).to_numpy(), dtype=np.int64)
    steps.append(merge_quality(block_records, policy, len(small), len(duplicates), duplicate_ids))
    steps.append({"step": "purpose", **merge_steps([r["purpose"] for r in block_records])})
    timings["purpose"] = time.perf_counter() - started
    started = time.perf_counter()
    pseudo_record, colliding, escrow = merge_pseudonymize(block_records, data, policy)
    steps.append(pseudo_record)
    data = data.drop(columns=aux_columns(data.columns))
    timings["pseudonymize"] = time.perf_counter() - started
    return Minimised(data=data, steps=steps, removed=_removed(steps), rows_in=int(len(df)),
                     pseudonymization=pseudo_record["columns"], escrow=escrow, partner=key_set.partner,
                     colliding=colliding, timings=timings)


@contextmanager
def block_failures(sink: Any) -> Iterator[None]:
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


def _exact_duplicates(validated: Any, small: pd.DataFrame, policy: Policy) -> np.ndarray:
    """Row numbers of exact duplicate rows, as `quality` removes them: the candidate rows
    (`batches.duplicate_candidates`) are fetched from the blocks and compared in full (`batches.duplicate_rows`)."""
    wanted = duplicate_candidates(small, policy)
    if not len(wanted):
        return np.zeros(0, dtype=np.int64)
    candidates = validated.map_batches(lambda b: b[b[ROW].isin(wanted)], batch_format="pandas",
                                       batch_size=None).to_pandas()
    return duplicate_rows(candidates)
