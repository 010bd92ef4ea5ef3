"""The coordinator's Flower ServerApp: rounds, robust aggregation, evaluation, model, card, ledger.

One round loop serves simulation and deployment. It is written out here rather than taken from
`Strategy.start` because the coordinator must (a) wait for partners with a deadline instead of
forever, (b) check that every partner runs the same policy before any training, (c) see each reply
to reject bad updates and name failed partners, (d) stop with a clear error when fewer than
`min_partners` remain, and (e) record every round in its signed ledger. The per-round steps still
call the stock strategy's `configure_train` / `aggregate_train`, so FedAvg / FedProx / FedAdam and
Flower's DP wrappers behave exactly as documented by Flower.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from anonymize.errors import InputError
from federated.runtime.config import FedConfig
from federated.runtime.messages import arrays_hash

if TYPE_CHECKING:
    from torch.nn import Module

    from anonymize.policy.schema import Policy
    from federated.coordinator.reply_checks import RobustStrategy, RoundReport
    from privmodel.artifacts.ledger import Ledger

POLL_S = 0.5


@dataclass
class ServerSettings:
    """What the coordinator supplies besides the FedConfig."""

    config: FedConfig
    policy: str
    out_dir: str
    keys: str | None = None
    eval_data: str | None = None
    expected_partners: int = 2  # wait until this many partners are connected (with a deadline)
    wait_timeout: float = 120.0
    on_round: Callable[[dict[str, Any]], None] | None = None
    # Deployment: the file where `federate run` puts the signed authorization of this run (run id,
    # config, registry); the ServerApp waits for it and sends it with every message. "" = simulation.
    authorization: str = ""

    def to_record(self) -> dict[str, Any]:
        return {
            **self.config.to_record(),
            "policy": self.policy, "out_dir": self.out_dir, "keys_dir": self.keys or "",
            "eval_data": self.eval_data or "", "expected_partners": self.expected_partners,
            "wait_timeout": self.wait_timeout, "authorization": self.authorization,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ServerSettings:
        record = {str(k).replace("-", "_"): v for k, v in record.items()}
        return cls(
            config=FedConfig.from_record(record).validate(),
            policy=str(record["policy"]),
            out_dir=str(record["out_dir"]),
            keys=str(record.get("keys_dir") or "") or None,
            eval_data=str(record.get("eval_data") or "") or None,
            expected_partners=int(record.get("expected_partners", 2)),
            wait_timeout=float(record.get("wait_timeout", 120.0)),
            authorization=str(record.get("authorization") or ""),
        )


@dataclass
class RunOutcome:
    """Returned by `run_server` (simulation reads it directly; deployment reads the files)."""

    model_hash: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    partners: dict[str, dict[str, Any]] = field(default_factory=dict)
    out_dir: str = ""


class _Evaluator:
    """Server-side evaluation on the coordinator's own held-out table, minimised by the same policy
    as the partners' rows (consent-filtered, identifiers dropped, no generalization). Its figures are
    listed on the card as released without differential privacy."""

    def __init__(self, settings: ServerSettings, policy: Policy, keys_dir: Path) -> None:
        from anonymize.pipeline import minimise
        from privmodel.core.fileio import read_table
        from privmodel.core.keys import load_pseudonym_secret
        from privmodel.data.features import TabularEncoder, encode_labels

        source = str(settings.eval_data)
        rows = minimise(read_table(source), policy, load_pseudonym_secret(keys_dir), source=Path(source).name).data
        label = settings.config.label
        if label not in rows.columns:
            raise InputError(f"{settings.eval_data}: label column {label!r} is missing")
        self.data = TabularEncoder.from_policy(policy, label=label).transform(rows)
        self.y = encode_labels(rows[label], label)

    def __call__(self, model: Module) -> dict[str, float]:
        from federated.partner.worker import evaluate_model

        metrics = evaluate_model(model, self.data, self.y)
        return {"loss": metrics["loss"], "auc": metrics["auc"], "n": metrics["num-examples"]}


def exchange(grid: Grid, messages: list[Message], timeout: float, poll: float = 0.1) -> list[Message]:
    """Push messages and pull replies until all arrived or `timeout` passed.

    Same contract as `Grid.send_and_receive`, but polls every `poll` seconds: the deployment grid
    sleeps 3 s between pulls, which alone would cost up to 3 s per message exchange.
    """
    ids = list(grid.push_messages(messages))
    destination = dict(zip(ids, (m.metadata.dst_node_id for m in messages), strict=False))
    pending = set(ids)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        for msg in got:
            # An error reply the SuperLink makes itself (node offline, message expired) comes from the
            # SuperLink's own node id (1), not from the partner: attribute it to the node it was sent to,
            # so a dead partner is reported once, by name, with Flower's reason (not as a phantom
            # "node 1" plus a round-timeout for the real one).
            sent_to = destination.get(msg.metadata.reply_to_message_id)
            if sent_to is not None and msg.metadata.src_node_id != sent_to:
                msg.metadata.__dict__["_src_node_id"] = sent_to
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(poll)
    return replies


def _query(grid: Grid, nodes: list[int], content: dict[str, Any], timeout: float, arrays: ArrayRecord | None = None) -> list[Message]:
    records: dict[str, Any] = {"config": ConfigRecord(content)}
    if arrays is not None:
        records["arrays"] = arrays
    messages = [Message(content=RecordDict(records), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    return exchange(grid, messages, timeout)


def _wait_for_nodes(grid: Grid, expected: int, deadline_s: float) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise InputError(
                f"only {len(nodes)} of {expected} partners connected within {deadline_s:.0f} s; "
                "check that every partner ran `privmodel federate join`"
            )
        time.sleep(POLL_S)


def _build_model(config: FedConfig, n_num: int, cards: list[int]) -> Module:
    import torch

    from privmodel.dp.networks import build_model

    torch.manual_seed(config.seed)
    return build_model(config.model, n_num, cards)


@dataclass
class RunStart:
    """What both server loops (Message API and SecAgg+) set up before anything else."""

    config: FedConfig
    out: Path
    keys_dir: Path
    ledger: Ledger
    progress_path: Path
    run_id: str
    on_round: Callable[[dict[str, Any]], None] | None
    auth: dict[str, str] = field(default_factory=dict)  # auth_body / auth_sig, sent with every message
    nodes: dict[str, str] = field(default_factory=dict)  # signed registry: node id -> partner name
    submitter: str = ""  # key id of the coordinator key that signed the run

    def fail(self, reason: str) -> NoReturn:
        """Record the failure in the coordinator's ledger and progress file, then raise it."""
        self.ledger.append("federate.run", params={"run_id": self.run_id}, outcome="failed", reason=reason)
        _emit(self.progress_path, self.on_round, {"event": "failed", "reason": reason})
        raise InputError(reason)


