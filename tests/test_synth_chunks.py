"""`privmodel synth` by chunks: a run of several chunks has the rows, columns and uniqueness of a run
of one, is deterministic, matches `generate_data`, and a failure mid-way publishes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from privmodel.artifacts.ledger import read_entries
from privmodel.core.fileio import sha256_file
from privmodel.data.synth import bayes_auc, generate_data
from privmodel.data.synth import core as synth_core
from privmodel.data.synth.summary import SynthSummary
from privmodel.data.synth.truth import AucBins
from privmodel.workflows.synthesize import SynthRequest, synthesize

N, SILOS, CHUNK = 2_300, 3, 700  # 4 chunks; silo 1 spans two of them


@pytest.fixture(autouse=True)
def _keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVMODEL_KEYS", str(tmp_path / "keys"))


def _run(out: Path, chunk_rows: int | None, **kw: object) -> tuple[Path, list[Path], SynthSummary]:
    out.mkdir(parents=True, exist_ok=True)
    req = SynthRequest(out=out, customers=N, silos=SILOS, seed=5, locales=["en_US", "de_DE"], chunk_rows=chunk_rows,
                       **kw)  # type: ignore[arg-type]
    made = synthesize(req)
    return out, made.files, made.summary


def _read(path: Path) -> pa.Table:
    return pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)


def test_chunked_run_has_all_rows_unique_ids_and_the_one_chunk_columns(tmp_path: Path) -> None:
    _, files, summary = _run(tmp_path / "chunked", CHUNK)
    _, whole_files, _ = _run(tmp_path / "whole", None)
    silos = [_read(p) for p in files if p.suffix == ".parquet"]
    whole = [_read(p) for p in whole_files if p.suffix == ".parquet"]
    assert [t.num_rows for t in silos] == [767, 767, 766] == [t.num_rows for t in whole]
    assert all(t.schema == w.schema for t, w in zip(silos, whole, strict=True))
    assert pq.ParquetFile(files[1]).metadata.num_row_groups == 2  # silo 1 was written in two pieces
    table = pa.concat_tables(silos)
    for column in ("customer_id", "email"):
        assert len(set(table.column(column).to_pylist())) == N, column
    for prefix in ("+1 ", "+49 "):  # national ids are unique within each locale
        mask = [p.startswith(prefix) for p in table.column("phone").to_pylist()]
        ids = table.column("national_id").filter(pa.array(mask)).to_pylist()
        assert len(ids) > 500 and len(set(ids)) == len(ids), prefix
    assert summary.total_rows == N and list(summary.rows) == [767, 767, 766]
    # every chunk draws its own numbers: the chunks are not copies of one another
    ages = table.column("age").to_numpy()
    assert not np.array_equal(ages[:CHUNK], ages[CHUNK : 2 * CHUNK])
    # the policy does not depend on the chunking
    assert (tmp_path / "chunked" / "policy.yaml").read_bytes() == (tmp_path / "whole" / "policy.yaml").read_bytes()


def test_chunked_run_is_deterministic_and_matches_generate_data(tmp_path: Path) -> None:
    _, first, _ = _run(tmp_path / "a", CHUNK, fmt="csv", one_file=True, mess_rate=0.05)
    _, again, summary = _run(tmp_path / "b", CHUNK, fmt="csv", one_file=True, mess_rate=0.05)
    assert [sha256_file(p) for p in first] == [sha256_file(p) for p in again]
    data = generate_data(N, SILOS, seed=5, locales=["en_US", "de_DE"], mess_rate=0.05, chunk_rows=CHUNK)
    written = _read(first[0])
    assert written.num_rows == data.table.num_rows == N + 3 * 35 + 10  # 5% of each chunk (700, 700, 700, 200 rows)
    assert written.column("customer_id").to_pylist() == data.table.column("customer_id").to_pylist()
    assert data.mess == summary.mess == {
        "rate": 0.05, "missing": 115, "bad_phone": 115, "bad_birth_date": 115, "bad_age": 115, "duplicates": 115
    }
    assert len(set(written.column("customer_id").to_pylist())) == N  # only the injected duplicates repeat


def test_failure_mid_way_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, files, _ = _run(tmp_path / "out", None)
    before = {p.name: sha256_file(p) for p in files}
    real = synth_core.generate_chunks

    def broken(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for i, chunk in enumerate(real(*args, **kwargs)):  # type: ignore[arg-type]
            if i == 2:
                raise OSError("disk full")
            yield chunk

    monkeypatch.setattr(synth_core, "generate_chunks", broken)
    with pytest.raises(OSError, match="disk full"):
        synthesize(SynthRequest(out=out, customers=N, silos=SILOS, seed=6, locales=["en_US"], chunk_rows=CHUNK))
    assert {p.name: sha256_file(p) for p in files} == before  # the earlier run's files are untouched
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("ledger")) == sorted(before)
    assert [(e["action"], e["outcome"]) for e in read_entries(out / "ledger.jsonl")][-1] == ("synth", "failed")


def test_binned_bayes_auc_is_close_to_the_exact_one() -> None:
    rng = np.random.default_rng(3)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-1.5, 1.2, 200_000)))
    bins = AucBins()
    for part in np.array_split(p, 3):
        bins.add(part)
    assert bins.value() == pytest.approx(bayes_auc(p), abs=1e-5)
    ties = np.repeat([0.1, 0.5, 0.9], 1000)  # equal values are ties in both
    one = AucBins()
    one.add(ties)
    assert one.value() == pytest.approx(bayes_auc(ties), abs=1e-12)
