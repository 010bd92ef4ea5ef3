"""Per-dataset privacy budget in the signed ledger: charges add up, the cap refuses, tampering is caught."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from anonymize.errors import InputError
from privmodel.audit import Ledger, read_entries, verify
from privmodel.budget import charge, spent
from privmodel.keys import Signer

DATA_A = hashlib.sha256(b"table a").hexdigest()
DATA_B = hashlib.sha256(b"table b").hexdigest()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl", Signer.generate("tester"))


def test_charges_compose_by_summation_and_are_signed(ledger: Ledger) -> None:
    params = {"accountant": "prv", "noise_multiplier": 3.1, "sample_rate": 0.1, "steps": 200, "command": "train"}
    entry = charge(ledger, DATA_A, 1.0, 1e-6, 3.0, 1e-5, params)
    assert entry["action"] == "budget.charge" and entry["outcome"] == "ok"
    assert entry["privacy_cost"]["epsilon"] == 1.0 and entry["privacy_cost"]["noise_multiplier"] == 3.1
    assert entry["privacy_cost"]["accountant"] == "prv"
    charge(ledger, DATA_A, 1.5, 2e-6, 3.0, 1e-5, params)
    charge(ledger, DATA_B, 2.5, 1e-6, 3.0, 1e-5, params)
    a = spent(ledger.path, DATA_A)
    assert (a.epsilon, a.charges) == (2.5, 2) and a.delta == pytest.approx(3e-6)
    assert spent(ledger.path, DATA_B).epsilon == 2.5  # budgets are per dataset hash
    # independent recomputation straight from the ledger file
    entries = [json.loads(line) for line in ledger.path.read_text().splitlines()]
    total = sum(e["privacy_cost"]["epsilon"] for e in entries
                if e["action"] == "budget.charge" and e["params"]["dataset_sha256"] == DATA_A)
    assert total == 2.5
    assert verify(ledger.path).ok


def test_over_cap_is_refused_and_recorded_as_failed(ledger: Ledger) -> None:
    charge(ledger, DATA_A, 2.0, 1e-6, 3.0, 1e-5, {})
    with pytest.raises(InputError, match=rf"privacy budget exceeded for dataset {DATA_A[:8]}: spent 2 \+ asked 1.5 > cap 3"):
        charge(ledger, DATA_A, 1.5, 1e-6, 3.0, 1e-5, {})
    last = read_entries(ledger.path)[-1]
    assert last["action"] == "budget.charge" and last["outcome"] == "failed"
    assert last["privacy_cost"] is None and "exceeded" in last["reason"]
    assert spent(ledger.path, DATA_A).epsilon == 2.0  # the failed charge costs nothing
    charge(ledger, DATA_A, 1.0, 1e-6, 3.0, 1e-5, {})  # exactly filling the cap is allowed
    with pytest.raises(InputError, match="delta"):
        charge(ledger, DATA_B, 0.1, 2e-5, 3.0, 1e-5, {})
    assert verify(ledger.path).ok


def test_tampered_ledger_is_not_trusted(ledger: Ledger) -> None:
    charge(ledger, DATA_A, 2.5, 1e-6, 3.0, 1e-5, {})
    lines = ledger.path.read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["privacy_cost"]["epsilon"] = 0.1  # someone tries to free up budget
    lines[-1] = json.dumps(entry)
    ledger.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="fails verification"):
        charge(ledger, DATA_A, 0.2, 1e-6, 3.0, 1e-5, {})


@pytest.mark.parametrize(("eps", "delta", "digest"), [(0.0, 1e-6, DATA_A), (-1.0, 1e-6, DATA_A), (1.0, -1e-6, DATA_A),
                                                      (1.0, 1e-6, "abc")])
def test_bad_charge_arguments(ledger: Ledger, eps: float, delta: float, digest: str) -> None:
    with pytest.raises(InputError):
        charge(ledger, digest, eps, delta, 3.0, 1e-5, {})


def test_spent_on_a_missing_ledger_is_zero(tmp_path: Path) -> None:
    assert spent(tmp_path / "none.jsonl", DATA_A).epsilon == 0.0
