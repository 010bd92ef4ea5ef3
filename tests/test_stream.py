"""The streamed engine (`anonymize.engines.stream`, issue 13 "Out of core") releases what the in-memory
path releases: the same rows, values, escrow, report and lineage with the same keys, on a table forced
into several batches. `crafted()` has 303 rows; in batches of 40, rows 31-32 re-use the identifiers
of rows 41-42 (the next batch) and rows 301-303 repeat rows 101-103 exactly (three batches later)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anonymize.engines.stream import batch_reader, close_spill, parquet_batches, run_streamed, text_columns
from anonymize.errors import InputError
from anonymize.pipeline import run
from anonymize.policy.schema import Policy, load_policy
from anonymize.pseudonymize import Keys
from privmodel.artifacts.ledger import read_entries
from privmodel.core.fileio import read_table
from privmodel.core.keys import init_keys
from privmodel.dp import budget
from privmodel.workflows.streamed import batches_frame_id
from tests.conftest import run_cli
from tests.test_anonymize_pipeline import MASTER, POLICY, crafted

BATCH = 40


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "customers.parquet"
    crafted().to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def csv_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`crafted()` as CSV: streamed by `privmodel.core.csv_batches`."""
    path = tmp_path_factory.mktemp("stream-csv") / "customers.csv"
    crafted().to_csv(path, index=False)
    return path


@pytest.mark.parametrize("source", ["table", "csv_table"])
def test_streamed_release_identical_to_in_memory(source: str, policy: Policy, request: pytest.FixtureRequest) -> None:
    table: Path = request.getfixturevalue(source)
    keys = Keys(MASTER, "insurer")
    memory = run(read_table(table, text_columns=text_columns(policy)), policy, keys, source=str(table))
    streamed = run_streamed(table, policy, keys, source=str(table), batch_rows=BATCH)
    try:
        data = pd.concat(list(streamed.released_batches()), ignore_index=True)
    finally:
        close_spill(streamed.spill)
    assert not streamed.spill.path.parent.exists()  # the minimised rows never outlive the run
    counts = memory.report["counts"]
    assert counts["exact_duplicates"] == 3 and counts["duplicate_identifiers"]["customer_id"] == 2
    assert counts["consent_filtered"] == 7
    pd.testing.assert_frame_equal(memory.data, data)
    assert memory.escrow is not None and streamed.release.escrow is not None
    pd.testing.assert_frame_equal(memory.escrow.reset_index(drop=True), streamed.release.escrow.reset_index(drop=True))
    a, b = dict(memory.report), dict(streamed.release.report)
    a.pop("timings"), b.pop("timings")
    assert a == b


def test_content_hash_by_batches_is_the_tables(table: Path) -> None:
    """The budget identity of a table read batch by batch equals `frame_id` of the whole table (a column
    with gaps is float in some batches and integer in others)."""
    whole = budget.frame_id(read_table(table))
    assert batches_frame_id(frame for frame, _ in parquet_batches(table, BATCH)) == whole
    assert batches_frame_id(frame for frame, _ in parquet_batches(table, 7)) == whole


def test_csv_content_hash_by_batches_is_the_files(csv_table: Path) -> None:
    """A CSV read batch by batch (as `content_id` reads it: no text columns) has the file's identity."""
    assert batches_frame_id(frame for frame, _ in batch_reader(csv_table)(7)) == budget.content_id(csv_table)


def test_bad_value_in_a_late_batch_names_its_row(tmp_path: Path, policy: Policy) -> None:
    df = crafted()
    df.loc[289, "tenure_months"] = 9999  # data row 290, in the eighth batch of 40
    path = tmp_path / "bad.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(InputError) as memory:
        run(read_table(path), policy, Keys(MASTER), source=str(path))
    with pytest.raises(InputError) as streamed:
        run_streamed(path, policy, Keys(MASTER), source=str(path), batch_rows=BATCH)
    assert str(streamed.value) == str(memory.value)
    assert "column 'tenure_months', row 290" in str(streamed.value)
    keys = tmp_path / "keys"
    init_keys(keys, actor="bank-a")
    result = run_cli("anonymize", str(path), "--policy", str(POLICY), "--keys", str(keys), "--out",
                     str(tmp_path / "out"), "--batch-rows", str(BATCH))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {memory.value}"]


@pytest.mark.parametrize("source", ["table", "csv_table"])
def test_cli_streamed_outputs_match_in_memory(tmp_path: Path, source: str, request: pytest.FixtureRequest) -> None:
    """`privmodel anonymize --batch-rows` writes the release, escrow, report, ledger entry and lineage of
    the in-memory command (file bytes differ only by Parquet row groups and timings), from Parquet or CSV."""
    table: Path = request.getfixturevalue(source)
    keys = tmp_path / "keys"
    init_keys(keys, actor="bank-a")
    outs = {}
    for name, extra in (("memory", []), ("streamed", ["--batch-rows", str(BATCH)])):
        outs[name] = tmp_path / name
        result = run_cli("anonymize", str(table), "--policy", str(POLICY), "--keys", str(keys), "--out",
                         str(outs[name]), "--partner", "insurer", *extra)
        assert result.returncode == 0, result.stderr
    memory, streamed = outs["memory"], outs["streamed"]
    for name in ("release.parquet", "release.escrow.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(memory / name), pd.read_parquet(streamed / name))
    reports = [json.loads((out / "report.json").read_text()) for out in (memory, streamed)]
    assert reports[0].pop("timings").keys() - {"read"} == reports[1].pop("timings").keys()
    assert reports[0] == reports[1]
    entries = [read_entries(out / "ledger.jsonl")[-1] for out in (memory, streamed)]
    assert entries[0]["params"] == entries[1]["params"]
    assert {a["name"] for a in entries[0]["outputs"]} == {a["name"] for a in entries[1]["outputs"]}
    # both releases charge the input's budget: their content hashes lead to the same root
    roots = {budget.dataset_of(None, out / "release.parquet", keys) for out in (memory, streamed)}
    assert roots == {budget.dataset_of(None, table, keys)}
