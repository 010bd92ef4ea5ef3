"""Anonymize-release workflows: make a release, re-identify it with authority, re-key it.

The CLI (`privmodel anonymize | reidentify | rotate-keys`) and the demo call these. Each declares its
outputs to `privmodel.core.fileio.outputs` before any work: an output that is an input (symlinks and
hard links included), or an existing file that no earlier run of the same action recorded in the
ledger, is refused with one line. Outputs are staged beside their targets, the signed ledger entry
names them by hash, and only then are they published. A failure removes only what this run staged
or created, and appends a `failed` entry when the ledger is known (`run_ledger.recorded_failure`).
Escrows and re-identified values are 0600 from their first byte. Release file layout:

    OUT/release.<parquet|csv>          the release
    OUT/release.escrow.<parquet|csv>   token escrow, when the policy keeps one
    OUT/report.json, OUT/report.txt    the release report
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError
from privmodel.workflows.run_ledger import ledger_path, open_ledger, recorded_failure

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.forked import Pending
    from anonymize.pipeline import Release
    from anonymize.policy.schema import ColumnPolicy, Policy

RELEASE_STEM = "release"
FORMATS = ("parquet", "csv")


def escrow_path(release: Path) -> Path:
    """Where a release's token escrow lives: beside it, `<stem>.escrow<suffix>`."""
    return release.with_name(f"{release.stem}.escrow{release.suffix}")


def _out_dir(out: Path) -> Path:
    return out.parent if str(out.parent) else Path(".")


def _append(action: str, ledger: Path, out_dir: Path, keys: Path | None, inputs: list[Path],
            outputs: list[dict[str, str]], params: dict[str, Any]) -> None:
    from anonymize.json_values import json_ready
    from privmodel.artifacts.ledger import artifact

    open_ledger(ledger, out_dir, keys).append(
        action, inputs=[artifact(p) for p in inputs if p.is_file()], outputs=outputs, params=json_ready(params),
    )


def _scalars(d: dict[str, Any] | None) -> dict[str, Any]:
    """The plain figures of a report section (nested tables left out)."""
    return {k: v for k, v in (d or {}).items() if not isinstance(v, dict | list)}


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Ledger params: the report's headline figures and counts (never values, tokens or keys)."""
    privacy = report["privacy"]
    achieved = privacy.get("achieved") or {}
    return {
        "policy": report["policy"],
        "partner": report["partner"],
        "rows": report["rows"],
        "k": achieved.get("k"),
        "l": achieved.get("l"),
        "t": achieved.get("t"),
        "required": privacy.get("required"),
        "risk": _scalars(report.get("risk")),
        "utility": _scalars(report.get("utility")),
        "counts": {k: v for k, v in report["counts"].items() if k != "duplicate_identifiers"},
    }


@dataclass(frozen=True)
class ReleaseRequest:
    """What `privmodel anonymize` asks for; `fmt` is the release format (parquet or csv)."""

    input: Path
    policy: Path
    out: Path
    keys: Path | None = None
    partner: str | None = None
    fmt: str = "parquet"
    population: Path | None = None
    ledger: Path | None = None
    engine: str = "local"  # "local" or "ray" (anonymize.engines)
    ray_address: str | None = None  # a Ray cluster for --engine ray; None: Ray in local mode
    # rows per batch of the streamed engines (anonymize.engines.stream, .ray_stream); None: a Parquet or
    # CSV input (Parquet only on Ray) streams when it has more than STREAM_MIN_ROWS rows (CSV: lines),
    # else it is released in memory
    batch_rows: int | None = None

    @property
    def target(self) -> Path:
        return self.out / f"{RELEASE_STEM}.{self.fmt}"


