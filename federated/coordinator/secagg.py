"""Secure aggregation (SecAgg+) for the federated simulation: the coordinator sees only the masked sum.

Flower 1.41 offers SecAgg+ only in its legacy workflow API (`SecAggPlusWorkflow` inside a
`DefaultWorkflow`, `secaggplus_mod` around a `NumPyClient`), not for the Message-API strategies of
`federated.coordinator.server_app`. This module therefore runs its own legacy ServerApp / ClientApp pair, while
keeping everything a partner does identical to the normal path: each partner's `PartnerWorker`
trains with local DP-SGD, charges ε per round in its signed ledger, refuses rounds past its cap and
confirms the final model hash.

What the coordinator can and cannot see:

* Each partner sends its model *delta* (new weights minus the global model) through SecAgg+: the
  mod scales it by `n_i / max_weight`, clips every coordinate to `±SECAGG_CLIPPING_RANGE`, quantizes
  it to `QUANTIZATION_RANGE` levels (stochastic rounding) and masks it. The coordinator unmasks only
  the sum, i.e. the example-weighted FedAvg of the deltas, and adds it to the global model. Deltas
  instead of full weights keep the clip range meaningful and the quantization error small.
* In the clear: the number of training examples (the FedAvg weight, bounded by what the partner
  declared at hello) and the scalar metrics the normal path also reports (ε spent, the per-silo
  held-out metrics of the incoming model); nothing computed on training rows.
* Robust per-update filtering is impossible (no individual update exists server-side). What still
  applies: SecAgg+'s per-coordinate clip at every partner, and a check of the *aggregate* (NaN/inf,
  L2 norm above `max_update_norm`), which stops the run instead of dropping one partner.
* Client-level DP (Flower's wrapper clips and noises individual updates on the server) and FedAdam
  (server optimizer; no test here) are refused with one line. FedProx works: its proximal term runs
  at the partner and the server side is FedAvg.

A refusal (budget) or a crash at a partner is a SecAgg+ dropout: the protocol reconstructs the
dropped partner's masks from its neighbours' shares, as long as `secagg_threshold` of them remain.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common import EvaluateIns, FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid

from anonymize.errors import InputError
from federated.coordinator.reply_checks import metrics_problem
from federated.coordinator.server_app import (
    Outcome,
    Roster,
    RunOutcome,
    RunStart,
    ServerSettings,
    _build_model,
    _emit,
    _Evaluator,
    _finite,
    _wait_for_nodes,
    answer_timeout,
    begin_run,
    exchange,
    finish_run,
    is_refusal,
    load_run_policy,
    record_start,
    take_final,
    take_hellos,
)
from federated.partner.secagg_client import LegacyPartnerClient, PartnerFailure, error_reply, scalars
from federated.partner.worker import _load_arrays
from federated.runtime.config import FedConfig
from federated.runtime.messages import arrays_hash

if TYPE_CHECKING:
    from flwr.client import Client, ClientApp
    from flwr.serverapp import ServerApp
    from torch.nn import Module

    from federated.partner.worker import PartnerSpec, PartnerWorker
    from privmodel.artifacts.ledger import Ledger

SECAGG_CLIPPING_RANGE = 8.0  # every coordinate of a weighted delta is clipped to ±this at the partner
QUANTIZATION_RANGE = 2**22  # levels per coordinate (Flower's default)
MODULUS_RANGE = 2**32  # mask modulus (Flower's default; must exceed partners × QUANTIZATION_RANGE)


def describe(config: FedConfig, max_weight: float | None = None) -> str:
    """The card's / ledger's one-line description of the secure aggregation that ran."""
    weight = f", max_weight={max_weight:g}" if max_weight is not None else ""
    return (
        f"SecAgg+ (num_shares={config.secagg_shares}, reconstruction_threshold={config.secagg_threshold}, "
        f"clipping_range={SECAGG_CLIPPING_RANGE:g} per coordinate of each weighted delta, "
        f"quantization_range=2^{int(math.log2(QUANTIZATION_RANGE))}, modulus_range=2^{int(math.log2(MODULUS_RANGE))}"
        f"{weight}; the coordinator sees only the sum)"
    )


def check_options(config: FedConfig, partners: int | None = None) -> None:
    """Refuse, with one line, the option combinations SecAgg+ cannot honour."""
    if config.client_dp_noise > 0:
        raise InputError(
            "--secagg: client-level DP (--client-dp-noise) clips and noises individual updates on the "
            "coordinator, which never sees them under SecAgg+; use local DP (--epsilon) instead"
        )
    if config.strategy not in ("fedavg", "fedprox"):
        raise InputError(f"--secagg: strategy {config.strategy!r} is not available with SecAgg+ (fedavg or fedprox)")
    if config.secagg_shares < 3:
        raise InputError("--secagg-shares: SecAgg+ needs at least 3 shares")
    if not 2 <= config.secagg_threshold < config.secagg_shares:
        raise InputError("--secagg-threshold: must be at least 2 and below --secagg-shares")
    if partners is not None and partners < config.secagg_shares:
        raise InputError(f"--secagg-shares: {config.secagg_shares} shares need at least as many partners, got {partners}")
    if config.min_partners < config.secagg_threshold:
        raise InputError("--min-partners: must be at least --secagg-threshold under SecAgg+")


# --- client side ----------------------------------------------------------------------------------


def _worker(partners: list[dict[str, Any]], pid: int) -> PartnerWorker:
    """The partner's in-process worker, one per partner per Ray actor (shared with the normal path)."""
    from federated.partner.client_app import _LOCAL_WORKERS
    from federated.partner.worker import PartnerSpec, PartnerWorker

    key = (pid, repr(sorted(partners[pid].items())))
    worker = _LOCAL_WORKERS.get(key)
    if worker is None:
        try:
            worker = PartnerWorker(PartnerSpec(**partners[pid]))
        except Exception as exc:  # noqa: BLE001 - reported by partner name, as in the normal path
            text = str(exc)
            name = partners[pid].get("name", f"partition {pid}")
            raise PartnerFailure("input", text if text.startswith("partner ") else f"partner {name}: {type(exc).__name__}") from None
        _LOCAL_WORKERS[key] = worker
    return worker


