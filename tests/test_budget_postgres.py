"""A team's shared budget store on a real PostgreSQL server (started by conftest's `postgres_server`).

The attacks of issue 10 finding 2 run against PostgreSQL in tests/test_budget.py (parametrised over
both stores); this file covers what only a shared store does: several laptops, one budget.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from anonymize.errors import InputError
from privmodel.artifacts.ledger import Ledger, read_entries
from privmodel.core.keys import init_keys, load_signer
from privmodel.dp import budget
from privmodel.dp.budget import BudgetExceeded, Cap
from tests.conftest import run_cli

CAP = Cap(3.0, 1e-5)


@pytest.fixture
def team(postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    """Two data scientists' laptops: each a copy of the organisation's keys dir, one shared store URL
    (with a password, which must never be written anywhere)."""
    url = postgres_database.replace("postgresql+psycopg://privmodel@", "postgresql+psycopg://privmodel:hunter2-secret@")
    monkeypatch.setenv(budget.URL_ENV, url)
    alice = tmp_path / "alice" / "keys"
    alice.parent.mkdir()
    init_keys(alice, actor="acme-bank")
    bob = tmp_path / "bob" / "keys"
    shutil.copytree(alice, bob)
    return alice, bob, url


def test_the_store_really_is_postgresql(team: tuple[Path, Path, str]) -> None:
    alice, _, url = team
    budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=alice)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version()")).scalar_one().startswith("PostgreSQL")
        assert conn.execute(sa.text("SELECT count(*) FROM privmodel_budget_events")).scalar_one() == 1
    assert not (alice / budget.STORE_FILE).exists()  # nothing fell back to the laptop's SQLite file


def test_one_laptop_cannot_hold_a_budget_the_other_cannot_see(team: tuple[Path, Path, str], tmp_path: Path) -> None:
    alice, bob, _ = team
    budget.charge("churn-2026", 2.0, 1e-6, CAP, keys=alice)
    assert budget.spent("churn-2026", bob).epsilon == 2.0
    budget.charge("churn-2026", 0.75, 1e-6, CAP, keys=bob)
    ledger = Ledger(tmp_path / "alice-ledger.jsonl", load_signer(alice))
    with pytest.raises(BudgetExceeded, match=r"dataset churn-2026: spent 2.75 \+ asked 0.5 > cap 3 \(epsilon\)"):
        budget.charge("churn-2026", 0.5, 1e-6, CAP, keys=alice, ledger=ledger)
    # alice's head only witnessed up to her own last write; bob's later charge extends it: no alarm
    assert budget.spent("churn-2026", alice).charges == 2


def test_the_database_password_is_never_written(team: tuple[Path, Path, str], tmp_path: Path) -> None:
    alice, _, _ = team
    ledger = Ledger(tmp_path / "ledger.jsonl", load_signer(alice))
    record = budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=alice, ledger=ledger)
    assert "hunter2" not in record.store and "***" in record.store
    shown = run_cli("budget", "show", "--keys", str(alice), env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "churn-2026" in shown.stdout
    for text in (ledger.path.read_text(), (alice / budget.HEAD_FILE).read_text(), shown.stdout, shown.stderr,
                 str(read_entries(ledger.path))):
        assert "hunter2" not in text


def test_a_rolled_back_shared_store_is_refused_on_any_laptop_that_saw_more(team: tuple[Path, Path, str]) -> None:
    alice, bob, url = team
    budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=alice)
    budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=bob)
    budget.spent("churn-2026", alice)  # alice's head now witnesses both events
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # the database restored from yesterday's dump
        conn.execute(sa.text("DELETE FROM privmodel_budget_events WHERE seq = 2"))
    for keys in (alice, bob):
        with pytest.raises(InputError, match=r"budget store missing or rolled back: .* has 1 event\(s\) but "
                                                    r"the signed head .* records 2"):
            budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)
