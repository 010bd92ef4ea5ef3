"""`privmodel train | score | evaluate | curve`: parse, call one workflow (privmodel.workflows), print.

train     DATA -> model directory (weights, model_card.json/.md, metrics.json, the policy copy)
score     MODEL DATA -> per-customer propensity, decile (1 = highest) and tier, consenting customers only
evaluate  MODEL DATA -> the metrics of a trained model on labelled data (table + optional JSON)
curve     DATA -> privacy-utility curve over an ε grid (JSON, CSV, PNG), every private point charged

Nothing heavy is imported at module level (the CLI's --help must answer at once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from anonymize.errors import InputError
from privmodel.cli.common import KEYS_OPTION, LEDGER_OPTION
from privmodel.core.defaults import BATCH_RULE, DEFAULTS, LR_RULE
from privmodel.workflows.run_ledger import open_ledger, recorded_failure

if TYPE_CHECKING:
    from privmodel.workflows.train import TrainRequest

def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("score")(score)
    app.command("evaluate")(evaluate)
    app.command("curve")(curve)


@contextmanager
def _progress(label: str, total: float) -> Iterator[Callable[[float, str], None]]:
    """A rich progress bar on stderr that appears only once the work has taken more than 1 s."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    start = time.monotonic()
    bar: Progress | None = None
    task = None

    def advance(done: float, description: str = "") -> None:
        nonlocal bar, task
        if bar is None and time.monotonic() - start > 1.0:
            bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True), transient=True)
            bar.start()
            task = bar.add_task(label, total=total)
        if bar is not None and task is not None:
            bar.update(task, completed=done, description=description or label)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.stop()


def _float_list(text: str, option: str) -> list[float]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{option}: {part!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"{option}: values must be positive")
        values.append(value)
    if not values:
        raise InputError(f"{option}: no values")
    return values


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _request(**fields: object) -> TrainRequest:
    from privmodel.workflows.train import TrainRequest

    return TrainRequest(**fields)  # type: ignore[arg-type]


# --- train -----------------------------------------------------------------------------------------


def train(
    data: Path = typer.Argument(..., help="Customer table (CSV / Parquet): raw customer rows, or an anonymize release."),
    label: str = typer.Option(..., "--label", help="0/1 label column (e.g. churn)."),
    policy_path: Path = typer.Option(..., "--policy", help="Policy YAML: consent, purpose, public bounds, budget cap."),
    out: Path = typer.Option(..., "--out", help="Model directory to create (must not exist)."),
    epsilon: float = typer.Option(DEFAULTS.epsilon, "--epsilon", help="Target ε of the training run (charged before training)."),
    delta: float | None = typer.Option(None, "--delta", help=f"Target δ (must be below 1/n); default: "
                                       f"{DEFAULTS.delta_rule} for n training rows."),
    model: str = typer.Option(DEFAULTS.model, "--model", help="logreg | mlp"),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1),
    batch_size: int | None = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1,
                                          help=f"Expected batch size (Poisson sampling); default: {BATCH_RULE}."),
    lr: float | None = typer.Option(None, "--lr", help=f"Adam step size; default: {LR_RULE}."),
    clip: float = typer.Option(DEFAULTS.clip, "--clip", help="Per-example gradient norm bound."),
    clipping: str = typer.Option(DEFAULTS.clipping, "--clipping", help="flat | per_layer"),
    accountant: str = typer.Option(DEFAULTS.accountant, "--accountant", help="prv | rdp"),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Split and weight initialisation only; DP noise is always secret."),
    test_size: float = typer.Option(DEFAULTS.test_size, "--test-size", help="Held-out share for metrics (and the MIA audit)."),
    baseline: bool = typer.Option(False, "--baseline/--no-baseline",
                                  help="Also train a NON-private baseline (its metrics are released without DP)."),
    mia: bool = typer.Option(False, "--mia/--no-mia",
                             help="Run the membership-inference audit (its statistics are released without DP)."),
    tune_lr: str | None = typer.Option(None, "--tune-lr", help="Search these learning rates (comma-separated); "
                                       "the search fits within --epsilon (basic composition)."),
    tune_clip: str | None = typer.Option(None, "--tune-clip", help="Search these clipping norms (comma-separated)."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
    engine: str = typer.Option("local", "--engine", help="Data preparation: local (this process) or ray (Ray Data, "
                               "see docs/scale.md)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster for --engine ray (default: local Ray)."),
) -> None:
    """Train a DP propensity model, charge the dataset's budget and write the model card."""
    from rich.console import Console
    from rich.markup import escape

    from privmodel.workflows import train as workflow

    space = {k: _float_list(v, f"--tune-{k}") for k, v in (("lr", tune_lr), ("clip", tune_clip)) if v}
    req = _request(data=data, label=label, policy=policy_path, out=out, epsilon=epsilon, delta=delta, model=model,
                   epochs=epochs, batch_size=batch_size, lr=lr, clip=clip, clipping=clipping, accountant=accountant,
                   seed=seed, test_size=test_size, baseline=baseline, mia=mia, tune=space, engine=engine,
                   ray_address=ray_address)
    workflow.check_request(req)
    book = open_ledger(ledger, _parent(out), keys)
    with _progress("training", 1 + int(baseline) + int(mia)) as advance:
        outcome = workflow.train(req, book, keys, advance)
    auc = "n/a" if outcome.roc_auc is None else f"{outcome.roc_auc:.3f}"
    removed = sum(outcome.rows["removed"].values())
    Console().print(
        f"[green]trained[/green] {out}: ε = {epsilon:g}, δ = {outcome.delta:g} per {outcome.rows['unit']} ({accountant}); "
        f"{outcome.rows['rows_used']} rows used, {removed} removed by the policy; held-out ROC-AUC {auc}; "
        f"budget spent ε = {outcome.spent_epsilon:.3f}, δ = {outcome.spent_delta:g}",
        soft_wrap=True, markup=True, highlight=False,
    )
    for warning in outcome.warnings:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True, highlight=False)