def begin_run(grid: Grid, settings: ServerSettings) -> RunStart:
    """Validated config, output directory, coordinator keys and ledger, an empty progress file."""
    from privmodel.artifacts.ledger import Ledger
    from privmodel.core.fileio import ensure_output_dir
    from privmodel.core.keys import ensure_keys, load_signer

    config = settings.config.validate()
    out = ensure_output_dir(settings.out_dir)
    keys_dir = ensure_keys(settings.keys)
    ledger = Ledger(out / "ledger.jsonl", load_signer(keys_dir))
    progress_path = out / "progress.jsonl"
    progress_path.write_text("")
    start = RunStart(config, out, keys_dir, ledger, progress_path, str(grid.run.run_id), settings.on_round)
    if settings.authorization:
        load_authorization(start, Path(settings.authorization), settings.wait_timeout)
    return start


AUTH_WAIT_S = 60.0
_REGISTRY: dict[str, str] = {}  # the signed registry of the run this process serves (node id -> name)


def load_authorization(start: RunStart, path: Path, timeout: float) -> None:
    """Wait for the coordinator's signed authorization of THIS run (written by `federate run` once the
    SuperLink assigned the run id) and check that it signs this run's configuration. The signature is
    checked again by every partner against the coordinator key it pinned at join; the ServerApp holds
    no signing key and cannot authorize a run by itself."""
    import base64

    from privmodel.core.keys import key_id_of, load_public_key

    deadline = time.monotonic() + min(timeout, AUTH_WAIT_S)
    auth: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            auth = json.loads(path.read_text())
            body = json.loads(auth["body"])
            if str(body.get("run_id")) == start.run_id:
                break
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.1)
    else:
        start.fail(f"run {start.run_id} has no signed authorization from the coordinator in {path}")
    if FedConfig.from_record(body.get("config") or {}).to_record() != start.config.to_record():
        start.fail(f"run {start.run_id}: the signed configuration differs from the submitted one")
    public = load_public_key(start.keys_dir)
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(base64.b64decode(auth["signature"]), auth["body"].encode())
    except (InvalidSignature, ValueError):
        start.fail(f"run {start.run_id}: the authorization is not signed by the coordinator key in {start.keys_dir}")
    start.auth = {"auth_body": auth["body"], "auth_sig": auth["signature"]}
    start.nodes = {str(k): str(v) for k, v in (body.get("nodes") or {}).items()}
    _REGISTRY.clear()  # one run per ServerApp process in a deployment; take_hello checks names against it
    _REGISTRY.update(start.nodes)
    start.submitter = key_id_of(public)


