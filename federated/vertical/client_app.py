"""A vertical party's Flower ClientApp: lean on purpose (flwr + numpy + stdlib, never torch).

Flower's deployment runtime starts a fresh `flwr-clientapp` process per message, so this module only
forwards: the message's RecordDict (exactly what `federated.vertical.channel.Channel` carries in a
simulation), serialised with Flower's protobuf, goes to the party's long-lived node
(`federated.vertical.node`, started by `privmodel federate vertical join`) over the same authenticated
local socket as a horizontal partner's worker (`federated.runtime.messages`); its answer, the party's
next message of the protocol, comes back as the reply's content.

Beside the protocol's own records, every message carries one ConfigRecord `ENVELOPE` with its kind
(e.g. `psi.request`); the node strips it before the protocol sees the message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

ENVELOPE = "vertical"
ERR_REFUSED = 4001  # the party refuses (signature, budget, overlap below its minimum)
ERR_INPUT = 4002  # bad local input, or a message out of the protocol's order
ERR_FAILED = 4003  # the party's node failed (its type only)
ERR_DROPPED = 4004  # the party's node is not reachable: it dropped out
KIND_CODES = {"refused": ERR_REFUSED, "input": ERR_INPUT, "failed": ERR_FAILED}


def to_bytes(content: RecordDict) -> bytes:
    """A RecordDict as Flower's protobuf bytes (what `Channel` counts and carries)."""
    from flwr.common import serde

    data: bytes = serde.recorddict_to_proto(content).SerializeToString()
    return data


def from_bytes(payload: bytes) -> RecordDict:
    from flwr.common import serde
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

    proto = RecordDictProto()
    proto.ParseFromString(payload)
    return serde.recorddict_from_proto(proto)


def wrap(kind: str, content: RecordDict, **extra: str | int) -> RecordDict:
    """The protocol's records plus the envelope naming the message's kind."""
    records: dict[str, Any] = {name: content[name] for name in content}
    records[ENVELOPE] = ConfigRecord({"kind": kind, **extra})
    return RecordDict(records)


def unwrap(content: RecordDict) -> tuple[str, RecordDict]:
    """(kind, the protocol's records) of a wrapped message; kind "" when there is no envelope."""
    kind = str(content[ENVELOPE].get("kind", "")) if ENVELOPE in content else ""
    return kind, RecordDict({name: content[name] for name in content if name != ENVELOPE})


def _forward(msg: Message, context: Context) -> Message:
    from federated.runtime.messages import WireError, call, read_token

    node = context.node_config
    party = str(node.get("partner", f"node {context.node_id}"))
    kind, content = unwrap(msg.content)
    address, token_file = node.get("worker-address"), node.get("worker-token-file")
    if not address or not token_file:
        return Message(Error(code=ERR_INPUT, reason=f"party {party}: node config lacks worker-address"), reply_to=msg)
    envelope = msg.content[ENVELOPE] if ENVELOPE in msg.content else ConfigRecord({})
    header = {"op": "vertical", "kind": kind, "run_id": str(msg.metadata.run_id), "seq": int(str(envelope.get("seq", 0)))}
    payload = np.frombuffer(to_bytes(content), dtype=np.uint8)
    timeout = float(str(envelope.get("timeout", 300)))
    token = read_token(str(token_file))
    try:
        try:
            reply, arrays = call(str(address), token, header, {"payload": payload}, timeout=timeout)
        except WireError:
            if not header["seq"]:
                raise
            # once more: the node answers a message it has answered already from its record, so a
            # connection lost around the answer is never a second step
            reply, arrays = call(str(address), token, header, {"payload": payload}, timeout=timeout)
    except WireError as exc:
        return Message(Error(code=ERR_DROPPED, reason=f"party {party}: {exc}"), reply_to=msg)
    if not reply.get("ok"):
        code = KIND_CODES.get(str(reply.get("kind")), ERR_FAILED)
        return Message(Error(code=code, reason=str(reply.get("error", f"party {party}: failed"))), reply_to=msg)
    out = from_bytes(arrays["payload"].tobytes()) if "payload" in arrays else RecordDict({})
    return Message(content=wrap(str(reply.get("kind", "")), out), reply_to=msg)


app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Every vertical message is a query: forwarded to the party's node, its answer returned."""
    return _forward(msg, context)
