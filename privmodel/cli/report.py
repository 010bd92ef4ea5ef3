"""`privmodel report`: one self-contained HTML file from a ledger or a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def _refuse_input_as_output(out: Path, inputs: list[Path]) -> None:
    """The page must never replace what it reports on (a ledger, its head, an artifact, a key file)."""
    from anonymize.errors import InputError

    target = out.resolve()
    if target.is_dir():
        raise InputError(f"{out}: --out is a directory; give the HTML file to write")
    for path in inputs:
        if target == path.resolve():
            raise InputError(f"{out}: --out is one of the report's inputs ({path}); refusing to overwrite it")


def report(
    source: Path = typer.Argument(..., help="A ledger file or a run directory holding ledger.jsonl files."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    trust: list[Path] = typer.Option(
        [], "--trust",
        help="Trusted public keys (a keyring file, a PEM public key, or a keys directory); repeatable. "
        "Ledgers are verified against these keys only.",
    ),
    tofu: bool = typer.Option(
        False, "--tofu",
        help="Trust the key each ledger carries in its first entry (trust on first use): proves a ledger is "
        "intact, not who wrote it; the report says so. Without --trust or --tofu no ledger can pass.",
    ),
) -> None:
    """Write the HTML report; exit 2 (after writing it, red banner on top) when any ledger fails verification."""
    from rich.console import Console
    from rich.markup import escape

    from anonymize.errors import InputError
    from privmodel.artifacts.report.evidence import collect, load_trusted_keys
    from privmodel.artifacts.report.html import render
    from privmodel.core.fileio import atomic_write_text

    if trust and tofu:
        raise InputError("give either --trust KEYS or --tofu, not both")
    for path in trust:
        _refuse_input_as_output(out, [path, path / "signing.pub"] if path.is_dir() else [path])
    keys = load_trusted_keys(trust) if trust else None
    console = Console()
    with console.status("collecting evidence and drawing charts"):
        evidence = collect(source, trusted_keys=keys, tofu=tofu)
        _refuse_input_as_output(out, evidence.input_paths())
        _refuse_foreign_file(out)
        atomic_write_text(out, render(evidence))
    states = {"ok": "[green]ledgers verified against trusted keys[/green]",
              "tofu": "[yellow]ledgers intact under their own keys only (trust on first use; pass --trust)[/yellow]",
              "fail": "[red]LEDGER VERIFICATION FAILED[/red]"}
    if evidence.status == "fail":  # one line, on stderr, exit 2 (the page itself carries the red banner)
        bad = next(le for le in evidence.ledgers if not le.verification.ok)
        raise InputError(f"{bad.path}: ledger verification failed ({bad.verification.first_problem}); "
                         f"report written to {out} with the failure on top")
    console.print(f"wrote {escape(str(out))} ({states[evidence.status]}; {len(evidence.releases)} release(s), "
                  f"{len(evidence.models)} model(s))", soft_wrap=True)


GENERATOR = b'<meta name="generator" content="privmodel report">'


def _refuse_foreign_file(out: Path) -> None:
    """`--out` may replace an earlier report, never any other file (a run never overwrites what it did not make)."""
    from anonymize.errors import InputError

    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_file():
        raise InputError(f"{out}: exists and is not a report file; refusing to overwrite")
    with open(out, "rb") as handle:
        head = handle.read(2048)
    if GENERATOR not in head:
        raise InputError(f"{out}: exists and was not written by `privmodel report`; refusing to overwrite")