def ledger_head_fields(path: Path, keys_dir: Path, prefix: str = "head_") -> dict[str, Any]:
    """This side's ledger head as flat scalars for a message (ConfigRecord holds no None)."""
    from privmodel.artifacts.ledger import ledger_head
    from privmodel.core.keys import load_public_key

    head = ledger_head(path, [load_public_key(keys_dir)])
    return {f"{prefix}ledger_id": head["ledger_id"] or "", f"{prefix}entries": int(head["entries"]),
            f"{prefix}last_hash": head["last_hash"] or ""}


def check_registered(node: int, nodes: dict[str, str], infos: dict[int, dict[str, Any]], partner_of: dict[int, str],
                     failures: list[str]) -> None:
    """A partner's name is bound to the node key the coordinator registered under that name: the node id
    comes from the SuperLink's node authentication, the name from the signed registry. A node that
    calls itself another partner is refused by name."""
    if not nodes or node not in infos:
        return
    registered = nodes.get(str(node))
    claimed = str(infos[node].get("partner"))
    if registered == claimed:
        return
    del infos[node]
    partner_of[node] = registered or f"node {node}"
    if registered is None:
        failures.append(f"node {node} (calls itself {claimed}) is not in the coordinator's signed registry: refused")
    else:
        failures.append(f"partner {registered} refused: its node key is registered as {registered}, "
                        f"but it calls itself {claimed}")


@dataclass
class Roster:
    """The partners that passed the hello (plain and SecAgg+ loops alike) and their feature layout."""

    partner_of: dict[int, str]  # node id -> partner name ("node N" until it says hello)
    infos: dict[int, dict[str, Any]]  # node id -> its well-formed hello
    failures: list[str]
    active: set[int]
    n_num: int
    cards: list[int]


def load_run_policy(start: RunStart, path: str, check: Callable[[], None] | None = None) -> Policy:
    """The coordinator's policy (after `check`, if any); a bad one fails the run with its one line."""
    from anonymize.policy.schema import load_policy

    try:
        if check is not None:
            check()
        return load_policy(path)
    except InputError as exc:
        start.fail(str(exc))


def take_hellos(
    start: RunStart, settings: ServerSettings, nodes: list[int], replies: list[Message], timeout: float,
    my_policy_hash: str, read_info: Callable[[Message], dict[str, Any]], error_of: Callable[[Message, int], str],
    needed: int, why: str = "",
) -> Roster:
    """Step 1 of both loops: take every hello (or name the node that failed or was silent), vet the
    partners, record the failures, and stop unless `needed` partners are ready."""
    partner_of: dict[int, str] = {n: f"node {n}" for n in nodes}
    infos: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    answered = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        answered.add(node)
        if msg.has_error():
            failures.append(error_of(msg, node))
            continue
        take_hello(node, read_info(msg), partner_of, infos, failures)
    for node in set(nodes) - answered:
        failures.append(f"node {node}: no answer within {timeout:.0f} s")
    layouts = vet_partners(infos, failures, my_policy_hash, start.fail, start.progress_path, settings.on_round,
                           start.ledger, start.run_id)
    active = set(infos)
    if len(active) < needed:
        start.fail(f"only {len(active)} partners ready, at least {needed} needed{why}: " + "; ".join(failures))
    n_num, cards_text = layouts.pop()
    cards = [int(c) for c in cards_text.split(",") if c]
    return Roster(partner_of, infos, failures, active, n_num, cards)


def _hello_error(start: RunStart, msg: Message, node: int) -> str:
    """The plain loop's reason for a failed hello, naming the partner when the registry knows it."""
    reason = (msg.error.reason or "failed").strip().splitlines()[-1] if (msg.error.reason or "").strip() else "failed"
    if not reason.startswith("partner "):  # e.g. Flower's own refusal of the app at the SuperNode
        who = start.nodes.get(str(node))
        reason = f"{f'partner {who}' if who else f'node {node}'}: {reason}"
    return reason


