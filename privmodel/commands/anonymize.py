"""`privmodel anonymize | reidentify | rotate-keys`: make a release, reverse it with authority, re-key it.

Start-up stays light: pandas, the anonymize pipeline and scikit-learn load inside the commands.
Each command writes its outputs atomically and only after everything is computed, then records a
signed ledger entry naming the outputs by hash. A failure removes whatever this run wrote, and
appends a `failed` entry when the ledger is known (given with --ledger, or already present in the
output directory) - a bad-input run into a fresh directory leaves that directory untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from privmodel.commands.common import KEYS_OPTION, LEDGER_OPTION

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


def _known_ledger(ledger: Path | None, out_dir: Path) -> Path | None:
    """The ledger a failure is recorded in: the one named, or one already in the output directory."""
    if ledger is not None:
        return ledger
    default = out_dir / "ledger.jsonl"
    return default if default.is_file() else None


@contextlib.contextmanager
def _recorded(action: str, ledger: Path | None, out_dir: Path, keys: Path | None, inputs: list[Path]) -> Iterator[None]:
    """Turn any failure into a `failed` ledger entry (if the ledger is known) and re-raise it."""
    from anonymize.errors import InputError

    try:
        yield
    except Exception as exc:
        known = _known_ledger(ledger, out_dir)
        if known is not None:
            reason = str(exc).splitlines()[0] if isinstance(exc, InputError) else f"internal error ({type(exc).__name__})"
            with contextlib.suppress(Exception):  # the original error matters more than the record
                _append(action, known, out_dir, keys, inputs, [], {}, outcome="failed", reason=reason)
        raise


def _append(
    action: str,
    ledger: Path | None,
    out_dir: Path,
    keys: Path | None,
    inputs: list[Path],
    outputs: list[Path],
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
        inputs=[artifact(p) for p in inputs if p.is_file()],
        outputs=[artifact(p) for p in outputs],
        params=jsonable(params),
        outcome=outcome,
        reason=reason,
    )


@contextlib.contextmanager
def _all_or_nothing(out_dir: Path) -> Iterator[list[Path]]:
    """Collect written paths; on failure remove them (and the directory if this run created it)."""
    created = not out_dir.exists()
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _progress() -> tuple[Any, Callable[[str], None]]:
    from rich.console import Console

    console = Console(stderr=True)
    status = console.status("anonymize: starting")
    return status, lambda step: status.update(f"anonymize: {step}")


def _check_format(fmt: str) -> str:
    from anonymize.errors import InputError

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    return fmt


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """Ledger params: the report's headline figures and counts (never values, tokens or keys)."""
    privacy = report["privacy"]
    achieved = privacy.get("achieved") or {}
    scalar = lambda d: {k: v for k, v in (d or {}).items() if not isinstance(v, dict | list)}  # noqa: E731
    return {
        "policy": report["policy"],
        "partner": report["partner"],
        "rows": report["rows"],
        "k": achieved.get("k"),
        "l": achieved.get("l"),
        "t": achieved.get("t"),
        "required": privacy.get("required"),
        "risk": scalar(report.get("risk")),
        "utility": scalar(report.get("utility")),
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
    with _recorded("anonymize.release", ledger, out, keys, [input, policy]):
        from anonymize.pipeline import run
        from anonymize.policy import load_policy
        from anonymize.report import render_text, to_json
        from privmodel.fileio import atomic_write_text, ensure_output_dir, read_table, write_table
        from privmodel.keys import ensure_keys, load_pseudonym_secret

        _check_format(fmt)
        loaded = load_policy(policy)
        text = [name for name, col in loaded.columns.items() if col.type in ("string", "categorical")]
        table = read_table(input, text_columns=text)
        pop = read_table(population) if population is not None else None
        secret = load_pseudonym_secret(ensure_keys(keys))
        status, step = _progress()
        with status:
            release = run(table, loaded, secret, population=pop, partner=partner, source=str(input), progress=step)
        with _all_or_nothing(out) as written:
            out_dir = ensure_output_dir(out)
            target = out_dir / f"{RELEASE_STEM}.{fmt}"
            written.append(target)
            write_table(release.data, target)
            if release.escrow is not None:
                written.append(escrow_path(target))
                write_table(release.escrow, escrow_path(target))
                escrow_path(target).chmod(0o600)
            for name, text in (("report.json", to_json(release.report)), ("report.txt", render_text(release.report))):
                written.append(out_dir / name)
                atomic_write_text(out_dir / name, text)
            _append("anonymize.release", ledger, out_dir, keys, [input, policy], written, _figures(release.report))
    typer.echo(
        f"released {release.report['rows']['released']} of {release.report['rows']['input']} rows to {target} "
        f"(report: {out / 'report.txt'})"
    )


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

    The ledger records who, which column and how many rows, never a value.
    """
    out_dir = out.parent if str(out.parent) else Path(".")
    with _recorded("anonymize.reidentify", ledger, out_dir, keys, [release, policy]):
        import pandas as pd

        from anonymize.errors import InputError
        from anonymize.policy import load_policy
        from anonymize.pseudonymize import DEFAULT_TOKEN_LENGTH, Keys, reidentify_tokens
        from anonymize.pseudonymize import reidentify as decrypt
        from privmodel.fileio import read_table, write_table
        from privmodel.keys import load_pseudonym_secret

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
        inputs = [release, policy]
        if spec.method == "encrypt":
            values = decrypt(selected, key, column)
        else:
            escrow_in = escrow if escrow is not None else escrow_path(release)
            if not escrow_in.is_file():
                raise InputError(f"{escrow_in}: no such file (the token escrow of {release.name})")
            inputs.append(escrow_in)
            values = reidentify_tokens(selected, read_table(escrow_in), key, column, spec.length or DEFAULT_TOKEN_LENGTH)
        result = pd.DataFrame({"row": [p + 1 for p in positions], column: values})
        with _all_or_nothing(out_dir) as written:
            written.append(out)
            write_table(result, out)
            out.chmod(0o600)
            params = {"column": column, "method": spec.method, "rows": len(positions), "purpose": loaded.purpose.name,
                      "partner": partner or "default", "selection": "given rows" if rows else "all rows"}
            _append("anonymize.reidentify", ledger, out_dir, keys, inputs, written, params)
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
    out_dir = out.parent if str(out.parent) else Path(".")
    escrow_in = escrow if escrow is not None else escrow_path(release)
    with _recorded("anonymize.rotate_keys", ledger, out_dir, keys, [release, policy]):
        from anonymize.policy import load_policy
        from anonymize.pseudonymize import Keys, rotate_tokens
        from privmodel.fileio import read_table, write_table
        from privmodel.keys import load_pseudonym_secret

        loaded = load_policy(policy)
        table = read_table(release)
        escrow_table = read_table(escrow_in) if escrow_in.is_file() or escrow is not None else None
        name = partner or "default"
        old = Keys(load_pseudonym_secret(old_keys), name)
        new = Keys(load_pseudonym_secret(new_keys), name)
        rotated = rotate_tokens(table, old, new, loaded, escrow=escrow_table)
        with _all_or_nothing(out_dir) as written:
            written.append(out)
            write_table(rotated.data, out)
            if rotated.escrow is not None:
                written.append(escrow_path(out))
                write_table(rotated.escrow, escrow_path(out))
                escrow_path(out).chmod(0o600)
            inputs = [release, policy] + ([escrow_in] if escrow_table is not None else [])
            _append("anonymize.rotate_keys", ledger, out_dir, keys, inputs, written,
                    {"rotated": rotated.rotated, "purpose": loaded.purpose.name, "partner": name})
    typer.echo(f"re-keyed {', '.join(f'{c} ({n})' for c, n in rotated.rotated.items()) or 'no columns'} into {out}")
