"""Simulation end to end on Flower's Ray engine: local DP, ε over rounds, refusal past the cap,
robust aggregation (NaN and oversized updates), a failing partner, ledgers on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anonymize.errors import InputError
from federated.coordinator.run_card import PER_CUSTOMER
from federated.runtime.config import FedConfig
from federated.runtime.simulate import partner_specs, run_simulation, synth_silos
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import load_public_key


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path, Path]:
    out = tmp_path_factory.mktemp("fedsim")
    paths, holdout, policy = synth_silos(out, silos=5, customers=6000, heterogeneity=0.6, seed=3, holdout=1500)
    return out, paths, holdout, policy


def test_simulation_end_to_end_with_dp_adversary_cap_and_bad_partner(silos) -> None:
    out, paths, holdout, policy = silos
    paths = list(paths)
    paths[4] = out / "missing.parquet"  # silo-4: its data file does not exist
    specs = partner_specs(out, paths, policy, epsilon_caps={"silo-3": 0.6})
    config = FedConfig(rounds=3, epsilon=1.0, local_steps=8, batch_size=128, min_partners=2, round_timeout=300)
    events: list[dict] = []
    outcome = run_simulation(
        out, specs, config, policy, eval_data=holdout, on_round=events.append,
        behaviours={2: "nan@2|scale@3"},
    )
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    # silo-4 was reported by name at the start, and the run went on without it
    failed = [e["reason"] for e in events if e["event"] == "partner_failed"]
    assert any(r.startswith("partner silo-4") and "no such file" in r for r in failed)
    assert "silo-4" not in outcome.partners
    # round 2: silo-2's NaN update rejected by name, the round completed with the others
    assert any(i["partner"] == "silo-2" and "NaN" in i["reason"] for i in rounds[1]["rejected"])
    assert {"silo-0", "silo-1"} <= set(rounds[1]["accepted"])
    assert any(i["partner"] == "silo-2" and "exceeds the bound" in i["reason"] for i in rounds[2]["rejected"])
    # silo-3 (cap 0.6) joined round 1 and was refused afterwards, never above its cap
    assert outcome.partners["silo-3"]["rounds"] == [1]
    assert 0 < outcome.partners["silo-3"]["epsilon"] <= 0.6
    assert any(i["partner"] == "silo-3" and "privacy budget exceeded" in i["reason"] for i in rounds[1]["failed"])
    # ε of full partners: accounted over all 3 rounds, at or below the target
    for name in ("silo-0", "silo-1"):
        assert outcome.partners[name]["rounds"] == [1, 2, 3]
        assert 0.5 < outcome.partners[name]["epsilon"] <= 1.0
    assert rounds[-1]["global"]["auc"] > 0.5
    assert set(rounds[-1]["per_silo"]) == {"silo-0", "silo-1", "silo-2", "silo-3"}

    coord = out / "coordinator"
    for home in [coord] + [out / "partners" / f"silo-{i}" for i in range(4)]:
        result = verify(home / "ledger.jsonl", [load_public_key(home / "keys")])
        assert result.ok, (home, result.first_problem)
    final = [e for e in read_entries(coord / "ledger.jsonl") if e["action"] == "federate.final_model"][-1]
    assert final["params"]["model_hash"] == outcome.model_hash
    for i in range(4):
        entries = read_entries(out / "partners" / f"silo-{i}" / "ledger.jsonl")
        mine = [e for e in entries if e["action"] == "federate.final_model"][-1]
        assert mine["params"]["model_hash"] == outcome.model_hash
        charged = sum(e["privacy_cost"]["epsilon"] for e in entries if e["action"] == "budget.charge" and e["outcome"] == "ok")
        assert charged == pytest.approx(outcome.partners[f"silo-{i}"]["epsilon"], rel=1e-6)
    refusals = [e for e in read_entries(out / "partners" / "silo-3" / "ledger.jsonl") if e["outcome"] == "failed" and e["action"] == "budget.charge"]
    assert refusals and "privacy budget exceeded" in refusals[0]["reason"]
    rejected = [e for e in read_entries(coord / "ledger.jsonl") if e["action"] == "federate.update_rejected"]
    assert rejected and rejected[0]["params"]["partner"] == "silo-2"
    card = json.loads((coord / "federated_card.json").read_text())
    assert card["partners"]["silo-3"]["epsilon"] <= 0.6 and card["model"]["hash"] == outcome.model_hash
    # issue 10: ε per customer (partners trained on their own minimised rows), nothing from training rows
    assert card["privacy_unit"] == PER_CUSTOMER and set(card["privacy"]["training_rows"].values()) == {"minimised"}
    assert (coord / "federated_card.md").read_text().splitlines()[2] == f"**{PER_CUSTOMER}.**"
    assert "train_loss" not in json.dumps(card) and card["released_without_dp"]
    for i in range(4):
        raw = pd.read_parquet(paths[i])
        minimised = [e for e in read_entries(out / "partners" / f"silo-{i}" / "ledger.jsonl") if e["action"] == "federate.minimise"]
        assert minimised and minimised[-1]["params"]["removed"]["no_consent"] == int((~raw["consent_analytics"].astype(bool)).sum())
    assert (coord / "model.npz").is_file()


def test_policy_mismatch_fails_naming_the_partner(silos, tmp_path: Path) -> None:
    out, paths, holdout, policy = silos
    other = tmp_path / "other.yaml"
    other.write_text(policy.read_text().replace("k: 10", "k: 12"))
    specs = partner_specs(tmp_path, paths[:2], policy)
    specs[1].policy = str(other)
    config = FedConfig(rounds=1, local_steps=2, batch_size=64, min_partners=2)
    with pytest.raises(InputError, match=r"partner silo-1: policy hash .* differs"):
        run_simulation(tmp_path, specs, config, policy)
    entries = read_entries(tmp_path / "coordinator" / "ledger.jsonl")
    assert entries[-1]["outcome"] == "failed" and "silo-1" in entries[-1]["reason"]