def release(req: ReleaseRequest, progress: Callable[[str], None] = lambda _step: None) -> dict[str, int]:
    """Validate, filter, pseudonymize and generalize the input as the policy says; write release + report.

    Returns the report's row counts. A model later trained on the release charges the raw table's
    budget: the release's lineage to its input is recorded (`budget.record_lineage`).
    """
    action = "anonymize.release"
    inputs = [req.input, req.policy] + ([req.population] if req.population is not None else [])
    with recorded_failure(action, req.ledger, req.out, req.keys, inputs):
        if req.fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}")
        from anonymize.engines import ENGINES

        if req.engine not in ENGINES:
            raise InputError(f"--engine must be one of {', '.join(ENGINES)}")
        if req.ray_address and req.engine != "ray":
            raise InputError("--ray-address needs --engine ray")
        from anonymize.policy.schema import load_policy
        from privmodel.dp import budget

        loaded = load_policy(req.policy)
        batch_rows = _streamed_batch_rows(req)
        content: str | None
        if batch_rows is not None:
            rows, source, content = _write_streamed(req, loaded, inputs, action, progress, batch_rows)
        else:
            rows, source, released = _write_release(req, loaded, inputs, action, progress)
            # a Parquet release reads back as the frame written, so its content hash comes from memory
            content = released.result() if released else None
        # a model trained on the release charges the raw table's budget (lineage), not a fresh one
        budget.record_lineage(source, req.target, req.keys, derived_content=content)
    return rows


def _streamed_batch_rows(req: ReleaseRequest) -> int | None:
    """Rows per batch when the release streams (a Parquet or CSV input on the local engine, a Parquet
    input on Ray: asked for with `batch_rows`, or larger than STREAM_MIN_ROWS), else None (the table is
    released in memory)."""
    from anonymize.engines.stream import BATCH_ROWS, STREAM_MIN_ROWS, table_rows

    if req.batch_rows is not None and req.batch_rows < 1:
        raise InputError("--batch-rows must be a positive number of rows")
    streamable = (".parquet", ".csv") if req.engine == "local" else (".parquet",)
    if req.input.suffix.lower() not in streamable or not req.input.is_file():
        if req.batch_rows is not None:
            raise InputError("--batch-rows streams a Parquet or CSV input (with --engine ray: Parquet only)")
        return None
    if req.batch_rows is not None:
        return req.batch_rows
    return BATCH_ROWS if table_rows(req.input) > STREAM_MIN_ROWS else None


def _write_streamed(req: ReleaseRequest, loaded: Policy, inputs: list[Path], action: str,
                    progress: Callable[[str], None], batch_rows: int) -> tuple[dict[str, int], str, str | None]:
    """`_write_release` for a Parquet or CSV input streamed by batches (`anonymize.engines.stream`): the same
    outputs, report, ledger entry and lineage; neither the input nor the release is ever whole in memory."""
    from anonymize.engines.stream import close_spill, run_streamed
    from anonymize.forked import Pending
    from anonymize.report import render_text, to_json
    from privmodel.core.fileio import check_readable, outputs, read_table
    from privmodel.core.keys import ensure_keys, load_pseudonym_secret
    from privmodel.dp import budget
    from privmodel.workflows.streamed import table_frame_id, write_batches

    target, escrow_out = req.target, escrow_path(req.target)
    reports = {req.out / "report.json": to_json, req.out / "report.txt": render_text}
    book = ledger_path(req.ledger, req.out)
    with outputs([target, escrow_out, *reports], inputs=inputs, secret=[escrow_out], replace=True,
                 ledger=book, action=action) as stage:
        check_readable(req.input)
        pop = read_table(req.population) if req.population is not None else None
        # the input's content hash (its budget identity), batch by batch on the second core
        hashing = Pending(table_frame_id, req.input, batch_rows) if not loaded.dataset else None
        try:
            secret = load_pseudonym_secret(ensure_keys(req.keys))
            if req.engine == "ray":  # the same two passes as Ray tasks (anonymize.engines.ray_stream)
                from anonymize.engines.ray_stream import run_streamed_on_ray

                made = run_streamed_on_ray(req.input, loaded, secret, address=req.ray_address, population=pop,
                                           partner=req.partner, source=str(req.input), progress=progress,
                                           batch_rows=batch_rows)
            else:
                made = run_streamed(req.input, loaded, secret, population=pop, partner=req.partner,
                                    source=str(req.input), progress=progress, batch_rows=batch_rows)
            started = time.perf_counter()
            source = budget.dataset_of(loaded, req.input, req.keys, content=hashing.result() if hashing else None)
            identity_seconds = time.perf_counter() - started
        finally:
            if hashing is not None:
                hashing.close()
        try:
            started = time.perf_counter()
            staged = stage.path(target)
            write_batches(staged, made.released_batches(), req.fmt)
        finally:
            close_spill(made.spill)
        released = Pending(table_frame_id, staged, batch_rows) if req.fmt == "parquet" else None
        report = made.release.report
        if made.release.escrow is not None:
            stage.write_table(escrow_out, made.release.escrow)
        else:
            stage.retire(escrow_out)
        report["timings"] = {"identity": round(identity_seconds, 3), **report.get("timings", {}),
                             "write": round(time.perf_counter() - started, 3)}
        for path, render in reports.items():
            stage.write_text(path, render(report))
        _append(action, book, req.out, req.keys, inputs, stage.artifacts(), figures(report))
        content = released.result() if released is not None else None  # before publish moves the file
        stage.publish()
    rows: dict[str, int] = report["rows"]
    return rows, source, content


