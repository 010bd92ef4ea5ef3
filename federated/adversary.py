"""Misbehaving partners for robustness tests and the benchmark (never used by the real commands).

`make_adversarial_client_app(partners, behaviours)` is the ordinary ClientApp, except that the
partitions named in `behaviours` tamper with their train replies: "nan" puts NaN into the update,
"scale" multiplies the update by 1e4 (an oversized update), "crash" fails the task. Each behaviour can
be limited to rounds ("nan@2" = only round 2; "nan@2|scale@3" combines). It lives in the package (not in the tests) because
Ray actors must import it by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from federated.client_app import make_client_app


def _applies(spec: str, server_round: int) -> str | None:
    """The behaviour for this round: "nan@2|scale@3" = NaN in round 2, oversized in round 3."""
    for part in spec.split("|"):
        kind, _, rounds = part.partition("@")
        if not rounds or server_round in {int(r) for r in rounds.split(",")}:
            return kind
    return None


def make_adversarial_client_app(partners: list[dict[str, Any]], behaviours: dict[int, str]) -> ClientApp:
    def tamper(msg: Message, ctxt: Context, call_next) -> Message:
        pid = int(ctxt.node_config.get("partition-id", -1))
        if msg.metadata.message_type != "train" or pid not in behaviours:
            return call_next(msg, ctxt)
        server_round = int(next(iter(msg.content.config_records.values())).get("server-round", 0))
        kind = _applies(behaviours[pid], server_round)
        if kind == "crash":
            raise RuntimeError("simulated partner crash")
        reply = call_next(msg, ctxt)
        if kind is None or reply.has_error():
            return reply
        record = reply.content.array_records["arrays"]
        sent = next(iter(msg.content.array_records.values()))
        arrays = {k: v.numpy().copy() for k, v in record.items()}
        if kind == "nan":
            first = next(iter(arrays))
            arrays[first].flat[0] = np.nan
        elif kind == "scale":
            arrays = {k: sent[k].numpy() + 1e4 * (v - sent[k].numpy()) + 1.0 for k, v in arrays.items()}
        reply.content["arrays"] = ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})
        return reply

    return make_client_app(partners, mods=[tamper])  # outermost: tampering happens after clipping
