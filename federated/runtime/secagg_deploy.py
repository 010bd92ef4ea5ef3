"""SecAgg+ in a deployment (`federate run --secagg`): the coordinator sees only the masked sum.

The same legacy protocol as the simulation (`federated/coordinator/secagg.py`: `SecAggPlusWorkflow` in a
`DefaultWorkflow`, `secaggplus_mod` around a `NumPyClient`), on Flower's deployment runtime. Two
things differ from the simulation:

* the ClientApp is lean (flwr + numpy + stdlib): Flower starts a fresh `flwr-clientapp` process per
  message, so the NumPyClient forwards hello / fit / final to the partner's long-lived training
  worker over the authenticated local socket (`federated.runtime.messages`), exactly as `federated.partner.client_app`
  does; `secaggplus_mod` keeps its protocol state in the run's context, which the SuperNode keeps
  between messages;
* the run authorization (`deployment.authorize`, checked by every partner against the coordinator
  key it pinned) travels in every legacy config the coordinator sends: `AuthorizedGrid` adds the
  signed body and signature to each outgoing message's `*.config` record. The worker refuses a
  message without it before anything is read or spent, as in the normal path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod

from federated.partner.secagg_client import LegacyPartnerClient, PartnerFailure, error_reply, scalars

if TYPE_CHECKING:
    from flwr.serverapp import Grid, ServerApp


class _WorkerClient(LegacyPartnerClient):
    """The deployment's partner client: every request goes to its training worker over the local socket."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.partner = str(context.node_config.get("partner", f"node {context.node_id}"))

    def _call(self, op: str, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from federated.runtime.messages import WireError, call, read_token

        node = self.context.node_config
        address, token_file = node.get("worker-address"), node.get("worker-token-file")
        if not address or not token_file:
            raise PartnerFailure("input", f"partner {self.partner}: node config lacks worker-address / worker-token-file")
        header = {"op": op, "config": scalars(config), "run_id": str(self.context.run_id),
                  "round": int(config.get("server-round", 0))}
        try:
            reply, out = call(str(address), read_token(str(token_file)), header, arrays,
                              timeout=float(config.get("round_timeout", 300.0)))
        except WireError as exc:
            raise PartnerFailure("failed", f"partner {self.partner}: {exc}") from None
        if not reply.get("ok"):
            raise PartnerFailure(str(reply.get("kind", "failed")), str(reply.get("error", "failed")))
        return reply, out


def _make_client_app() -> ClientApp:
    def client_fn(context: Context) -> Client:
        return _WorkerClient(context).to_client()

    def name_errors(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        """Outermost mod: any failure (refusal, bad input, SecAgg+ abort) becomes an error reply naming the partner."""
        try:
            return call_next(msg, context)
        except Exception as exc:  # noqa: BLE001 - the coordinator needs a reason, not a crashed process
            return error_reply(msg, exc, str(context.node_config.get("partner", f"node {context.node_id}")))

    return ClientApp(client_fn=client_fn, mods=[name_errors, secaggplus_mod])


class AuthorizedGrid:
    """The deployment Grid, adding the coordinator's run authorization to every outgoing config record."""

    def __init__(self, grid: Grid, authorization: Path, ledger: Path | None = None, keys: Path | None = None) -> None:
        self._grid = grid
        self._path = authorization
        self._auth: dict[str, str] | None = None
        self._ledger, self._keys = ledger, keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _fields(self) -> dict[str, str]:
        if self._auth is None:  # begin_run has already waited for and checked this file
            auth = json.loads(self._path.read_text())
            self._auth = {"auth_body": str(auth["body"]), "auth_sig": str(auth["signature"])}
        return self._auth

    def _sign(self, messages: Iterable[Message]) -> list[Message]:
        signed = list(messages)
        for msg in signed:
            for key, record in msg.content.config_records.items():
                if key == "config" or key.endswith(".config"):
                    for field, value in self._fields().items():
                        record[field] = value
                    if record.get("op") == "final" and self._ledger is not None and self._keys is not None:
                        # the coordinator's head goes with the final query, as in the Message-API loop
                        from federated.coordinator.server_app import ledger_head_fields

                        for field, value in ledger_head_fields(self._ledger, self._keys, "coordinator_").items():
                            record[field] = value
        return signed

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._sign(messages))

    def send_and_receive(self, messages: Iterable[Message], *args: Any, **kwargs: Any) -> Iterable[Message]:
        return self._grid.send_and_receive(self._sign(messages), *args, **kwargs)


def _make_server_app() -> ServerApp:
    from flwr.serverapp import ServerApp

    from federated.coordinator.server_app import ServerSettings

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from federated.coordinator.secagg import run_secagg_server

        settings = ServerSettings.from_record(dict(context.run_config))
        if settings.authorization:
            # duck-typed: every Grid call goes through, with the authorization added to each message
            grid = cast("Grid", AuthorizedGrid(grid, Path(settings.authorization), Path(settings.out_dir) / "ledger.jsonl",
                                               Path(settings.keys) if settings.keys else None))
        run_secagg_server(grid, context, settings)

    return server


# The deployment entry points (`federated.runtime.secagg_deploy:server_app` / `:client_app` in the generated app).
client_app = _make_client_app()
server_app = _make_server_app()