def _hello_info(msg: Message) -> dict[str, Any]:
    records = msg.content.config_records
    return dict(records["info"]) if "info" in records else {}


def record_start(start: RunStart, settings: ServerSettings, my_policy_hash: str, roster: Roster,
                 config_record: dict[str, Any], extra: dict[str, Any]) -> None:
    """The coordinator's `federate.start` ledger entry (both loops); `extra` follows the config."""
    from privmodel.artifacts.ledger import artifact

    start.ledger.append(
        "federate.start",
        inputs=[artifact(settings.policy)] + ([artifact(settings.eval_data)] if settings.eval_data else []),
        params={
            "run_id": start.run_id, "policy_hash": my_policy_hash,
            "partners": sorted(roster.partner_of[n] for n in roster.active),
            "config": config_record, **extra, **declarations(roster.infos),
        },
    )


def is_refusal(item: dict[str, Any]) -> bool:
    """A partner's refusal (its privacy budget) keeps it in the run; any other failure drops it."""
    from federated.partner.client_app import ERR_REFUSED

    return item.get("code") == str(ERR_REFUSED)


@dataclass
class Outcome:
    """What a loop hands to `finish_run`: the final arrays and everything recorded along the rounds."""

    arrays: dict[str, np.ndarray]
    rounds: list[dict[str, Any]]
    joined: dict[str, list[int]]
    epsilon: dict[str, float]
    initial_per_silo: dict[str, dict[str, float]]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    confirmations: dict[str, str] = field(default_factory=dict)
    final_silos: dict[str, dict[str, float]] = field(default_factory=dict)


def fill_global(rounds: list[dict[str, Any]]) -> None:
    """Without a coordinator table, a round's global figures are the silos' example-weighted means."""
    for entry in rounds:
        if entry["global"] is None and entry["per_silo"]:
            total = sum(v["n"] for v in entry["per_silo"].values())
            entry["global"] = {
                "auc": sum(v["auc"] * v["n"] for v in entry["per_silo"].values()) / total,
                "loss": sum(v["loss"] * v["n"] for v in entry["per_silo"].values()) / total,
                "n": total, "source": "weighted mean of silos",
            }


def finish_run(
    start: RunStart, settings: ServerSettings, my_policy_hash: str, roster: Roster, result: Outcome, started: float,
    final_params: dict[str, Any], secure: str | None = None,
) -> RunOutcome:
    """The last step of both loops: check the partners' hash confirmations, write model, card and the
    `federate.final_model` entry (`final_params` follow the partners), report done."""
    from federated.coordinator.run_card import write_card
    from privmodel.artifacts.ledger import artifact
    from privmodel.core.fileio import atomic_write_bytes, atomic_write_text

    config, out, rounds = start.config, start.out, result.rounds
    digest = arrays_hash(result.arrays)
    rounds[-1]["per_silo"] = result.final_silos
    fill_global(rounds)
    disagree = [p for p, h in result.confirmations.items() if h != digest]
    if disagree:
        start.fail("model hash differs at partner(s) " + ", ".join(sorted(disagree)))
    atomic_write_bytes(out / "model.npz", _npz_bytes(result.arrays))
    meta = {
        "model": config.model, "label": config.label, "n_num": roster.n_num, "cat_cardinalities": roster.cards,
        "policy_hash": my_policy_hash, "model_hash": digest, "run_id": start.run_id,
        **({"secure_aggregation": secure} if secure is not None else {}),
    }
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2) + "\n")
    partners = {
        name: {"rounds": result.joined.get(name, []), "epsilon": _finite(result.epsilon.get(name, 0.0)),
               "confirmed_hash": name in result.confirmations}
        for name in sorted(result.joined)
    }
    card_paths = write_card(
        out, config=config, policy_hash=my_policy_hash, model_hash=digest, partners=partners, rounds=rounds,
        rejected=result.rejected, delta=config.delta,  # the δ every partner calibrated and charged its run with
        run_id=start.run_id, seconds=time.monotonic() - started, secure_aggregation=secure,
        declared={roster.partner_of[n]: info for n, info in roster.infos.items()}, eval_data=settings.eval_data,
    )
    start.ledger.append(
        "federate.final_model",
        inputs=[artifact(settings.policy)],
        outputs=[artifact(out / "model.npz"), artifact(out / "model.json")] + [artifact(p) for p in card_paths],
        params={"run_id": start.run_id, "model_hash": digest, "rounds": config.rounds, "partners": partners,
                **final_params},
        privacy_cost=None,
    )
    _emit(start.progress_path, settings.on_round, {
        "event": "done", "model_hash": digest, "partners": partners, "per_silo": result.final_silos,
        "initial_per_silo": result.initial_per_silo, "global": rounds[-1]["global"],
    })
    return RunOutcome(model_hash=digest, rounds=rounds, partners=partners, out_dir=str(out))


