"""`privmodel budget show`: spent / cap per dataset in the organisation's budget store, verified."""

from __future__ import annotations

from pathlib import Path

import typer

from privmodel.cli.common import KEYS_OPTION


def register(app: typer.Typer) -> None:
    budget_app = typer.Typer(help="The organisation's privacy budget per dataset.", no_args_is_help=True)
    budget_app.command("show")(show)
    app.add_typer(budget_app, name="budget")


def show(keys: Path = KEYS_OPTION) -> None:
    """Print spent / cap (ε, δ) and the number of charges per dataset, after verifying the store's
    signed hash chain and head against the organisation's own key (exit 2 when that fails)."""
    from rich.console import Console
    from rich.table import Table

    from privmodel.dp import budget

    state = budget.read_store(keys)  # InputError (one line, exit 2) when the chain or head fails
    console = Console()
    if state is None:
        console.print("no budget store yet: nothing has been charged")
        return
    table = Table(title=f"privacy budget ({state.location})")
    for name in ("dataset", "spent ε", "cap ε", "spent δ", "cap δ", "charges", "refused"):
        table.add_column(name, justify="left" if name == "dataset" else "right")
    for item in sorted(state.datasets(), key=lambda d: budget.label(d.dataset)):
        cap_eps = f"{item.cap.epsilon:.4g}" if item.cap else "-"
        cap_delta = f"{item.cap.delta:.3g}" if item.cap else "-"
        table.add_row(budget.label(item.dataset), f"{item.spent.epsilon:.4g}", cap_eps, f"{item.spent.delta:.3g}",
                      cap_delta, str(item.spent.charges), str(item.refusals))
    console.print(table)
    lineage = len(state.lineage)
    console.print(f"chain verified: {len(state.events)} event(s) signed by the organisation's key {state.key_id}; "
                  f"{lineage} derived file hash(es) recorded in lineage; composition {budget.COMPOSITION}",
                  soft_wrap=True)