def _make_release(req: ReleaseRequest, loaded: Policy, table: pd.DataFrame, pop: pd.DataFrame | None,
                  secret: bytes, progress: Callable[[str], None]) -> Release:
    """The pipeline on the chosen engine; a Parquet release's content hash starts once its rows are known."""
    from anonymize.pipeline import run
    from privmodel.dp import budget

    if req.engine == "ray":
        from anonymize.engines.ray_engine import run_on_ray

        return run_on_ray(table, loaded, secret, address=req.ray_address, population=pop, partner=req.partner,
                          source=str(req.input), progress=progress)
    return run(table, loaded, secret, population=pop, partner=req.partner, source=str(req.input), progress=progress,
               content_hash=budget.frame_id if req.fmt == "parquet" else None)


def _write_release(req: ReleaseRequest, loaded: Policy, inputs: list[Path], action: str,
                   progress: Callable[[str], None]) -> tuple[dict[str, int], str, Pending[str] | None]:
    """Write release, escrow and reports; returns the row counts, the input's budget identity and the
    release's pending content hash."""
    from anonymize.engines.stream import text_columns
    from anonymize.forked import Pending
    from anonymize.report import render_text, to_json
    from privmodel.core.fileio import outputs, read_table
    from privmodel.core.keys import ensure_keys, load_pseudonym_secret
    from privmodel.dp import budget

    target, escrow_out = req.target, escrow_path(req.target)
    reports = {req.out / "report.json": to_json, req.out / "report.txt": render_text}
    book = ledger_path(req.ledger, req.out)
    with outputs([target, escrow_out, *reports], inputs=inputs, secret=[escrow_out], replace=True,
                 ledger=book, action=action) as stage:
        text = text_columns(loaded)
        started = time.perf_counter()
        table = read_table(req.input, text_columns=text)
        pop = read_table(req.population) if req.population is not None else None
        read_seconds = time.perf_counter() - started
        # the input's content hash (its budget identity) from the table in memory, on the second core
        # while the pipeline runs; a CSV read with text columns differs from what `content_id` reads,
        # so that one is read again the way it reads it
        same = (req.input.suffix.lower() == ".parquet" or not text) and not loaded.dataset
        hashing = Pending(budget.frame_id, table) if same else None
        try:
            made = _make_release(req, loaded, table, pop, load_pseudonym_secret(ensure_keys(req.keys)), progress)
            started = time.perf_counter()
            source = budget.dataset_of(loaded, req.input, req.keys, content=hashing.result() if hashing else None)
            identity_seconds = time.perf_counter() - started  # the wait for the second core, and lineage
        finally:
            if hashing is not None:
                hashing.close()
        del table  # the release holds what it needs; the input's other columns can go before writing
        started = time.perf_counter()
        stage.write_table(target, made.data)
        if made.escrow is not None:
            stage.write_table(escrow_out, made.escrow)
        else:
            stage.retire(escrow_out)  # an earlier release's escrow must not sit beside this one
        # per-stage wall times: reading and writing the tables are the workflow's, the rest the pipeline's
        made.report["timings"] = {"read": round(read_seconds, 3), "identity": round(identity_seconds, 3),
                                  **made.report.get("timings", {}), "write": round(time.perf_counter() - started, 3)}
        for path, render in reports.items():
            stage.write_text(path, render(made.report))
        _append(action, book, req.out, req.keys, inputs, stage.artifacts(), figures(made.report))
        stage.publish()
    rows: dict[str, int] = made.report["rows"]
    return rows, source, made.content


