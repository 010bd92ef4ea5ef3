"""Synthetic customers written as files: the `privmodel synth` workflow (the demo calls it too).

Parameters are checked before anything is written; the files are staged and published together
with one signed `synth` ledger entry (`privmodel.core.fileio.outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError
from privmodel.workflows.run_ledger import ledger_path, open_ledger, recorded_failure

if TYPE_CHECKING:
    from privmodel.data.synth.summary import SynthSummary


@dataclass(frozen=True)
class SynthRequest:
    out: Path
    customers: int = 10_000
    silos: int = 1
    seed: int = 0
    fmt: str = "parquet"
    heterogeneity: float = 0.5
    locales: list[str] = field(default_factory=lambda: ["en_US"])
    one_file: bool = False
    mess_rate: float = 0.0
    ledger: Path | None = None
    keys: Path | None = None
    chunk_rows: int | None = None  # rows generated and written at a time (None: CHUNK_ROWS)


@dataclass(frozen=True)
class Synthesized:
    summary: SynthSummary  # per-silo figures and Bayes AUCs; the rows themselves are only in the files
    files: list[Path]
    ledger: Path


def synthesize(req: SynthRequest, status: Callable[[str], None] = lambda _msg: None) -> Synthesized:
    """Generate and write the customers chunk by chunk (memory follows the chunk size, not N);
    `status(message)` is called as each phase starts."""
    from privmodel.core.fileio import outputs
    from privmodel.data.synth.core import CHUNK_ROWS, check_params, generate_chunks
    from privmodel.data.synth.locales import check_locales
    from privmodel.data.synth.output import FORMATS, planned_names, stage_outputs, stale_silos
    from privmodel.data.synth.summary import SynthSummary

    fmt = req.fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    locales = check_locales(list(req.locales) or ["en_US"])
    check_params(req.customers, req.silos, req.heterogeneity, req.mess_rate)
    if req.ledger is not None and not req.ledger.parent.is_dir():  # fail before writing anything
        raise InputError(f"--ledger: {req.ledger.parent}: directory does not exist")
    if req.out.exists() and not req.out.is_dir():
        raise InputError(f"{req.out}: exists and is not a directory")
    book_path = ledger_path(req.ledger, req.out)
    names = planned_names(req.silos, fmt, req.one_file)
    targets = [req.out / n for n in names] + stale_silos(req.out, names)
    params = {"customers": req.customers, "silos": req.silos, "seed": req.seed, "format": fmt,
              "heterogeneity": req.heterogeneity, "locales": list(locales), "one_file": req.one_file,
              "mess_rate": req.mess_rate}
    with recorded_failure("synth", req.ledger, req.out, req.keys), \
            outputs(targets, replace=True, ledger=book_path, action="synth") as stage:
        book = open_ledger(book_path, req.out, req.keys)
        status(f"generating and writing {req.customers:,} customers over {req.silos} silo(s)...")
        chunks = generate_chunks(req.customers, req.silos, seed=req.seed, heterogeneity=req.heterogeneity,
                                 locales=locales, mess_rate=req.mess_rate, chunk_rows=req.chunk_rows or CHUNK_ROWS)
        summary = SynthSummary()
        files = stage_outputs(stage, summary.gather(chunks), req.out, fmt, req.one_file)
        book.append("synth", outputs=stage.artifacts(), params=params)
        stage.publish()
    return Synthesized(summary=summary, files=list(files), ledger=book_path)


def synthesize_vertical(out: Path, customers: int, overlap: float, seed: int = 0, fmt: str = "parquet",
                        ledger: Path | None = None, keys: Path | None = None, feature_parties: int = 1) -> dict[str, Any]:
    """A label party (bank) and feature parties (retailer; with `feature_parties` 2 also a telco) over
    one population (`privmodel synth --vertical`).

    Writes bank.<fmt>, retailer.<fmt> (telco.<fmt>), each party's policy and party file, all or
    nothing, after one signed `synth.vertical` ledger entry. Returns the summary (rows per party,
    overlap, base rate).
    """
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    import yaml

    from privmodel.core.fileio import outputs
    from privmodel.data.synth.output import FORMATS
    from privmodel.data.synth.vertical import (
        BANK,
        FEATURE_PARTIES,
        check_feature_parties,
        check_overlap,
        generate_vertical,
        party_policies,
    )

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    check_overlap(overlap)
    check_feature_parties(feature_parties)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if ledger is not None and not ledger.parent.is_dir():
        raise InputError(f"--ledger: {ledger.parent}: directory does not exist")
    book_path = ledger_path(ledger, out)
    docs = party_policies(max(1, min(1000, customers // 100)), feature_parties)
    tables = [f"{name}.{fmt}" for name in (BANK, *FEATURE_PARTIES[:feature_parties])]
    params = {"customers": customers, "overlap": overlap, "seed": seed, "format": fmt, "vertical": True,
              **({"feature_parties": feature_parties} if feature_parties > 1 else {})}
    with recorded_failure("synth.vertical", ledger, out, keys), \
            outputs([out / n for n in [*tables, *docs]], replace=True, ledger=book_path, action="synth.vertical") as stage:
        book = open_ledger(book_path, out, keys)
        data = generate_vertical(customers, overlap=overlap, seed=seed, feature_parties=feature_parties)
        for name, table in zip(tables, data.tables().values(), strict=True):
            if fmt == "parquet":
                pq.write_table(table, stage.path(out / name), compression="snappy")
            else:
                pcsv.write_csv(table, stage.path(out / name))
        for name, doc in docs.items():
            stage.write_text(out / name, yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        summary: dict[str, Any] = data.summary()
        book.append("synth.vertical", outputs=stage.artifacts(), params={**params, **summary})
        stage.publish()
    return summary
