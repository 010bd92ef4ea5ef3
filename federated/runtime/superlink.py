"""Run Flower's own SuperLink with the Fleet API on its own listener, apart from Control and Runtime.

flwr 1.42 serves the Control API (submit / stop / list runs), the Runtime API (what a ServerApp
uses to reach the partners) and the Fleet API (what SuperNodes use) from ONE FastAPI app on ONE
port (`flwr/superlink/main.py`, `create_app` includes `control_router`, `fleet_router` and the
runtime router; `flower-superlink --control-api-address` / `--fleet-api-address` are deprecated and
only configure gRPC servers that are off unless FLWR_INTERNAL_GRPC_* is set). Whoever can reach the
partners' port could therefore submit a run (issue 11, finding 4). This module runs Flower's
unchanged app twice over the same state:

* `--host/--port` (Flower's own options): the whole app (Control + Runtime + Fleet), bound to
  127.0.0.1 unless the coordinator explicitly exposes it; the SuperExec that runs the ServerApp
  connects here;
* `--fleet-address HOST:PORT` (ours): the same app behind `FleetOnly`, which answers 404 to every
  path outside the Fleet API, with the same TLS certificate. This is the address partners use.

TLS, node authentication, state and message handling are Flower's own; only the listeners differ.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

# The SuperNode's HTTP client (flwr/supernode/fleet_http_client.py) only calls /v1/fleet/*.
FLEET_PREFIXES = ("/v1/fleet/",)


class FleetOnly:
    """ASGI filter: pass Fleet API requests to Flower's app, answer 404 to anything else."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith(FLEET_PREFIXES):
            await self.app(scope, receive, send)
            return
        if scope.get("type") == "http":
            body = b'{"detail":"not the Fleet API: the Control API is not served on this address"}'
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        # websockets and anything else: not served


def _pop_fleet_address(argv: list[str]) -> tuple[str, int]:
    for i, arg in enumerate(argv):
        if arg == "--fleet-address" and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            host, _, port = value.rpartition(":")
            return host, int(port)
    raise SystemExit("federated.runtime.superlink: --fleet-address HOST:PORT is required")


def main() -> None:
    import importlib

    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # the module, not the function of the same name that flwr.superlink.cli exports
    fs = importlib.import_module("flwr.superlink.cli.flower_superlink")

    fleet_host, fleet_port = _pop_fleet_address(sys.argv)
    sys.argv[0] = "flower-superlink"
    config = fs._parse_superlink_lifespan_config()
    app = create_app(config, fs.SuperLinkLifespan)
    common = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile, "access_log": True,
              "log_config": get_uvicorn_log_config(console_handler.level)}
    # Control + Runtime (+ Fleet): owns the lifespan (state, SuperExec); loopback unless exposed.
    control = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, lifespan="on", **common))
    # Fleet only: no lifespan of its own (the state and SuperExec belong to the listener above).
    fleet = uvicorn.Server(uvicorn.Config(FleetOnly(app), host=fleet_host, port=fleet_port, lifespan="off", **common))

    def _exit(*_: Any) -> None:
        control.should_exit = True
        fleet.should_exit = True

    async def serve() -> None:
        loop_tasks = [asyncio.ensure_future(control._serve()), asyncio.ensure_future(fleet._serve())]
        await asyncio.wait(loop_tasks, return_when=asyncio.FIRST_COMPLETED)
        _exit()  # one listener ended (error or signal): stop the other, lifespan shutdown included
        await asyncio.gather(*loop_tasks, return_exceptions=True)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
