"""Misbehaving partners for robustness tests and the benchmark (never used by the real commands).

`make_adversarial_client_app(partners, behaviours)` is the ordinary ClientApp, except that the
partitions named in `behaviours` tamper with their replies. Train-reply behaviours: "nan" puts NaN
into the update, "inf" an infinity, "scale" multiplies the update by 1e4 (an oversized update),
"complex" / "unicode" send the update as complex128 / unicode arrays of the right shape, "shape"
adds a row to one parameter, "nometric" drops the `eval_auc` metric, "zero" / "negative" / "huge"
claim 0 / -5 / 10^12 training examples, "crash" fails the task. "hello" answers the hello with
malformed fields (n_train as text, no policy hash). Each behaviour can be limited to rounds
("nan@2" = only round 2; "nan@2|scale@3" combines). It lives in the package (not in the tests)
because Ray actors must import it by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from federated.partner.client_app import make_client_app

# The hostile classes a coordinator must reject without crashing (issue 11, item 5).
ARRAY_ATTACKS = ("nan", "inf", "scale", "complex", "unicode", "shape")
METRIC_ATTACKS = {"nometric": None, "zero": 0, "negative": -5, "huge": 10**12}


def _applies(spec: str, server_round: int) -> str | None:
    """The behaviour for this round: "nan@2|scale@3" = NaN in round 2, oversized in round 3."""
    for part in spec.split("|"):
        kind, _, rounds = part.partition("@")
        if not rounds or server_round in {int(r) for r in rounds.split(",")}:
            return kind
    return None


def _tamper_arrays(kind: str, arrays: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    first = next(iter(arrays))
    if kind in ("nan", "inf"):
        arrays[first] = arrays[first].astype(np.float32)
        arrays[first].flat[0] = np.nan if kind == "nan" else np.inf
    elif kind == "scale":
        arrays = {k: (sent[k] + 1e4 * (v - sent[k]) + 1.0).astype(np.float32) for k, v in arrays.items()}
    elif kind == "complex":
        arrays = {k: v.astype(np.complex128) for k, v in arrays.items()}
    elif kind == "unicode":
        arrays = {k: np.full(v.shape, "1.0", dtype="<U3") for k, v in arrays.items()}
    elif kind == "shape":
        arrays[first] = np.concatenate([arrays[first], arrays[first][:1]])
    return arrays


def _tamper_metrics(kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    if kind == "nometric":
        metrics.pop("eval_auc", None)
    else:
        metrics["num-examples"] = METRIC_ATTACKS[kind]
    return metrics


def _bad_hello(reply: Message) -> Message:
    info = dict(reply.content.config_records["info"])
    info["n_train"] = "many"
    info.pop("policy_hash", None)
    reply.content["info"] = ConfigRecord(info)
    return reply


def make_adversarial_client_app(partners: list[dict[str, Any]], behaviours: dict[int, str]) -> ClientApp:
    def tamper(msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        pid = int(ctxt.node_config.get("partition-id", -1))
        if pid not in behaviours:
            return call_next(msg, ctxt)
        config: dict[str, Any] = dict(next(iter(msg.content.config_records.values()), {}))
        if msg.metadata.message_type == "query":
            reply = call_next(msg, ctxt)
            hostile = config.get("op") == "hello" and _applies(behaviours[pid], 0) == "hello" and not reply.has_error()
            return _bad_hello(reply) if hostile else reply
        if msg.metadata.message_type != "train":
            return call_next(msg, ctxt)
        kind = _applies(behaviours[pid], int(config.get("server-round", 0)))
        if kind == "crash":
            raise RuntimeError("simulated partner crash")
        reply = call_next(msg, ctxt)
        if kind is None or reply.has_error():
            return reply
        if kind in METRIC_ATTACKS:
            metrics = _tamper_metrics(kind, dict(reply.content.metric_records["metrics"]))
            reply.content["metrics"] = MetricRecord(metrics)
            return reply
        sent = {k: v.numpy() for k, v in next(iter(msg.content.array_records.values())).items()}
        arrays = {k: v.numpy().copy() for k, v in reply.content.array_records["arrays"].items()}
        arrays = _tamper_arrays(kind, arrays, sent)
        reply.content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
        return reply

    return make_client_app(partners, mods=[tamper])  # outermost: tampering happens after clipping
