"""Strategy choice by config, and a robust wrapper in front of whichever strategy runs.

Flower's shape is kept: one stock strategy (`FedAvg`, `FedProx`, `FedAdam` from
`flwr.serverapp.strategy`), optionally decorated by Flower's client-level DP wrapper, and
`RobustStrategy` outermost. The robust wrapper looks at every reply before aggregation:

* an error reply (partner refused, bad local input, crashed worker) is recorded by partner name;
* every other reply is validated as hostile input (`reply_problem`): the update must decode, hold
  exactly the global model's parameter names, real float dtypes and shapes, finite values and an L2
  distance from the global model within `max_update_norm`; the metrics must hold every expected key
  with its type; `num-examples` (the FedAvg weight) must be a positive integer no larger than the
  training rows the partner declared at hello. A bad reply rejects that partner by name for the
  round ("partner bank-b rejected: update dtype complex128") and the round goes on with the others;
* the rest go to the inner strategy. A round with fewer accepted updates than `min_partners`
  produces no new model, and the ServerApp stops the run with a line naming who failed.

`hello_problem` checks a partner's hello the same way before round 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated.runtime.config import TRAINING_ROWS, FedConfig

# What a train reply's metric record must hold, and the kind of each value.
METRIC_KEYS = {"num-examples": "count", "epsilon": "real", "eval_auc": "real", "eval_loss": "real", "eval_n": "count"}
# What a hello must hold, and the kind of each value.
HELLO_FIELDS = {
    "partner": "text", "policy_hash": "text", "n_train": "count", "n_test": "count", "epsilon_cap": "real",
    "epsilon_spent": "real", "n_num": "count", "cards": "text", "training_rows": "text",
}
# A declared training-row count above this is not a table one worker trains on in memory: refused
# at hello, so that no declaration can give one partner an unbounded FedAvg weight.
MAX_DECLARED_ROWS = 10**9
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CARDS = re.compile(r"(\d{1,9}(,\d{1,9})*)?")


@dataclass
class RoundReport:
    """What happened to each partner's reply in one round (for the ledger, card and progress)."""

    round: int
    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)  # {partner, reason}
    failed: list[dict[str, str]] = field(default_factory=list)  # {partner, reason}
    epsilon: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)  # incoming global model, per silo


def _kind_ok(value: Any, kind: str) -> bool:
    """count: an integer (never a bool); real: an int or float (never a bool); text: a str."""
    if isinstance(value, bool | np.bool_):
        return False
    if kind == "count":
        return isinstance(value, int | np.integer)
    if kind == "real":
        return isinstance(value, int | float | np.integer | np.floating)
    return isinstance(value, str)


def _typed(record: Mapping[str, Any], kinds: Mapping[str, str], what: str) -> str | None:
    for key, kind in kinds.items():
        if key not in record:
            return f"{key!r} missing from the {what}"
        if not _kind_ok(record[key], kind):
            return f"{what} field {key!r} is {type(record[key]).__name__}, expected {kind}"
    return None


def update_problem(update: Mapping[str, Any], reference: dict[str, np.ndarray], bound: float) -> str | None:
    """Why an update must be rejected (names, dtype, shape, finiteness, norm), or None."""
    if set(update) != set(reference):
        return "parameter names differ from the global model"
    squared = 0.0
    for key, ref in reference.items():
        arr = update[key]
        if not isinstance(arr, np.ndarray):
            return f"parameter {key} is {type(arr).__name__}, not an array"
        if not np.issubdtype(arr.dtype, np.floating):
            return f"update dtype {arr.dtype} (parameter {key}) is not a real float type"
        if arr.shape != ref.shape:
            return f"parameter {key} has shape {arr.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(arr)):
            return "update contains NaN or infinite values"
        squared += float(np.sum((arr.astype(np.float64) - ref.astype(np.float64)) ** 2))
    norm = math.sqrt(squared)
    if not math.isfinite(norm) or norm > bound:
        return f"update norm {norm:.3g} exceeds the bound {bound:.3g}"
    return None


def metrics_problem(metrics: Mapping[str, Any], declared: int | None) -> str | None:
    """Why a train reply's metrics must be rejected, or None. `declared`: the partner's training
    rows at hello, the bound on its FedAvg weight (None = the partner never said hello: reject)."""
    problem = _typed(metrics, METRIC_KEYS, "metrics")
    if problem is not None:
        return problem
    n = int(metrics["num-examples"])
    if n < 1:
        return f"num-examples {n} is not a positive count"
    if declared is None:
        return "no training-row count was declared at hello"
    if n > declared:
        return f"num-examples {n} exceeds the {declared} training rows declared at hello"
    epsilon, auc, loss = (float(metrics[k]) for k in ("epsilon", "eval_auc", "eval_loss"))
    if not (math.isfinite(epsilon) and epsilon >= 0):
        return f"epsilon {epsilon!r} is not a finite non-negative number"
    if not (math.isnan(auc) or 0.0 <= auc <= 1.0):
        return f"eval_auc {auc!r} is not in [0, 1]"
    if not (math.isfinite(loss) and loss >= 0):
        return f"eval_loss {loss!r} is not a finite non-negative number"
    if int(metrics["eval_n"]) < 0:
        return "eval_n is negative"
    return None


