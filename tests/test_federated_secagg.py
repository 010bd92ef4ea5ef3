"""SecAgg+ simulation: the coordinator unmasks only the weighted sum, and it is the plain FedAvg of
what the partners sent; local DP accounting, budget refusal (a SecAgg+ dropout) and ledgers as in
the normal path; incompatible options refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anonymize.errors import InputError
from federated.coordinator.secagg import check_options, run_secagg_simulation
from federated.runtime.config import FedConfig
from federated.runtime.simulate import partner_specs, synth_silos
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import load_public_key
from tests.conftest import run_cli


def _recorded(directory: Path, partner: str, server_round: int) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(directory / f"{partner}-round{server_round}.npz") as data:
        received = {k[len("received__"):]: data[k] for k in data.files if k.startswith("received__")}
        delta = {k[len("delta__"):]: data[k] for k in data.files if k.startswith("delta__")}
        return int(data["n"]), received, delta


def test_secagg_run_equals_plain_weighted_average_with_dp_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    paths, holdout, policy = synth_silos(out, silos=3, customers=2400, heterogeneity=0.8, seed=5, holdout=600)
    # silo-2's cap admits round 1 only: its round-2 refusal is a SecAgg+ dropout the others survive.
    specs = partner_specs(out, paths, policy, epsilon_caps={"silo-2": 0.85})
    config = FedConfig(rounds=2, epsilon=1.0, local_steps=4, batch_size=64, lr=0.1, min_partners=2,
                       secagg=True, secagg_shares=3, secagg_threshold=2, round_timeout=300)
    record = tmp_path / "sent"
    record.mkdir()
    events: list[dict] = []
    outcome = run_secagg_simulation(out, specs, config, policy, eval_data=holdout, on_round=events.append, record_updates=record)

    rounds = [e for e in events if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["accepted"] == ["silo-0", "silo-1", "silo-2"]
    assert rounds[1]["accepted"] == ["silo-0", "silo-1"]
    assert any(i["partner"] == "silo-2" and "privacy budget exceeded" in i["reason"] for i in rounds[1]["failed"])

    # The unmasked aggregate is the example-weighted mean of the deltas each partner handed to SecAgg+.
    final = dict(np.load(out / "coordinator" / "model.npz"))
    final = {k.replace("__", "."): v for k, v in final.items()}
    for server_round, members in ((1, ["silo-0", "silo-1", "silo-2"]), (2, ["silo-0", "silo-1"])):
        sent = [_recorded(record, p, server_round) for p in members]
        sizes = [n for n, _, _ in sent]
        received = sent[0][1]
        for _, other, _ in sent[1:]:  # everyone got the same global model
            for k in received:
                np.testing.assert_array_equal(other[k], received[k])
        after = final if server_round == 2 else _recorded(record, "silo-0", 2)[1]
        for k in received:
            weighted = sum(n * d[k] for n, _, d in sent) / sum(sizes)
            plain = received[k].astype(np.float64) + weighted
            np.testing.assert_allclose(after[k], plain, atol=2e-5, rtol=0)
            assert np.max(np.abs(weighted)) > 1e-3  # the updates are real, not zeros
        # the weighting matters: the unweighted mean of the deltas is measurably further off
        gap = max(
            np.max(np.abs(after[k] - received[k].astype(np.float64) - np.mean([d[k] for _, _, d in sent], axis=0)))
            for k in received
        )
        assert len(set(sizes)) > 1 and gap > 1e-4

    # ε accounted at every partner, within target / cap, charged in their verifying ledgers.
    assert outcome.partners["silo-2"]["rounds"] == [1]
    assert 0 < outcome.partners["silo-2"]["epsilon"] <= 0.85
    for name in ("silo-0", "silo-1"):
        assert outcome.partners[name]["rounds"] == [1, 2]
        assert 0.5 < outcome.partners[name]["epsilon"] <= 1.0
    coord = out / "coordinator"
    for home in [coord] + [out / "partners" / f"silo-{i}" for i in range(3)]:
        result = verify(home / "ledger.jsonl", [load_public_key(home / "keys")])
        assert result.ok, (home, result.first_problem)
    for i in range(3):
        entries = read_entries(out / "partners" / f"silo-{i}" / "ledger.jsonl")
        charged = sum(e["privacy_cost"]["epsilon"] for e in entries if e["action"] == "budget.charge" and e["outcome"] == "ok")
        assert charged == pytest.approx(outcome.partners[f"silo-{i}"]["epsilon"], rel=1e-6)
        mine = [e for e in entries if e["action"] == "federate.final_model"][-1]
        assert mine["params"]["model_hash"] == outcome.model_hash
    refusals = [e for e in read_entries(out / "partners" / "silo-2" / "ledger.jsonl") if e["outcome"] == "failed" and e["action"] == "budget.charge"]
    assert refusals and "privacy budget exceeded" in refusals[0]["reason"]

    coord_entries = read_entries(coord / "ledger.jsonl")
    assert [e["params"]["round"] for e in coord_entries if e["action"] == "federate.round"] == [1, 2]
    final_entry = [e for e in coord_entries if e["action"] == "federate.final_model"][-1]
    assert final_entry["params"]["model_hash"] == outcome.model_hash
    assert final_entry["params"]["secure_aggregation"].startswith("SecAgg+ (num_shares=3, reconstruction_threshold=2")
    card = json.loads((coord / "federated_card.json").read_text())
    assert card["privacy"]["secure_aggregation"].startswith("SecAgg+ (num_shares=3")
    assert card["model"]["hash"] == outcome.model_hash and all(p["confirmed_hash"] for p in card["partners"].values())
    assert "secure aggregation: SecAgg+" in (coord / "federated_card.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_dp_noise": 0.5, "client_dp_clip": 1.0}, r"--secagg: client-level DP"),
        ({"strategy": "fedadam"}, r"--secagg: strategy 'fedadam'"),
        ({"secagg_shares": 3, "secagg_threshold": 3}, r"--secagg-threshold"),
        ({"secagg_shares": 5, "secagg_threshold": 2}, r"--secagg-shares: 5 shares need at least as many partners, got 3"),
    ],
)
def test_incompatible_options_are_refused_with_one_line(options: dict, message: str) -> None:
    config = FedConfig(secagg=True, **options)
    with pytest.raises(InputError, match=message) as info:
        config.validate()
        check_options(config, partners=3)
    assert "\n" not in str(info.value)


def test_cli_refuses_client_level_dp_with_secagg(tmp_path: Path) -> None:
    result = run_cli("federate", "simulate", "--secagg", "--client-dp-noise", "0.5", "--client-dp-clip", "1",
                     "--out", str(tmp_path / "sim"))
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == ["error: --secagg: client-level DP (--client-dp-noise) clips and noises individual updates on the "
                     "coordinator, which never sees them under SecAgg+; use local DP (--epsilon) instead"]
    assert not (tmp_path / "sim").exists()  # refused before any silo or key was written
