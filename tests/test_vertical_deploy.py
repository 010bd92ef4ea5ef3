"""Vertical federation deployed on loopback: two organisations, TLS, node keys, signed runs.

The bank (label party) runs the SuperLink and submits; the retailer (feature party) joins with its
own node key, its long-lived node and the bank's pinned public key. A signed run: both ledgers verify
and agree on the model hash, both budgets charged once; new customers scored with that model, the
retailer charging its budget for the embeddings it sends. An outsider's run (signed by another key) is
refused by the retailer before PSI and in its ledger. The retailer's node gone: the run ends naming it.
Every process started here is stopped by pid (`deployment.tracked`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from anonymize.errors import InputError
from federated.runtime import deployment as dep
from federated.runtime.tls import make_node_key, make_tls
from federated.vertical import deploy
from federated.vertical.node import PartyNodeSpec
from federated.vertical.split import SplitConfig
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import init_keys, load_public_key
from privmodel.dp import budget

pytestmark = pytest.mark.slow
CONFIG = SplitConfig(epsilon=1.5, epochs=2, batch_size=1024)  # few rounds: every message is a Flower round trip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch):
    from privmodel.data.synth.vertical import generate_vertical, party_policies

    root = tmp_path_factory.mktemp("vdeploy")
    monkeypatch_module.setenv("FLWR_HOME", str(root / "flwr-home"))
    monkeypatch_module.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch_module.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    data = generate_vertical(2500, seed=11)
    for name, doc in party_policies(200).items():
        (root / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    pq.write_table(data.bank, root / "bank.parquet")
    pq.write_table(data.retailer, root / "retailer.parquet")
    for org in ("bank", "retailer", "outsider"):
        init_keys(root / f"keys-{org}", actor=org)
    make_tls(root / "tls")  # the bank's CA and SuperLink certificate
    make_node_key(root / "node-retailer")  # the retailer's own node key; only auth.pub goes to the bank
    with dep.tracked() as items:
        link = dep.start_superlink(root / "tls", root / "link")
        items.append(link)
        link.register(root / "node-retailer" / "auth.pub", "retailer")
        spec = PartyNodeSpec(name="retailer", party_file=str(root / "retailer.party.yaml"),
                             data=str(root / "retailer.parquet"), keys=str(root / "keys-retailer"),
                             workdir=str(root / "retailer-node"), coordinator_key=str(root / "keys-bank"))
        node = deploy.join(spec, link.address, root / "tls" / "ca.crt", root / "node-retailer" / "auth.key")
        items.append(node)
        yield {"root": root, "link": link, "node": node, "items": items}
    for item in items:  # every process this module started is gone
        procs = [item.proc] if hasattr(item, "proc") else [item.worker, item.supernode]
        assert all(p.poll() is not None for p in procs)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _request(fed, out: str, keys: str = "keys-bank") -> deploy.RunRequest:
    root, link = fed["root"], fed["link"]
    return deploy.RunRequest(superlink=link.control_address, ca=root / "tls" / "ca.crt", registry=link.registry_path,
                             label_party=root / "bank.party.yaml", label_data=root / "bank.parquet",
                             label_keys=root / keys, feature_party="retailer", out=root / out, config=CONFIG,
                             timeout=400, message_timeout=120)


def _retailer_ledger(fed) -> Path:
    return fed["root"] / "retailer-node" / "retailer" / "ledger.jsonl"


def test_an_outsiders_run_is_refused_by_the_feature_party(fed) -> None:
    """Signed by a key the retailer did not pin: refused before PSI, in its ledger; nothing spent."""
    with pytest.raises(InputError, match="retailer refused the run: not signed by bank's pinned key"):
        deploy.run(_request(fed, "outsider-run", keys="keys-outsider"))
    entries = read_entries(_retailer_ledger(fed))
    assert entries[-1]["action"] == "vertical.run_refused" and entries[-1]["outcome"] == "failed"
    assert not any(e["action"] == "vertical.psi" for e in entries)
    assert budget.spent("retailer-customers", fed["root"] / "keys-retailer").charges == 0


def test_a_signed_run_over_tls_ledgers_verify_and_agree(fed) -> None:
    root = fed["root"]
    events: list[dict] = []
    result = deploy.run(_request(fed, "bank-run"), on_event=events.append)
    assert result["status"] == "finished:completed"
    done = result["done"]
    assert [e["round"] for e in events if e.get("event") == "round"] == [1, 2]
    assert done["seconds"]["per_round"] > 0 and done["overlap"]["size"] >= 200
    print("vertical deployment seconds per round:", done["seconds"])
    hashes, runs = set(), set()
    for org, ledger in (("bank", root / "bank-run" / "bank" / "ledger.jsonl"), ("retailer", _retailer_ledger(fed))):
        assert verify(ledger, [load_public_key(root / f"keys-{org}")]).ok
        entries = read_entries(ledger)
        psi = [e for e in entries if e["action"] == "vertical.psi"][-1]
        assert psi["params"]["intersection_size"] == done["overlap"]["size"]
        train = [e for e in entries if e["action"] == "vertical.train" and e["outcome"] != "failed"][-1]
        hashes.add(train["params"]["model_hash"])
        assert budget.spent(f"{org}-customers", root / f"keys-{org}").charges == 1
        runs.add(train["params"]["run_sha256"])
    assert hashes == {done["model_hash"]} and len(runs) == 1
    assert (root / "retailer-node" / "retailer" / "model.pt").is_file()
    card = json.loads((root / "bank-run" / "bank" / "card.json").read_text())
    assert set(card["parties"]) == {"bank", "retailer"} and card["model_hash"] == done["model_hash"]
    assert 1.4 < card["parties"]["retailer"]["epsilon"] <= 1.5

    # new customers (here the bank's table again) scored with that model, both parties online
    scored = deploy.run(dataclasses.replace(_request(fed, "bank-score"), model_dir=root / "bank-run" / "bank"))["done"]
    assert scored["model_hash"] == done["model_hash"] and scored["scored"] == scored["overlap"]["size"] > 0
    assert pq.read_table(root / "bank-score" / "bank" / "scores.parquet").num_rows == scored["scored"]
    entry = [e for e in read_entries(_retailer_ledger(fed)) if e["action"] == "vertical.score"][-1]
    assert entry["params"]["model_hash"] == done["model_hash"]
    spent = budget.spent("retailer-customers", root / "keys-retailer")
    score_eps = scored["parties"]["retailer"]["epsilon"]
    assert spent.charges == 2 and spent.epsilon == pytest.approx(card["parties"]["retailer"]["epsilon"] + score_eps)


def test_the_feature_party_dropping_out_ends_the_run_with_its_name(fed) -> None:
    """The retailer's node dies once it accepted the run (its SuperNode still answers): the run ends,
    naming it, with a `failed` entry in the bank's ledger and nothing published."""
    node, out = fed["node"], fed["root"] / "dropped-run"
    killed = threading.Event()

    def kill_after_accepting() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            with contextlib.suppress(OSError):
                if '"event": "accepted"' in (out / "progress.jsonl").read_text():
                    dep.stop(node.worker)
                    killed.set()
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_accepting, daemon=True)
    watcher.start()
    request = dataclasses.replace(_request(fed, "dropped-run"), config=SplitConfig(epsilon=None, epochs=1))
    try:
        with pytest.raises(InputError, match=r"party 'retailer' dropped out during psi\.\w+; the run ended"):
            deploy.run(request)
    finally:
        killed.set()
        watcher.join(timeout=5)
    assert node.worker.poll() is not None
    last = read_entries(out / "bank" / "ledger.jsonl")[-1]
    assert last["outcome"] == "failed" and "retailer" in (last["reason"] or "")
    assert not (out / "bank" / "model.pt").exists()
