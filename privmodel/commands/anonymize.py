"""`privmodel anonymize | reidentify | rotate-keys`: make a release, reverse it with authority, re-key it.

Start-up stays light: pandas, the anonymize pipeline and scikit-learn load inside the commands.
Each command declares its outputs to `privmodel.fileio.outputs` before any work: an output that is
an input (symlinks and hard links included), or an existing file that no earlier run of the same
command recorded in the ledger, is refused with one line. Outputs are staged beside their targets,
the signed ledger entry names them by hash, and only then are they published. A failure removes
only what this run staged or created, and appends a `failed` entry when the ledger is known (given
with --ledger, or already present in the output directory) - a bad-input run into a fresh directory
leaves nothing behind. Escrows and re-identified values are 0600 from their first byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from privmodel.commands.common import KEYS_OPTION, LEDGER_OPTION, ledger_path, recorded_failure

if TYPE_CHECKING:
    from rich.status import Status

RELEASE_STEM = "release"
FORMATS = ("parquet", "csv")


def register(app: typer.Typer) -> None:
    app.command("anonymize")(anonymize)
    app.command("reidentify")(reidentify)
    app.command("rotate-keys")(rotate_keys)


def escrow_path(release: Path) -> Path:
    """Where a release's token escrow lives: beside it, `<stem>.escrow<suffix>`."""
    return release.with_name(f"{release.stem}.escrow{release.suffix}")


# --- shared plumbing ----------------------------------------------------------------------------


def _append(
    action: str,
    ledger: Path | None,
    out_dir: Path,
    keys: Path | None,
    inputs: list[Path],
    outputs: list[dict[str, str]],
    params: dict[str, Any],
    outcome: str = "ok",
    reason: str | None = None,
) -> None:
    from anonymize.report import jsonable
    from privmodel.audit import artifact
    from privmodel.commands.common import open_ledger

    book = open_ledger(ledger, out_dir, keys)
    book.append(
        action,
        inputs=[artifact(p) for p in inputs if p is not None and p.is_file()],
        outputs=outputs,
        params=jsonable(params),
        outcome=outcome,
        reason=reason,
    )


def _progress() -> tuple[Status, Callable[[str], None]]:
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("anonymize: starting")
    return status, lambda step: status.update(f"anonymize: {step}")


def _check_format(fmt: str) -> str:
    from anonymize.errors import InputError

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    return fmt


def _scalars(d: dict[str, Any] | None) -> dict[str, Any]:
    """The plain figures of a report section (nested tables left out)."""
    return {k: v for k, v in (d or {}).items() if not isinstance(v, dict | list)}


def _figures(report: dict[str, Any]) -> dict[str, Any]:
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


# --- commands -----------------------------------------------------------------------------------