# --- score -----------------------------------------------------------------------------------------


def score(
    model_dir: Path = typer.Argument(..., help="Model directory from `privmodel train`."),
    data: Path = typer.Argument(..., help="Customers to score (CSV / Parquet)."),
    out: Path = typer.Option(..., "--out", help="Output table (.csv / .parquet), written atomically."),
    policy_path: Path | None = typer.Option(None, "--policy", help="The model's policy (default: its stored copy)."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Propensity, decile (1 = highest) and tier per consenting customer; identifiers come out keyed."""
    from privmodel.workflows import score as workflow

    result = workflow.score_to_file(model_dir, data, out, keys, policy_path, ledger)
    counts = result.table["tier"].value_counts()
    removed = sum(result.rows.removed.values())
    typer.echo(f"scored {len(result.table)} rows -> {out} ({workflow.TIER_RULE}; "
               + ", ".join(f"{name}: {int(counts.get(name, 0))}" for _, _, name in workflow.TIERS)
               + f"); {removed} rows not scored (policy: consent / quality)")


# --- evaluate --------------------------------------------------------------------------------------


def evaluate(
    model_dir: Path = typer.Argument(..., help="Model directory from `privmodel train`."),
    data: Path = typer.Argument(..., help="Labelled customers (CSV / Parquet)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the metrics as JSON."),
    policy_path: Path | None = typer.Option(None, "--policy", help="The model's policy (default: its stored copy)."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Metrics of a trained model on labelled data: AUCs, Brier, ECE, lift, fairness gaps."""
    from rich.console import Console
    from rich.table import Table

    from privmodel.workflows import score as workflow

    result = workflow.evaluate_to_file(model_dir, data, out, keys, policy_path, ledger)
    table = Table(title=f"{model_dir.name} on {data.name} ({result['n']} rows, base rate {result['base_rate']:.3f})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "top_decile_gain"):
        value = result[key]
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    fairness = result["fairness"]
    for column, stats in ((fairness.get("columns") if fairness else None) or {}).items():
        for gap in ("demographic_parity_difference", "equal_opportunity_difference"):
            value = stats[gap]
            table.add_row(f"{gap} [{column}]", "n/a" if value is None else f"{value:.4f}")
    Console().print(table)


# --- curve -----------------------------------------------------------------------------------------


def curve(
    data: Path = typer.Argument(..., help="Customer table (CSV / Parquet)."),
    label: str = typer.Option(..., "--label"),
    policy_path: Path = typer.Option(..., "--policy"),
    out: Path = typer.Option(..., "--out", help="Directory for curve.json, curve.csv, curve.png."),
    grid: str = typer.Option("0.25,0.5,1", "--grid",
                             help="ε values, all charged (their sum); 'inf' adds a NON-private point (opt-in)."),
    delta: float = typer.Option(DEFAULTS.delta, "--delta"),
    model: str = typer.Option(DEFAULTS.model, "--model"),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", min=1),
    batch_size: int | None = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help=f"Default: {BATCH_RULE}."),
    lr: float | None = typer.Option(None, "--lr", help=f"Default: {LR_RULE}."),
    clip: float = typer.Option(DEFAULTS.clip, "--clip"),
    clipping: str = typer.Option(DEFAULTS.clipping, "--clipping"),
    accountant: str = typer.Option(DEFAULTS.accountant, "--accountant"),
    seed: int = typer.Option(DEFAULTS.seed, "--seed"),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Runs per ε (mean and spread); each one is charged."),
    test_size: float = typer.Option(DEFAULTS.test_size, "--test-size"),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Privacy-utility curve: held-out metrics of the same model at each ε of a grid (all charged)."""
    from privmodel.evaluation import utility_curve
    from privmodel.workflows import curve as workflow
    from privmodel.workflows.train import check_privacy_args

    eps_grid = utility_curve.parse_grid(grid)
    check_privacy_args(1.0, delta)
    if not data.is_file():
        raise InputError(f"{data}: no such file")
    req = _request(data=data, label=label, policy=policy_path, out=out, delta=delta, model=model, epochs=epochs,
                   batch_size=batch_size, lr=lr, clip=clip, clipping=clipping, accountant=accountant, seed=seed,
                   test_size=test_size)
    from privmodel.core.fileio import ensure_output_dir

    book = open_ledger(ledger, ensure_output_dir(out), keys)
    with _progress("privacy-utility curve", len(eps_grid)) as advance:
        done = [0]

        def tick(_eps: float) -> None:
            done[0] += 1
            advance(done[0], "privacy-utility curve")

        with recorded_failure("model.curve", ledger, out, keys, [data, policy_path]):
            result = workflow.curve(req, eps_grid, repeats, book, keys, tick)
    typer.echo(f"curve over {len(eps_grid)} ε values (charged ε = {result.charged_epsilon:g}) -> "
               f"{result.paths['json']}, {result.paths['csv']}, {result.paths['png']}")
