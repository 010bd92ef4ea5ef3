"""`privmodel synth`: synthetic customers over silos, a starter policy and a ledger entry.

numpy, pandas, pyarrow and Faker are imported inside the command so `privmodel --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from privmodel.cli.common import KEYS_OPTION, LEDGER_OPTION


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)


def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    customers: int = typer.Option(10_000, "--customers", help="Number of customers N."),
    silos: int = typer.Option(1, "--silos", help="Number of silos S (bank branches / partner firms), 1 <= S <= N."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same bytes."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    heterogeneity: float = typer.Option(
        0.5, "--heterogeneity", help="0 = identical silos, 1 = strongly different regions, ages, incomes, base rates."
    ),
    locale: list[str] = typer.Option(
        None, "--locale", help="Faker locale (repeatable to mix countries; default en_US)."
    ),
    one_file: bool = typer.Option(False, "--one-file", help="One file with a silo column instead of one per silo."),
    mess_rate: float = typer.Option(
        0.0, "--mess-rate", help="Share of rows (each) with missing values, bad phones/dates, bad ages, duplicates."
    ),
    vertical: bool = typer.Option(
        False, "--vertical", help="Write a label party (bank) and a feature party (retailer) over one population."
    ),
    overlap: float = typer.Option(
        0.7, "--overlap", help="With --vertical: share of the bank's customers each feature party holds."
    ),
    feature_parties: int = typer.Option(
        1, "--feature-parties", help="With --vertical: 1 (retailer) or 2 (retailer and telco) feature parties."
    ),
    ledger: Path = LEDGER_OPTION,
    keys: Path = KEYS_OPTION,
) -> None:
    """Generate N synthetic customers over S silos (labels from a known ground truth)."""
    if vertical:
        from rich.console import Console

        from privmodel.workflows.synthesize import synthesize_vertical

        summary = synthesize_vertical(out, customers, overlap, seed, fmt, ledger, keys, feature_parties)
        telco = (f", telco {summary['telco_rows']:,} rows (feature party); {summary['shared_all']:,} customers of all "
                 "three" if "telco_rows" in summary else "")
        Console().print(
            f"bank {summary['bank_rows']:,} rows (label party), retailer {summary['retailer_rows']:,} rows "
            f"(feature party){telco}, shared {summary['shared']:,} ({overlap:.0%} of the bank's customers, per "
            "feature party); "
            f"churn rate {summary['churn_rate']:.3f}, ground-truth AUC {summary['bayes_auc']:.3f}; in {out}"
        )
        return
    from rich.console import Console
    from rich.table import Table

    from privmodel.workflows.synthesize import SynthRequest, synthesize

    req = SynthRequest(out=out, customers=customers, silos=silos, seed=seed, fmt=fmt, heterogeneity=heterogeneity,
                       locales=list(locale) if locale else ["en_US"], one_file=one_file, mess_rate=mess_rate,
                       ledger=ledger, keys=keys)
    status = Console(stderr=True).status("starting")
    with status:
        made = synthesize(req, status.update)
    facts, files, book_path, out_dir = made.summary, made.files, made.ledger, out

    table = Table(title=f"{facts.total_rows:,} customers in {out_dir}")
    for column in ("silo", "rows", "churn rate", "purchase rate", "mean age", "home region"):
        table.add_column(column, justify="right" if column != "home region" else "left")
    for prof in facts.profiles:
        s = prof.silo
        rows = max(int(facts.rows[s]), 1)
        table.add_row(
            str(s),
            f"{int(facts.rows[s]):,}",
            f"{facts.churn[s] / rows:.3f}",
            f"{facts.purchase[s] / rows:.3f}",
            f"{facts.age_sum[s] / max(int(facts.age_rows[s]), 1):.1f}",
            facts.regions[prof.home_region],
        )
    console = Console()
    console.print(table)
    console.print(
        f"ground truth: Bayes AUC churn {facts.auc_churn.value():.3f}, "
        f"will_purchase {facts.auc_purchase.value():.3f}"
    )
    if facts.mess:
        console.print(
            "mess injected (rows each): " + ", ".join(f"{k} {v}" for k, v in facts.mess.items() if k != "rate")
        )
    console.print("files: " + ", ".join(p.name for p in files) + f"; ledger: {book_path}")
