"""`privmodel report`: one self-contained HTML file from a ledger or a run directory."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report)


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
    from privmodel.workflows.report import write_report

    console = Console()
    with console.status("collecting evidence and drawing charts"):
        evidence = write_report(source, out, list(trust), tofu)
    states = {"ok": "[green]ledgers verified against trusted keys[/green]",
              "tofu": "[yellow]ledgers intact under their own keys only (trust on first use; pass --trust)[/yellow]",
              "fail": "[red]LEDGER VERIFICATION FAILED[/red]"}
    if evidence.status == "fail":  # one line, on stderr, exit 2 (the page itself carries the red banner)
        bad = next(le for le in evidence.ledgers if not le.verification.ok)
        raise InputError(f"{bad.path}: ledger verification failed ({bad.verification.first_problem}); "
                         f"report written to {out} with the failure on top")
    console.print(f"wrote {escape(str(out))} ({states[evidence.status]}; {len(evidence.releases)} release(s), "
                  f"{len(evidence.models)} model(s)"
                  + (f", {len(evidence.vertical)} vertical model(s))" if evidence.vertical else ")"), soft_wrap=True)

