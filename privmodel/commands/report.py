"""`privmodel report`: one self-contained HTML file from a ledger or a run directory."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    source: Path = typer.Argument(..., help="A ledger file or a run directory holding ledger.jsonl files."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
) -> None:
    """Write the HTML report; the ledger's verification status is at the top (red if anything fails)."""
    from rich.console import Console

    from privmodel.fileio import atomic_write_text
    from privmodel.report.evidence import collect
    from privmodel.report.html import render

    console = Console()
    with console.status("collecting evidence and drawing charts"):
        evidence = collect(source)
        atomic_write_text(out, render(evidence))
    state = "[green]ledgers verified[/green]" if evidence.verified else "[red]LEDGER VERIFICATION FAILED[/red]"
    console.print(f"wrote {out} ({state}; {len(evidence.releases)} release(s), {len(evidence.models)} model(s))")