def anonymize(
    input: Path = typer.Argument(..., help="Raw table (CSV or Parquet)."),
    policy: Path = typer.Option(..., "--policy", help="Release policy (YAML)."),
    keys: Path = KEYS_OPTION,
    out: Path = typer.Option(..., "--out", help="Output directory for the release and its reports."),
    partner: str = typer.Option(None, "--partner", help="Recipient of the release: tokens differ per partner."),
    fmt: str = typer.Option("parquet", "--format", help="Release format: parquet or csv."),
    population: Path = typer.Option(None, "--population", help="Population table for journalist risk."),
    ledger: Path = LEDGER_OPTION,
) -> None:
    """Validate, filter, pseudonymize and generalize INPUT as the policy says; write release + report."""
    action = "anonymize.release"
    inputs = [input, policy] + ([population] if population is not None else [])
    with recorded_failure(action, ledger, out, keys, inputs):
        from anonymize.forked import Pending
        from anonymize.pipeline import run
        from anonymize.policy import load_policy
        from anonymize.report import render_text, to_json
        from privmodel import budget
        from privmodel.fileio import outputs, read_table
        from privmodel.keys import ensure_keys, load_pseudonym_secret

        _check_format(fmt)
        target = out / f"{RELEASE_STEM}.{fmt}"
        escrow_out = escrow_path(target)
        reports = {out / "report.json": to_json, out / "report.txt": render_text}
        book = ledger_path(ledger, out)
        with outputs([target, escrow_out, *reports], inputs=inputs, secret=[escrow_out], replace=True,
                     ledger=book, action=action) as stage:
            loaded = load_policy(policy)
            text = [name for name, col in loaded.columns.items() if col.type in ("string", "categorical")]
            started = time.perf_counter()
            table = read_table(input, text_columns=text)
            pop = read_table(population) if population is not None else None
            read_seconds = time.perf_counter() - started
            # the input's content hash (its budget identity) from the table in memory, on the second
            # core while the pipeline runs; a CSV read with text columns differs from what
            # `content_id` reads, so that one is read again the way it reads it
            same = (input.suffix.lower() == ".parquet" or not text) and not getattr(loaded, "dataset", None)
            hashing = Pending(budget.frame_id, table) if same else None
            secret = load_pseudonym_secret(ensure_keys(keys))
            status, step = _progress()
            try:
                with status:
                    # the release's content hash (lineage) starts as soon as the released rows are known
                    release = run(table, loaded, secret, population=pop, partner=partner, source=str(input),
                                  progress=step, content_hash=budget.frame_id if fmt == "parquet" else None)
                started = time.perf_counter()
                source = budget.dataset_of(loaded, input, keys, content=hashing.result() if hashing else None)
                identity_seconds = time.perf_counter() - started  # the wait for the second core, and lineage
            finally:
                if hashing is not None:
                    hashing.close()
            del table  # the release holds what it needs; the input's other columns can go before writing
            released = release.content  # a Parquet release reads back as the frame written
            started = time.perf_counter()
            stage.write_table(target, release.data)
            if release.escrow is not None:
                stage.write_table(escrow_out, release.escrow)
            else:
                stage.retire(escrow_out)  # an earlier release's escrow must not sit beside this one
            # per-stage wall times: reading and writing the tables are the command's, the rest the pipeline's
            release.report["timings"] = {"read": round(read_seconds, 3), "identity": round(identity_seconds, 3),
                                         **release.report.get("timings", {}),
                                         "write": round(time.perf_counter() - started, 3)}
            for path, render in reports.items():
                stage.write_text(path, render(release.report))
            _append(action, book, out, keys, inputs, stage.artifacts(), _figures(release.report))
            stage.publish()
        rows = release.report["rows"]
        # a model trained on the release charges the raw table's budget (lineage), not a fresh one;
        # a Parquet release reads back as the frame written, so its content hash comes from memory
        budget.record_lineage(source, target, keys, derived_content=released.result() if released else None)
    typer.echo(f"released {rows['released']} of {rows['input']} rows to {target} (report: {out / 'report.txt'})")


def _parse_rows(spec: str | None, n: int) -> list[int]:
    """'1,4,10-20' (1-based release rows) -> 0-based positions; None -> every row."""
    from anonymize.errors import InputError

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


def reidentify(
    release: Path = typer.Argument(..., help="A release written by `privmodel anonymize`."),
    column: str = typer.Option(..., "--column", help="An identifier column with method encrypt, or token with escrow."),
    keys: Path = typer.Option(..., "--keys", help="Key directory holding the pseudonymization secret."),
    policy: Path = typer.Option(..., "--policy", help="The policy the release was made with."),
    out: Path = typer.Option(..., "--out", help="Output table (CSV or Parquet): release row number and value."),
    rows: str = typer.Option(None, "--rows", help="Release rows to re-identify, e.g. 1,4,10-20 (default: all)."),
    partner: str = typer.Option(None, "--partner", help="Partner the release was made for."),
    escrow: Path = typer.Option(None, "--escrow", help="Token escrow of the release (default: beside the release)."),
    ledger: Path = LEDGER_OPTION,
) -> None:
    """Authorized re-identification of an encrypt column, or of a token column through its escrow.

    The ledger records who, which column and how many rows, never a value. OUT is created 0600.
    """
    action = "anonymize.reidentify"
    out_dir = out.parent if str(out.parent) else Path(".")
    escrow_in = escrow if escrow is not None else escrow_path(release)
    inputs = [release, policy, escrow_in]
    with recorded_failure(action, ledger, out_dir, keys, inputs):
        import pandas as pd

        from anonymize.errors import InputError
        from anonymize.policy import DEFAULT_TOKEN_LENGTH, load_policy
        from anonymize.pseudonymize import Keys, reidentify_tokens
        from anonymize.pseudonymize import reidentify as decrypt
        from privmodel.fileio import TABLE_SUFFIXES, outputs, read_table
        from privmodel.keys import load_pseudonym_secret

        if out.suffix.lower() not in TABLE_SUFFIXES:
            raise InputError(f"{out}: unsupported table format {out.suffix!r} (use .csv or .parquet)")
        book = ledger_path(ledger, out_dir)
        with outputs([out], inputs=inputs, secret=[out], replace=True, ledger=book, action=action) as stage:
            loaded = load_policy(policy)
            spec = loaded.columns.get(column)
            if spec is None or spec.role != "identifier":
                raise InputError(f"{policy}: column {column!r} is not an identifier of this policy")
            if spec.method == "drop" or (spec.method == "token" and not spec.escrow):
                method = "token without escrow" if spec.method == "token" else spec.method
                raise InputError(f"{policy}: column {column!r} has method {method}; only encrypt columns and "
                                 "token columns kept with an escrow are reversible")
            table = read_table(release)
            if column not in table.columns:
                raise InputError(f"{release}: column {column!r} is not in the release")
            positions = _parse_rows(rows, len(table))
            key = Keys(load_pseudonym_secret(keys), partner or "default").column_key(loaded.purpose.name, column)
            selected = table[column].iloc[positions].reset_index(drop=True)
            used = [release, policy]
            if spec.method == "encrypt":
                values = decrypt(selected, key, column)
            else:
                if not escrow_in.is_file():
                    raise InputError(f"{escrow_in}: no such file (the token escrow of {release.name})")
                used.append(escrow_in)
                values = reidentify_tokens(selected, read_table(escrow_in), key, column,
                                           spec.length or DEFAULT_TOKEN_LENGTH)
            stage.write_table(out, pd.DataFrame({"row": [p + 1 for p in positions], column: values}))
            params = {"column": column, "method": spec.method, "rows": len(positions), "purpose": loaded.purpose.name,
                      "partner": partner or "default", "selection": "given rows" if rows else "all rows"}
            _append(action, book, out_dir, keys, used, stage.artifacts(), params)
            stage.publish()
    typer.echo(f"re-identified {len(positions)} rows of column {column} into {out}")


