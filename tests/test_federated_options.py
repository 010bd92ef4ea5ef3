"""Strategy and DP options through the real ServerApp loop and ClientApp, on an in-process grid
(no Ray: each option is checked in seconds; the Ray and deployment paths have their own tests)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from federated.coordinator.server_app import ServerSettings, run_server
from federated.partner.client_app import make_client_app
from federated.runtime.config import FedConfig
from federated.runtime.simulate import partner_specs, synth_silos
from privmodel.artifacts.ledger import verify
from privmodel.core.keys import init_keys, load_public_key


class _Run:
    run_id = 4242


class LocalGrid(Grid):
    """Delivers each message to the ClientApp of its node synchronously, like one SuperNode each."""

    def __init__(self, client_app, n_nodes: int) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id = _Run.run_id  # what the runtime sets before a ServerApp creates messages
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 0
        self.app = client_app
        self.nodes = list(range(1, n_nodes + 1))
        self.contexts = {
            n: Context(run_id=_Run.run_id, node_id=n, node_config={"partition-id": n - 1}, state=RecordDict(), run_config={})
            for n in self.nodes
        }
        self.replies: dict[str, Message] = {}
        self.counter = itertools.count()

    def set_run(self, run) -> None:  # noqa: D102 - Grid interface
        pass

    @property
    def run(self):  # noqa: D102
        return _Run()

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids = []
        for msg in messages:
            mid = f"m{next(self.counter)}"
            msg.metadata.__dict__["_message_id"] = mid
            msg.metadata.__dict__["_run_id"] = _Run.run_id
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - what Flower turns into an error reply
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fedopt")
    paths, holdout, policy = synth_silos(out, silos=3, customers=4500, heterogeneity=0.6, seed=11, holdout=1000)
    keys = out / "coord-keys"
    init_keys(keys, actor="coordinator")
    return out, paths, holdout, policy, keys


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "fedprox", "proximal_mu": 0.5},
        {"strategy": "fedadam", "server_lr": 0.05},
        {"strategy": "fedavg", "client_dp_noise": 0.05, "client_dp_clip": 2.0},
    ],
    ids=["fedprox", "fedadam", "client-dp"],
)
def test_strategy_and_dp_options(world, tmp_path: Path, options: dict) -> None:
    out, paths, holdout, policy, keys = world
    specs = partner_specs(tmp_path, paths, policy)
    config = FedConfig(rounds=3, epsilon=1.0, local_steps=6, batch_size=128, min_partners=2, **options)
    settings = ServerSettings(config, str(policy), str(tmp_path / "coord"), str(keys), str(holdout), expected_partners=3, wait_timeout=5)
    outcome = run_server(LocalGrid(make_client_app([s.to_dict() for s in specs]), 3), settings)
    assert [r["round"] for r in outcome.rounds] == [1, 2, 3]
    assert all(sorted(r["accepted"]) == ["silo-0", "silo-1", "silo-2"] for r in outcome.rounds)
    assert all(0 < p["epsilon"] <= 1.0 for p in outcome.partners.values())
    import math

    assert math.isfinite(outcome.rounds[-1]["global"]["auc"])
    if "client_dp_noise" not in options:
        assert outcome.rounds[-1]["global"]["auc"] > 0.5
    assert verify(tmp_path / "coord" / "ledger.jsonl", [load_public_key(keys)]).ok
    assert all(r["rejected"] == [] and r["failed"] == [] for r in outcome.rounds)


def test_all_partners_over_budget_stops_the_run(world, tmp_path: Path) -> None:
    out, paths, holdout, policy, keys = world
    specs = partner_specs(tmp_path, paths, policy, epsilon_caps={"silo-0": 0.3, "silo-1": 0.3, "silo-2": 0.3})
    config = FedConfig(rounds=3, epsilon=1.0, local_steps=6, batch_size=128, min_partners=2)
    settings = ServerSettings(config, str(policy), str(tmp_path / "coord"), str(keys), None, expected_partners=3, wait_timeout=5)
    from anonymize.errors import InputError

    with pytest.raises(InputError, match=r"round \d: only 0 acceptable updates.*partner silo-0 refused: privacy budget exceeded"):
        run_server(LocalGrid(make_client_app([s.to_dict() for s in specs]), 3), settings)


def test_client_app_module_stays_lean() -> None:
    """The ClientApp is imported by a fresh process per message in deployments: no torch/sklearn/pandas."""
    import subprocess
    import sys

    code = "import sys, federated.partner.client_app; print(sorted(m for m in ('torch', 'sklearn', 'pandas', 'opacus') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_centralized_and_federated_training_share_one_budget_per_data_file(world, tmp_path: Path) -> None:
    """A partner whose dataset was already charged by a centralized run (same organisation's budget
    store, beside its keys) is refused once a federated round would pass the cap, and its charges add up."""
    from privmodel.artifacts.ledger import Ledger, read_entries
    from privmodel.core.keys import load_signer
    from privmodel.dp import budget

    out, paths, holdout, policy, keys = world
    spec = partner_specs(tmp_path, paths[:1], policy)[0]
    ledger = Ledger(Path(spec.workdir) / "ledger.jsonl", load_signer(spec.keys))
    from anonymize.policy.schema import load_policy

    digest = budget.dataset_of(load_policy(policy), paths[0], Path(spec.keys))
    budget.charge(digest, 2.1, 1e-7, budget.Cap(3.0, 1e-6), keys=Path(spec.keys), ledger=ledger,
                  params={"command": "train"})  # the policy's cap is (3, 1e-6)

    from federated.coordinator.server_app import _build_model
    from federated.partner.worker import PartnerWorker, Refused, _model_arrays

    worker = PartnerWorker(spec)
    config = FedConfig(rounds=2, epsilon=1.0, local_steps=6, batch_size=128, delta=5e-7)
    hello = worker.hello(config)
    assert hello["epsilon_spent"] == pytest.approx(2.1)
    start = _model_arrays(_build_model(config, int(hello["n_num"]), [int(c) for c in hello["cards"].split(",")]))
    _, metrics = worker.train(start, config, "run-1", 1)  # round 1 (ε 0.75 of the run's 1.0) fits under 3.0
    first = budget.spent(digest, Path(spec.keys))
    assert first.epsilon == pytest.approx(2.1 + metrics["epsilon"]) and first.delta == pytest.approx(1e-7 + 5e-7)
    with pytest.raises(Refused, match=r"partner silo-0 refused: privacy budget exceeded for dataset .*> cap 3 \(epsilon\)"):
        worker.train(start, config, "run-1", 2)  # the whole run's ε = 1 would bring it past 3.0
    assert budget.spent(digest, Path(spec.keys)) == first
    charges = [e for e in read_entries(ledger.path) if e["action"] == "budget.charge"]
    assert [e["outcome"] for e in charges] == ["ok", "ok", "failed"]
    assert charges[1]["params"]["command"] == "federate" and charges[1]["privacy_cost"]["delta"] == pytest.approx(5e-7)


@pytest.mark.parametrize("values,message", [
    ({"delta": 0.01}, "--delta: must be well below 1/n"),
    ({"delta": 0.0}, "--delta: must be a positive number"),
    ({"rounds": 0}, "--rounds: must be at least 1"),
    ({"epsilon": -1.0}, "--epsilon: must be zero or a positive number"),
    ({"client_dp_noise": 0.5}, "--client-dp-clip: client-level DP needs a positive clipping norm"),
])
def test_bad_federated_options_are_one_line_input_errors(values: dict, message: str) -> None:
    from anonymize.errors import InputError

    with pytest.raises(InputError, match=message):
        FedConfig(**values).validate()