def reply_problem(update: Mapping[str, Any], metrics: Mapping[str, Any], reference: dict[str, np.ndarray],
                  declared: int | None, bound: float) -> str | None:
    """Why one partner's train reply must be rejected for the round, or None when it is acceptable."""
    return metrics_problem(metrics, declared) or update_problem(update, reference, bound)


def hello_problem(info: Mapping[str, Any]) -> str | None:
    """Why a partner's hello must be refused (missing or mistyped fields, impossible values), or None."""
    from federated.runtime.tls import NAME_RE

    problem = _typed(info, HELLO_FIELDS, "hello")
    if problem is not None:
        return problem
    if not NAME_RE.match(info["partner"]):
        return "hello field 'partner' is not a partner name (letters, digits, '.', '_', '-'; at most 63)"
    if not _SHA256.fullmatch(info["policy_hash"]):
        return "hello field 'policy_hash' is not a SHA-256 hex digest"
    if not 1 <= int(info["n_train"]) <= MAX_DECLARED_ROWS:
        return f"hello field 'n_train' {int(info['n_train'])} is not a training-row count in [1, {MAX_DECLARED_ROWS:g}]"
    if not 0 <= int(info["n_test"]) <= MAX_DECLARED_ROWS or int(info["n_num"]) < 0:
        return "hello fields 'n_test' / 'n_num' are not non-negative counts"
    for key in ("epsilon_cap", "epsilon_spent"):
        if not (math.isfinite(float(info[key])) and float(info[key]) >= 0):
            return f"hello field {key!r} is not a finite non-negative number"
    if not _CARDS.fullmatch(info["cards"]):
        return "hello field 'cards' is not a list of category counts"
    if info["training_rows"] not in TRAINING_ROWS:
        return f"hello field 'training_rows' must be one of {', '.join(TRAINING_ROWS)}"
    return None


def decode_update(record: ArrayRecord) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The arrays of a reply, or the reason they cannot be read (bad serialization, pickled objects)."""
    try:
        return {str(k): v.numpy() for k, v in record.items()}, None
    except Exception as exc:  # noqa: BLE001 - hostile bytes: any decoding failure is a rejection
        return None, f"update could not be decoded ({type(exc).__name__})"


class RobustStrategy(Strategy):
    """Filters replies (errors, non-finite or oversized updates) before the inner strategy sees them."""

    def __init__(
        self,
        inner: Strategy,
        config: FedConfig,
        partner_of: Callable[[int], str],
        active_nodes: Callable[[], set[int]],
        declared: Callable[[int], int | None] = lambda _node: None,
    ) -> None:
        self.inner = inner
        self.config = config
        self.partner_of = partner_of
        self.active_nodes = active_nodes
        self.declared = declared  # node -> training rows declared at hello (the FedAvg weight bound)
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
            problem = self._check(msg, node, partner, report)
            if problem is not None:
                report.rejected.append({"partner": partner, "reason": problem})
                continue
            report.accepted.append(partner)
            good.append(msg)
        for node in sorted(self.sent.get(server_round, set()) - answered):
            report.failed.append({"partner": self.partner_of(node), "reason": f"no reply within {self.config.round_timeout:.0f} s"})
        weight = sum(_num_examples(m) for m in good)
        if len(good) < self.config.min_partners or weight <= 0:
            return None, None
        return self.inner.aggregate_train(server_round, good)

    def _check(self, msg: Message, node: int, partner: str, report: RoundReport) -> str | None:
        """Validate one non-error reply; record the partner's ε and held-out metrics once they are sound."""
        if len(msg.content.array_records) != 1 or len(msg.content.metric_records) != 1:
            return "reply does not hold exactly one model and one metric record"
        metrics: dict[str, Any] = dict(next(iter(msg.content.metric_records.values())))
        problem = metrics_problem(metrics, self.declared(node))
        if problem is not None:
            return problem
        report.epsilon[partner] = float(metrics["epsilon"])  # spent even if the update is rejected below
        report.evaluation[partner] = {
            "auc": float(metrics["eval_auc"]), "loss": float(metrics["eval_loss"]), "n": int(metrics["eval_n"])
        }
        update, problem = decode_update(next(iter(msg.content.array_records.values())))
        return problem if update is None else update_problem(update, self.current, self.config.max_update_norm)

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


def _num_examples(msg: Message) -> int:
    """The FedAvg weight of an accepted reply (checked by `metrics_problem` to be a count)."""
    metrics: dict[str, Any] = dict(next(iter(msg.content.metric_records.values())))
    return int(metrics["num-examples"])
