"""The feature party's deployment node without Flower: what it accepts, in what order, and what it records.

Messages go through `FeatureNode.handle` as the lean ClientApp sends them (the RecordDict as Flower's
protobuf bytes), so these checks are the node's own, not the transport's.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from federated.vertical.client_app import from_bytes, to_bytes
from federated.vertical.node import FeatureNode, PartyNodeSpec
from federated.vertical.party import load_party
from federated.vertical.server_app import VerticalSettings, expected_spec
from federated.vertical.split import SplitConfig
from federated.vertical.workflow import sign_run
from privmodel.artifacts.ledger import read_entries
from privmodel.core.keys import init_keys, load_signer
from privmodel.dp import budget


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from privmodel.data.synth.vertical import generate_vertical, party_policies

    root = tmp_path_factory.mktemp("vnode")
    data = generate_vertical(800, seed=3)
    for name, doc in party_policies(50).items():
        (root / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    pq.write_table(data.bank, root / "bank.parquet")
    pq.write_table(data.retailer, root / "retailer.parquet")
    for org in ("bank", "retailer", "outsider"):
        init_keys(root / f"keys-{org}", actor=org)
    return {"root": root}


def _node(root: Path, tmp: Path) -> FeatureNode:
    return FeatureNode(PartyNodeSpec(name="retailer", party_file=str(root / "retailer.party.yaml"),
                                     data=str(root / "retailer.parquet"), keys=str(root / "keys-retailer"),
                                     workdir=str(tmp / "node"), coordinator_key=str(root / "keys-bank")))


def _send(node: FeatureNode, kind: str, run_id: str, content, seq: int = 0) -> tuple[dict, object]:
    reply, arrays = _send_raw(node, kind, run_id, content, seq)
    return reply, (from_bytes(arrays["payload"].tobytes()) if "payload" in arrays else None)


def _send_raw(node: FeatureNode, kind: str, run_id: str, content, seq: int = 0) -> tuple[dict, dict]:
    from flwr.app import RecordDict

    payload = np.frombuffer(to_bytes(content if content is not None else RecordDict({})), dtype=np.uint8)
    return node.handle("vertical", {"kind": kind, "run_id": run_id, "seq": seq}, {"payload": payload})


def _run_message(root: Path, run_id: str, keys: str = "keys-bank", **changes):
    settings = VerticalSettings(SplitConfig(epsilon=1.0, epochs=1), str(root / "bank.party.yaml"), "", "", "",
                                "retailer", 7, "")
    spec = expected_spec(load_party(root / "bank.party.yaml"), settings, load_signer(root / keys).key_id)
    spec.update({"run_id": run_id, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **changes})
    return sign_run(load_signer(root / keys), spec)


def _ledger(tmp: Path) -> list[dict]:
    return read_entries(tmp / "node" / "retailer" / "ledger.jsonl")


def test_refuses_an_outsiders_run_another_runs_signature_and_a_future_date(world, tmp_path: Path) -> None:
    root = world["root"]
    node = _node(root, tmp_path)
    cases = [(_run_message(root, "11", keys="keys-outsider"), "not signed by bank's pinned key"),
             (_run_message(root, "12"), "the signature is for run 12, not this run"),
             (_run_message(root, "11", time="2999-01-01T00:00:00+00:00"), "dated in the future"),
             (_run_message(root, "11", feature_party="telco"), "names another feature party"),
             (_run_message(root, "11", feature_parties=["retailer", "telco"]),
              "a deployment trains with one feature party; this run names 2")]
    for message, why in cases:
        reply, _ = _send(node, "vertical.run", "11", message)
        assert reply["ok"] is False and reply["kind"] == "refused" and why in reply["error"], reply
    refused = [e for e in _ledger(tmp_path) if e["action"] == "vertical.run_refused"]
    assert len(refused) == len(cases) and all(e["outcome"] == "failed" for e in refused)
    assert not any(e["action"] == "vertical.psi" for e in _ledger(tmp_path))
    assert budget.spent("retailer-customers", root / "keys-retailer").charges == 0


def test_messages_out_of_order_or_of_another_run_are_refused(world, tmp_path: Path) -> None:
    root = world["root"]
    node = _node(root, tmp_path)
    reply, _ = _send(node, "psi.request", "21", None)  # no run accepted yet
    assert reply["ok"] is False and "has not accepted" in reply["error"]
    reply, answer = _send(node, "vertical.run", "21", _run_message(root, "21"))
    assert reply == {"ok": True, "kind": "vertical.ready"} and answer is not None
    reply, _ = _send(node, "split.start", "99", None)  # another run's message leaves run 21 open
    assert reply["ok"] is False and node.run is not None and node.run.run_id == "21"
    reply, _ = _send(node, "split.start", "21", None)  # before PSI: out of order, run 21 ends as failed
    assert reply["ok"] is False and "out of order (after vertical.ready)" in reply["error"]
    assert node.run is None
    last = _ledger(tmp_path)[-1]
    assert last["action"] == "vertical.train" and last["outcome"] == "failed" and "out of order" in last["reason"]


def test_a_message_delivered_twice_is_answered_once(world, tmp_path: Path) -> None:
    """At-least-once delivery (a retried connection): the same (run, kind, seq) gets the recorded
    answer, byte for byte, and the run does not step twice; a new seq is a new step."""
    from federated.vertical.psi import psi_message

    root = world["root"]
    node = _node(root, tmp_path)
    message = _run_message(root, "31")
    first = _send_raw(node, "vertical.run", "31", message, seq=1)
    again = _send_raw(node, "vertical.run", "31", message, seq=1)
    assert first[0] == again[0] == {"ok": True, "kind": "vertical.ready"}
    assert first[1]["payload"].tobytes() == again[1]["payload"].tobytes()
    request = psi_message(b"\x00" * 64, count=2)
    one = _send_raw(node, "psi.request", "31", request, seq=2)
    two = _send_raw(node, "psi.request", "31", request, seq=2)
    assert one[0] == two[0] == {"ok": True, "kind": "psi.request"}
    assert one[1]["payload"].tobytes() == two[1]["payload"].tobytes()  # fresh secrets would differ
    assert node.run is not None and node.run.stage == "psi.request"
    reply, _ = _send(node, "psi.request", "31", request, seq=3)  # a new message: a real (out-of-order) step
    assert reply["ok"] is False and "out of order (after psi.request)" in reply["error"]


class _LocalLink:
    """The deployment's two sides joined in one process: each message through the node's `handle`,
    as Flower protobuf bytes (what the ClientApp forwards), no SuperLink."""

    def __init__(self, node: FeatureNode, run_id: str, label: str) -> None:
        self.node, self.run_id = node, run_id
        self.bytes_by_sender = {label: 0, node.name: 0}
        self.messages = 0
        self.kinds: list[str] = []

    def exchange(self, kind, content, expect):
        reply, answer = _send(self.node, kind, self.run_id, content)
        self.messages += 1
        self.kinds.append(kind)
        assert reply["ok"], reply
        assert reply["kind"] in ((expect,) if isinstance(expect, str) else expect)
        return reply["kind"], answer

    def wait(self, timeout: float) -> None:
        return None

    def abort(self, reason: str) -> None:
        _send(self.node, "vertical.abort", self.run_id, None)


@pytest.mark.slow
def test_the_deployed_sides_train_like_the_simulation_and_agree(world, tmp_path: Path) -> None:
    """The label party's ServerApp side and the feature party's node, joined in one process: the
    same messages, one model hash in both ledgers, an AUC like the simulation's on the same data."""
    import base64

    from federated.vertical.server_app import LabelRun
    from federated.vertical.workflow import PartyInput, simulate
    from privmodel.artifacts.ledger import canonical_json, verify
    from privmodel.core.keys import load_public_key
    from privmodel.data.synth.vertical import generate_vertical

    root = tmp_path / "parties"  # enough shared customers for a held-out AUC that says something
    root.mkdir()
    data = generate_vertical(2500, seed=11)
    for path in world["root"].glob("*.yaml"):  # the party files and their policies
        (root / path.name).write_bytes(path.read_bytes())
    pq.write_table(data.bank, root / "bank.parquet")
    pq.write_table(data.retailer, root / "retailer.parquet")
    for org in ("bank", "retailer"):
        init_keys(root / f"keys-{org}", actor=org)
    config = SplitConfig(epsilon=None, epochs=8, batch_size=128)
    node = _node(root, tmp_path)
    settings = VerticalSettings(config, str(root / "bank.party.yaml"), str(root / "bank.parquet"), str(root / "keys-bank"),
                                str(tmp_path / "bank-run"), "retailer", 7, str(tmp_path / "authorization.json"))
    spec = expected_spec(load_party(root / "bank.party.yaml"), settings, load_signer(root / "keys-bank").key_id)
    body = canonical_json({**spec, "run_id": "31", "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    signature = base64.b64encode(load_signer(root / "keys-bank").sign(body)).decode()
    (tmp_path / "authorization.json").write_text(json.dumps({"body": body.decode(), "signature": signature}))
    links: list[_LocalLink] = []
    done = LabelRun(settings, "31", lambda label: links.append(_LocalLink(node, "31", label)) or links[-1]).run()
    scored = _score(root, node, settings, done["model_hash"], tmp_path)
    assert links[0].kinds[:5] == ["vertical.run", "psi.request", "psi.tokens", "psi.done", "split.start"]
    hashes = set()
    for org, ledger in (("bank", tmp_path / "bank-run" / "bank" / "ledger.jsonl"), ("retailer", tmp_path / "node" / "retailer" / "ledger.jsonl")):
        assert verify(ledger, [load_public_key(root / f"keys-{org}")]).ok
        hashes.add([e for e in read_entries(ledger) if e["action"] == "vertical.train"][-1]["params"]["model_hash"])
    assert hashes == {done["model_hash"]}
    sim = simulate(PartyInput(root / "bank.party.yaml", root / "bank.parquet", root / "keys-bank"),
                   PartyInput(root / "retailer.party.yaml", root / "retailer.parquet", root / "keys-retailer"),
                   config, tmp_path / "sim")
    assert sim.overlap["size"] == done["overlap"]["size"]
    # PSI's scalars are fresh each run, so the agreed order and the batches differ: close, not equal
    deployed, simulated = done["metrics"]["roc_auc"], sim.metrics["roc_auc"]
    assert deployed > 0.72 and simulated > 0.72 and abs(deployed - simulated) < 0.1, (deployed, simulated)
    return scored


def _authorize(root: Path, settings: VerticalSettings, run_id: str) -> None:
    import base64

    from privmodel.artifacts.ledger import canonical_json

    signer = load_signer(root / "keys-bank")
    spec = expected_spec(load_party(root / "bank.party.yaml"), settings, signer.key_id)
    body = canonical_json({**spec, "run_id": run_id, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    Path(settings.authorization).write_text(json.dumps({"body": body.decode(),
                                                         "signature": base64.b64encode(signer.sign(body)).decode()}))


def _score(root: Path, node: FeatureNode, trained: VerticalSettings, model_hash: str, tmp_path: Path) -> dict:
    """New customers (here: the bank's table again) scored with the trained parts, both sides online."""
    import dataclasses

    from sklearn.metrics import roc_auc_score

    from federated.vertical.server_app import LabelRun

    settings = dataclasses.replace(trained, out_dir=str(tmp_path / "bank-score"), mode="score", model_hash=model_hash,
                                   model_dir=str(Path(trained.out_dir) / "bank"),
                                   authorization=str(tmp_path / "score-auth.json"))
    _authorize(root, dataclasses.replace(settings, model_hash="f" * 64), "41")  # a model it does not hold
    reply, _ = _send(node, "vertical.run", "41", _signed_message(settings.authorization))
    assert reply["ok"] is False and "refused to score: it does not hold the model part of ffffffffffffffff" in reply["error"]
    _authorize(root, settings, "42")
    done = LabelRun(settings, "42", lambda label: _LocalLink(node, "42", label)).run()
    scores = pq.read_table(tmp_path / "bank-score" / "bank" / "scores.parquet").to_pandas()
    assert len(scores) == done["scored"] == done["overlap"]["size"] and scores["row"].is_unique
    churn = pq.read_table(root / "bank.parquet").column("churn").to_numpy()[scores["row"].to_numpy()]
    assert roc_auc_score(churn, scores["score"]) > 0.72  # the loaded parts make the trained model
    for ledger in (tmp_path / "bank-score" / "bank" / "ledger.jsonl", tmp_path / "node" / "retailer" / "ledger.jsonl"):
        entry = [e for e in read_entries(ledger) if e["action"] == "vertical.score"][-1]
        assert entry["params"]["model_hash"] == model_hash and entry["params"]["scored"] == done["scored"]
    return done


def _signed_message(path: str):
    from federated.vertical.workflow import run_message

    auth = json.loads(Path(path).read_text())
    return run_message(auth["body"].encode(), auth["signature"])


def _deployed_run(root: Path, tmp_path: Path, node: FeatureNode, config: SplitConfig,
                  run_id: str) -> tuple[VerticalSettings, dict, list[_LocalLink]]:
    """The label party's deployed run of `config` against `node` in one process, signed as `vertical run`
    signs it: (its settings, as they survive Flower's run config; its `done` event; the link used)."""
    import base64

    from federated.vertical.server_app import LabelRun
    from privmodel.artifacts.ledger import canonical_json

    settings = VerticalSettings(config, str(root / "bank.party.yaml"), str(root / "bank.parquet"), str(root / "keys-bank"),
                                str(tmp_path / "bank-run"), "retailer", 7, str(tmp_path / "authorization.json"))
    settings = VerticalSettings.from_record(settings.to_record())
    assert settings.config == config
    spec = expected_spec(load_party(root / "bank.party.yaml"), settings, load_signer(root / "keys-bank").key_id)
    body = canonical_json({**spec, "run_id": run_id, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    signature = base64.b64encode(load_signer(root / "keys-bank").sign(body)).decode()
    (tmp_path / "authorization.json").write_text(json.dumps({"body": body.decode(), "signature": signature}))
    links: list[_LocalLink] = []
    done = LabelRun(settings, run_id, lambda label: links.append(_LocalLink(node, run_id, label)) or links[-1]).run()
    return settings, done, links


def test_the_deployed_sides_run_the_one_shot_release(world, tmp_path: Path) -> None:
    """`protocol: release` over the deployment's messages: two training messages (released labels down,
    released bins up), each side's epsilon charged once, one model hash in both ledgers; the
    settings survive Flower's run config (bins and protocol), and scoring new customers is refused."""
    from federated.vertical.server_app import LabelRun
    from privmodel.artifacts.ledger import verify
    from privmodel.core.keys import load_public_key

    root = world["root"]
    config = SplitConfig(epsilon=2.0, epochs=3, protocol="release", bins=3)
    node = _node(root, tmp_path)
    settings, done, links = _deployed_run(root, tmp_path, node, config, "41")
    assert links[0].kinds[3:] == ["psi.done", "release.labels", "split.done"]
    assert done["card"]["kind"] == "vertical one-shot release" and done["card"]["noise_multipliers"]["bins"] == 3.0
    for org, ledger in (("bank", tmp_path / "bank-run" / "bank" / "ledger.jsonl"),
                        ("retailer", tmp_path / "node" / "retailer" / "ledger.jsonl")):
        assert verify(ledger, [load_public_key(root / f"keys-{org}")]).ok
        assert [e for e in read_entries(ledger) if e["action"] == "vertical.train"][-1]["params"]["model_hash"] \
            == done["model_hash"]
        spent = budget.spent(f"{org}-customers", root / f"keys-{org}")
        assert spent.delta == (0.0 if org == "bank" else config.delta) and 2.0 - 1e-6 < spent.epsilon <= 2.0
    scoring = VerticalSettings(config, settings.label_party, settings.label_data, settings.label_keys,
                               str(tmp_path / "score"), "retailer", 7, str(tmp_path / "authorization.json"),
                               mode="score", model_hash=done["model_hash"])
    with pytest.raises(Exception, match="scores its run's customers only"):
        LabelRun(scoring, "42", lambda label: _LocalLink(node, "42", label)).run()


def test_the_deployed_sides_run_the_encrypted_protocol(world, tmp_path: Path) -> None:
    """`protocol: encrypted` over the deployment's messages: keys, two messages a step, the held-out
    customers' score parts; each side's epsilon charged once, one model hash in both ledgers, an AUC
    on the held-out customers; scoring new customers is refused."""
    from federated.vertical.server_app import LabelRun
    from privmodel.artifacts.ledger import verify
    from privmodel.core.keys import load_public_key

    root = world["root"]
    config = SplitConfig(epsilon=0.5, epochs=3, protocol="encrypted")
    before = {org: budget.spent(f"{org}-customers", root / f"keys-{org}") for org in ("bank", "retailer")}
    node = _node(root, tmp_path)
    settings, done, links = _deployed_run(root, tmp_path, node, config, "51")
    assert links[0].kinds[3:] == ["psi.done", "he.keys", *["he.residual", "he.gradient"] * 3, "score.request",
                                  "split.done"]
    assert done["card"]["kind"] == "vertical encrypted gradient descent" and done["seconds"]["rounds"] == 3
    assert done["metrics"]["roc_auc"] is not None and done["card"]["noise_multipliers"]["steps"] == 3.0
    for org, ledger in (("bank", tmp_path / "bank-run" / "bank" / "ledger.jsonl"),
                        ("retailer", tmp_path / "node" / "retailer" / "ledger.jsonl")):
        assert verify(ledger, [load_public_key(root / f"keys-{org}")]).ok
        assert [e for e in read_entries(ledger) if e["action"] == "vertical.train"][-1]["params"]["model_hash"] \
            == done["model_hash"]
        spent, was = budget.spent(f"{org}-customers", root / f"keys-{org}"), before[org]
        assert spent.charges == was.charges + 1 and spent.delta - was.delta == pytest.approx(config.delta)
        assert 0.45 < spent.epsilon - was.epsilon <= 0.5 * 1.001  # this run's charge, once
    scoring = VerticalSettings(config, settings.label_party, settings.label_data, settings.label_keys,
                               str(tmp_path / "score"), "retailer", 7, str(tmp_path / "authorization.json"),
                               mode="score", model_hash=done["model_hash"])
    with pytest.raises(Exception, match="scores its run's customers only"):
        LabelRun(scoring, "52", lambda label: _LocalLink(node, "52", label)).run()
