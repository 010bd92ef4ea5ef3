"""Run Flower's own SuperNode with its idle poll shortened.

flwr 1.41's SuperNode loop (`flwr.supernode.start_client_internal`) sleeps a hard-coded 3 s whenever
it finds no message and polls for replies every 0.5 s; with one message per partner per round that
idle sleep alone adds up to 3 s to every round. There is no option for it, so this module runs the
unchanged `flower-supernode` entry point after giving that one module a `time` whose `sleep` is
capped at POLL_SECONDS. TLS, node authentication and message handling are Flower's own.
"""

from __future__ import annotations

import os
import sys
import time
import types

POLL_SECONDS = float(os.environ.get("PRIVMODEL_SUPERNODE_POLL", "0.2"))


def _capped_time() -> types.SimpleNamespace:
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = lambda seconds: time.sleep(min(seconds, POLL_SECONDS))
    return shim


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    loop.time = _capped_time()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
