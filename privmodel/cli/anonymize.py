"""`privmodel anonymize | reidentify | rotate-keys`: parse, call `privmodel.workflows.release`, print.

Start-up stays light: pandas, the anonymize pipeline and scikit-learn load inside the workflow.
"""

from __future__ import annotations

from pathlib import Path

import typer

from privmodel.cli.common import KEYS_OPTION, LEDGER_OPTION


def register(app: typer.Typer) -> None:
    app.command("anonymize")(anonymize)
    app.command("reidentify")(reidentify)
    app.command("rotate-keys")(rotate_keys)


def anonymize(
    input: Path = typer.Argument(..., help="Raw table (CSV or Parquet)."),
    policy: Path = typer.Option(..., "--policy", help="Release policy (YAML)."),
    keys: Path = KEYS_OPTION,
    out: Path = typer.Option(..., "--out", help="Output directory for the release and its reports."),
    partner: str = typer.Option(None, "--partner", help="Recipient of the release: tokens differ per partner."),
    fmt: str = typer.Option("parquet", "--format", help="Release format: parquet or csv."),
    population: Path = typer.Option(None, "--population", help="Population table for journalist risk."),
    ledger: Path = LEDGER_OPTION,
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data, see docs/scale.md)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster for --engine ray (default: local Ray)."),
    batch_rows: int = typer.Option(None, "--batch-rows", help="Stream a Parquet or CSV input in batches of this many rows "
                                   "(default: only inputs over 2M rows stream, in batches of 524,288)."),
) -> None:
    """Validate, filter, pseudonymize and generalize INPUT as the policy says; write release + report."""
    from rich.console import Console

    from privmodel.workflows.release import ReleaseRequest, release

    req = ReleaseRequest(input=input, policy=policy, out=out, keys=keys, partner=partner, fmt=fmt,
                         population=population, ledger=ledger, engine=engine, ray_address=ray_address,
                         batch_rows=batch_rows)
    status = Console(stderr=True).status("anonymize: starting")
    with status:
        rows = release(req, progress=lambda step: status.update(f"anonymize: {step}"))
    typer.echo(f"released {rows['released']} of {rows['input']} rows to {req.target} (report: {out / 'report.txt'})")


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
    from privmodel.workflows import release as workflow

    n = workflow.reidentify(workflow.ReidentifyRequest(release=release, column=column, keys=keys, policy=policy,
                                                       out=out, rows=rows, partner=partner, escrow=escrow,
                                                       ledger=ledger))
    typer.echo(f"re-identified {n} rows of column {column} into {out}")


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
    from privmodel.workflows import release as workflow

    rotated = workflow.rotate_keys(workflow.RotateRequest(release=release, policy=policy, old_keys=old_keys,
                                                          new_keys=new_keys, out=out, escrow=escrow,
                                                          partner=partner, keys=keys, ledger=ledger))
    typer.echo(f"re-keyed {', '.join(f'{c} ({n})' for c, n in rotated.items()) or 'no columns'} into {out}")
