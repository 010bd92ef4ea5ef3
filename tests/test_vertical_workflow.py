"""The vertical run end to end: ledgers verify and agree, budgets charged, dropout and small overlaps end it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from anonymize.errors import InputError
from federated.vertical.channel import PartyDropped
from federated.vertical.psi import OverlapTooSmall
from federated.vertical.split import SplitConfig
from federated.vertical.workflow import simulate
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import init_keys, load_public_key
from privmodel.dp import budget
from tests.conftest import run_cli, vertical_inputs

FAST = SplitConfig(epsilon=2.0, epochs=1, batch_size=256, insecure_seed=3)


def test_run_signs_both_ledgers_with_one_model_hash_and_charges_both_budgets(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    result = simulate(bank, shop, FAST, tmp_path / "out")
    hashes = set()
    for inp, name in ((bank, "bank"), (shop, "retailer")):
        book = tmp_path / "out" / name / "ledger.jsonl"
        assert verify(book, [load_public_key(inp.keys)]).ok  # type: ignore[arg-type]
        entries = read_entries(book)
        psi = next(e for e in entries if e["action"] == "vertical.psi")
        assert psi["params"]["intersection_size"] == result.overlap["size"] > 0
        train = next(e for e in entries if e["action"] == "vertical.train")
        hashes.add(train["params"]["model_hash"])
        charged = budget.spent(f"{name}-customers", inp.keys)
        assert charged.charges == 1 and charged.epsilon == pytest.approx(result.parties[name]["epsilon"])
        assert 1.9 < result.parties[name]["epsilon"] <= 2.0
        text = book.read_text()
        emails = pq.read_table(inp.data).column("email").to_pylist()
        assert not any(e.strip().lower() in text.lower() for e in emails[:200])  # no member, no key
    assert hashes == {result.model_hash}
    card = json.loads((tmp_path / "out" / "bank" / "card.json").read_text())
    assert set(card["parties"]) == {"bank", "retailer"} and card["overlap"]["size"] == result.overlap["size"]
    assert "NOT differentially private" in (tmp_path / "out" / "bank" / "card.md").read_text()  # insecure test noise


def test_a_party_dropping_out_ends_the_run_with_its_name(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    with pytest.raises(PartyDropped, match="party 'retailer' dropped out"):
        simulate(bank, shop, FAST, tmp_path / "out", offline={"retailer"})
    last = read_entries(tmp_path / "out" / "bank" / "ledger.jsonl")[-1]
    assert last["outcome"] == "failed" and "retailer" in (last["reason"] or "")
    assert not (tmp_path / "out" / "bank" / "model.pt").exists()


def test_overlap_below_a_partys_minimum_is_refused(vertical_parties: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for p in vertical_parties.iterdir():
        if p.suffix in (".yaml", ".parquet"):
            (data / p.name).write_bytes(p.read_bytes())
    doc = yaml.safe_load((data / "retailer.party.yaml").read_text())
    doc["min_overlap"] = 100_000
    (data / "retailer.party.yaml").write_text(yaml.safe_dump(doc))
    bank, shop = vertical_inputs(data, tmp_path)
    with pytest.raises(OverlapTooSmall, match="retailer refuses an overlap of .* below its policy's min_overlap 100000"):
        simulate(bank, shop, FAST, tmp_path / "out")
    assert budget.spent("retailer-customers", shop.keys).charges == 0


def test_a_run_not_signed_by_the_pinned_label_key_is_refused(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    impostor = tmp_path / "keys-impostor"
    init_keys(impostor, actor="impostor")
    with pytest.raises(InputError, match="retailer refused the run: not signed by bank's pinned key"):
        simulate(bank, shop, FAST, tmp_path / "out", pinned_label_key=impostor)
    assert budget.spent("retailer-customers", shop.keys).charges == 0


def test_a_run_past_a_partys_budget_is_refused_before_psi(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    with pytest.raises(budget.BudgetExceeded, match="privacy budget exceeded for dataset retailer-customers"):
        simulate(bank, shop, SplitConfig(epsilon=5.0, label_epsilon=1.0, epochs=1), tmp_path / "out")
    entries = read_entries(tmp_path / "out" / "retailer" / "ledger.jsonl")
    assert not any(e["action"] == "vertical.psi" for e in entries)
    assert budget.spent("bank-customers", bank.keys).charges == 0


def test_two_label_parties_are_refused(vertical_parties: Path, tmp_path: Path) -> None:
    bank, _shop = vertical_inputs(vertical_parties, tmp_path)
    with pytest.raises(InputError, match="one label party"):
        simulate(bank, bank, FAST, tmp_path / "out")


def test_cli_simulate_and_bad_input(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    args = ["federate", "vertical", "simulate", "--label", str(bank.party_file), "--label-data", str(bank.data),
            "--label-keys", str(bank.keys), "--feature", str(shop.party_file), "--feature-data", str(shop.data),
            "--feature-keys", str(shop.keys), "--out", str(tmp_path / "cli"), "--epochs", "1", "--epsilon", "0",
            "--psi-workers", "1"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "overlap" in done.stdout and (tmp_path / "cli" / "bank" / "card.md").is_file()
    bad = run_cli(*[a if a != str(shop.party_file) else str(tmp_path / "missing.yaml") for a in args])
    assert bad.returncode == 2 and "cannot read the party file" in bad.stderr and "Traceback" not in bad.stderr


def test_label_dp_by_randomized_response_charges_pure_epsilon(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    cfg = SplitConfig(epsilon=2.0, label_epsilon=1.0, label_dp="labels", epochs=1, batch_size=256, insecure_seed=4)
    result = simulate(bank, shop, cfg, tmp_path / "out")
    assert result.parties["bank"]["delta"] == 0.0 and result.parties["bank"]["epsilon"] <= 1.0
    assert result.parties["bank"]["covers"] == "labels only (randomized response)"
    spent = budget.spent("bank-customers", bank.keys)
    assert spent.delta == 0.0 and spent.epsilon == pytest.approx(1.0, abs=1e-6)
    assert budget.spent("retailer-customers", shop.keys).epsilon == pytest.approx(result.parties["retailer"]["epsilon"])
    assert "labels only" in (tmp_path / "out" / "bank" / "card.md").read_text()
