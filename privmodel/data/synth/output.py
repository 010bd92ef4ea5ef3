"""Writing silos (Parquet or CSV) and the starter policy, all or nothing.

Every file is staged through `privmodel.core.fileio.outputs` and published only after all of them were
written (and, from the CLI, after the ledger entry), so an error leaves no partial output and never
removes a file this run did not create. pyarrow writes both formats: it is several times faster
than pandas and its bytes depend only on the table (same seed, same bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from anonymize.errors import InputError
from privmodel.core.fileio import Staging, outputs
from privmodel.data.synth.core import BEHAVIOUR, SynthData
from privmodel.data.synth.population import BOUNDS, CHANNELS, GENDERS, MARITAL, OCCUPATIONS

FORMATS = ("parquet", "csv")
POLICY_NAME = "policy.yaml"
ONE_FILE_STEM = "customers"
# the quasi-identifiers the churn purpose may use, then every behaviour column
CHURN_FEATURES = ("age", "gender", "zip_code", "occupation", "marital_status", *BEHAVIOUR)


def silo_files(table: pa.Table, fmt: str, one_file: bool) -> dict[str, pa.Table]:
    """File name -> rows of `table` (one chunk, silo-sorted): silo_<s>.<fmt> without the silo column
    for each silo in it, or one file keeping it."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    if one_file:
        return {f"{ONE_FILE_STEM}.{fmt}": table}
    silo = table.column("silo").to_numpy()
    present = np.unique(silo)
    starts = np.searchsorted(silo, present, side="left")
    ends = np.searchsorted(silo, present, side="right")
    rest = table.drop_columns(["silo"])
    return {f"silo_{s}.{fmt}": rest.slice(a, b - a) for s, a, b in zip(present, starts, ends, strict=True)}