def parse_rows(spec: str | None, n: int) -> list[int]:
    """'1,4,10-20' (1-based release rows) -> 0-based positions; None -> every row."""
    if spec is None:
        return list(range(n))
    rows: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise InputError("--rows: use row numbers and ranges like 1,4,10-20") from None
        if not 1 <= first <= last <= n:
            raise InputError(f"--rows: {part} is outside the release's rows 1-{n}")
        rows.extend(range(first - 1, last))
    return sorted(set(rows))


def _check_table_suffix(out: Path) -> None:
    from privmodel.core.fileio import TABLE_SUFFIXES

    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{out}: unsupported table format {out.suffix!r} (use .csv or .parquet)")


def reversible_spec(policy: Path, loaded: Policy, column: str) -> ColumnPolicy:
    """The re-identifiability rule: only encrypt columns, and token columns kept with an escrow, reverse."""
    spec: ColumnPolicy | None = loaded.columns.get(column)
    if spec is None or spec.role != "identifier":
        raise InputError(f"{policy}: column {column!r} is not an identifier of this policy")
    if spec.method == "drop" or (spec.method == "token" and not spec.escrow):
        method = "token without escrow" if spec.method == "token" else spec.method
        raise InputError(f"{policy}: column {column!r} has method {method}; only encrypt columns and "
                         "token columns kept with an escrow are reversible")
    return spec


@dataclass(frozen=True)
class ReidentifyRequest:
    release: Path
    column: str
    keys: Path
    policy: Path
    out: Path
    rows: str | None = None
    partner: str | None = None
    escrow: Path | None = None
    ledger: Path | None = None


def reidentify(req: ReidentifyRequest) -> int:
    """Authorized re-identification of an encrypt column, or of a token column through its escrow.

    The ledger records who, which column and how many rows, never a value. OUT is created 0600.
    Returns the number of rows re-identified.
    """
    action = "anonymize.reidentify"
    out_dir = _out_dir(req.out)
    escrow_in = req.escrow if req.escrow is not None else escrow_path(req.release)
    inputs = [req.release, req.policy, escrow_in]
    with recorded_failure(action, req.ledger, out_dir, req.keys, inputs):
        from anonymize.policy.schema import load_policy
        from privmodel.core.fileio import outputs, read_table

        _check_table_suffix(req.out)
        book = ledger_path(req.ledger, out_dir)
        with outputs([req.out], inputs=inputs, secret=[req.out], replace=True, ledger=book, action=action) as stage:
            loaded = load_policy(req.policy)
            spec = reversible_spec(req.policy, loaded, req.column)
            table = read_table(req.release)
            if req.column not in table.columns:
                raise InputError(f"{req.release}: column {req.column!r} is not in the release")
            positions = parse_rows(req.rows, len(table))
            values, used = _reidentified(req, loaded, spec, table, positions, escrow_in)
            stage.write_table(req.out, values)
            params = {"column": req.column, "method": spec.method, "rows": len(positions),
                      "purpose": loaded.purpose.name, "partner": req.partner or "default",
                      "selection": "given rows" if req.rows else "all rows"}
            _append(action, book, out_dir, req.keys, used, stage.artifacts(), params)
            stage.publish()
    return len(positions)


