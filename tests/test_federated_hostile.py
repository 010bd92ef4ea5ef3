"""A hostile partner (issue 11, item 5) and what partners train on (issue 10, findings 4 and 5).

Every reply a partner sends is validated on the coordinator; each hostile class is rejected with a
line naming the partner and the round goes on with the others. Partners train on their own
consent-filtered, minimised rows and send nothing computed on them except the DP update.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize.errors import InputError
from federated.coordinator.reply_checks import hello_problem, metrics_problem, reply_problem
from federated.coordinator.run_card import PER_CUSTOMER, build_card, render_markdown
from federated.runtime.config import FedConfig
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import load_public_key

REFERENCE = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
GOOD_METRICS = {"num-examples": 100, "epsilon": 0.4, "eval_auc": 0.7, "eval_loss": 0.5, "eval_n": 25}
GOOD_HELLO = {
    "partner": "bank-b", "policy_hash": "a" * 64, "n_train": 100, "n_test": 25, "epsilon_cap": 3.0,
    "epsilon_spent": 0.0, "n_num": 3, "cards": "4,3", "training_rows": "minimised",
}


def _update(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**{k: v + 0.1 for k, v in REFERENCE.items()}, **changes}


def test_a_sound_reply_and_hello_pass() -> None:
    assert reply_problem(_update(), GOOD_METRICS, REFERENCE, declared=100, bound=10.0) is None
    assert hello_problem(GOOD_HELLO) is None


@pytest.mark.parametrize("update,metrics,expected", [
    (_update(w=np.full((2, 3), "1.0", dtype="<U3")), GOOD_METRICS, "update dtype <U3"),
    (_update(w=np.zeros((2, 3), dtype=np.complex128)), GOOD_METRICS, "update dtype complex128"),
    (_update(w=np.zeros((2, 3), dtype=np.int64)), GOOD_METRICS, "update dtype int64"),
    (_update(w=np.zeros((2, 3), dtype=object)), GOOD_METRICS, "update dtype object"),
    (_update(w=np.zeros((3, 3), dtype=np.float32)), GOOD_METRICS, r"parameter w has shape \(3, 3\), expected \(2, 3\)"),
    (_update(w=np.array([[np.nan, 0, 0], [0, 0, 0]], dtype=np.float32)), GOOD_METRICS, "NaN or infinite"),
    (_update(b=np.array([np.inf, 0], dtype=np.float64)), GOOD_METRICS, "NaN or infinite"),
    ({"w": REFERENCE["w"]}, GOOD_METRICS, "parameter names differ"),
    (_update(b=[0.0, 0.0]), GOOD_METRICS, "parameter b is list, not an array"),
    (_update(w=np.full((2, 3), 1e3, dtype=np.float32)), GOOD_METRICS, r"update norm .* exceeds the bound 10"),
    (_update(), {k: v for k, v in GOOD_METRICS.items() if k != "eval_auc"}, "'eval_auc' missing from the metrics"),
    (_update(), {**GOOD_METRICS, "epsilon": "0.4"}, "metrics field 'epsilon' is str, expected real"),
    (_update(), {**GOOD_METRICS, "num-examples": 0}, "num-examples 0 is not a positive count"),
    (_update(), {**GOOD_METRICS, "num-examples": -5}, "num-examples -5 is not a positive count"),
    (_update(), {**GOOD_METRICS, "num-examples": 10**12}, "num-examples 1000000000000 exceeds the 100 training rows declared"),
    (_update(), {**GOOD_METRICS, "num-examples": 50.5}, "metrics field 'num-examples' is float, expected count"),
    (_update(), {**GOOD_METRICS, "num-examples": True}, "metrics field 'num-examples' is bool, expected count"),
    (_update(), {**GOOD_METRICS, "epsilon": float("inf")}, "epsilon inf is not a finite"),
    (_update(), {**GOOD_METRICS, "eval_auc": 7.0}, r"eval_auc 7.0 is not in \[0, 1\]"),
], ids=["unicode", "complex", "int", "object", "shape", "nan", "inf", "names", "not-array", "norm", "missing-metric",
        "metric-type", "n-zero", "n-negative", "n-beyond-declared", "n-float", "n-bool", "eps-inf", "auc-range"])
def test_each_hostile_reply_class_is_rejected_with_its_reason(update, metrics, expected) -> None:
    problem = reply_problem(update, metrics, REFERENCE, declared=100, bound=10.0)
    assert problem is not None
    import re

    assert re.search(expected, problem), problem


def test_num_examples_without_a_declaration_is_rejected() -> None:
    assert metrics_problem(GOOD_METRICS, None) == "no training-row count was declared at hello"


@pytest.mark.parametrize("hello,expected", [
    ({k: v for k, v in GOOD_HELLO.items() if k != "policy_hash"}, "'policy_hash' missing from the hello"),
    ({**GOOD_HELLO, "n_train": "many"}, "hello field 'n_train' is str, expected count"),
    ({**GOOD_HELLO, "n_train": 0}, "hello field 'n_train' 0 is not a training-row count"),
    ({**GOOD_HELLO, "n_train": 10**12}, "hello field 'n_train' 1000000000000 is not a training-row count"),
    ({**GOOD_HELLO, "partner": "<script>"}, "hello field 'partner' is not a partner name"),
    ({**GOOD_HELLO, "policy_hash": "xyz"}, "not a SHA-256 hex digest"),
    ({**GOOD_HELLO, "epsilon_cap": float("nan")}, "'epsilon_cap' is not a finite non-negative number"),
    ({**GOOD_HELLO, "cards": "4;DROP"}, "'cards' is not a list of category counts"),
    ({**GOOD_HELLO, "training_rows": "raw"}, "'training_rows' must be one of minimised, release"),
    ({}, "'partner' missing from the hello"),
], ids=["no-hash", "n-text", "n-zero", "n-huge", "name", "hash", "cap-nan", "cards", "rows", "empty"])
def test_malformed_hellos_are_refused(hello, expected) -> None:
    problem = hello_problem(hello)
    assert problem is not None and expected in problem, problem


# --- the round loop with a malicious partner (in-process grid: the real ServerApp and ClientApps) ---


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from federated.runtime.simulate import synth_silos
    from privmodel.core.keys import init_keys

    out = tmp_path_factory.mktemp("fedhostile")
    paths, holdout, policy = synth_silos(out, silos=4, customers=4000, heterogeneity=0.6, seed=5, holdout=800)
    open_policy = out / "policy-no-budget.yaml"  # non-private rounds: no budget line in the policy
    open_policy.write_text("\n".join(x for x in policy.read_text().splitlines() if not x.startswith("budget:")) + "\n")
    keys = out / "coord-keys"
    init_keys(keys, actor="coordinator")
    return out, paths, holdout, open_policy, keys


def _run(world, tmp_path: Path, behaviours: dict[int, str], rounds: int, min_partners: int):
    from federated.coordinator.server_app import ServerSettings, run_server
    from federated.partner.adversary import make_adversarial_client_app
    from federated.runtime.simulate import partner_specs
    from tests.test_federated_options import LocalGrid

    out, paths, holdout, policy, keys = world
    specs = partner_specs(tmp_path, paths, policy)
    config = FedConfig(rounds=rounds, epsilon=0.0, local_steps=3, batch_size=128, min_partners=min_partners)
    settings = ServerSettings(config, str(policy), str(tmp_path / "coord"), str(keys), str(holdout),
                              expected_partners=len(specs), wait_timeout=5)
    app = make_adversarial_client_app([s.to_dict() for s in specs], behaviours)
    return run_server(LocalGrid(app, len(specs)), settings)


def test_malicious_partner_is_rejected_by_name_each_round_and_the_run_goes_on(world, tmp_path: Path) -> None:
    attacks = ["complex", "unicode", "huge", "zero", "negative", "nometric", "shape", "nan"]
    behaviour = "|".join(f"{kind}@{i + 1}" for i, kind in enumerate(attacks))
    outcome = _run(world, tmp_path, {2: behaviour, 3: "hello"}, rounds=len(attacks), min_partners=2)
    expected = ["update dtype complex128", "update dtype <U3", "num-examples 1000000000000 exceeds the",
                "num-examples 0 is not a positive count", "num-examples -5 is not a positive count",
                "'eval_auc' missing from the metrics", "has shape", "NaN or infinite"]
    assert len(outcome.rounds) == len(attacks)
    for entry, reason in zip(outcome.rounds, expected, strict=True):
        assert sorted(entry["accepted"]) == ["silo-0", "silo-1"], entry
        assert [i["partner"] for i in entry["rejected"]] == ["silo-2"] and reason in entry["rejected"][0]["reason"]
    assert "silo-3" not in outcome.partners  # refused at hello: malformed
    coord = tmp_path / "coord"
    entries = read_entries(coord / "ledger.jsonl")
    assert verify(coord / "ledger.jsonl", [load_public_key(world[4])]).ok
    rejected = [e["reason"] for e in entries if e["action"] == "federate.update_rejected"]
    assert rejected[0].startswith("partner silo-2 rejected: update dtype complex128")
    assert len(rejected) == len(attacks)
    hello_failed = [e["reason"] for e in entries if e["action"] == "federate.partner" and e["params"].get("stage") == "hello"]
    assert hello_failed == ["partner silo-3 rejected: malformed hello ('policy_hash' missing from the hello)"]
    start = next(e for e in entries if e["action"] == "federate.start")
    declared = start["params"]["declared"]
    assert set(declared) == {"silo-0", "silo-1", "silo-2"} and all(v["n_train"] > 0 for v in declared.values())
    # the final model is FedAvg of the honest partners only, and they confirmed its hash
    assert outcome.partners["silo-0"]["confirmed_hash"] and outcome.partners["silo-2"]["rounds"] == []


def test_too_few_sound_replies_fail_the_round_cleanly_naming_the_partner(world, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"round 1: only 3 acceptable updates, at least 4 needed .*"
                                         r"rejected: partner silo-1 rejected: update dtype complex128"):
        _run(world, tmp_path, {1: "complex"}, rounds=1, min_partners=4)


# --- what partners train on, and what the card says --------------------------------------------


def test_partner_trains_on_its_own_consent_filtered_minimised_rows(world, tmp_path: Path) -> None:
    from federated.partner.worker import PartnerWorker
    from federated.runtime.simulate import partner_specs
    from privmodel.data.features import TabularEncoder

    out, paths, holdout, policy, keys = world
    spec = partner_specs(tmp_path, paths[:1], policy)[0]
    worker = PartnerWorker(spec)
    config = FedConfig(epsilon=0.0, eval_fraction=0.2)
    hello = worker.hello(config)
    raw = pd.read_parquet(paths[0])
    consenting = raw[raw["consent_analytics"].astype(bool)]
    # every consenting row is used (train + held-out), none of the others
    assert hello["n_train"] + hello["n_test"] == len(consenting) and hello["training_rows"] == "minimised"
    entry = [e for e in read_entries(Path(spec.workdir) / "ledger.jsonl") if e["action"] == "federate.minimise"][-1]
    assert entry["params"]["removed"]["no_consent"] == int((~raw["consent_analytics"].astype(bool)).sum())
    assert entry["params"]["rows_out"] == len(consenting)
    # raw values, not generalized ranges: the encoded ages are exactly the consenting customers' ages
    prep = worker._prepare(config)
    encoder = TabularEncoder.from_policy(worker.policy, label="churn")
    col = [s.name for s in encoder.numeric].index("age")
    expected = encoder.transform(consenting).x_num[:, col]
    got = np.concatenate([prep.train.x_num[:, col], prep.test.x_num[:, col]])
    assert np.array_equal(np.sort(got), np.sort(expected))
    assert len(np.unique(got)) > 30  # raw ages, not a handful of range midpoints


def test_train_reply_carries_nothing_computed_on_training_rows(world, tmp_path: Path) -> None:
    from federated.coordinator.server_app import _build_model
    from federated.partner.worker import PartnerWorker, _model_arrays
    from federated.runtime.simulate import partner_specs

    out, paths, holdout, policy, keys = world
    worker = PartnerWorker(partner_specs(tmp_path, paths[:1], policy)[0])
    config = FedConfig(rounds=1, epsilon=0.0, local_steps=2, batch_size=64)
    hello = worker.hello(config)
    start = _model_arrays(_build_model(config, int(hello["n_num"]), [int(c) for c in hello["cards"].split(",")]))
    new, metrics = worker.train(start, config, "run-x", 1)
    assert set(metrics) == {"num-examples", "epsilon", "eval_auc", "eval_loss", "eval_n"}
    assert metrics["num-examples"] == hello["n_train"] and metrics["eval_n"] == hello["n_test"]
    assert set(new) == set(start) and any(not np.array_equal(new[k], start[k]) for k in start)


def test_card_states_per_customer_epsilon_and_lists_figures_released_without_dp() -> None:
    declared = {"bank-a": {**GOOD_HELLO, "partner": "bank-a"}, "bank-b": dict(GOOD_HELLO)}
    kwargs = dict(
        policy_hash="a" * 64, model_hash="b" * 64, rejected=[], delta=1e-6, run_id="7", seconds=1.0,
        partners={n: {"rounds": [1], "epsilon": 0.9, "confirmed_hash": True} for n in declared},
        rounds=[{"round": 1, "accepted": ["bank-a", "bank-b"], "rejected": [], "failed": [],
                 "global": {"auc": 0.7, "loss": 0.5, "n": 10}, "per_silo": {}}],
    )
    card = build_card(config=FedConfig(epsilon=1.0), declared=declared, eval_data="holdout.parquet", **kwargs)
    text = render_markdown(card)
    assert card["privacy_unit"] == PER_CUSTOMER
    assert text.splitlines()[2] == f"**{PER_CUSTOMER}.**"
    assert "train_loss" not in json.dumps(card)
    assert any("held-out rows" in item for item in card["released_without_dp"])
    assert any("coordinator on its own evaluation table" in item for item in card["released_without_dp"])
    assert "## Released without differential privacy" in text
    assert card["partners"]["bank-b"]["declared_train_rows"] == 100
    # a partner on the old release path: ε is per release row, and the card says so first
    declared["bank-b"] = {**GOOD_HELLO, "training_rows": "release"}
    card = build_card(config=FedConfig(epsilon=1.0), declared=declared, **kwargs)
    assert card["privacy_unit"].startswith("ε is per release row, NOT per customer, for bank-b")
    assert card["privacy_unit"].endswith(PER_CUSTOMER)
