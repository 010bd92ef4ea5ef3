"""A partner's face in Flower's legacy (SecAgg+) protocol, shared by the simulation and the deployment.

`LegacyPartnerClient` is the NumPyClient that `secaggplus_mod` wraps: hello, fit and final go to the
partner's training worker through `_call` (in process in the simulation, over the authenticated
socket in a deployment); fit hands SecAgg+ the model delta, so the coordinator only sees the sum.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np
from flwr.app import Error, Message
from flwr.client import NumPyClient

from federated.partner.client_app import ERR_FAILED, KIND_CODES


class PartnerFailure(Exception):
    """A worker's error reply, turned into a Flower error reply naming the partner."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def scalars(config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a legacy config or reply that a ConfigRecord / MetricRecord can carry."""
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))}


class LegacyPartnerClient(NumPyClient):
    """Flower's legacy client face of one partner (simulation and deployment alike): hello, fit and
    final go to the partner's training worker through `_call`; fit hands SecAgg+ the model delta."""

    @abstractmethod
    def _call(self, op: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send `op` to the partner's training worker; each runtime (simulation, deployment) reaches it its own way."""

    def _received(self, op: str, names: list[str], config: dict[str, Any], arrays: dict[str, np.ndarray], n: int,
                  delta: list[np.ndarray], reply: dict[str, Any]) -> None:
        """Called after each fit with what the partner received and returns (tests record it)."""

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        reply, _ = self._call("hello", config, {})
        return scalars(reply["info"])

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        names = str(config["param_names"]).split(",")
        received = {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, parameters, strict=True)}
        reply, new = self._call("train", config, received)
        delta = [np.asarray(new[k], dtype=np.float64) - received[k].astype(np.float64) for k in names]
        metrics = {k: (int(v) if isinstance(v, (bool, np.integer, int)) else float(v)) for k, v in reply["metrics"].items()}
        n = int(metrics.pop("num-examples"))
        self._received("train", names, config, received, n, delta, reply)
        return delta, n, {**metrics, "partner": str(reply.get("partner", ""))}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        names = str(config["param_names"]).split(",")
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in zip(names, parameters, strict=True)}
        reply, _ = self._call("final", config, arrays)
        info = scalars(reply["info"])
        return float(info.get("eval_loss", float("nan"))), int(info.get("eval_n", 0)), info


def error_reply(msg: Message, exc: Exception, name: str) -> Message:
    """Any failure (refusal, bad input, SecAgg+ abort) as an error reply naming the partner."""
    if isinstance(exc, PartnerFailure):
        return Message(Error(code=KIND_CODES.get(exc.kind, ERR_FAILED), reason=str(exc)), reply_to=msg)
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__
    return Message(Error(code=ERR_FAILED, reason=f"partner {name}: {msg.metadata.message_type} failed ({detail[:300]})"),
                   reply_to=msg)
