"""The partner's Flower ClientApp: lean on purpose (flwr + numpy + stdlib, never torch or sklearn).

Flower's deployment runtime starts a fresh `flwr-clientapp` process per message, so whatever this
module imports is paid on every train / evaluate message. The ClientApp therefore only unpacks the
message and forwards it to the partner's training worker:

* deployment (`privmodel federate join`): node config names a local socket (`worker-address`) and a
  token file (`worker-token-file`); the long-lived worker process holds torch, the data, the
  minimised rows, the encoder and the privacy state (see `federated.partner.worker`).
* simulation (`federated.runtime.simulate`): `make_client_app(partners)` maps the node's `partition-id` to a
  partner spec and keeps one in-process worker per partner in the Ray actor that runs it.

Failures come back as Flower error replies whose reason names the partner, so the ServerApp can
report them and finish the round with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

if TYPE_CHECKING:
    from federated.partner.worker import PartnerWorker

# Error codes in replies (the reason always starts with "partner NAME").
ERR_REFUSED = 4001  # the partner declines: its privacy budget would be exceeded
ERR_INPUT = 4002  # bad local input: data file, policy, model mismatch
ERR_FAILED = 4003  # the local worker crashed or could not be reached
KIND_CODES = {"refused": ERR_REFUSED, "input": ERR_INPUT}

_LOCAL_WORKERS: dict[tuple[int, str], PartnerWorker] = {}  # simulation: (partition-id, spec) -> PartnerWorker (per Ray actor)


def _config_of(msg: Message) -> dict[str, Any]:
    records = msg.content.config_records
    if "config" in records:
        return dict(records["config"])
    return dict(next(iter(records.values()))) if records else {}


def _arrays_of(msg: Message) -> dict[str, np.ndarray]:
    records = msg.content.array_records
    if not records:
        return {}
    record = records["arrays"] if "arrays" in records else next(iter(records.values()))
    return {k: v.numpy() for k, v in record.items()}


def _forward(partners: list[dict[str, Any]] | None, op: str, msg: Message, context: Context,
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Send one request to this node's worker (socket in deployment, in-process in simulation)."""
    config = _config_of(msg)
    header = {
        "op": op,
        "config": {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))},
        "run_id": str(msg.metadata.run_id),
        "round": int(config.get("server-round", 0)),
    }
    arrays = _arrays_of(msg)
    node = context.node_config
    if partners is not None:
        pid = int(node.get("partition-id", 0))
        key = (pid, repr(sorted(partners[pid].items())))
        worker = _LOCAL_WORKERS.get(key)
        if worker is None:
            from federated.partner.worker import PartnerSpec, PartnerWorker

            try:
                worker = PartnerWorker(PartnerSpec(**partners[pid]))
            except Exception as exc:  # noqa: BLE001 - the message names the partner already
                name = partners[pid].get("name", f"partition {pid}")
                return {"ok": False, "kind": "input", "error": str(exc) if str(exc).startswith("partner ") else f"partner {name}: {type(exc).__name__}"}, {}
            _LOCAL_WORKERS[key] = worker
        return worker.handle(op, header, arrays)

    from federated.runtime.messages import WireError, call, read_token

    partner = str(node.get("partner", f"node {context.node_id}"))
    address = node.get("worker-address")
    token_file = node.get("worker-token-file")
    if not address or not token_file:
        return {"ok": False, "kind": "input", "error": f"partner {partner}: node config lacks worker-address / worker-token-file"}, {}
    timeout = float(config.get("round_timeout", 300.0))
    try:
        return call(str(address), read_token(str(token_file)), header, arrays, timeout=timeout)
    except WireError as exc:
        return {"ok": False, "kind": "failed", "error": f"partner {partner}: {exc}"}, {}


def _error_reply(msg: Message, reply: dict[str, Any]) -> Message:
    code = KIND_CODES.get(str(reply.get("kind")), ERR_FAILED)
    return Message(Error(code=code, reason=str(reply.get("error", "failed"))), reply_to=msg)


def _metrics(values: dict[str, Any]) -> MetricRecord:
    return MetricRecord({k: (int(v) if isinstance(v, (bool, np.integer, int)) else float(v)) for k, v in values.items()})


def _optional_clipping_mod(msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's `fixedclipping_mod` when the server runs client-level DP, else a pass-through.

    The DP strategy wrapper puts the clipping norm in the train config; without the wrapper the
    stock mod would reject every message, so it is applied only when the key is present.
    """
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    if msg.metadata.message_type == "train" and msg.content.config_records:
        config = next(iter(msg.content.config_records.values()))
        if KEY_CLIPPING_NORM in config:
            clipped: Message = fixedclipping_mod(msg, ctxt, call_next)
            return clipped
    return call_next(msg, ctxt)


def make_client_app(partners: list[dict[str, Any]] | None = None, mods: list[Any] | None = None) -> ClientApp:
    """The ClientApp: `partners` (simulation) lists one partner spec per partition-id.

    `mods` run outside Flower's clipping mod (the adversarial test partners use this).
    """
    client = ClientApp(mods=[*(mods or []), _optional_clipping_mod])

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        reply, arrays = _forward(partners, "train", msg, context)
        if not reply.get("ok"):
            return _error_reply(msg, reply)
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                "metrics": _metrics(reply["metrics"]),
                "info": ConfigRecord({"partner": str(reply.get("partner", ""))}),
            }
        )
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        reply, _ = _forward(partners, "evaluate", msg, context)
        if not reply.get("ok"):
            return _error_reply(msg, reply)
        content = RecordDict(
            {"metrics": _metrics(reply["metrics"]), "info": ConfigRecord({"partner": str(reply.get("partner", ""))})}
        )
        return Message(content=content, reply_to=msg)

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        op = str(_config_of(msg).get("op", "hello"))
        if op not in ("hello", "final"):
            return _error_reply(msg, {"kind": "input", "error": f"unknown query {op!r}"})
        reply, _ = _forward(partners, op, msg, context)
        if not reply.get("ok"):
            return _error_reply(msg, reply)
        info: dict[str, Any] = {k: v for k, v in reply["info"].items() if isinstance(v, (str, int, float, bool))}
        return Message(content=RecordDict({"info": ConfigRecord(info)}), reply_to=msg)

    return client


# The deployment entry point (`clientapp = "federated.partner.client_app:app"` in the generated app).
app = make_client_app(None)
