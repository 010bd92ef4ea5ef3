"""Training at scale (issue 13): encode once to memory-mapped arrays, sample by index, delta by rule.

The encoded path must give what the whole-table path gave: the same rows (consent, duplicates),
the same arrays, the same content hash, and -- for the same reproducible test noise -- the same
model; `privmodel train` without --delta uses DEFAULTS.delta_for(n) and records it everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize.errors import InputError
from privmodel.core.defaults import Defaults
from privmodel.dp import budget
from privmodel.dp.training import TrainConfig, fit
from privmodel.workflows import encoded
from privmodel.workflows import prepare as prep
from privmodel.workflows import train as wf
from privmodel.workflows.rows import model_rows
from tests.conftest import run_cli
from tests.test_cli_train import POLICY, make_table


def _inputs(tmp: Path, n: int = 600) -> tuple[Path, Path]:
    frame = make_table(n)
    # rows repeated exactly, some in a later batch than their first copy, one within a batch
    frame = pd.concat([frame, frame.iloc[[3, 5, 300, 301]]], ignore_index=True)
    data, policy = tmp / "customers.parquet", tmp / "policy.yaml"
    frame.to_parquet(data, index=False)
    policy.write_text((POLICY % {"cap": 10.0}).replace("delta: 1.0e-4", "delta: 1.0e-2"))
    return data, policy


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoded, "BATCH_ROWS", 128)  # 5 batches for 604 rows
    monkeypatch.setattr(encoded, "CHECK_ROWS", 100)


def test_encoded_rows_equal_the_whole_table_path(tmp_path: Path, small_batches: None) -> None:
    data, policy_path = _inputs(tmp_path)
    policy = wf.load_policy_with_cap(policy_path)
    keys = None
    enc = encoded.encode_file(data, policy, "churn", keys, tmp_path)
    rows = model_rows(data, policy, keys)
    ready = prep.prepare(rows.frame, policy, "churn", str(data), rows.positions)
    whole = ready.encoder.transform(ready.frame)
    assert isinstance(enc.data.x_num, np.memmap) and isinstance(enc.data.x_cat, np.memmap)
    np.testing.assert_array_equal(enc.data.x_num, whole.x_num)
    np.testing.assert_array_equal(enc.data.x_cat, whole.x_cat)
    np.testing.assert_array_equal(enc.y, ready.y)
    assert enc.rows.as_record() == rows.as_record()
    assert enc.rows.removed == {"exact_duplicates": 4}
    assert enc.content == budget.content_id(data)  # the same budget identity, never the whole table read
    positions = np.arange(len(enc.y))
    groups = enc.groups(positions)
    assert groups is not None
    np.testing.assert_array_equal(groups["gender"], ready.frame["gender"].to_numpy(dtype=object))


def test_memmap_training_gives_the_in_memory_model(tmp_path: Path, small_batches: None) -> None:
    """Poisson sampling by index over the memory-mapped arrays = training on the copied training rows,
    for the same reproducible test noise (insecure_seed: tests only)."""
    data, policy_path = _inputs(tmp_path)
    enc = encoded.encode_file(data, wf.load_policy_with_cap(policy_path), "churn", None, tmp_path)
    train_idx, _ = prep.split(enc.y, 0.25, 0)
    config = TrainConfig(model="logreg", epsilon=1.0, delta=1e-5, insecure_seed=7, epochs=3, batch_size=64, lr=0.5, seed=1)
    by_index = fit(enc.data, enc.y, config, rows=train_idx)
    in_memory = fit(enc.data.take(train_idx), enc.y[train_idx], config)
    assert by_index.privacy == in_memory.privacy and by_index.privacy["n"] == train_idx.size
    for name, tensor in in_memory.model.state_dict().items():
        np.testing.assert_array_equal(by_index.model.state_dict()[name].numpy(), tensor.numpy())


def test_delta_follows_the_rule_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --delta: the run uses DEFAULTS.delta_for(training rows); card, budget and ledger state it.
    (A fixed cap of 1e-3 puts 450 training rows on the 1/(10 n) branch, as 1e-6 does past 100k rows.)"""
    from privmodel.artifacts.ledger import read_entries
    from privmodel.workflows.run_ledger import open_ledger

    monkeypatch.setattr(wf, "DEFAULTS", Defaults(delta=1e-3))
    data, policy = _inputs(tmp_path)
    out, keys = tmp_path / "model", None
    req = wf.TrainRequest(data=data, label="churn", policy=policy, out=out, model="logreg", epochs=3, batch_size=64, lr=0.5, seed=1)
    assert req.delta is None
    book = open_ledger(None, tmp_path, keys)
    outcome = wf.train(req, book, keys)
    expected = 1.0 / (10 * 450)
    assert outcome.delta == pytest.approx(expected)
    card = json.loads((out / "model_card.json").read_text())
    assert card["privacy"]["delta"] == pytest.approx(expected)
    assert card["total_privacy_cost"]["delta"] == pytest.approx(expected)
    assert set(card["timings"]) >= {"encode", "budget", "private_model", "private_metrics", "card"}
    entries = read_entries(book.path)
    trained = next(e for e in entries if e["action"] == "model.train")
    assert (trained["privacy_cost"] or {})["delta"] == pytest.approx(expected)
    assert (trained["params"] or {})["delta"] == pytest.approx(expected)
    assert not list(tmp_path.glob(".model.encoded-*"))  # the memory-mapped arrays are removed


