"""`privmodel synth --vertical`: a label party (bank) and a feature party (retailer) over one population.

Writes bank.<fmt>, retailer.<fmt>, each party's policy and party file, all or nothing, after one
signed `synth.vertical` ledger entry. Imports stay inside the function so `privmodel --help` is fast.
"""

from __future__ import annotations

from pathlib import Path


def write_vertical(out: Path, customers: int, overlap: float, seed: int, fmt: str,
                   ledger: Path | None, keys: Path | None) -> None:
    """Generate the two parties and print their sizes, the overlap and the ground truth's AUC."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    import yaml
    from rich.console import Console

    from anonymize.errors import InputError
    from privmodel.commands.common import ledger_path, open_ledger, recorded_failure
    from privmodel.fileio import outputs
    from privmodel.synth.output import FORMATS
    from privmodel.synth.vertical import BANK, RETAILER, check_overlap, generate_vertical, party_policies

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    check_overlap(overlap)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if ledger is not None and not ledger.parent.is_dir():
        raise InputError(f"--ledger: {ledger.parent}: directory does not exist")
    book_path = ledger_path(ledger, out)
    min_overlap = max(1, min(1000, customers // 100))
    docs = party_policies(min_overlap)
    tables = [f"{BANK}.{fmt}", f"{RETAILER}.{fmt}"]
    params = {"customers": customers, "overlap": overlap, "seed": seed, "format": fmt, "vertical": True}
    with recorded_failure("synth.vertical", ledger, out, keys), \
            outputs([out / n for n in [*tables, *docs]], replace=True, ledger=book_path, action="synth.vertical") as stage:
        book = open_ledger(book_path, out, keys)
        data = generate_vertical(customers, overlap=overlap, seed=seed)
        for name, table in zip(tables, (data.bank, data.retailer), strict=True):
            if fmt == "parquet":
                pq.write_table(table, stage.path(out / name), compression="snappy")
            else:
                pcsv.write_csv(table, stage.path(out / name))
        for name, doc in docs.items():
            stage.write_text(out / name, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        summary = data.summary()
        book.append("synth.vertical", outputs=stage.artifacts(), params={**params, **summary})
        stage.publish()
    Console().print(
        f"bank {summary['bank_rows']:,} rows (label party), retailer {summary['retailer_rows']:,} rows "
        f"(feature party), shared {summary['shared']:,} ({overlap:.0%} of the bank's customers); "
        f"churn rate {summary['churn_rate']:.3f}, ground-truth AUC {summary['bayes_auc']:.3f}; in {out}"
    )
