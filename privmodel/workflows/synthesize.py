"""Synthetic customers written as files: the `privmodel synth` workflow (the demo calls it too).

Parameters are checked before anything is written; the files are staged and published together
with one signed `synth` ledger entry (`privmodel.core.fileio.outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from anonymize.errors import InputError
from privmodel.workflows.run_ledger import ledger_path, open_ledger, recorded_failure

if TYPE_CHECKING:
    from privmodel.data.synth.core import SynthData


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


@dataclass(frozen=True)
class Synthesized:
    data: SynthData
    files: list[Path]
    ledger: Path


def synthesize(req: SynthRequest, status: Callable[[str], None] = lambda _msg: None) -> Synthesized:
    """Generate and write the customers; `status(message)` is called as each phase starts."""
    from privmodel.core.fileio import outputs
    from privmodel.data.synth import generate_data
    from privmodel.data.synth.core import check_params
    from privmodel.data.synth.locales import check_locales
    from privmodel.data.synth.output import FORMATS, planned_names, stage_outputs, stale_silos

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
        status(f"generating {req.customers:,} customers over {req.silos} silo(s)...")
        data = generate_data(req.customers, req.silos, seed=req.seed, heterogeneity=req.heterogeneity,
                             locales=locales, mess_rate=req.mess_rate)
        status("writing files...")
        files = stage_outputs(stage, data, req.out, fmt, req.one_file)
        book.append("synth", outputs=stage.artifacts(), params=params)
        stage.publish()
    return Synthesized(data=data, files=list(files), ledger=book_path)