class _PlainRounds:
    """The plain loop's rounds: stock strategy per round, robust filtering, per-round record."""

    def __init__(self, start: RunStart, settings: ServerSettings, roster: Roster, strategy: RobustStrategy,
                 model: Module, evaluator: _Evaluator | None) -> None:
        self.start, self.settings, self.roster = start, settings, roster
        self.strategy, self.model, self.evaluator = strategy, model, evaluator
        names = [roster.partner_of[n] for n in roster.active]
        self.result = Outcome(arrays={}, rounds=[], joined={p: [] for p in names}, epsilon=dict.fromkeys(names, 0.0),
                              initial_per_silo={})

    def run(self, grid: Grid, arrays: ArrayRecord, train_config: ConfigRecord) -> ArrayRecord:
        for server_round in range(1, self.start.config.rounds + 1):
            t0 = time.monotonic()
            messages = list(self.strategy.configure_train(server_round, arrays, train_config, grid))
            train_replies = exchange(grid, messages, timeout=self.start.config.round_timeout)
            new_arrays, _ = self.strategy.aggregate_train(server_round, train_replies)
            report = self.strategy.reports[server_round]
            self._record_problems(server_round, report)
            if new_arrays is None:
                self._fail_round(server_round, report)
            arrays = new_arrays
            self._record_round(server_round, report, arrays, t0)
        return arrays

    def _record_problems(self, server_round: int, report: RoundReport) -> None:
        start = self.start
        for item in report.failed:
            if not is_refusal(item):
                self.roster.active.discard(next((n for n, p in self.roster.partner_of.items() if p == item["partner"]), -1))
            start.ledger.append("federate.partner", params={"run_id": start.run_id, "round": server_round},
                                outcome="failed", reason=item["reason"])
        for item in report.rejected:
            start.ledger.append(
                "federate.update_rejected", params={"run_id": start.run_id, "round": server_round, "partner": item["partner"]},
                outcome="failed", reason=f"partner {item['partner']} rejected: {item['reason']}",
            )
            self.result.rejected.append({"round": server_round, **item})

    def _fail_round(self, server_round: int, report: RoundReport) -> NoReturn:
        who = "; ".join(i["reason"] for i in report.failed) or "none"
        bad = "; ".join(f"partner {i['partner']} rejected: {i['reason']}" for i in report.rejected) or "none"
        self.start.fail(
            f"round {server_round}: only {len(report.accepted)} acceptable updates, at least "
            f"{self.start.config.min_partners} needed (failed: {who}; rejected: {bad})"
        )

    def _record_round(self, server_round: int, report: RoundReport, arrays: ArrayRecord, t0: float) -> None:
        from federated.partner.worker import _load_arrays

        start, result = self.start, self.result
        for partner in report.accepted:
            result.joined[partner].append(server_round)
        result.epsilon.update(report.epsilon)
        # Partners evaluate the model they receive before training on it (one message per round),
        # so the per-silo metrics of round r's model arrive with round r + 1 (the last with "final").
        if server_round == 1:
            result.initial_per_silo = dict(report.evaluation)
        else:
            result.rounds[-1]["per_silo"] = dict(report.evaluation)
        glob: dict[str, float] | None = None
        if self.evaluator is not None:
            _load_arrays(self.model, {k: v.numpy() for k, v in arrays.items()})
            glob = self.evaluator(self.model)
        entry = {
            "event": "round", "round": server_round, "rounds": start.config.rounds,
            "seconds": round(time.monotonic() - t0, 3),
            "accepted": report.accepted, "rejected": report.rejected, "failed": report.failed,
            "global": glob, "per_silo": {},
            "per_silo_previous": dict(report.evaluation), "epsilon": dict(result.epsilon),
        }
        result.rounds.append(entry)
        _emit(start.progress_path, self.settings.on_round, entry)
        start.ledger.append(
            "federate.round",
            params={
                "run_id": start.run_id, "round": server_round, "accepted": report.accepted,
                "rejected": [i["partner"] for i in report.rejected], "failed": [i["partner"] for i in report.failed],
                "model_hash": arrays_hash({k: v.numpy() for k, v in arrays.items()}),
                "global_auc": _finite(glob["auc"]) if glob else None,
            },
        )


