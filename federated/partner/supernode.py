"""Run Flower's own SuperNode with its idle poll shortened and a gate on the apps it will run.

Poll: flwr's SuperNode loop (`flwr.supernode.start_client_internal`) sleeps a hard-coded 3 s
whenever it finds no message and polls for replies every 0.5 s; with one message per partner per
round that idle sleep alone adds up to 3 s to every round. There is no option for it, so this module
gives that one module a `time` whose `sleep` is capped at POLL_SECONDS.

Gate (issue 11, finding 4): a SuperNode runs whatever ClientApp the run's FAB (Flower App Bundle)
names, with the partner's privileges, so a run submitted by anyone who reaches a SuperLink could ship
code that reads the partner's data directly, past every check of the training worker. Flower's own
FAB verification (`--trusted-entities`) needs a FAB signed by Flower's platform (`valid_license`,
`start_client_internal._pull_and_store_message`). This gate uses that same refusal path
(FAB_VERIFICATION_ERROR reply, no ClientApp started) with our own test: the FAB must be exactly the
app `privmodel federate run` writes, i.e. hold only `pyproject.toml` (plus Flower's `.info/`
metadata) naming the installed `federated.coordinator.server_app:app` / `federated.partner.client_app:app` (with SecAgg+,
`federated.runtime.secagg_deploy:server_app` / `:client_app`; vertical: `VERTICAL_APP`), no code of its own. The run's configuration is then checked by the training worker against the coordinator's
signature before any data is read. A refused FAB is reported to the worker, which records it in the
partner's ledger. TLS, node authentication and message handling are Flower's own.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import types
import zipfile
from typing import Any

POLL_SECONDS = float(os.environ.get("PRIVMODEL_SUPERNODE_POLL", "0.2"))
# `privmodel federate vertical run`: the label party's ServerApp, the feature party's lean ClientApp
VERTICAL_APP = {"serverapp": "federated.vertical.server_app:app", "clientapp": "federated.vertical.client_app:app"}
APPS = (  # the apps `federate run` writes: Message API, and SecAgg+ (legacy workflow)
    {"serverapp": "federated.coordinator.server_app:app", "clientapp": "federated.partner.client_app:app"},
    {"serverapp": "federated.runtime.secagg_deploy:server_app", "clientapp": "federated.runtime.secagg_deploy:client_app"},
    VERTICAL_APP,
)
ALLOWED_FILES = ("pyproject.toml", ".info/CONTENT")


def _capped_time() -> types.SimpleNamespace:
    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = lambda seconds: time.sleep(min(seconds, POLL_SECONDS))
    return shim


def fab_problem(content: bytes) -> str | None:
    """Why this FAB is not privmodel's own federated app (None when it is)."""
    import tomllib

    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = archive.namelist()
            extra = [n for n in names if n not in ALLOWED_FILES]
            if extra:
                return f"the app ships files of its own ({', '.join(sorted(extra)[:3])[:120]}); only privmodel's app is run"
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError, OSError):
        return "the app bundle is not a readable FAB"
    components = config.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if components not in APPS:
        return "the app does not run privmodel's installed ServerApp / ClientApp components"
    return None


def _report(node_config: dict[str, Any], run_id: int, reason: str) -> None:
    """Tell the training worker (which owns the partner's ledger) that a run was refused here."""
    from federated.runtime.messages import WireError, call, read_token

    address, token_file = node_config.get("worker-address"), node_config.get("worker-token-file")
    if not address or not token_file:
        return
    with contextlib.suppress(WireError, OSError):
        call(str(address), read_token(str(token_file)), {"op": "refuse_run", "run_id": str(run_id), "reason": reason}, {},
             timeout=10.0)


def install_gate(loop: Any) -> None:
    """Wrap the SuperNode's pull step so that Flower's FAB-verification refusal applies our `fab_problem`."""
    original = loop._pull_and_store_message
    refused: list[str] = []

    def checked_get_fab(get_fab: Any) -> Any:
        def get(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            # Flower refuses a FAB without this mark before verifying it; our verifier decides instead.
            fab.verifications = {**dict(fab.verifications or {}), "valid_license": "privmodel-gate"}
            return fab
        return get

    def verify(fab: Any, _trusted: dict[str, str]) -> bool:
        problem = fab_problem(fab.content)
        if problem is not None:
            refused.append(problem)
        return problem is None

    def pull(**kwargs: Any) -> Any:
        kwargs["get_fab"] = checked_get_fab(kwargs["get_fab"])
        kwargs["trusted_entities"] = {"privmodel": "gate"}
        before = len(refused)
        run_id = original(**kwargs)
        for problem in refused[before:]:
            print(f"privmodel: run {run_id} refused: {problem}", flush=True)
            _report(dict(kwargs.get("node_config") or {}), run_id, problem)
        return run_id

    loop._verify_fab = verify
    loop._pull_and_store_message = pull


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    loop.time = _capped_time()  # type: ignore[attr-defined,assignment]  # the loop's clock, replaced on purpose
    install_gate(loop)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
