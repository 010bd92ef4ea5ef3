"""`privmodel audit verify|show`: check and read the signed ledger."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Verify and read the signed audit ledger.", no_args_is_help=True)
    audit_app.command("verify")(verify)
    audit_app.command("show")(show)
    app.add_typer(audit_app, name="audit")


def verify(
    ledger: Path = typer.Argument(..., help="Ledger file (JSON lines)."),
    keys: list[Path] = typer.Option(
        None, "--keys", help="Trusted key directory or .pub file (repeatable). Default: the genesis entry's key."
    ),
) -> None:
    """Exit 0 only when every entry, the chain and the signed head are intact; 2 otherwise."""
    from privmodel.audit import verify as verify_ledger
    from privmodel.keys import load_public_key

    trusted = [load_public_key(k) for k in keys] if keys else None
    result = verify_ledger(ledger, trusted)
    console = Console()
    if result.ok:
        console.print(
            f"[green]OK[/green] {ledger}: {result.entries} entries, chain and signatures intact "
            f"(trusted: {result.trust}; key ids {', '.join(result.trusted_key_ids)})",
            soft_wrap=True,
        )
        return
    console.print(f"[red]FAILED[/red] {ledger}: first bad entry: {result.first_problem}", soft_wrap=True)
    for problem in result.problems[1:]:
        console.print(f"  also: {problem}", soft_wrap=True)
    raise typer.Exit(2)


def show(
    ledger: Path = typer.Argument(..., help="Ledger file (JSON lines)."),
    limit: int = typer.Option(0, "--limit", help="Show only the last N entries (0 = all)."),
) -> None:
    """Print the ledger as a readable table."""
    from privmodel.audit import read_entries

    entries = read_entries(ledger)
    if limit > 0:
        entries = entries[-limit:]
    table = Table(title=str(ledger), show_lines=False)
    for column in ("seq", "time", "actor", "action", "outcome", "inputs -> outputs", "privacy cost"):
        table.add_column(column, overflow="fold")
    for e in entries:
        files = ", ".join(f"{a['name']}:{a['sha256'][:8]}" for a in e.get("inputs", []))
        outs = ", ".join(f"{a['name']}:{a['sha256'][:8]}" for a in e.get("outputs", []))
        cost = e.get("privacy_cost") or {}
        cost_text = ", ".join(f"{k}={v}" for k, v in cost.items()) if cost else ""
        outcome = e.get("outcome", "")
        if outcome == "failed" and e.get("reason"):
            outcome = f"failed: {e['reason']}"
        table.add_row(
            str(e.get("seq")), str(e.get("time", ""))[:19], str(e.get("actor")), str(e.get("action")),
            outcome, f"{files} -> {outs}" if files or outs else "", cost_text,
        )
    # A pipe or file gets the full table, not one squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