def test_run_delta_past_a_million_rows() -> None:
    assert wf.run_delta(None, 2_000_000) == pytest.approx(5e-8)  # was: refused unless --delta was given
    assert wf.run_delta(None, 1000) == 1e-6
    with pytest.raises(InputError, match="not below 1/n"):
        wf.run_delta(1e-6, 2_000_000)


def test_bad_input_is_one_line(tmp_path: Path, small_batches: None) -> None:
    data, policy_path = _inputs(tmp_path)
    enc = encoded.encode_file(data, wf.load_policy_with_cap(policy_path), "churn", None, tmp_path)
    config = TrainConfig(model="logreg", epsilon=1.0, delta=1e-5, epochs=3, batch_size=64, lr=0.5, seed=1)
    with pytest.raises(InputError, match="row positions outside"):
        fit(enc.data, enc.y, config, rows=np.array([0, len(enc.y)], dtype=np.int64))
    # a non-finite feature in a later batch names the file's data row
    frame = make_table(600)
    frame["tenure_months"] = frame["tenure_months"].astype(float)
    frame.loc[400, "tenure_months"] = np.nan
    bad = tmp_path / "bad.parquet"
    frame.to_parquet(bad, index=False)
    with pytest.raises(InputError, match=r"data rows 385-512\): feature column tenure_months"):
        encoded.encode_file(bad, wf.load_policy_with_cap(policy_path), "churn", None, tmp_path)
    # a file that is not Parquet: one line, exit 2, nothing written
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    result = run_cli("train", str(broken), "--label", "churn", "--policy", str(policy_path), "--out",
                     str(tmp_path / "m"))
    assert result.returncode == 2
    assert "not a readable Parquet file" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_sparse_poisson_positions_have_the_stated_rate() -> None:
    """Past SPARSE_MIN_ROWS rows the sample is drawn by geometric gaps: sorted, in range, rate <= q
    and the same for every row (early and late rows alike)."""
    from privmodel.dp.secure_noise import SPARSE_MIN_ROWS, NoiseSource

    source, n, q, draws = NoiseSource.secure(), 2 * SPARSE_MIN_ROWS, 0.01, 400
    counts = np.zeros(n)
    sizes = []
    for _ in range(draws):
        rows = source.poisson_positions(n, q)
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < n
        counts[rows] += 1
        sizes.append(rows.size)
    expected, sd = n * q, np.sqrt(n * q * (1 - q) / draws)
    assert abs(np.mean(sizes) - expected) < 5 * sd
    halves = counts.reshape(2, -1).sum(1) / (draws * n / 2)
    assert np.all(np.abs(halves - q) < 5 * np.sqrt(q / (draws * n / 2)))
    assert source.poisson_positions(n, 0.0).size == 0
    assert source.poisson_positions(100, 1.0).tolist() == list(range(100))


def test_a_batch_without_consent_is_not_an_empty_table(tmp_path: Path, small_batches: None) -> None:
    """A file sorted by consent: its first batches hold no consenting customer, the table has many;
    the batched path keeps what the whole-table path keeps and counts the removals alike."""
    frame = make_table(600)
    frame["consent_analytics"] = np.arange(600) >= 300  # batches 1-2 (128 rows each): nobody consents
    data, policy_path = tmp_path / "customers.parquet", tmp_path / "policy.yaml"
    frame.to_parquet(data, index=False)
    text = (POLICY % {"cap": 10.0}).replace("name: churn_modeling\n", "name: churn_modeling\n  consent: consent_analytics\n")
    policy_path.write_text(text + "  consent_analytics: {role: consent, type: boolean}\n")
    policy = wf.load_policy_with_cap(policy_path)
    enc = encoded.encode_file(data, policy, "churn", None, tmp_path)
    rows = model_rows(data, policy, None)
    ready = prep.prepare(rows.frame, policy, "churn", str(data), rows.positions)
    assert len(enc.y) == len(ready.y) == 300
    np.testing.assert_array_equal(enc.y, ready.y)
    assert enc.rows.removed == rows.removed and sum(enc.rows.removed.values()) == 300
    nobody = frame.assign(consent_analytics=False)
    nobody.to_parquet(data, index=False)
    with pytest.raises(InputError, match="no rows left after the (policy's )?consent filter"):
        encoded.encode_file(data, policy, "churn", None, tmp_path)