def run_server(grid: Grid, settings: ServerSettings) -> RunOutcome:
    """The whole federated run, from partner check to final model; raises InputError on failure."""
    from federated.coordinator.reply_checks import RobustStrategy, build_strategy
    from federated.partner.worker import _model_arrays, policy_hash

    start = begin_run(grid, settings)
    config = start.config
    started = time.monotonic()
    policy = load_run_policy(start, settings.policy)
    my_policy_hash = policy_hash(policy)
    record = {**config.to_record(), **start.auth}
    query_timeout = answer_timeout(config, settings)

    nodes = _wait_for_nodes(grid, max(settings.expected_partners, config.min_partners), settings.wait_timeout)
    # 1. Who is there, and do they all run the coordinator's policy?
    replies = _query(grid, nodes, {**record, "op": "hello"}, timeout=query_timeout)
    roster = take_hellos(start, settings, nodes, replies, query_timeout, my_policy_hash, _hello_info,
                         lambda msg, node: _hello_error(start, msg, node), config.min_partners)
    model = _build_model(config, roster.n_num, roster.cards)
    arrays = ArrayRecord({k: Array(v) for k, v in _model_arrays(model).items()})
    evaluator = _Evaluator(settings, policy, start.keys_dir) if settings.eval_data else None
    record_start(start, settings, my_policy_hash, roster,
                 {k: v for k, v in record.items() if k not in ("extra", "auth_body", "auth_sig")},
                 {"submitter": start.submitter or None})
    infos, partner_of, active = roster.infos, roster.partner_of, roster.active
    inner = build_strategy(config, len(active))
    strategy = RobustStrategy(inner, config, lambda n: partner_of.get(n, f"node {n}"), lambda: active,
                              declared=lambda n: int(infos[n]["n_train"]) if n in infos else None)

    # 2. Rounds.
    rounds = _PlainRounds(start, settings, roster, strategy, model, evaluator)
    arrays = rounds.run(grid, arrays, ConfigRecord(record))

    # 3. Final model, partners' confirmation of its hash, card, ledger.
    result = rounds.result
    result.arrays = {k: v.numpy() for k, v in arrays.items()}
    partner_heads: dict[str, dict[str, Any]] = {}
    final_query = {**record, "op": "final", **ledger_head_fields(start.ledger.path, start.keys_dir, "coordinator_")}
    for msg in _query(grid, sorted(active), final_query, timeout=query_timeout, arrays=arrays):
        if not msg.has_error() and "info" in msg.content.config_records:
            take_final(partner_of.get(msg.metadata.src_node_id, ""), dict(msg.content.config_records["info"]),
                       result.confirmations, result.final_silos, start.ledger, start.run_id, partner_heads)
    return finish_run(start, settings, my_policy_hash, roster, result, started,
                      {"partner_heads": partner_heads, "submitter": start.submitter or None})


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    named: dict[str, Any] = {k.replace(".", "__"): v for k, v in sorted(arrays.items())}
    np.savez(buffer, **named)
    return buffer.getvalue()


def _emit(path: Path, callback: Callable[[dict[str, Any]], None] | None, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, default=_finite) + "\n")
    if callback is not None:
        callback(entry)


def answer_timeout(config: FedConfig, settings: ServerSettings) -> float:
    """How long the hello and final queries wait for a partner. Its first answer includes loading,
    anonymizing and encoding its data (and, in a Ray actor, importing torch): a round's time, not
    just the wait for nodes to appear."""
    return max(config.round_timeout, settings.wait_timeout)


def take_hello(node: int, info: dict[str, Any], partner_of: dict[int, str], infos: dict[int, dict[str, Any]],
               failures: list[str]) -> None:
    """Accept one hello (plain and SecAgg+ loops alike) or refuse that node by name, never crash."""
    from federated.coordinator.reply_checks import hello_problem

    problem = hello_problem(info)
    if problem is not None:
        name = info.get("partner")
        who = f"partner {name}" if isinstance(name, str) and _valid_name(name) else f"node {node}"
        failures.append(f"{who} rejected: malformed hello ({problem})")
        return
    partner_of[node] = info["partner"]
    infos[node] = info
    check_registered(node, _REGISTRY, infos, partner_of, failures)  # both loops (plain and SecAgg+)