class _SimPartnerClient(LegacyPartnerClient):
    """The simulation's partner client: every request goes to its in-process PartnerWorker."""

    def __init__(self, context: Context, partners: list[dict[str, Any]], record_updates: str | None) -> None:
        self.context = context
        self.pid = int(context.node_config.get("partition-id", 0))
        self.partners, self.record_updates = partners, record_updates

    def _call(self, op: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        header = {"op": op, "config": scalars(config), "run_id": str(self.context.run_id),
                  "round": int(config.get("server-round", 0))}
        reply, out = _worker(self.partners, self.pid).handle(op, header, arrays)
        if not reply.get("ok"):
            raise PartnerFailure(str(reply.get("kind", "failed")), str(reply.get("error", "failed")))
        return reply, out

    def _received(self, op: str, names: list[str], config: dict[str, Any], arrays: dict[str, np.ndarray], n: int,
                  delta: list[np.ndarray], reply: dict[str, Any]) -> None:
        if not self.record_updates:
            return
        partner = str(reply.get("partner", self.pid))
        saved: dict[str, Any] = {"n": np.asarray(n), **{f"received__{k}": arrays[k] for k in names},
                                 **{f"delta__{k}": d for k, d in zip(names, delta, strict=True)}}
        np.savez(Path(self.record_updates) / f"{partner}-round{int(config['server-round'])}.npz", **saved)


def _partition_name(partners: list[dict[str, Any]], context: Context) -> str:
    pid = int(context.node_config.get("partition-id", 0))
    return str(partners[pid].get("name", f"partition {pid}")) if pid < len(partners) else f"partition {pid}"


def make_client_app(partners: list[dict[str, Any]], record_updates: str | None = None) -> ClientApp:
    """Legacy ClientApp: `secaggplus_mod` around a NumPyClient that delegates to the PartnerWorker.

    `record_updates` (tests only) names a directory where each partner writes, on its own side, the
    global model it received and the delta it handed to SecAgg+ before masking.
    """
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod

    def client_fn(context: Context) -> Client:
        return _SimPartnerClient(context, partners, record_updates).to_client()

    def name_errors(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        """Outermost mod: any failure (refusal, bad input, SecAgg+ abort) becomes an error reply naming the partner."""
        try:
            return call_next(msg, context)
        except Exception as exc:  # noqa: BLE001 - the coordinator needs a reason, not a crashed actor
            return error_reply(msg, exc, _partition_name(partners, context))

    return ClientApp(client_fn=client_fn, mods=[name_errors, secaggplus_mod])


# --- server side ----------------------------------------------------------------------------------


def _error_reason(msg: Message, fallback: str) -> str:
    lines = (msg.error.reason or fallback).strip().splitlines()
    return lines[-1] if lines else fallback


class _Coordinator:
    """Bookkeeping shared by the legacy strategy and the run: progress, ledger, failures."""

    def __init__(self, settings: ServerSettings, ledger: Ledger, progress_path: Path, run_id: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.progress_path = progress_path
        self.run_id = run_id
        self.error: str | None = None


class SecAggFedAvg(Strategy):
    """FedAvg on the SecAgg+ sum: global += (Σ n_i Δ_i) / (Σ n_i), plus the per-round record.

    The legacy strategy that SecAggPlusWorkflow drives: it sees only the unmasked aggregate delta."""

    def __init__(
        self, coordinator: _Coordinator, names: list[str], initial: list[np.ndarray], partner_of: dict[int, str],
        active: set[int], model: Module, evaluator: _Evaluator | None, declared: dict[int, int],
    ) -> None:
        self.coordinator, self.names, self.partner_of, self.active = coordinator, names, partner_of, active
        self.model, self.evaluator, self.declared = model, evaluator, declared
        self.config = coordinator.settings.config
        self.base_config = {**self.config.to_record(), "param_names": ",".join(names)}
        self.current = [a.astype(np.float32) for a in initial]
        self.sent: dict[int, set[int]] = {}
        self.rounds: list[dict[str, Any]] = []
        self.joined: dict[str, list[int]] = {partner_of[n]: [] for n in active}
        self.epsilon: dict[str, float] = {partner_of[n]: 0.0 for n in active}
        self.started = time.monotonic()
        self.initial_per_silo: dict[str, dict[str, float]] = {}

    def __repr__(self) -> str:
        return "SecAggFedAvg"

    def _name(self, node: int) -> str:
        return self.partner_of.get(node, f"node {node}")

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(self.current)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager,
    ) -> list[tuple[ClientProxy, FitIns]]:
        if self.coordinator.error is not None:
            return []  # the run already failed: let the workflow's remaining rounds pass without messages
        self.started = time.monotonic()
        self.current = [np.asarray(a, dtype=np.float32) for a in parameters_to_ndarrays(parameters)]
        proxies = [p for p in client_manager.all().values() if p.node_id in self.active]
        self.sent[server_round] = {p.node_id for p in proxies}
        ins = FitIns(parameters, {**self.base_config, "server-round": server_round})
        return [(p, ins) for p in sorted(proxies, key=lambda p: p.node_id)]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        accepted = sorted(self._name(p.node_id) for p, _ in results)
        failed = self._record_dropouts(server_round, results, failures)
        evaluation = self._read_metrics(server_round, results)
        if len(results) < self.config.min_partners:
            self._fail(server_round, accepted, failed)
            return None, {}
        # Every result carries the same parameters: the unmasked weighted mean of the deltas.
        mean_delta = parameters_to_ndarrays(results[0][1].parameters)
        new = [(c.astype(np.float64) + d).astype(np.float32) for c, d in zip(self.current, mean_delta, strict=True)]
        norm = math.sqrt(sum(float(np.sum(np.asarray(d, dtype=np.float64) ** 2)) for d in mean_delta))
        problem = self._aggregate_problem(server_round, new, norm)
        if problem is not None:
            self.coordinator.error = problem
            return None, {}
        self._record_round(server_round, accepted, failed, evaluation, new, norm)
        self.current = new
        return ndarrays_to_parameters(new), {}

    def _record_dropouts(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any],
    ) -> list[dict[str, str]]:
        """Name every partner that was sent the round but is not in the sum; a failure drops it."""
        reasons = [_failure_text(f) for f in failures]
        failed: list[dict[str, str]] = []
        missing = self.sent.get(server_round, set()) - {p.node_id for p, _ in results}
        for node in sorted(missing):
            partner = self._name(node)
            default = (f"partner {partner}: dropped out of the secure aggregation", "")
            reason, code = next(((r, c) for r, c in reasons if r.startswith(f"partner {partner}")), default)
            item = {"partner": partner, "reason": reason, "code": code}
            failed.append(item)
            if not is_refusal(item):  # a refusal keeps the partner; a failure drops it (as in the normal path)
                self.active.discard(node)
            self.coordinator.ledger.append(
                "federate.partner", params={"run_id": self.coordinator.run_id, "round": server_round},
                outcome="failed", reason=reason,
            )
        return failed

    def _read_metrics(self, server_round: int, results: list[tuple[ClientProxy, FitRes]]) -> dict[str, dict[str, float]]:
        """ε spent and the incoming model's per-silo metrics. The masked update is already in the sum;
        a bad weight or metric record is recorded, never read (no per-update filtering under SecAgg+)."""
        evaluation: dict[str, dict[str, float]] = {}
        for proxy, res in results:
            partner = self._name(proxy.node_id)
            m = {**res.metrics, "num-examples": res.num_examples}
            problem = metrics_problem(m, self.declared.get(proxy.node_id))
            if problem is not None:
                self.coordinator.ledger.append(
                    "federate.update_rejected",
                    params={"run_id": self.coordinator.run_id, "round": server_round, "partner": partner},
                    outcome="failed", reason=f"partner {partner} rejected: {problem} (its masked update is in the sum)",
                )
                continue
            self.epsilon[partner] = float(m["epsilon"])
            evaluation[partner] = {"auc": float(m["eval_auc"]), "loss": float(m["eval_loss"]), "n": int(m["eval_n"])}
        return evaluation

    def _aggregate_problem(self, server_round: int, new: list[np.ndarray], norm: float) -> str | None:
        """Why the aggregate must stop the run (NaN/inf, norm above --max-update-norm), or None."""
        if not all(np.all(np.isfinite(a)) for a in new) or not math.isfinite(norm):
            return f"round {server_round}: the securely aggregated update contains NaN or infinite values"
        if norm > self.config.max_update_norm:
            return (
                f"round {server_round}: the securely aggregated update norm {norm:.3g} exceeds --max-update-norm "
                f"{self.config.max_update_norm:.3g} (individual updates cannot be inspected under SecAgg+)"
            )
        return None

    def _record_round(
        self, server_round: int, accepted: list[str], failed: list[dict[str, str]],
        evaluation: dict[str, dict[str, float]], new: list[np.ndarray], norm: float,
    ) -> None:
        coordinator = self.coordinator
        for partner in accepted:
            self.joined.setdefault(partner, []).append(server_round)
        if server_round == 1:
            self.initial_per_silo = dict(evaluation)
        elif self.rounds:
            self.rounds[-1]["per_silo"] = dict(evaluation)
        arrays = dict(zip(self.names, new, strict=True))
        glob = None
        if self.evaluator is not None:
            _load_arrays(self.model, arrays)
            glob = self.evaluator(self.model)
        entry = {
            "event": "round", "round": server_round, "rounds": self.config.rounds,
            "seconds": round(time.monotonic() - self.started, 3), "accepted": accepted, "rejected": [],
            "failed": failed, "global": glob, "per_silo": {}, "per_silo_previous": dict(evaluation),
            "epsilon": dict(self.epsilon), "aggregate_update_norm": norm,
        }
        self.rounds.append(entry)
        _emit(coordinator.progress_path, coordinator.settings.on_round, entry)
        coordinator.ledger.append(
            "federate.round",
            params={
                "run_id": coordinator.run_id, "round": server_round, "accepted": accepted, "rejected": [],
                "failed": [i["partner"] for i in failed], "model_hash": arrays_hash(arrays),
                "global_auc": _finite(glob["auc"]) if glob else None, "secure_aggregation": "SecAgg+",
                "aggregate_update_norm": norm,
            },
        )

    def _fail(self, server_round: int, accepted: list[str], failed: list[dict[str, str]]) -> None:
        who = "; ".join(i["reason"] for i in failed) or "none"
        self.coordinator.error = (
            f"round {server_round}: only {len(accepted)} partners completed the secure aggregation, at least "
            f"{self.config.min_partners} needed (failed: {who})"
        )

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager,
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # partners evaluate the incoming model inside fit (one message per round)

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any],
    ) -> tuple[float | None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
        coordinator = self.coordinator
        if server_round >= 1 and coordinator.error is None and len(self.rounds) < server_round:
            # SecAgg+ halted before aggregate_fit (too few partners left for the threshold).
            coordinator.error = (
                f"round {server_round}: secure aggregation halted: fewer than {self.config.secagg_threshold} partners "
                "(the reconstruction threshold) remained"
            )
        return None


def _failure_text(failure: Any) -> tuple[str, str]:
    """(reason, error code) of one failure the SecAgg+ workflow collected (an Exception(Error))."""
    err = failure.args[0] if isinstance(failure, Exception) and failure.args else failure
    reason = getattr(err, "reason", None)
    code = getattr(err, "code", "")
    text = (reason or str(failure) or "failed").strip().splitlines()
    return (text[-1] if text else "failed"), str(code)


def _legacy_exchange(grid: Grid, nodes: list[int], contents: Callable[[], RecordDict], message_type: str,
                     timeout: float) -> list[Message]:
    messages = [Message(content=contents(), message_type=message_type, dst_node_id=n, group_id="0") for n in nodes]
    return exchange(grid, messages, timeout)


def _legacy_hello_info(msg: Message) -> dict[str, Any]:
    from flwr.compat.common import recorddict_compat as compat

    try:
        return dict(compat.recorddict_to_getpropertiesres(msg.content).properties)
    except Exception:  # noqa: BLE001 - a hostile reply that is not a legacy properties record
        return {}


def _legacy_final_info(msg: Message) -> dict[str, Any]:
    from flwr.compat.common import recorddict_compat as compat

    try:
        return dict(compat.recorddict_to_evaluateres(msg.content).metrics)
    except Exception:  # noqa: BLE001 - a hostile reply that is not a legacy evaluate record
        return {}


def _run_rounds(grid: Grid, context: Context, config: FedConfig, strategy: SecAggFedAvg, max_weight: float) -> None:
    """Step 2: DefaultWorkflow with SecAggPlusWorkflow as its fit step."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    server_config = ServerConfig(num_rounds=config.rounds, round_timeout=config.round_timeout)
    legacy = LegacyContext(context, config=server_config, strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=config.secagg_shares, reconstruction_threshold=config.secagg_threshold,
            max_weight=max_weight, clipping_range=SECAGG_CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE, timeout=config.round_timeout,
        )
    )
    workflow(grid, legacy)


def _confirm_final(grid: Grid, start: RunStart, roster: Roster, strategy: SecAggFedAvg, record: dict[str, Any],
                   timeout: float) -> Outcome:
    """Step 3: partners confirm the final model's hash (legacy evaluate with op=final)."""
    from flwr.common import EvaluateIns
    from flwr.compat.common import recorddict_compat as compat

    names = strategy.names
    result = Outcome(arrays=dict(zip(names, strategy.current, strict=True)), rounds=strategy.rounds,
                     joined=strategy.joined, epsilon=strategy.epsilon, initial_per_silo=strategy.initial_per_silo)
    parameters = ndarrays_to_parameters([result.arrays[k] for k in names])
    final_config = {**record, "param_names": ",".join(names), "op": "final"}
    replies = _legacy_exchange(
        grid, sorted(roster.active), lambda: compat.evaluateins_to_recorddict(EvaluateIns(parameters, final_config), True),
        "evaluate", timeout,
    )
    for msg in replies:
        if not msg.has_error():
            take_final(roster.partner_of.get(msg.metadata.src_node_id, ""), _legacy_final_info(msg),
                       result.confirmations, result.final_silos, start.ledger, start.run_id)
    return result


def run_secagg_server(grid: Grid, context: Context, settings: ServerSettings) -> RunOutcome:
    """The whole SecAgg+ run: partner check, rounds under SecAggPlusWorkflow, final model, card, ledger."""
    from flwr.common import GetPropertiesIns
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat

    from federated.partner.worker import _model_arrays, policy_hash

    start = begin_run(grid, settings)
    config = start.config
    coordinator = _Coordinator(settings, start.ledger, start.progress_path, start.run_id)
    started = time.monotonic()
    policy = load_run_policy(start, settings.policy, lambda: check_options(config, settings.expected_partners))
    my_policy_hash = policy_hash(policy)
    record = config.to_record()
    query_timeout = answer_timeout(config, settings)

    # 1. Who is there, and do they all run the coordinator's policy? (legacy get_properties)
    nodes = _wait_for_nodes(grid, max(settings.expected_partners, config.min_partners), settings.wait_timeout)
    replies = _legacy_exchange(
        grid, nodes, lambda: compat.getpropertiesins_to_recorddict(GetPropertiesIns({**record, "op": "hello"})),
        MessageTypeLegacy.GET_PROPERTIES, query_timeout,
    )
    roster = take_hellos(start, settings, nodes, replies, query_timeout, my_policy_hash, _legacy_hello_info,
                         lambda msg, node: _error_reason(msg, f"node {node}: failed"),
                         max(config.min_partners, config.secagg_shares), " (--min-partners / --secagg-shares)")
    model = _build_model(config, roster.n_num, roster.cards)
    initial_arrays = _model_arrays(model)
    names = list(initial_arrays)
    # FedAvg weight n_i / max_weight must stay ≤ 1, or SecAgg+ clips the scaled delta.
    max_weight = float(max(int(i["n_train"]) for i in roster.infos.values()))
    secure = describe(config, max_weight)
    evaluator = _Evaluator(settings, policy, start.keys_dir) if settings.eval_data else None
    record_start(start, settings, my_policy_hash, roster, {k: v for k, v in record.items() if k not in ("extra",)},
                 {"secure_aggregation": secure})

    # 2. Rounds: DefaultWorkflow with SecAggPlusWorkflow as its fit step.
    strategy = SecAggFedAvg(coordinator, names, [initial_arrays[k] for k in names], roster.partner_of, roster.active,
                            model, evaluator, {n: int(i["n_train"]) for n, i in roster.infos.items()})
    _run_rounds(grid, context, config, strategy, max_weight)
    if coordinator.error is not None:
        start.fail(coordinator.error)
    if len(strategy.rounds) != config.rounds:
        start.fail(f"secure aggregation completed {len(strategy.rounds)} of {config.rounds} rounds")

    # 3. Final model: partners confirm its hash (legacy evaluate with op=final), card, ledger.
    result = _confirm_final(grid, start, roster, strategy, record, query_timeout)
    return finish_run(start, settings, my_policy_hash, roster, result, started, {"secure_aggregation": secure}, secure)


def make_server_app(settings: ServerSettings, result: list[RunOutcome]) -> ServerApp:
    """Legacy-style ServerApp whose main wraps the run in a LegacyContext for the SecAgg+ workflow."""
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result.append(run_secagg_server(grid, context, settings))

    return server


def run_secagg_simulation(
    out_dir: str | os.PathLike[str],
    specs: list[PartnerSpec],
    config: FedConfig,
    policy: Path,
    eval_data: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    record_updates: str | os.PathLike[str] | None = None,
) -> RunOutcome:
    """`federate simulate --secagg`: the same partners and outputs as `run_simulation`, aggregated by SecAgg+."""
    from federated.runtime.simulate import run_on_ray

    config.validate()
    check_options(config, len(specs))
    client_app = make_client_app([s.to_dict() for s in specs], str(record_updates) if record_updates else None)
    return run_on_ray(out_dir, specs, config, policy, make_server_app, client_app, eval_data, on_round, num_cpus,
                      verbose)
