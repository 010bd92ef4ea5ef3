"""Secure aggregation (SecAgg+) for the federated simulation: the coordinator sees only the masked sum.

Flower 1.41 offers SecAgg+ only in its legacy workflow API (`SecAggPlusWorkflow` inside a
`DefaultWorkflow`, `secaggplus_mod` around a `NumPyClient`), not for the Message-API strategies of
`federated.server_app`. This module therefore runs its own legacy ServerApp / ClientApp pair, while
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

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.errors import InputError
from federated.config import FedConfig
from federated.server_app import RunOutcome, ServerSettings, answer_timeout

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


class PartnerFailure(Exception):
    """A worker reply that is not ok; `kind` maps to the same error codes as the normal ClientApp."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _worker(partners: list[dict[str, Any]], pid: int) -> Any:
    """The partner's in-process worker, one per partner per Ray actor (shared with the normal path)."""
    from federated.client_app import _LOCAL_WORKERS
    from federated.worker import PartnerSpec, PartnerWorker

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


def make_client_app(partners: list[dict[str, Any]], record_updates: str | None = None) -> Any:
    """Legacy ClientApp: `secaggplus_mod` around a NumPyClient that delegates to the PartnerWorker.

    `record_updates` (tests only) names a directory where each partner writes, on its own side, the
    global model it received and the delta it handed to SecAgg+ before masking.
    """
    from flwr.app import Context, Error, Message
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    from federated.client_app import ERR_FAILED, KIND_CODES

    def header(context: Context, config: dict[str, Any], op: str) -> dict[str, Any]:
        scalars = {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))}
        return {"op": op, "config": scalars, "run_id": str(context.run_id), "round": int(config.get("server-round", 0))}

    class PartnerClient(NumPyClient):  # type: ignore[misc]
        """Flower's legacy client face of one partner; every request goes to its PartnerWorker."""

        def __init__(self, context: Context) -> None:
            self.context = context
            self.pid = int(context.node_config.get("partition-id", 0))

        def _call(self, op: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
            reply, out = _worker(partners, self.pid).handle(op, header(self.context, config, op), arrays)
            if not reply.get("ok"):
                raise PartnerFailure(str(reply.get("kind", "failed")), str(reply.get("error", "failed")))
            return reply, out

        def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
            reply, _ = self._call("hello", config, {})
            return {k: v for k, v in reply["info"].items() if isinstance(v, (str, int, float, bool))}

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            names = str(config["param_names"]).split(",")
            received = {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, parameters, strict=True)}
            reply, new = self._call("train", config, received)
            delta = [np.asarray(new[k], dtype=np.float64) - received[k].astype(np.float64) for k in names]
            metrics = {k: (int(v) if isinstance(v, (bool, np.integer, int)) else float(v)) for k, v in reply["metrics"].items()}
            n = int(metrics.pop("num-examples"))
            if record_updates:
                partner = str(reply.get("partner", self.pid))
                np.savez(
                    Path(record_updates) / f"{partner}-round{int(config['server-round'])}.npz",
                    n=np.asarray(n), **{f"received__{k}": received[k] for k in names}, **{f"delta__{k}": d for k, d in zip(names, delta, strict=True)},
                )
            return delta, n, {**metrics, "partner": str(reply.get("partner", ""))}

        def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
            names = str(config["param_names"]).split(",")
            arrays = {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, parameters, strict=True)}
            reply, _ = self._call("final", config, arrays)
            info = {k: v for k, v in reply["info"].items() if isinstance(v, (str, int, float, bool))}
            return float(info.get("eval_loss", float("nan"))), int(info.get("eval_n", 0)), info

    def client_fn(context: Context) -> Any:
        return PartnerClient(context).to_client()

    def name_errors(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        """Outermost mod: any failure (refusal, bad input, SecAgg+ abort) becomes an error reply naming the partner."""
        try:
            return call_next(msg, context)
        except PartnerFailure as exc:
            return Message(Error(code=KIND_CODES.get(exc.kind, ERR_FAILED), reason=str(exc)), reply_to=msg)
        except Exception as exc:  # noqa: BLE001 - the coordinator needs a reason, not a crashed actor
            pid = int(context.node_config.get("partition-id", 0))
            name = partners[pid].get("name", f"partition {pid}") if pid < len(partners) else f"partition {pid}"
            text = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__
            return Message(Error(code=ERR_FAILED, reason=f"partner {name}: {msg.metadata.message_type} failed ({detail[:300]})"), reply_to=msg)

    return ClientApp(client_fn=client_fn, mods=[name_errors, secaggplus_mod])


# --- server side ----------------------------------------------------------------------------------


def _error_reason(msg: Any, fallback: str) -> str:
    lines = (msg.error.reason or fallback).strip().splitlines()
    return lines[-1] if lines else fallback


class _Coordinator:
    """Bookkeeping shared by the legacy strategy and the run: progress, ledger, failures."""

    def __init__(self, settings: ServerSettings, ledger: Any, progress_path: Path, run_id: str) -> None:
        self.settings = settings
        self.ledger = ledger
        self.progress_path = progress_path
        self.run_id = run_id
        self.error: str | None = None


def _make_strategy(
    coordinator: _Coordinator, names: list[str], initial: list[np.ndarray], partner_of: dict[int, str],
    active: set[int], model: Any, evaluator: Any, declared: dict[int, int],
) -> Any:
    """The legacy strategy that SecAggPlusWorkflow drives: it sees only the unmasked aggregate delta."""
    from flwr.common import EvaluateIns, FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import Strategy

    from federated.client_app import ERR_REFUSED
    from federated.robust import metrics_problem
    from federated.server_app import _emit, _finite
    from federated.wire import arrays_hash
    from federated.worker import _load_arrays

    settings = coordinator.settings
    config = settings.config
    base_config = {**config.to_record(), "param_names": ",".join(names)}

    class SecAggFedAvg(Strategy):  # type: ignore[misc]
        """FedAvg on the SecAgg+ sum: global += (Σ n_i Δ_i) / (Σ n_i), plus the per-round record."""

        def __init__(self) -> None:
            self.current = [a.astype(np.float32) for a in initial]
            self.sent: dict[int, set[int]] = {}
            self.rounds: list[dict[str, Any]] = []
            self.joined: dict[str, list[int]] = {partner_of[n]: [] for n in active}
            self.epsilon: dict[str, float] = {partner_of[n]: 0.0 for n in active}
            self.started = time.monotonic()
            self.initial_per_silo: dict[str, dict[str, float]] = {}

        def __repr__(self) -> str:
            return "SecAggFedAvg"

        def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
            return ndarrays_to_parameters(self.current)

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
            if coordinator.error is not None:
                return []  # the run already failed: let the workflow's remaining rounds pass without messages
            self.started = time.monotonic()
            self.current = [np.asarray(a, dtype=np.float32) for a in parameters_to_ndarrays(parameters)]
            proxies = [p for p in client_manager.all().values() if p.node_id in active]
            self.sent[server_round] = {p.node_id for p in proxies}
            ins = FitIns(parameters, {**base_config, "server-round": server_round})
            return [(p, ins) for p in sorted(proxies, key=lambda p: p.node_id)]

        def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
            accepted = sorted(partner_of.get(p.node_id, f"node {p.node_id}") for p, _ in results)
            reasons = [_failure_text(f) for f in failures]
            failed: list[dict[str, str]] = []
            missing = self.sent.get(server_round, set()) - {p.node_id for p, _ in results}
            for node in sorted(missing):
                partner = partner_of.get(node, f"node {node}")
                reason, code = next(((r, c) for r, c in reasons if r.startswith(f"partner {partner}")), (f"partner {partner}: dropped out of the secure aggregation", ""))
                failed.append({"partner": partner, "reason": reason, "code": code})
                if code != str(ERR_REFUSED):  # a refusal keeps the partner; a failure drops it (as in the normal path)
                    active.discard(node)
                coordinator.ledger.append(
                    "federate.partner", params={"run_id": coordinator.run_id, "round": server_round}, outcome="failed", reason=reason
                )
            evaluation: dict[str, dict[str, float]] = {}
            for proxy, res in results:
                # The masked update is already in the sum; a bad weight or metric record is recorded,
                # never read (no per-update filtering exists under SecAgg+).
                partner = partner_of.get(proxy.node_id, f"node {proxy.node_id}")
                m = {**res.metrics, "num-examples": res.num_examples}
                problem = metrics_problem(m, declared.get(proxy.node_id))
                if problem is not None:
                    coordinator.ledger.append(
                        "federate.update_rejected", params={"run_id": coordinator.run_id, "round": server_round, "partner": partner},
                        outcome="failed", reason=f"partner {partner} rejected: {problem} (its masked update is in the sum)",
                    )
                    continue
                self.epsilon[partner] = float(m["epsilon"])
                evaluation[partner] = {"auc": float(m["eval_auc"]), "loss": float(m["eval_loss"]), "n": int(m["eval_n"])}
            if len(results) < config.min_partners:
                self._fail(server_round, accepted, failed)
                return None, {}
            # Every result carries the same parameters: the unmasked weighted mean of the deltas.
            mean_delta = parameters_to_ndarrays(results[0][1].parameters)
            new = [(c.astype(np.float64) + d).astype(np.float32) for c, d in zip(self.current, mean_delta, strict=True)]
            norm = math.sqrt(sum(float(np.sum(np.asarray(d, dtype=np.float64) ** 2)) for d in mean_delta))
            if not all(np.all(np.isfinite(a)) for a in new) or not math.isfinite(norm):
                coordinator.error = f"round {server_round}: the securely aggregated update contains NaN or infinite values"
                return None, {}
            if norm > config.max_update_norm:
                coordinator.error = (
                    f"round {server_round}: the securely aggregated update norm {norm:.3g} exceeds --max-update-norm "
                    f"{config.max_update_norm:.3g} (individual updates cannot be inspected under SecAgg+)"
                )
                return None, {}
            for partner in accepted:
                self.joined.setdefault(partner, []).append(server_round)
            if server_round == 1:
                self.initial_per_silo = dict(evaluation)
            elif self.rounds:
                self.rounds[-1]["per_silo"] = dict(evaluation)
            arrays = dict(zip(names, new, strict=True))
            glob = None
            if evaluator is not None:
                _load_arrays(model, arrays)
                glob = evaluator(model)
            entry = {
                "event": "round", "round": server_round, "rounds": config.rounds,
                "seconds": round(time.monotonic() - self.started, 3), "accepted": accepted, "rejected": [],
                "failed": failed, "global": glob, "per_silo": {}, "per_silo_previous": dict(evaluation), "epsilon": dict(self.epsilon),
                "aggregate_update_norm": norm,
            }
            self.rounds.append(entry)
            _emit(coordinator.progress_path, settings.on_round, entry)
            coordinator.ledger.append(
                "federate.round",
                params={
                    "run_id": coordinator.run_id, "round": server_round, "accepted": accepted, "rejected": [],
                    "failed": [i["partner"] for i in failed], "model_hash": arrays_hash(arrays),
                    "global_auc": _finite(glob["auc"]) if glob else None, "secure_aggregation": "SecAgg+",
                    "aggregate_update_norm": norm,
                },
            )
            self.current = new
            return ndarrays_to_parameters(new), {}

        def _fail(self, server_round: int, accepted: list[str], failed: list[dict[str, str]]) -> None:
            who = "; ".join(i["reason"] for i in failed) or "none"
            coordinator.error = (
                f"round {server_round}: only {len(accepted)} partners completed the secure aggregation, at least "
                f"{config.min_partners} needed (failed: {who})"
            )

        def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
            return []  # partners evaluate the incoming model inside fit (one message per round)

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[float | None, dict[str, Any]]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
            if server_round >= 1 and coordinator.error is None and len(self.rounds) < server_round:
                # SecAgg+ halted before aggregate_fit (too few partners left for the threshold).
                coordinator.error = (
                    f"round {server_round}: secure aggregation halted: fewer than {config.secagg_threshold} partners "
                    "(the reconstruction threshold) remained"
                )
            return None

    return SecAggFedAvg()


def _failure_text(failure: Any) -> tuple[str, str]:
    """(reason, error code) of one failure the SecAgg+ workflow collected (an Exception(Error))."""
    err = failure.args[0] if isinstance(failure, Exception) and failure.args else failure
    reason = getattr(err, "reason", None)
    code = getattr(err, "code", "")
    text = (reason or str(failure) or "failed").strip().splitlines()
    return (text[-1] if text else "failed"), str(code)


def _legacy_exchange(grid: Any, nodes: list[int], contents: Any, message_type: str, timeout: float) -> list[Any]:
    from flwr.app import Message

    from federated.server_app import exchange

    messages = [Message(content=contents(), message_type=message_type, dst_node_id=n, group_id="0") for n in nodes]
    return exchange(grid, messages, timeout)


def run_secagg_server(grid: Any, context: Any, settings: ServerSettings) -> RunOutcome:
    """The whole SecAgg+ run: partner check, rounds under SecAggPlusWorkflow, final model, card, ledger."""
    from flwr.common import EvaluateIns, GetPropertiesIns, ndarrays_to_parameters
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from anonymize.policy import load_policy
    from federated.card import write_card
    from federated.server_app import (
        _build_model,
        _emit,
        _Evaluator,
        _finite,
        _npz_bytes,
        _wait_for_nodes,
        begin_run,
        declarations,
        take_final,
        take_hello,
        vet_partners,
    )
    from federated.wire import arrays_hash
    from federated.worker import _model_arrays, policy_hash
    from privmodel.audit import artifact
    from privmodel.fileio import atomic_write_bytes, atomic_write_text

    start = begin_run(grid, settings)
    config, out, keys_dir, ledger, progress_path, run_id = (
        start.config, start.out, start.keys_dir, start.ledger, start.progress_path, start.run_id)
    fail = start.fail
    coordinator = _Coordinator(settings, ledger, progress_path, run_id)
    started = time.monotonic()

    try:
        check_options(config, settings.expected_partners)
        policy = load_policy(settings.policy)
    except InputError as exc:
        fail(str(exc))
    my_policy_hash = policy_hash(policy)
    record = config.to_record()
    query_timeout = answer_timeout(config, settings)

    # 1. Who is there, and do they all run the coordinator's policy? (legacy get_properties)
    nodes = _wait_for_nodes(grid, max(settings.expected_partners, config.min_partners), settings.wait_timeout)
    partner_of: dict[int, str] = {n: f"node {n}" for n in nodes}
    infos: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    replies = _legacy_exchange(
        grid, nodes, lambda: compat.getpropertiesins_to_recorddict(GetPropertiesIns({**record, "op": "hello"})),
        MessageTypeLegacy.GET_PROPERTIES, query_timeout,
    )
    answered = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        answered.add(node)
        if msg.has_error():
            failures.append(_error_reason(msg, f"node {node}: failed"))
            continue
        try:
            info = dict(compat.recorddict_to_getpropertiesres(msg.content).properties)
        except Exception:  # noqa: BLE001 - a hostile reply that is not a legacy properties record
            info = {}
        take_hello(node, info, partner_of, infos, failures)
    for node in set(nodes) - answered:
        failures.append(f"node {node}: no answer within {query_timeout:.0f} s")
    layouts = vet_partners(infos, failures, my_policy_hash, fail, progress_path, settings.on_round, ledger, run_id)
    active = set(infos)
    if len(active) < max(config.min_partners, config.secagg_shares):
        fail(
            f"only {len(active)} partners ready, at least {max(config.min_partners, config.secagg_shares)} needed "
            f"(--min-partners / --secagg-shares): " + "; ".join(failures)
        )

    n_num, cards_text = layouts.pop()
    cards = [int(c) for c in cards_text.split(",") if c]
    model = _build_model(config, n_num, cards)
    initial_arrays = _model_arrays(model)
    names = list(initial_arrays)
    # FedAvg weight n_i / max_weight must stay ≤ 1, or SecAgg+ clips the scaled delta.
    max_weight = float(max(int(i["n_train"]) for i in infos.values()))
    secure = describe(config, max_weight)
    evaluator = _Evaluator(settings, policy, keys_dir) if settings.eval_data else None
    ledger.append(
        "federate.start",
        inputs=[artifact(settings.policy)] + ([artifact(settings.eval_data)] if settings.eval_data else []),
        params={
            "run_id": run_id, "policy_hash": my_policy_hash, "partners": sorted(partner_of[n] for n in active),
            "config": {k: v for k, v in record.items() if k not in ("extra",)}, "secure_aggregation": secure,
            **declarations(infos),
        },
    )

    # 2. Rounds: DefaultWorkflow with SecAggPlusWorkflow as its fit step.
    strategy = _make_strategy(coordinator, names, [initial_arrays[k] for k in names], partner_of, active, model, evaluator,
                              {n: int(i["n_train"]) for n, i in infos.items()})
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=config.rounds, round_timeout=config.round_timeout), strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=config.secagg_shares, reconstruction_threshold=config.secagg_threshold,
            max_weight=max_weight, clipping_range=SECAGG_CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE, timeout=config.round_timeout,
        )
    )
    workflow(grid, legacy)
    if coordinator.error is not None:
        fail(coordinator.error)
    rounds = strategy.rounds
    if len(rounds) != config.rounds:
        fail(f"secure aggregation completed {len(rounds)} of {config.rounds} rounds")

    # 3. Final model: partners confirm its hash (legacy evaluate with op=final), card, ledger.
    final = dict(zip(names, strategy.current, strict=True))
    digest = arrays_hash(final)
    parameters = ndarrays_to_parameters([final[k] for k in names])
    final_config = {**record, "param_names": ",".join(names), "op": "final"}
    confirmations: dict[str, str] = {}
    final_silos: dict[str, dict[str, float]] = {}
    replies = _legacy_exchange(
        grid, sorted(active), lambda: compat.evaluateins_to_recorddict(EvaluateIns(parameters, final_config), True),
        "evaluate", query_timeout,
    )
    for msg in replies:
        if msg.has_error():
            continue
        try:
            info = dict(compat.recorddict_to_evaluateres(msg.content).metrics)
        except Exception:  # noqa: BLE001 - a hostile reply that is not a legacy evaluate record
            info = {}
        take_final(partner_of.get(msg.metadata.src_node_id, ""), info, confirmations, final_silos, ledger, run_id)
    rounds[-1]["per_silo"] = final_silos
    for entry in rounds:
        if entry["global"] is None and entry["per_silo"]:
            total = sum(v["n"] for v in entry["per_silo"].values())
            entry["global"] = {
                "auc": sum(v["auc"] * v["n"] for v in entry["per_silo"].values()) / total,
                "loss": sum(v["loss"] * v["n"] for v in entry["per_silo"].values()) / total,
                "n": total, "source": "weighted mean of silos",
            }
    disagree = [p for p, h in confirmations.items() if h != digest]
    if disagree:
        fail("model hash differs at partner(s) " + ", ".join(sorted(disagree)))
    atomic_write_bytes(out / "model.npz", _npz_bytes(final))
    meta = {
        "model": config.model, "label": config.label, "n_num": n_num, "cat_cardinalities": cards,
        "policy_hash": my_policy_hash, "model_hash": digest, "run_id": run_id, "secure_aggregation": secure,
    }
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2) + "\n")
    partners = {
        name: {"rounds": strategy.joined.get(name, []), "epsilon": _finite(strategy.epsilon.get(name, 0.0)), "confirmed_hash": name in confirmations}
        for name in sorted(strategy.joined)
    }
    delta = config.delta  # the δ every partner calibrated and charged its run with
    card_paths = write_card(
        out, config=config, policy_hash=my_policy_hash, model_hash=digest, partners=partners, rounds=rounds,
        rejected=[], delta=delta, run_id=run_id, seconds=time.monotonic() - started, secure_aggregation=secure,
        declared={partner_of[n]: info for n, info in infos.items()}, eval_data=settings.eval_data,
    )
    ledger.append(
        "federate.final_model",
        inputs=[artifact(settings.policy)],
        outputs=[artifact(out / "model.npz"), artifact(out / "model.json")] + [artifact(p) for p in card_paths],
        params={"run_id": run_id, "model_hash": digest, "rounds": config.rounds, "partners": partners, "secure_aggregation": secure},
        privacy_cost=None,
    )
    _emit(progress_path, settings.on_round, {
        "event": "done", "model_hash": digest, "partners": partners, "per_silo": final_silos,
        "initial_per_silo": strategy.initial_per_silo, "global": rounds[-1]["global"],
    })
    return RunOutcome(model_hash=digest, rounds=rounds, partners=partners, out_dir=str(out))


def make_server_app(settings: ServerSettings, result: list[RunOutcome]) -> Any:
    """Legacy-style ServerApp whose main wraps the run in a LegacyContext for the SecAgg+ workflow."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result.append(run_secagg_server(grid, context, settings))

    return server


def run_secagg_simulation(
    out_dir: str | os.PathLike[str],
    specs: list[Any],
    config: FedConfig,
    policy: Path,
    eval_data: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    record_updates: str | os.PathLike[str] | None = None,
) -> RunOutcome:
    """`federate simulate --secagg`: the same partners and outputs as `run_simulation`, aggregated by SecAgg+."""
    from federated.simulate import run_on_ray

    config.validate()
    check_options(config, len(specs))
    client_app = make_client_app([s.to_dict() for s in specs], str(record_updates) if record_updates else None)
    return run_on_ray(out_dir, specs, config, policy, make_server_app, client_app, eval_data, on_round, num_cpus,
                      verbose)