def rotate_keys(
    release: Path = typer.Argument(..., help="A release written by `privmodel anonymize`."),
    policy: Path = typer.Option(..., "--policy", help="The policy the release was made with."),
    old_keys: Path = typer.Option(..., "--old-keys", help="Key directory the release was made with."),
    new_keys: Path = typer.Option(..., "--new-keys", help="Key directory to re-key to."),
    out: Path = typer.Option(..., "--out", help="Re-keyed release (CSV or Parquet); its escrow is written beside it."),
    escrow: Path = typer.Option(None, "--escrow", help="Token escrow of the release (default: beside the release)."),
    partner: str = typer.Option(None, "--partner", help="Partner the release was made for."),
    keys: Path = KEYS_OPTION,
    ledger: Path = LEDGER_OPTION,
) -> None:
    """Re-key tokens and ciphertexts of a release without the raw data (see docs/policy.md)."""
    action = "anonymize.rotate_keys"
    out_dir = out.parent if str(out.parent) else Path(".")
    escrow_in = escrow if escrow is not None else escrow_path(release)
    escrow_out = escrow_path(out)
    inputs = [release, policy, escrow_in]
    with recorded_failure(action, ledger, out_dir, keys, inputs):
        from anonymize.errors import InputError
        from anonymize.policy import load_policy
        from anonymize.pseudonymize import Keys, rotate_tokens
        from privmodel.fileio import TABLE_SUFFIXES, outputs, read_table
        from privmodel.keys import load_pseudonym_secret

        if out.suffix.lower() not in TABLE_SUFFIXES:
            raise InputError(f"{out}: unsupported table format {out.suffix!r} (use .csv or .parquet)")
        book = ledger_path(ledger, out_dir)
        with outputs([out, escrow_out], inputs=inputs, secret=[escrow_out], replace=True, ledger=book,
                     action=action) as stage:
            loaded = load_policy(policy)
            table = read_table(release)
            escrow_table = read_table(escrow_in) if escrow_in.is_file() or escrow is not None else None
            name = partner or "default"
            old = Keys(load_pseudonym_secret(old_keys), name)
            new = Keys(load_pseudonym_secret(new_keys), name)
            rotated = rotate_tokens(table, old, new, loaded, escrow=escrow_table)
            stage.write_table(out, rotated.data)
            if rotated.escrow is not None:
                stage.write_table(escrow_out, rotated.escrow)
            else:
                stage.retire(escrow_out)
            used = [release, policy] + ([escrow_in] if escrow_table is not None else [])
            _append(action, book, out_dir, keys, used, stage.artifacts(),
                    {"rotated": rotated.rotated, "purpose": loaded.purpose.name, "partner": name})
            stage.publish()
    typer.echo(f"re-keyed {', '.join(f'{c} ({n})' for c, n in rotated.rotated.items()) or 'no columns'} into {out}")
