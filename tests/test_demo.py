"""`privmodel demo` end to end at a small size: the same code path `make demo` runs."""

from __future__ import annotations

import json
from pathlib import Path

from privmodel.artifacts.ledger import verify
from privmodel.core.keys import load_public_key
from privmodel.workflows.demo import demo_key_dirs
from tests.conftest import run_cli


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("demo", "--out", str(out), "--customers", "3000", "--epochs", "3", "--rounds", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    ledgers = sorted(out.rglob("ledger.jsonl"))
    assert {p.parent.name for p in ledgers} >= {"central", "partner_0", "partner_1", "partner_2"}
    trusted = [load_public_key(d) for d in demo_key_dirs(out)]
    assert all(verify(p, trusted).ok for p in ledgers)
    for i in range(3):
        report = json.loads((out / "partners" / f"partner_{i}" / "release" / "report.json").read_text())
        assert report["privacy"]["achieved"]["k"] >= 10
    card = json.loads((out / "central" / "model" / "model_card.json").read_text())
    assert 0 < card["privacy"]["epsilon"] <= 1.0
    fed = json.loads((out / "federated" / "coordinator" / "federated_card.json").read_text())
    assert sorted(fed["partners"]) == ["partner_0", "partner_1", "partner_2"]
    assert all(0 < p["epsilon"] <= 1.0 and p["confirmed_hash"] for p in fed["partners"].values())
    assert len(fed["rounds_detail"]) == 2
    html = (out / "report.html").read_text()
    assert "All ledgers verified" in html and "Release: partner_2" in html and "Privacy-utility curve" in html
    assert "Federated model (logreg)" in html
    summary = " ".join(result.stdout.split())
    assert "all verified" in summary and "partner_0: release │ k = " in summary

    again = run_cli("demo", "--out", str(out), "--customers", "3000", "--epochs", "1", "--rounds", "1")
    assert again.returncode == 0, again.stderr[-2000:]


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("do not delete")
    result = run_cli("demo", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "was not made by `privmodel demo`" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "do not delete"
