"""`privmodel synth --vertical`: two parties over one population, their overlap, formats and truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from sklearn.metrics import roc_auc_score

from anonymize.policy.schema import load_policy
from privmodel.artifacts.ledger import read_entries
from privmodel.data.synth.vertical import generate_vertical
from tests.conftest import run_cli


def _norm_email(values: list[str]) -> list[str]:
    return [v.strip().lower() for v in values]


def test_overlap_formats_and_truth() -> None:
    data = generate_vertical(4000, overlap=0.6, seed=3)
    bank_mail = data.bank.column("email").to_pylist()
    shop_mail = data.retailer.column("email").to_pylist()
    shared = set(_norm_email(bank_mail)) & set(_norm_email(shop_mail))
    assert len(shared) == data.shared == round(0.6 * data.bank.num_rows)
    assert data.bank.num_rows == data.retailer.num_rows
    assert len(set(bank_mail) & set(shop_mail)) < len(shared)  # raw formats differ for some customers
    bank_ids = {v.replace("-", "") for v in data.bank.column("national_id").to_pylist()}
    assert len(bank_ids & set(data.retailer.column("national_id").to_pylist())) == data.shared
    assert all("-" in v for v in data.bank.column("national_id").to_pylist())
    y = data.bank.column("churn").to_numpy()
    # the label needs both parties: the bank-only part of the truth ranks clearly worse than the whole
    assert roc_auc_score(y, data.p_churn) > roc_auc_score(y, data.p_bank_part) + 0.05


def test_same_seed_same_tables() -> None:
    a, b = generate_vertical(500, seed=1), generate_vertical(500, seed=1)
    assert a.bank.equals(b.bank) and a.retailer.equals(b.retailer)


def test_cli_writes_parties_and_policies(tmp_path: Path) -> None:
    out = tmp_path / "v"
    done = run_cli("synth", "--vertical", "--customers", "2000", "--out", str(out), "--seed", "2")
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"bank.parquet", "retailer.parquet", "bank.party.yaml", "retailer.party.yaml",
            "bank_policy.yaml", "retailer_policy.yaml"} <= names
    party = yaml.safe_load((out / "retailer.party.yaml").read_text())
    assert party["role"] == "feature" and party["join"]["national_id"] == ["digits"]
    assert load_policy(out / party["policy"]).dataset == "retailer-customers"
    assert "churn" not in pq.read_table(out / "retailer.parquet").column_names
    entry = read_entries(out / "ledger.jsonl")[-1]
    assert entry["action"] == "synth.vertical" and entry["params"]["shared"] > 0
    assert np.isclose(entry["params"]["overlap"], 0.7)


def test_cli_bad_overlap_is_one_line(tmp_path: Path) -> None:
    done = run_cli("synth", "--vertical", "--overlap", "1.5", "--out", str(tmp_path / "v"))
    assert done.returncode == 2
    assert "--overlap must be in (0, 1]" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "v").exists()