def planned_names(n_silos: int, fmt: str, one_file: bool, policy: bool = True) -> list[str]:
    """The file names a run writes, known before generating anything (so they can be checked first)."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    names = [f"{ONE_FILE_STEM}.{fmt}"] if one_file else [f"silo_{s}.{fmt}" for s in range(n_silos)]
    return names + ([POLICY_NAME] if policy else [])


def stale_silos(out: Path, keep: Iterable[str]) -> list[Path]:
    """Silo files of an earlier run with more silos or another format (only names this module writes)."""
    kept = set(keep)
    found = []
    for path in sorted(out.glob("silo_*.*")) if out.is_dir() else []:
        stem, _, ext = path.name.partition(".")
        if ext in FORMATS and stem[5:].isdigit() and path.name not in kept:
            found.append(path)
    return found


def stage_outputs(stage: Staging, data: SynthData | Iterable[SynthData], out: Path, fmt: str = "parquet",
                  one_file: bool = False, policy: bool = True) -> list[Path]:
    """Write the silo files (and policy.yaml) into `stage`; retire stale silos. Returns the final paths.

    `data` is one population or its chunks (`generate_chunks`): each chunk is appended to the open
    files and dropped, so memory follows the chunk size, not the row count.
    """
    import yaml

    first: SynthData | None = None  # the run's set-up, without rows
    with _Writers(stage, out, fmt) as writers:
        for chunk in [data] if isinstance(data, SynthData) else data:
            first = first or replace(chunk, table=chunk.table.schema.empty_table(), p_churn=np.zeros(0),
                                     p_will_purchase=np.zeros(0))
            writers.write_chunk(silo_files(chunk.table, fmt, one_file))
            del chunk  # else the loop keeps this chunk alive while the next one is generated
        if first is None:
            raise InputError("no rows to write")
        if not one_file:  # a silo without rows still gets its (empty) file, as every planned name does
            empty = first.table.drop_columns(["silo"]).schema.empty_table()
            for name in planned_names(len(first.profiles), fmt, one_file, policy=False):
                if name not in writers.names:
                    writers.write(name, empty)
    written = [out / name for name in writers.names]
    if policy:
        text = yaml.safe_dump(
            starter_policy(first, one_file), sort_keys=False, allow_unicode=True, width=120, default_flow_style=None
        )
        stage.write_text(out / POLICY_NAME, POLICY_HEADER + text)
        written.append(out / POLICY_NAME)
    for path in stale_silos(out, (p.name for p in written)):
        stage.retire(path)  # one dataset per directory: an earlier run's extra silos go at publish
    return written


class _Writers:
    """One streaming writer per output file, opened at its first rows, all closed on leaving."""

    def __init__(self, stage: Staging, out: Path, fmt: str) -> None:
        self.stage, self.out, self.fmt = stage, out, fmt
        self.open: dict[str, Any] = {}
        self.names: list[str] = []

    def write(self, name: str, table: pa.Table) -> None:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        writer = self.open.get(name)
        if writer is None:
            if name in self.names:
                raise RuntimeError(f"{name}: rows after the file was closed (chunks must be in silo order)")
            tmp = self.stage.path(self.out / name)
            if self.fmt == "parquet":
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            else:
                writer = pcsv.CSVWriter(tmp, table.schema, write_options=pcsv.WriteOptions(quoting_style="needed"))
            self.open[name] = writer
            self.names.append(name)
        writer.write_table(table)

    def write_chunk(self, files: dict[str, pa.Table]) -> None:
        """Append one chunk's rows per file, then finish the files it completed (silo-sorted:
        only its last silo may go on in the next chunk; few files open however many silos)."""
        for name, table in files.items():
            self.write(name, table)
        self.close_all_but(list(files)[-1:])

    def close_all_but(self, keep: list[str]) -> None:
        """Finish every open file but `keep`."""
        for name in [n for n in self.open if n not in keep]:
            self.open.pop(name).close()

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        for writer in self.open.values():
            if failed is None:
                writer.close()
            else:  # the staged files are discarded anyway: keep the first error
                with suppress(Exception):
                    writer.close()


def write_outputs(
    data: SynthData, out_dir: str | Path, fmt: str = "parquet", one_file: bool = False, policy: bool = True
) -> list[Path]:
    """Library use (no ledger): write the silo files (and policy.yaml) into an existing directory.

    Replaces this module's own file names only; returns the paths in writing order.
    """
    out = Path(out_dir)
    names = planned_names(len(data.profiles), fmt, one_file, policy)
    if not out.is_dir():
        raise InputError(f"{out}: output directory does not exist")
    targets = [out / n for n in names] + stale_silos(out, names)
    with outputs(targets, replace=True) as stage:
        written = stage_outputs(stage, data, out, fmt, one_file, policy)
        stage.publish()
    return written


POLICY_HEADER = (
    "# Starter policy written by `privmodel synth`: what happens to each column of the synthetic silos.\n"
    "# Bounds and categories are PUBLIC metadata (fixed by the generator, not read from the data).\n"
)


# Skewed non-negative behaviour columns (exponential / log-normal in the generator): the DP encoder
# takes log1p before scaling, else most customers sit in the bottom few percent of [0, 1].
LOG1P_COLUMNS = ("annual_income", "tenure_months", "recency_days", "frequency", "monetary", "monthly_balance")


def starter_policy(data: SynthData, one_file: bool = False) -> dict[str, Any]:
    """The policy document (architecture.md format) for the generated columns."""
    cities = sorted(data.city_region)
    country = {r: r.split(" ")[0] for r in data.regions}
    columns: dict[str, dict[str, Any]] = {
        "customer_id": {"role": "identifier", "type": "string", "method": "token", "length": 16},
        "full_name": {"role": "identifier", "type": "string", "method": "drop"},
        "email": {"role": "identifier", "type": "string", "method": "drop"},
        "phone": {"role": "identifier", "type": "string", "method": "drop"},
        "national_id": {"role": "identifier", "type": "string", "method": "encrypt"},
        "street_address": {"role": "identifier", "type": "string", "method": "drop"},
        "birth_date": {
            "role": "quasi_identifier",
            "type": "date",
            "hierarchy": {"type": "date", "levels": ["month", "year", "decade"]},
        },
        "age": {
            "role": "quasi_identifier",
            "type": "integer",
            "bounds": list(BOUNDS["age"]),
            "hierarchy": {"type": "intervals", "widths": [5, 10, 20]},
        },
        "gender": {
            "role": "quasi_identifier",
            "type": "categorical",
            "categories": list(GENDERS),
            "hierarchy": {"type": "tree", "levels": {g: [] for g in GENDERS}},
        },
        "zip_code": {"role": "quasi_identifier", "type": "string", "hierarchy": {"type": "prefix", "keep": [4, 3, 1]}},
        "city": {
            "role": "quasi_identifier",
            "type": "categorical",
            "categories": cities,
            "hierarchy": {
                "type": "tree",
                "levels": {c: [data.city_region[c], country[data.city_region[c]]] for c in cities},
            },
        },
        "occupation": {
            "role": "quasi_identifier",
            "type": "categorical",
            "categories": list(OCCUPATIONS),
            "hierarchy": {"type": "tree", "levels": {o: [g] for o, (g, _) in OCCUPATIONS.items()}},
        },
        "marital_status": {
            "role": "quasi_identifier",
            "type": "categorical",
            "categories": list(MARITAL),
            "hierarchy": {
                "type": "tree",
                "levels": {m: ["partnered" if m == "married" else "unpartnered"] for m in MARITAL},
            },
        },
    }
    for name in ("annual_income", "monetary", "monthly_balance"):
        columns[name] = {"role": "feature", "type": "float", "bounds": list(BOUNDS[name])}
    for name in ("tenure_months", "recency_days", "frequency", "num_products", "complaints_12m"):
        columns[name] = {"role": "feature", "type": "integer", "bounds": list(BOUNDS[name])}
    for name in LOG1P_COLUMNS:
        columns[name]["transform"] = "log1p"
    columns["channel"] = {"role": "feature", "type": "categorical", "categories": list(CHANNELS)}
    ordered = {name: columns[name] for name in data.table.column_names if name in columns}
    for name in ("consent_marketing", "consent_analytics"):
        ordered[name] = {"role": "consent", "type": "boolean"}
    for name in ("churn", "will_purchase"):
        ordered[name] = {"role": "label", "type": "boolean"}
    if one_file:
        # bounds need low < high: one silo still gets [0, 1] (public metadata; the values are all 0)
        ordered["silo"] = {"role": "feature", "type": "integer", "bounds": [0, max(1, len(data.profiles) - 1)]}
    return {
        "version": 1,
        "name": "synthetic-customers-churn",
        "purpose": {"name": "churn_modeling", "consent": "consent_analytics", "columns": [*CHURN_FEATURES, "churn"]},
        "privacy": {"k": 10, "suppression_limit": 0.02, "algorithm": "mondrian"},
        "budget": {"epsilon": 3.0, "delta": 1.0e-5},
        "fairness_groups": ["gender"],
        "columns": ordered,
    }
