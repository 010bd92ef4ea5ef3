"""Authenticated federation (issue 11, findings 4 and 7), attacked on loopback:

* the Fleet port serves no Control API: a client there cannot list or submit runs;
* partners accept only runs signed by the coordinator key they pinned: an unsigned run, a run signed
  by an outsider's key and an app bundle with code of its own are refused by every partner before
  any data is read or ε spent, the refusal is in each partner's ledger, the outsider gets nothing;
* a partner's name is bound to its registered node key (bank-c's key calling itself bank-a);
* every partner ledger entry of a run names the submitter; both sides record the other's head;
* `join` says why an unregistered node is refused, prints "joined" only once accepted, and SIGTERM
  leaves no process, no pm-worker-* folder; its actor defaults to the partner name.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from anonymize.errors import InputError
from federated.coordinator.server_app import ServerSettings
from federated.partner.supernode import fab_problem
from federated.partner.worker import PartnerSpec
from federated.runtime import deployment as dep
from federated.runtime.config import FedConfig
from federated.runtime.simulate import partner_specs, synth_silos
from federated.runtime.tls import make_node_key, make_tls
from privmodel.artifacts.ledger import ledger_head, read_entries
from privmodel.core.keys import init_keys, key_id_of, load_public_key, load_signer, read_metadata

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fedauth")
    paths, holdout, policy = synth_silos(out, silos=3, customers=3000, heterogeneity=0.5, seed=7, holdout=500)
    specs = partner_specs(out, paths, policy)
    make_tls(out / "tls")
    init_keys(out / "coordinator-keys", actor="coordinator")
    init_keys(out / "outsider-keys", actor="outsider")
    for spec in specs:
        make_node_key(out / "nodekeys" / spec.name)  # each partner's own key; only auth.pub is handed over
        spec.coordinator_key = str(out / "coordinator-keys")
    with dep.tracked() as items:
        link = dep.start_superlink(out / "tls", out / "link")
        items.append(link)
        for spec in specs:
            link.register(out / "nodekeys" / spec.name / "auth.pub", spec.name)
        yield {"out": out, "specs": specs, "policy": policy, "holdout": holdout, "link": link}


def _settings(out_dir: Path, policy: Path, keys: Path, partners: int, signed: bool = True, **config) -> ServerSettings:
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = FedConfig(**{"rounds": 1, "epsilon": 1.0, "local_steps": 3, "batch_size": 64, "min_partners": 2,
                       "round_timeout": 180, **config})  # generous: 2 shared cores, torch imported on first train
    return ServerSettings(cfg, str(policy), str(out_dir), str(keys), None, expected_partners=partners, wait_timeout=60,
                          authorization=str(out_dir / dep.AUTHORIZATION_FILE) if signed else "")


def _join(fed, spec: PartnerSpec, key_of: str | None = None) -> dep.Partner:
    key = fed["out"] / "nodekeys" / (key_of or spec.name) / "auth.key"
    return dep.join(spec, fed["link"].address, fed["out"] / "tls" / "ca.crt", key)


def _fresh(spec: PartnerSpec, root: Path, **changes) -> PartnerSpec:
    """The partner under keys and a workdir of its own (a budget store and ledger per test)."""
    home = root / spec.name
    init_keys(home / "keys", actor=spec.name)
    return PartnerSpec(**{**spec.to_dict(), "workdir": str(home), "keys": str(home / "keys"), **changes})


def _actions(spec: PartnerSpec) -> list[str]:
    ledger = Path(spec.workdir) / "ledger.jsonl"
    return [e["action"] for e in read_entries(ledger)] if ledger.exists() else []


def test_fab_gate_runs_only_privmodels_app(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    ours = build_fab_from_disk(dep.write_app(tmp_path / "ours", {"rounds": 1}))
    assert fab_problem(ours) is None
    evil = dep.write_app(tmp_path / "evil", {"rounds": 1})
    (evil / "evil.py").write_text("import os\nos.system('touch /tmp/owned')\n")
    problem = fab_problem(build_fab_from_disk(evil))
    assert problem is not None and "evil.py" in problem
    text = (tmp_path / "ours" / "pyproject.toml").read_text().replace("federated.partner.client_app:app", "flwr.clientapp:ClientApp")
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text(text)
    assert "components" in fab_problem(build_fab_from_disk(other))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", "not toml [[[")
    assert fab_problem(buffer.getvalue()) == "the app bundle is not a readable FAB"


def test_fleet_port_serves_no_control_api(fed, tmp_path: Path) -> None:
    link = fed["link"]
    host, _ = dep.parse_address(link.control_address)
    assert host == "127.0.0.1" and link.control_address != link.address
    fleet_home = dep.write_flwr_home(tmp_path / "fleet-home", link.address, fed["out"] / "tls" / "ca.crt")
    code, out = dep.flwr_cli(["ls", dep.CONNECTION, "--format", "json"], fleet_home)
    assert json.loads(out[out.index("{"):])["success"] is False and "not the Fleet API" in out
    app = dep.write_app(tmp_path / "app", _settings(tmp_path / "o", fed["policy"], fed["out"] / "outsider-keys", 2).to_record())
    code, out = dep.flwr_cli(["run", str(app), dep.CONNECTION, "--format", "json"], fleet_home, timeout=60)
    assert '"success": false' in out.replace(" ", "").replace('"success":false', '"success": false')
    # no run reached the SuperLink
    code, out = dep.flwr_cli(["ls", dep.CONNECTION, "--format", "json"], link.home)
    assert code == 0 and json.loads(out[out.index("{"):])["runs"] == []


def test_outsider_runs_are_refused_by_every_partner(fed, tmp_path: Path) -> None:
    out, link, policy = fed["out"], fed["link"], fed["policy"]
    specs = [_fresh(s, tmp_path / "partners") for s in fed["specs"][:2]]
    marker = tmp_path / "owned"
    with dep.tracked() as items:
        for spec in specs:
            items.append(_join(fed, spec))
        attacks = {}
        # 1. unsigned: the outsider's ServerApp sends no authorization at all
        s1 = _settings(tmp_path / "unsigned", policy, out / "outsider-keys", 2, signed=False)
        with pytest.raises(InputError) as err:
            dep.submit(link.home, dep.write_app(tmp_path / "app1", s1.to_record()), tmp_path / "unsigned", 120)
        attacks["unsigned"] = str(err.value)
        # 2. signed, but by another coordinator key than the one the partners pinned
        s2 = _settings(tmp_path / "other-key", policy, out / "outsider-keys", 2)
        with pytest.raises(InputError) as err:
            dep.submit(link.home, dep.write_app(tmp_path / "app2", s2.to_record()), tmp_path / "other-key", 120,
                       signer=load_signer(out / "outsider-keys"), record=s2.to_record(),
                       registry=dep.read_registry(link.registry_path))
        attacks["other-key"] = str(err.value)
        # 3. an app bundle with code of its own for the partners' SuperNodes to run
        s3 = _settings(tmp_path / "own-code", policy, out / "outsider-keys", 2, signed=False)
        app3 = dep.write_app(tmp_path / "app3", s3.to_record())
        (app3 / "evil.py").write_text(
            "from pathlib import Path\nfrom flwr.clientapp import ClientApp\napp = ClientApp()\n\n\n@app.query()\n"
            f"def steal(msg, context):\n    Path({str(marker)!r}).write_text('ran')\n    raise SystemExit\n")
        text = (app3 / "pyproject.toml").read_text().replace('clientapp = "federated.partner.client_app:app"', 'clientapp = "evil:app"')
        (app3 / "pyproject.toml").write_text(text)
        with pytest.raises(InputError) as err:
            dep.submit(link.home, app3, tmp_path / "own-code", 120)
        attacks["own-code"] = str(err.value)
        alive = [p.worker.poll() is None and p.supernode.poll() is None for p in items]
    assert all(alive), "a refused run must not take a partner down"
    print(attacks)
    assert "carries no coordinator signature" in attacks["unsigned"]
    outsider_id = key_id_of(load_public_key(out / "outsider-keys"))
    pinned_id = key_id_of(load_public_key(out / "coordinator-keys"))
    assert f"not signed by the pinned coordinator key {pinned_id}" in attacks["other-key"]
    for kind in ("unsigned", "other-key"):
        assert "silo-0" in attacks[kind] and "silo-1" in attacks[kind]  # every partner refused, by name
    assert attacks["own-code"].count("The FAB could not be verified") == 2  # both SuperNodes refused the app
    assert not marker.exists(), "the outsider's code ran on a partner"
    for kind in attacks:
        assert not (tmp_path / kind / "model.npz").exists()
        progress = (tmp_path / kind / "progress.jsonl").read_text() if (tmp_path / kind / "progress.jsonl").exists() else ""
        assert '"event": "round"' not in progress and "eval_auc" not in progress  # no model, no metrics
    for spec in specs:
        actions = _actions(spec)
        refused = [e for e in read_entries(Path(spec.workdir) / "ledger.jsonl") if e["action"] == "federate.run_refused"]
        assert len(refused) == 3, actions
        assert any(e["params"].get("request") == "app" for e in refused)
        assert any(outsider_id not in e["reason"] and pinned_id in e["reason"] for e in refused)
        # nothing loaded, trained or charged
        assert not {"federate.minimise", "federate.round", "budget.charge", "federate.final_model"} & set(actions)


def test_signed_run_binds_names_records_submitter_and_heads(fed, tmp_path: Path) -> None:
    out, link, policy = fed["out"], fed["link"], fed["policy"]
    honest = [_fresh(s, tmp_path / "partners") for s in fed["specs"][:2]]
    # bank-c's key with --name bank-a: silo-2's node key, calling itself silo-0
    impostor = _fresh(fed["specs"][2], tmp_path / "impostor", name="silo-0")
    keys = out / "coordinator-keys"
    settings = _settings(tmp_path / "coordinator", policy, keys, 3)
    with dep.tracked() as items:
        for spec in honest:
            items.append(_join(fed, spec))
        items.append(_join(fed, impostor, key_of="silo-2"))
        result = dep.submit(link.home, dep.write_app(tmp_path / "app", settings.to_record()), tmp_path / "coordinator", 300,
                            signer=load_signer(keys), record=settings.to_record(),
                            registry=dep.read_registry(link.registry_path))
    assert result["status"] == "finished:completed"
    failed = [e["reason"] for e in result["events"] if e["event"] == "partner_failed"]
    assert failed == ["partner silo-2 refused: its node key is registered as silo-2, but it calls itself silo-0"]
    rounds = [e for e in result["events"] if e["event"] == "round"]
    assert sorted(rounds[0]["accepted"]) == ["silo-0", "silo-1"]

    coordinator_ledger = tmp_path / "coordinator" / "ledger.jsonl"
    coord = read_entries(coordinator_ledger)
    submitter = key_id_of(load_public_key(keys))
    start = next(e for e in coord if e["action"] == "federate.start")
    assert start["params"]["submitter"] == submitter
    final = [e for e in coord if e["action"] == "federate.final_model"][-1]
    run_id = final["params"]["run_id"]
    for spec in honest:
        entries = [e for e in read_entries(Path(spec.workdir) / "ledger.jsonl")
                   if e["action"] != "ledger.open" and e["params"].get("run_id", run_id) == run_id]
        assert {e["action"] for e in entries} >= {"federate.minimise", "budget.charge", "federate.round", "federate.final_model"}
        assert all(e["params"].get("submitter") == submitter for e in entries), [e["action"] for e in entries]
        # the partner's head, as the coordinator recorded it, is the partner's ledger as it stands
        mine = ledger_head(Path(spec.workdir) / "ledger.jsonl", [load_public_key(spec.keys)])
        assert final["params"]["partner_heads"][spec.name] == dict(mine)
        assert any(e["action"] == "federate.partner_head" and e["params"]["head"] == dict(mine) for e in coord)
        # the coordinator's head, as the partner recorded it, is a prefix of the coordinator's ledger
        theirs = [e for e in entries if e["action"] == "federate.final_model"][-1]["params"]["coordinator_head"]
        assert 0 < theirs["entries"] < len(coord)
        assert coord[theirs["entries"] - 1]["hash"] == theirs["last_hash"]
    impostor_actions = _actions(impostor)
    assert "budget.charge" not in impostor_actions and "federate.round" not in impostor_actions


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below pid, from /proc."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, starts[child]))
            todo.append(child)
    return found


def _running(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def test_join_cli_unregistered_key_then_sigterm_leaves_nothing(fed, tmp_path: Path) -> None:
    out, link = fed["out"], fed["link"]
    spec = fed["specs"][2]
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", TMPDIR=str(tmpdir), PRIVMODEL_KEYS=str(tmp_path / "org-keys"))
    keygen = subprocess.run([sys.executable, "-m", "privmodel.cli", "federate", "keygen", str(tmp_path / "newkey")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=False)
    assert keygen.returncode == 0 and "auth.pub" in keygen.stdout
    assert (tmp_path / "newkey" / "auth.key").stat().st_mode & 0o777 == 0o600
    base = [sys.executable, "-m", "privmodel.cli", "federate", "join", "--superlink", link.address,
            "--data", spec.data, "--policy", spec.policy, "--name", spec.name, "--ca", str(out / "tls" / "ca.crt"),
            "--coordinator-key", str(out / "coordinator-keys" / "signing.pub"), "--workdir", str(tmp_path / "w")]
    # an unregistered node key: one line with the cause, never "joined"
    t0 = time.monotonic()
    done = subprocess.run([*base, "--auth-key", str(tmp_path / "newkey" / "auth.key")], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=240, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "joined" not in done.stdout
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "not registered" in lines[0] and spec.name in lines[0], done.stderr
    print("unregistered join refused in", round(time.monotonic() - t0, 1), "s")
    assert not list(tmpdir.glob("pm-worker-*"))

    # the registered key: "joined" once accepted; SIGTERM then leaves no process and no temp folder
    proc = subprocess.Popen([*base, "--auth-key", str(out / "nodekeys" / spec.name / "auth.key")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        line = ""
        while "joined" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "joined" in line and "as node" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        assert list(tmpdir.glob("pm-worker-*"))
        below = _descendants(proc.pid)
        assert len(below) >= 3  # worker, SuperNode, its SuperExec (at least)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(0.5)
    assert [p for p, start in below if _running(p, start)] == []
    assert not list(tmpdir.glob("pm-worker-*"))
    assert read_metadata(tmp_path / "org-keys")["actor"] == spec.name  # not the host name


def test_secagg_plus_in_deployment(fed, tmp_path: Path) -> None:
    """SecAgg+ on the deployment runtime (legacy workflow, lean ClientApp forwarding to the workers):
    the signed run completes, the card says the coordinator saw only the sum, partners charged ε
    under the run's submitter."""
    out, link, policy = fed["out"], fed["link"], fed["policy"]
    specs = [_fresh(s, tmp_path / "partners") for s in fed["specs"]]
    keys = out / "coordinator-keys"
    settings = _settings(tmp_path / "coordinator", policy, keys, 3, rounds=2, min_partners=3, secagg=True,
                         secagg_shares=3, secagg_threshold=2)
    app = dep.write_app(tmp_path / "app", settings.to_record())
    assert 'clientapp = "federated.runtime.secagg_deploy:client_app"' in (app / "pyproject.toml").read_text()
    with dep.tracked() as items:
        for spec in specs:
            items.append(_join(fed, spec))
        result = dep.submit(link.home, app, tmp_path / "coordinator", 400, signer=load_signer(keys),
                            record=settings.to_record(), registry=dep.read_registry(link.registry_path))
    assert result["status"] == "finished:completed"
    card = json.loads((tmp_path / "coordinator" / "federated_card.json").read_text())
    assert card["privacy"]["secure_aggregation"].startswith("SecAgg+ (num_shares=3")
    assert "the coordinator sees only the sum" in card["privacy"]["secure_aggregation"]
    submitter = key_id_of(load_public_key(keys))
    for spec in specs:
        entries = read_entries(Path(spec.workdir) / "ledger.jsonl")
        rounds = [e for e in entries if e["action"] == "federate.round"]
        assert len(rounds) == 2 and all(e["params"]["submitter"] == submitter for e in rounds)
        assert any(e["action"] == "budget.charge" and e["params"]["submitter"] == submitter for e in entries)
        # heads exchanged in this path too
        assert [e for e in entries if e["action"] == "federate.final_model"][-1]["params"]["coordinator_head"]["entries"] > 0
    coord = read_entries(tmp_path / "coordinator" / "ledger.jsonl")
    heads = {e["params"]["partner"]: e["params"]["head"] for e in coord if e["action"] == "federate.partner_head"}
    assert heads == {s.name: dict(ledger_head(Path(s.workdir) / "ledger.jsonl", [load_public_key(s.keys)])) for s in specs}


