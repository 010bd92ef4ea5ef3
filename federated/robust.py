"""Strategy choice by config, and a robust wrapper in front of whichever strategy runs.

Flower's shape is kept: one stock strategy (`FedAvg`, `FedProx`, `FedAdam` from
`flwr.serverapp.strategy`), optionally decorated by Flower's client-level DP wrapper, and
`RobustStrategy` outermost. The robust wrapper looks at every reply before aggregation:

* an error reply (partner refused, bad local input, crashed worker) is recorded by partner name;
* an update containing NaN / inf, with different parameter names or shapes, or whose L2 distance
  from the global model exceeds `max_update_norm`, is rejected and recorded;
* the rest go to the inner strategy. A round with fewer accepted updates than `min_partners`
  produces no new model, and the ServerApp stops the run with a line naming who failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated.config import FedConfig


@dataclass
class RoundReport:
    """What happened to each partner's reply in one round (for the ledger, card and progress)."""

    round: int
    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {partner, reason}
    failed: list[dict[str, str]] = field(default_factory=list)  # {partner, reason}
    epsilon: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # incoming global model, per silo
    train_loss: float | None = None


def update_problem(update: dict[str, np.ndarray], reference: dict[str, np.ndarray], bound: float) -> str | None:
    """Why an update must be rejected, or None when it is acceptable."""
    if set(update) != set(reference):
        return "parameter names differ from the global model"
    squared = 0.0
    for key, ref in reference.items():
        arr = np.asarray(update[key])
        if arr.shape != ref.shape:
            return f"parameter {key} has shape {arr.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(arr)):
            return "update contains NaN or infinite values"
        squared += float(np.sum((arr.astype(np.float64) - ref.astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if not math.isfinite(norm) or norm > bound:
        return f"update norm {norm:.3g} exceeds the bound {bound:.3g}"
    return None


class RobustStrategy(Strategy):
    """Filters replies (errors, non-finite or oversized updates) before the inner strategy sees them."""

    def __init__(
        self,
        inner: Strategy,
        config: FedConfig,
        partner_of: Callable[[int], str],
        active_nodes: Callable[[], set[int]],
    ) -> None:
        self.inner = inner
        self.config = config
        self.partner_of = partner_of
        self.active_nodes = active_nodes
        self.current: dict[str, np.ndarray] = {}
        self.reports: dict[int, RoundReport] = {}
        self.sent: dict[int, set[int]] = {}

    def summary(self) -> None:
        self.inner.summary()

    def _only_active(self, messages: Iterable[Message]) -> list[Message]:
        active = self.active_nodes()
        return [m for m in messages if m.metadata.dst_node_id in active]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}
        messages = self._only_active(self.inner.configure_train(server_round, arrays, config, grid))
        self.sent[server_round] = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report = RoundReport(server_round)
        self.reports[server_round] = report
        good: list[Message] = []
        answered: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            answered.add(node)
            partner = self.partner_of(node)
            if msg.has_error():
                report.failed.append({"partner": partner, "reason": _reason(msg, partner), "code": str(msg.error.code)})
                continue
            if len(msg.content.array_records) != 1 or len(msg.content.metric_records) != 1:
                report.rejected.append({"partner": partner, "reason": "reply does not hold exactly one model and one metric record"})
                continue
            metrics = next(iter(msg.content.metric_records.values()))
            if "epsilon" in metrics:  # spent by the partner even if its update is rejected below
                report.epsilon[partner] = float(metrics["epsilon"])
            if "eval_auc" in metrics:
                report.evaluation[partner] = {
                    "auc": float(metrics["eval_auc"]), "loss": float(metrics["eval_loss"]), "n": int(metrics["eval_n"])
                }
            update = {k: v.numpy() for k, v in next(iter(msg.content.array_records.values())).items()}
            problem = update_problem(update, self.current, self.config.max_update_norm)
            if problem is not None:
                report.rejected.append({"partner": partner, "reason": problem})
                continue
            report.accepted.append(partner)
            good.append(msg)
        for node in sorted(self.sent.get(server_round, set()) - answered):
            report.failed.append({"partner": self.partner_of(node), "reason": f"no reply within {self.config.round_timeout:.0f} s"})
        if len(good) < self.config.min_partners:
            return None, None
        arrays, metrics = self.inner.aggregate_train(server_round, good)
        if metrics is not None and "train_loss" in metrics:
            report.train_loss = float(metrics["train_loss"])
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self._only_active(self.inner.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, [m for m in replies if not m.has_error()])


def _reason(msg: Message, partner: str) -> str:
    reason = (msg.error.reason or "failed").strip().splitlines()
    text = reason[-1] if reason else "failed"
    if not text.startswith("partner "):
        text = f"partner {partner}: {text}"
    return text[:500]


def build_strategy(config: FedConfig, n_nodes: int) -> Strategy:
    """The stock Flower strategy the config names, wrapped in client-level DP when asked."""
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }
    strategy: Strategy
    if config.strategy == "fedprox":
        strategy = FedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedadam":
        strategy = FedAdam(eta=config.server_lr, eta_l=config.lr, tau=config.server_tau, **common)
    else:
        strategy = FedAvg(**common)
    if config.client_dp_noise > 0:
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=config.client_dp_noise, clipping_norm=config.client_dp_clip,
            num_sampled_clients=n_nodes,
        )
    return strategy
