"""`privmodel demo`: the whole pipeline on built-in defaults (synthetic partners, no arguments)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from privmodel.workflows.demo import DemoResult


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    out: Path = typer.Option(Path("out"), "--out", help="Directory for every output (cleared if a previous demo made it)."),
    customers: int = typer.Option(30_000, "--customers", help="Synthetic customers over all partners."),
    partners: int = typer.Option(3, "--partners", help="Partner silos."),
    rounds: int = typer.Option(5, "--rounds", help="Federated rounds."),
    epochs: int = typer.Option(10, "--epochs", help="Local / central training epochs."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Privacy budget of each DP model (per partner when federated)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthetic partners -> anonymized releases -> central and federated DP models -> verified ledgers -> report."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from anonymize.errors import InputError
    from privmodel.workflows.demo import DemoSettings, run_demo, stage_count

    if customers < 1000 * partners:
        raise InputError(f"--customers must be at least 1000 per partner ({1000 * partners} for {partners})")
    if partners < 2:
        raise InputError("--partners must be at least 2 (the federated step needs partners)")
    settings = DemoSettings(out=out, customers=customers, partners=partners, seed=seed, epsilon=epsilon,
                            epochs=epochs, rounds=rounds)
    console = Console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("starting", total=stage_count(settings))

        def step(description: str) -> None:
            progress.update(task, description=description, advance=0 if progress.tasks[0].description == "starting" else 1)

        result = run_demo(settings, step)
        progress.update(task, description="done", completed=stage_count(settings))
    _print_summary(console, result)


def _print_summary(console: Console, result: DemoResult) -> None:
    """The headline figures (rich and privmodel.workflows.demo are imported lazily: `privmodel --help` stays fast)."""
    from rich.table import Table

    h = result.headline
    table = Table(title=f"privmodel demo: {result.out} ({result.seconds:.0f} s)")
    table.add_column("figure")
    table.add_column("value")
    for partner, f in h["partners"].items():
        table.add_row(f"{partner}: release", f"k = {f['k']}, max prosecutor risk = {_r(f['prosecutor_max'])}, "
                      f"{f['rows_released']} rows released")
    c = h["central"]
    table.add_row("central DP model", f"ε = {_r(c['epsilon'])}, ROC-AUC {_r(c['roc_auc_private'])} "
                  f"vs non-private {_r(c['roc_auc_baseline'])}; membership attack AUC {_r(c['mia_auc'])}")
    if "federated" in h:
        f = h["federated"]
        table.add_row("federated DP model", f"ROC-AUC {_r(f['roc_auc'])} vs centralized {_r(c['roc_auc_private'])}; "
                      f"ε per partner: {', '.join(f'{k} {_r(v)}' for k, v in f['epsilon_per_partner'].items())}")
    table.add_row("ledgers", "[green]all verified[/green]" if result.ledgers_ok else "[red]VERIFICATION FAILED[/red]")
    table.add_row("report", str(result.out / "report.html"))
    console.print(table)


def _r(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