def test_federate_run_cli_signs_and_refuses_the_fleet_port(fed, tmp_path: Path) -> None:
    """`privmodel federate run` end to end: on the Fleet port it stops with one line; on the Control API
    (loopback) it submits, signs and follows the run to completion."""
    out, link, policy = fed["out"], fed["link"], fed["policy"]
    specs = [_fresh(s, tmp_path / "partners") for s in fed["specs"][:2]]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    args = [sys.executable, "-m", "privmodel.cli", "federate", "run", "--ca", str(out / "tls" / "ca.crt"),
            "--registry", str(link.registry_path), "--keys", str(out / "coordinator-keys"), "--policy", str(policy),
            "--partners", "2", "--rounds", "1", "--epsilon", "1.0", "--local-steps", "3", "--batch-size", "64",
            "--out", str(tmp_path / "run")]
    wrong = subprocess.run([*args, "--superlink", link.address], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=120, check=False)
    assert wrong.returncode == 2 and "not the Fleet API" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    with dep.tracked() as items:
        for spec in specs:
            items.append(_join(fed, spec))
        done = subprocess.run([*args, "--superlink", link.control_address], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=400, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 1/1" in done.stdout and "finished:completed" in done.stdout
    auth = json.loads((tmp_path / "run" / dep.AUTHORIZATION_FILE).read_text())
    body = json.loads(auth["body"])
    assert body["key_id"] == key_id_of(load_public_key(out / "coordinator-keys"))
    assert sorted(body["nodes"].values()) == ["silo-0", "silo-1", "silo-2"]
    assert (tmp_path / "run" / "model.npz").exists()


def test_superlink_made_error_reply_is_attributed_to_its_partner() -> None:
    """A reply the SuperLink makes itself (node offline) comes from the SuperLink's node id 1; the
    coordinator attributes it to the node the message went to, so the dead partner is reported once,
    by name and Flower's reason, not as a phantom "node 1" plus a round timeout for the real one."""
    from flwr.app import ConfigRecord, Error, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from federated.coordinator.reply_checks import RobustStrategy
    from federated.coordinator.server_app import exchange

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    # what a ServerApp process has set when it builds messages
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 42, 1, 7
    try:
        _check_attribution(Message, ConfigRecord, Error, RecordDict, RobustStrategy, exchange)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _check_attribution(Message, ConfigRecord, Error, RecordDict, RobustStrategy, exchange) -> None:  # noqa: N803

    class FakeGrid:
        def __init__(self) -> None:
            self.sent: list[Message] = []

        def push_messages(self, messages):
            self.sent = list(messages)
            return [f"m{i}" for i, _ in enumerate(self.sent)]

        def pull_messages(self, ids):
            replies = []
            for i, msg in enumerate(self.sent):
                if f"m{i}" not in ids:
                    continue
                reply = Message(Error(code=5, reason="Node is offline"), reply_to=msg)
                reply.metadata.__dict__["_reply_to_message_id"] = f"m{i}"
                reply.metadata.__dict__["_src_node_id"] = 1  # what the SuperLink puts there
                replies.append(reply)
            return replies

    grid = FakeGrid()
    sent = [Message(content=RecordDict({"config": ConfigRecord({"x": 1})}), message_type="train", dst_node_id=n)
            for n in (777, 888)]
    replies = exchange(grid, sent, timeout=1.0)
    assert sorted(r.metadata.src_node_id for r in replies) == [777, 888]
    config = FedConfig(min_partners=1)
    names = {777: "silo-0", 888: "silo-2"}
    strategy = RobustStrategy(None, config, lambda n: names.get(n, f"node {n}"), lambda: {777, 888})
    strategy.sent[1] = {777, 888}
    strategy.aggregate_train(1, replies)
    failed = strategy.reports[1].failed
    assert sorted(i["partner"] for i in failed) == ["silo-0", "silo-2"]
    assert all("Node is offline" in i["reason"] and "no reply within" not in i["reason"] for i in failed)


def test_superlink_cli_registers_public_keys_only(fed, tmp_path: Path) -> None:
    """`federate superlink`: a private key handed over by mistake is refused in one line; public keys are
    registered by name into registry.json; the Control API is on loopback; SIGTERM stops it all."""
    out = fed["out"]
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0")
    base = [sys.executable, "-m", "privmodel.cli", "federate", "superlink", "--tls", str(out / "tls"),
            "--port", str(dep.free_port()), "--control-port", str(dep.free_port())]
    bad = subprocess.run([*base, "--workdir", str(tmp_path / "bad"), "--register",
                          f"silo-0={out / 'nodekeys' / 'silo-0' / 'auth.key'}"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert bad.returncode == 2 and "is a private key" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    proc = subprocess.Popen([*base, "--workdir", str(tmp_path / "ok"),
                             "--register", f"silo-0={out / 'nodekeys' / 'silo-0' / 'auth.pub'}",
                             "--register", f"silo-1={out / 'nodekeys' / 'silo-1' / 'auth.pub'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not any("Ctrl-C" in x for x in lines):
            lines.append(proc.stdout.readline())
        text = " ".join("".join(lines).split())
        assert "registered partner silo-0" in text and "registered partner silo-1" in text, text
        assert "runs are submitted on 127.0.0.1:" in text and "exposed" not in text
        registry = dep.read_registry(tmp_path / "ok" / "registry.json")
        assert sorted(registry) == ["silo-0", "silo-1"]
        assert registry["silo-0"]["node_id"] != registry["silo-1"]["node_id"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