def _reidentified(req: ReidentifyRequest, loaded: Policy, spec: ColumnPolicy, table: pd.DataFrame,
                  positions: list[int], escrow_in: Path) -> tuple[pd.DataFrame, list[Path]]:
    """The (row, value) table and the files it was read from."""
    import pandas as pd

    from anonymize.policy.schema import DEFAULT_TOKEN_LENGTH
    from anonymize.pseudonymize import Keys, reidentify_tokens
    from anonymize.pseudonymize import reidentify as decrypt
    from privmodel.core.fileio import read_table
    from privmodel.core.keys import load_pseudonym_secret

    key = Keys(load_pseudonym_secret(req.keys), req.partner or "default").column_key(loaded.purpose.name, req.column)
    selected = table[req.column].iloc[positions].reset_index(drop=True)
    used = [req.release, req.policy]
    if spec.method == "encrypt":
        values = decrypt(selected, key, req.column)
    else:
        if not escrow_in.is_file():
            raise InputError(f"{escrow_in}: no such file (the token escrow of {req.release.name})")
        used.append(escrow_in)
        values = reidentify_tokens(selected, read_table(escrow_in), key, req.column, spec.length or DEFAULT_TOKEN_LENGTH)
    return pd.DataFrame({"row": [p + 1 for p in positions], req.column: values}), used


@dataclass(frozen=True)
class RotateRequest:
    release: Path
    policy: Path
    old_keys: Path
    new_keys: Path
    out: Path
    escrow: Path | None = None
    partner: str | None = None
    keys: Path | None = None
    ledger: Path | None = None


def rotate_keys(req: RotateRequest) -> dict[str, int]:
    """Re-key tokens and ciphertexts of a release without the raw data; returns rows re-keyed per column."""
    action = "anonymize.rotate_keys"
    out_dir = _out_dir(req.out)
    escrow_in = req.escrow if req.escrow is not None else escrow_path(req.release)
    escrow_out = escrow_path(req.out)
    inputs = [req.release, req.policy, escrow_in]
    with recorded_failure(action, req.ledger, out_dir, req.keys, inputs):
        from anonymize.policy.schema import load_policy
        from anonymize.pseudonymize import Keys, rotate_tokens
        from privmodel.core.fileio import outputs, read_table
        from privmodel.core.keys import load_pseudonym_secret

        _check_table_suffix(req.out)
        book = ledger_path(req.ledger, out_dir)
        with outputs([req.out, escrow_out], inputs=inputs, secret=[escrow_out], replace=True, ledger=book,
                     action=action) as stage:
            loaded = load_policy(req.policy)
            table = read_table(req.release)
            escrow_table = read_table(escrow_in) if escrow_in.is_file() or req.escrow is not None else None
            name = req.partner or "default"
            old = Keys(load_pseudonym_secret(req.old_keys), name)
            new = Keys(load_pseudonym_secret(req.new_keys), name)
            rotated = rotate_tokens(table, old, new, loaded, escrow=escrow_table)
            stage.write_table(req.out, rotated.data)
            if rotated.escrow is not None:
                stage.write_table(escrow_out, rotated.escrow)
            else:
                stage.retire(escrow_out)
            used = [req.release, req.policy] + ([escrow_in] if escrow_table is not None else [])
            _append(action, book, out_dir, req.keys, used, stage.artifacts(),
                    {"rotated": rotated.rotated, "purpose": loaded.purpose.name, "partner": name})
            stage.publish()
    result: dict[str, int] = rotated.rotated
    return result