def _valid_name(name: str) -> bool:
    from federated.runtime.tls import NAME_RE

    return bool(NAME_RE.match(name))


def take_final(partner: str, info: dict[str, Any], confirmations: dict[str, str],
               final_silos: dict[str, dict[str, Any]], ledger: Ledger, run_id: str,
               heads: dict[str, dict[str, Any]] | None = None) -> None:
    """Record one partner's final confirmation (model hash, held-out metrics) if it is well-formed;
    the partner is the node's name from its hello, never a name the reply claims."""
    from federated.coordinator.reply_checks import _kind_ok

    kinds = {"model_hash": "text", "eval_auc": "real", "eval_loss": "real", "eval_n": "count"}
    bad = [k for k, kind in kinds.items() if k not in info or not _kind_ok(info[k], kind)]
    if not partner or bad:
        ledger.append("federate.partner", params={"run_id": run_id, "stage": "final"}, outcome="failed",
                      reason=f"partner {partner or '?'} rejected: malformed final reply ({', '.join(bad) or 'unknown node'})")
        return
    confirmations[partner] = info["model_hash"]
    # the partner's ledger head after its final entry (issue 11: each side records the other's head)
    head = {"ledger_id": info.get("head_ledger_id"), "entries": info.get("head_entries"),
            "last_hash": info.get("head_last_hash")}
    if isinstance(head["ledger_id"], str) and _kind_ok(head["entries"], "count") and isinstance(head["last_hash"], str):
        clean = {k: (v[:128] or None) if isinstance(v, str) else v for k, v in head.items()}
        ledger.append("federate.partner_head", params={"run_id": run_id, "partner": partner, "head": clean})
        if heads is not None:
            heads[partner] = clean
    final_silos[partner] = {"auc": float(info["eval_auc"]), "loss": float(info["eval_loss"]), "n": int(info["eval_n"])}


def declarations(infos: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """What each partner declared at hello, for the coordinator's ledger: the training and held-out
    row counts (the bound on its FedAvg weight) and what it trains on."""
    return {"declared": {
        str(i["partner"]): {"n_train": int(i["n_train"]), "n_test": int(i["n_test"]), "training_rows": i["training_rows"]}
        for i in infos.values()
    }}


def vet_partners(
    infos: dict[Any, dict[str, Any]], failures: list[str], my_policy_hash: str, fail: Callable[[str], Any],
    progress_path: Path, on_round: Callable[[dict[str, Any]], None] | None, ledger: Ledger, run_id: str,
) -> set[tuple[int, str]]:
    """Refuse a federation whose partners differ in policy, name or feature layout (naming them), and
    record every partner that failed to say hello (plain and SecAgg+ servers alike). Returns the
    feature layouts (n_num, categorical cardinalities) the partners reported: at most one."""
    mismatched = [
        f"partner {info['partner']}: policy hash {str(info['policy_hash'])[:12]} differs from the coordinator's {my_policy_hash[:12]}"
        for info in infos.values() if info["policy_hash"] != my_policy_hash
    ]
    if mismatched:
        fail("; ".join(mismatched))
    names = [str(i["partner"]) for i in infos.values()]
    if len(set(names)) != len(names):
        fail("two partners use the same name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    dims = {(int(i["n_num"]), str(i["cards"])) for i in infos.values()}
    if len(dims) > 1:
        fail("partners encode different feature layouts despite one policy (different privmodel versions?)")
    for line in failures:
        _emit(progress_path, on_round, {"event": "partner_failed", "reason": line})
        ledger.append("federate.partner", params={"run_id": run_id, "stage": "hello"}, outcome="failed", reason=line)
    return dims


def make_server_app(settings: ServerSettings | None = None, result: list[RunOutcome] | None = None) -> ServerApp:
    """A ServerApp bound to `settings` (simulation), or reading them from the run config (deployment)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        current = settings if settings is not None else ServerSettings.from_record(dict(context.run_config))
        outcome = run_server(grid, current)
        if result is not None:
            result.append(outcome)

    return server


# The deployment entry point (`serverapp = "federated.coordinator.server_app:app"` in the generated app).
app = make_server_app()
