"""Real deployment: SuperLink with TLS + node auth, partners' SuperNodes + workers, run submission.

Every process started here is tracked and stopped by pid (SIGTERM, then SIGKILL after a grace
period) in `finally` blocks and at interpreter exit: `flwr run` and the SuperLink otherwise leave
background processes behind. Every wait has a deadline. A run counts as successful only when the
SuperLink reports it finished with success *and* the coordinator wrote its final ledger entry.

Flower's CLI needs a connection profile; `flwr_home()` writes one into a private temp FLWR_HOME
(address + CA certificate) so that nothing touches the user's ~/.flwr. Runtime dependency
installation is always disabled: the partners run the installed privmodel, never a fresh env.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anonymize.errors import InputError

if TYPE_CHECKING:
    from privmodel.core.keys import Signer

CONNECTION = "privmodel"
PROGRESS_EVERY_S = 0.1
STATUS_EVERY_S = 5.0
_STARTED: list[subprocess.Popen[bytes]] = []


def _bin(name: str) -> str:
    """An executable of this environment (the venv's flwr, not whatever PATH finds first)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def base_env(flwr_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # SuperExec polls for new ClientApp / ServerApp tasks every second by default.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    # The SuperLink / SuperNode spawn flower-superexec / flwr-clientapp by name: this venv's first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop one process we started (by pid): SIGTERM, wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)


def _stop_all() -> None:
    for proc in reversed(_STARTED):
        stop(proc, grace=2.0)


atexit.register(_stop_all)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a process with its output in `log`; remembered so that it is stopped at exit."""
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle.close()
    _STARTED.append(proc)
    return proc


def parse_address(text: str, what: str = "--superlink") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    interesting = [t for t in text if "ERROR" in t or "error" in t.lower()] or text
    return " | ".join(t.strip()[:200] for t in interesting[-lines:])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None, who: str = "process") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InputError(f"{who} exited with code {proc.returncode}: {_tail(log) if log else ''}".rstrip(": "))
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise InputError(f"{who} did not open {host}:{port} within {timeout:.0f} s")


def write_flwr_home(home: Path, address: str, ca_cert: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\nroot-certificates = "{ca_cert.resolve()}"\n'
    )
    return home


def flwr_cli(args: list[str], home: Path, timeout: float = 60.0) -> tuple[int, str]:
    """Run the `flwr` CLI with our private FLWR_HOME; returns (exit code, output)."""
    try:
        done = subprocess.run(
            [_bin("flwr"), *args], env=base_env(home), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise InputError(f"`flwr {args[0]}` did not finish within {timeout:.0f} s") from None
    return done.returncode, (done.stdout or "") + (done.stderr or "")


def _json_of(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        value: dict[str, Any] = json.loads(text[start: text.rfind("}") + 1])
        return value
    except ValueError:
        return {}


# --- SuperLink ----------------------------------------------------------------------------------


@dataclass
class SuperLink:
    """A running SuperLink: partners use `address` (Fleet API only); the Control API (runs) listens on
    `control_address`, loopback unless exposed on purpose; `home` is the flwr CLI home that talks to it."""

    address: str
    tls_dir: Path
    workdir: Path
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    control_address: str = ""

    @property
    def registry_path(self) -> Path:
        return self.workdir / REGISTRY_FILE

    def register(self, public_key: Path, name: str) -> int:
        """Register a partner's SuperNode public key under its name (node authentication); the
        name -> node id -> key binding goes to `registry.json`, which `federate run` signs."""
        from federated.runtime.tls import check_name, read_node_public_key

        check_name(name)
        public, digest = read_node_public_key(public_key, f"partner {name}")
        registry = read_registry(self.registry_path)
        if name in registry:
            raise InputError(f"partner {name}: already registered (node {registry[name]['node_id']})")
        other = next((n for n, r in registry.items() if r.get("public_key_sha256") == digest), None)
        if other is not None:
            raise InputError(f"partner {name}: this public key is already registered as partner {other}")
        code, out = flwr_cli(["supernode", "register", str(public), CONNECTION, "--name", name, "--format", "json"], self.home)
        info = _json_of(out)
        if code != 0 or not info.get("success"):
            raise InputError(f"partner {name}: registration at the SuperLink failed ({_last_line(out)})")
        node_id = int(info.get("node-id", 0))
        registry[name] = {"node_id": node_id, "public_key_sha256": digest}
        write_registry(self.registry_path, registry)
        return node_id

    def stop(self) -> None:
        stop(self.proc)


REGISTRY_FILE = "registry.json"


def read_registry(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {node_id, public_key_sha256} of the partners registered at this SuperLink."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("node_id"), int) and isinstance(v.get("public_key_sha256"), str)
            for v in data.values()
        ):
            raise ValueError
    except (OSError, ValueError):
        raise InputError(f"{path}: not a partner registry written by `privmodel federate superlink`") from None
    return data


def write_registry(path: Path, registry: dict[str, dict[str, Any]]) -> None:
    from privmodel.core.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(registry, indent=2, sort_keys=True) + "\n")


def _last_line(text: str) -> str:
    """The cause in a flwr CLI answer: its JSON `error-message` (last line), else the last output line."""
    message = _json_of(text).get("error-message")
    source = str(message) if message else text
    lines = [t.strip() for t in source.strip().splitlines() if t.strip()]
    return lines[-1][:200] if lines else "no output"


def control_api_answers(home: Path) -> tuple[bool, str]:
    """Whether the address in this flwr home serves the Control API (`flwr ls` succeeds), and why not."""
    code, out = flwr_cli(["ls", CONNECTION, "--format", "json"], home, timeout=30)
    return code == 0 and bool(_json_of(out).get("success")), _last_line(out)


def start_superlink(
    tls_dir: Path, workdir: Path, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0,
    control_host: str = "127.0.0.1", control_port: int = 0,
) -> SuperLink:
    """Start Flower's SuperLink with TLS and SuperNode authentication (`federated.runtime.superlink`): the Fleet
    API on host:port for the partners, the Control API on control_host:control_port (loopback by
    default); wait until both answer."""
    from federated.runtime.tls import check_ca

    tls_dir = Path(tls_dir)
    for name in ("ca.crt", "server.crt"):
        check_ca(tls_dir / name, "SuperLink")
    if not (tls_dir / "server.key").is_file():
        raise InputError(f"SuperLink: {tls_dir / 'server.key'} not found (run `privmodel keys tls {tls_dir}`)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    control_port = control_port or free_port(control_host)
    if (host, port) == (control_host, control_port):
        raise InputError("SuperLink: the Control API needs a port of its own (--control-port)")
    log = workdir / "superlink.log"
    cmd = [
        sys.executable, "-m", "federated.runtime.superlink", "--fleet-address", f"{host}:{port}",
        "--ssl-ca-certfile", str(tls_dir / "ca.crt"),
        "--ssl-certfile", str(tls_dir / "server.crt"),
        "--ssl-keyfile", str(tls_dir / "server.key"),
        "--enable-supernode-auth",
        "--host", control_host, "--port", str(control_port),
        "--disable-runtime-dependency-installation",
    ]
    home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=workdir))
    proc = spawn(cmd, log, base_env(home))
    try:
        wait_port(host, port, timeout, proc, log, "SuperLink")
        wait_port(control_host, control_port, timeout, proc, log, "SuperLink Control API")
        control_address = f"{control_host}:{control_port}"
        write_flwr_home(home, control_address, tls_dir / "ca.crt")
        # Ready when the Control API answers through TLS.
        deadline = time.monotonic() + timeout
        while True:
            ok, why = control_api_answers(home)
            if ok:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise InputError(f"SuperLink at {control_address} does not answer ({why})")
            time.sleep(0.5)
    except BaseException:
        stop(proc)
        raise
    return SuperLink(f"{host}:{port}", tls_dir, workdir, proc, home, log, control_address)


# --- partner side -------------------------------------------------------------------------------


class NodeSpec(Protocol):
    """What `join` needs of a partner's spec (horizontal `PartnerSpec`, vertical `PartyNodeSpec`)."""

    name: str
    data: str
    workdir: str
    coordinator_key: str

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Partner:
    """A joined partner: its training worker and its SuperNode."""

    spec: NodeSpec
    worker: subprocess.Popen[bytes]
    supernode: subprocess.Popen[bytes]
    workdir: Path
    logs: dict[str, Path] = field(default_factory=dict)
    sock_dir: Path | None = None  # the 0700 pm-worker-* folder (socket, token, spec): removed at stop
    node_id: int = 0  # what the SuperLink assigned once it accepted the node key

    def stop(self) -> None:
        """Stop the SuperNode with everything it started (its SuperExec and ClientApp processes share its
        process group), then the worker, and remove the pm-worker-* folder."""
        stop_group(self.supernode)
        stop(self.worker)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    def failure(self) -> str:
        """Why the partner stopped, in one line naming it (the SuperNode's or worker's own cause)."""
        if self.worker.poll() is not None:
            return f"partner {self.spec.name}: training worker exited ({_tail(self.logs['worker'], 1) or 'see worker.log'})"
        return supernode_failure(self.spec.name, self.logs["supernode"], self.supernode.returncode)


def supernode_failure(name: str, log: Path, code: int | None) -> str:
    """The cause of a SuperNode's exit, from its log, as one line naming the partner."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    if "code: 2004" in text or "No SuperNode found with the given public key" in text:
        return (f"partner {name}: the SuperLink refused this node key: it is not registered (send auth.pub to the "
                f"coordinator to register it as {name})")
    if "Failed to initialize the connection" in text or "could not establish a connection" in text:
        return f"partner {name}: the SuperNode could not connect to the SuperLink ({_tail(log, 1) or 'no detail'})"
    return f"partner {name}: the SuperNode exited with code {code} ({_tail(log, 1) or 'no log'})"


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop a process we started in its own session and every process of its group (by its pgid)."""
    if proc is None:
        return
    stop(proc, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)  # raises ProcessLookupError once the group is gone
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)


def check_superlink_reachable(address: str, ca_cert: Path, partner: str, timeout: float = 10.0) -> None:
    """Fail fast, naming the partner, when the SuperLink cannot be reached or its certificate is not ours."""
    import ssl

    host, port = parse_address(address)
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.check_hostname = False  # IP-addressed test deployments; the CA pin is what matters
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError:
        raise InputError(f"partner {partner}: the SuperLink at {address} presents a certificate not signed by {ca_cert}") from None
    except ssl.SSLError as exc:
        raise InputError(f"partner {partner}: TLS handshake with {address} failed ({exc.reason or 'ssl error'})") from None
    except OSError as exc:
        raise InputError(f"partner {partner}: SuperLink {address} is unreachable ({exc.strerror or type(exc).__name__})") from None


def join(
    spec: NodeSpec, superlink: str, ca_cert: Path, auth_key: Path, label: str = "churn",
    start_timeout: float = 300.0, runtime_port: int = 0, worker_module: str = "federated.partner.worker",
) -> Partner:
    """Start the partner's training worker (data loaded, anonymized) and its SuperNode.

    `worker_module` is the worker process (`python -m`): the horizontal partner's, or a vertical party's
    (`federated.vertical.node`); both take the same arguments and serve the same local socket."""
    from federated.runtime.messages import new_token
    from federated.runtime.tls import check_ca

    check_ca(ca_cert, f"partner {spec.name}")
    if not spec.coordinator_key:
        raise InputError(f"partner {spec.name}: no coordinator key pinned (--coordinator-key): a partner accepts only runs "
                         "signed by the coordinator key it pinned")
    from privmodel.core.keys import load_public_key

    try:
        load_public_key(spec.coordinator_key)
    except InputError as exc:
        raise InputError(f"partner {spec.name}: --coordinator-key: {exc}") from None
    if not Path(auth_key).is_file():
        raise InputError(f"partner {spec.name}: node key {auth_key} not found")
    if not Path(spec.data).is_file():
        raise InputError(f"partner {spec.name}: {spec.data}: no such file")
    check_superlink_reachable(superlink, ca_cert, spec.name)
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="pm-worker-"))  # removed by Partner.stop or on failure below
    sock_dir.chmod(0o700)
    address = str(sock_dir / "worker.sock")
    token_file = sock_dir / "token"
    new_token(token_file)
    spec_file = sock_dir / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    ready = sock_dir / "ready.json"
    logs = {"worker": workdir / "worker.log", "supernode": workdir / "supernode.log"}
    worker = spawn(
        [sys.executable, "-m", worker_module, "--spec", str(spec_file), "--address", address,
         "--token-file", str(token_file), "--parent-pid", str(os.getpid()), "--ready-file", str(ready)],
        logs["worker"], base_env(),
    )
    supernode = None
    try:
        deadline = time.monotonic() + start_timeout
        while not ready.exists():
            if worker.poll() is not None:
                raise InputError(_worker_error(ready, logs["worker"], spec.name))
            if time.monotonic() > deadline:
                raise InputError(f"partner {spec.name}: training worker not ready within {start_timeout:.0f} s")
            time.sleep(0.2)
        info = json.loads(ready.read_text() or "{}")
        if "error" in info:
            raise InputError(info["error"])
        node_config = (
            f'partner="{spec.name}" worker-address="{address}" worker-token-file="{token_file}"'
        )
        port = runtime_port or free_port()
        supernode = spawn(
            # Flower's SuperNode, with its hard-coded 3 s idle poll shortened (see federated/partner/supernode.py)
            [sys.executable, "-m", "federated.partner.supernode", "--superlink", superlink, "--root-certificates", str(ca_cert),
             "--auth-supernode-private-key", str(auth_key), "--node-config", node_config,
             "--host", "127.0.0.1", "--port", str(port), "--max-retries", "10", "--max-wait-time", "60"],
            logs["supernode"], base_env(),
        )
        wait_port("127.0.0.1", port, 60.0, supernode, logs["supernode"], f"partner {spec.name}: SuperNode")
        node_id = wait_accepted(spec.name, supernode, logs["supernode"], worker, logs["worker"], start_timeout)
    except BaseException:
        stop_group(supernode)
        stop(worker)
        shutil.rmtree(sock_dir, ignore_errors=True)
        raise
    return Partner(spec, worker, supernode, workdir, logs, sock_dir, node_id)


def wait_accepted(name: str, supernode: subprocess.Popen[bytes], log: Path, worker: subprocess.Popen[bytes], worker_log: Path,
                  timeout: float) -> int:
    """Wait until the SuperLink accepted the node key (Flower logs `SuperNode ID: N` after activation);
    a refusal or exit is one line with its cause."""
    import re

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            found = re.search(r"SuperNode ID: (\d+)", log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
        if supernode.poll() is not None:
            raise InputError(supernode_failure(name, log, supernode.returncode))
        if worker.poll() is not None:
            raise InputError(f"partner {name}: training worker exited ({_tail(worker_log, 1) or 'see worker.log'})")
        if time.monotonic() > deadline:
            raise InputError(f"partner {name}: the SuperLink did not accept this node within {timeout:.0f} s")
        time.sleep(0.2)


def _worker_error(ready: Path, log: Path, name: str) -> str:
    with contextlib.suppress(OSError, ValueError):
        info = json.loads(ready.read_text())
        if "error" in info:
            return str(info["error"])
    return f"partner {name}: training worker exited ({_tail(log, 1) or 'see worker.log'})"


# --- run submission -----------------------------------------------------------------------------


def write_app(directory: Path, record: dict[str, Any], components_of: dict[str, str] | None = None) -> Path:
    """The Flower app submitted by `federate run`: components point at the installed package, and
    the run configuration (every setting of the run) is embedded as the app's config.
    `components_of` names other installed components (vertical: `federated.partner.supernode.APPS`)."""
    directory.mkdir(parents=True, exist_ok=True)
    secagg = str(record.get("secagg", False)).lower() in ("1", "true", "yes")
    if components_of is not None:
        components = [f'{k} = "{v}"' for k, v in sorted(components_of.items())]
    elif secagg:  # SecAgg+ (legacy workflow): see federated/runtime/secagg_deploy.py
        components = ['serverapp = "federated.runtime.secagg_deploy:server_app"', 'clientapp = "federated.runtime.secagg_deploy:client_app"']
    else:
        components = ['serverapp = "federated.coordinator.server_app:app"', 'clientapp = "federated.partner.client_app:app"']
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", 'name = "privmodel-federated"', 'version = "1.0.0"',
        'description = "privmodel federated training (components come from the installed privmodel)"',
        'license = "Apache-2.0"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "privmodel"', "",
        "[tool.flwr.app.components]", *components, "",
        "[tool.flwr.app.config]",
    ]
    for key, value in sorted(record.items()):
        lines.append(f"{key.replace('_', '-')} = {_toml(value)}")
    (directory / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return directory


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


AUTHORIZATION_FILE = "authorization.json"


def authorize(path: Path, run_id: int, record: dict[str, Any], signer: Signer, registry: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sign this run for the partners: run id (the SuperLink's), the whole FedConfig, the time, the
    signing key id and the registry (node id -> partner name), as canonical JSON, with the
    coordinator's Ed25519 key. Partners accept only requests carrying this signature by the key they
    pinned at join (`federated.partner.worker.PartnerWorker.authorize`)."""
    import base64
    import datetime as dt

    from federated.partner.worker import AUTH_KIND
    from federated.runtime.config import FedConfig
    from privmodel.artifacts.ledger import canonical_json
    from privmodel.core.fileio import atomic_write_text

    body = {
        "kind": AUTH_KIND, "run_id": str(run_id), "config": FedConfig.from_record(record).to_record(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "key_id": signer.key_id,
        "submitter": signer.actor, "nodes": {str(r["node_id"]): name for name, r in sorted(registry.items())},
    }
    text = canonical_json(body).decode()
    auth = {"body": text, "signature": base64.b64encode(signer.sign(text.encode())).decode()}
    atomic_write_text(path, json.dumps(auth) + "\n")
    return body


def submit_to(
    superlink: str, ca: Path, config: dict[str, Any], out_dir: Path, timeout: float,
    on_event: Callable[[dict[str, Any]], None] | None = None, *, components_of: dict[str, str] | None = None,
    **signing: Any,
) -> dict[str, Any]:
    """Submit the app whose run configuration is `config` to the SuperLink's Control API at `superlink`, from a
    private flwr home in a temporary directory, then `submit` (follow, check); `signing` is `submit`'s."""
    with tempfile.TemporaryDirectory(prefix="privmodel-run-") as tmp:
        home = write_flwr_home(Path(tmp) / "flwr", superlink, ca)
        ok, why = control_api_answers(home)
        if not ok:
            raise InputError(f"--superlink {superlink}: no Control API there ({why}); runs are submitted on the "
                             "SuperLink's Control API address (127.0.0.1:9093 by default), not the partners' Fleet port")
        app_dir = write_app(Path(tmp) / "app", config, components_of)
        return submit(home, app_dir, out_dir, timeout, on_event=on_event, **signing)


def submit(
    link_home: Path, app_dir: Path, out_dir: Path, timeout: float, on_event: Callable[[dict[str, Any]], None] | None = None,
    *, signer: Signer | None = None, record: dict[str, Any] | None = None, registry: dict[str, dict[str, Any]] | None = None,
    sign: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Submit the run, sign it for the partners (`authorize`, when a signer is given), follow the
    coordinator's progress file, and check the final status.

    `flwr run --stream` exits 0 even when the run failed, so success is decided here: the SuperLink
    must report the run finished with success and the coordinator must have written its result.
    """
    progress = out_dir / "progress.jsonl"
    progress.unlink(missing_ok=True)  # a previous run's events must not be read as this run's
    (out_dir / AUTHORIZATION_FILE).unlink(missing_ok=True)  # never a previous run's authorization
    code, out = flwr_cli(["run", str(app_dir), CONNECTION, "--format", "json"], link_home, timeout=120)
    info = _json_of(out)
    if code != 0 or not info.get("success"):
        raise InputError(f"run submission failed ({_last_line(out)})")
    run_id = int(info["run-id"])
    if signer is not None:
        authorize(out_dir / AUTHORIZATION_FILE, run_id, record or {}, signer, registry or {})
    if sign is not None:  # another kind of run (vertical) signs its own authorization once the id is known
        sign(run_id)
    reader = _ProgressReader(progress, on_event)
    status = _follow(link_home, run_id, reader, timeout)
    reader.drain(final=True)
    _check_outcome(link_home, run_id, out_dir, status, reader.events)
    return {"run_id": run_id, "status": status, "events": reader.events}


class _ProgressReader:
    """The coordinator's progress file, passed on to `on_event` one event at a time."""

    def __init__(self, path: Path, on_event: Callable[[dict[str, Any]], None] | None) -> None:
        self.path, self.on_event = path, on_event
        self.events: list[dict[str, Any]] = []

    def drain(self, final: bool) -> None:
        """Pass on the progress lines not seen yet; a half-written last line waits unless final."""
        if not self.path.is_file():
            return
        text = self.path.read_text()
        lines = text.splitlines()[len(self.events):]
        if lines and not final and not text.endswith("\n"):
            lines = lines[:-1]
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unreadable"}  # kept so the line count stays aligned with the file
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)

    def ended(self) -> bool:
        return any(e.get("event") in ("done", "failed") for e in self.events[-2:])


def _run_status(link_home: Path, run_id: int) -> str:
    """The SuperLink's status of the run (e.g. "finished:completed"), "" when unknown."""
    _, out = flwr_cli(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], link_home, timeout=30)
    runs = _json_of(out).get("runs", [])
    return str(runs[0].get("status", "")) if runs else ""


def _follow(link_home: Path, run_id: int, reader: _ProgressReader, timeout: float) -> str:
    """Follow the run until the SuperLink reports it finished (its status), or stop it at `timeout`."""
    deadline = time.monotonic() + timeout
    next_status_check = time.monotonic() + STATUS_EVERY_S
    while True:
        # Progress is read every PROGRESS_EVERY_S; `flwr ls` (a CLI start-up of about a second) runs
        # only every STATUS_EVERY_S or once the coordinator has written its last event, so callers
        # see each round promptly.
        reader.drain(final=False)
        if reader.ended() or time.monotonic() >= next_status_check:
            next_status_check = time.monotonic() + STATUS_EVERY_S
            status = _run_status(link_home, run_id)
            if status.startswith("finished"):
                return status
        if time.monotonic() > deadline:
            flwr_cli(["stop", str(run_id), CONNECTION], link_home, timeout=30)
            raise InputError(f"run {run_id} did not finish within {timeout:.0f} s (stopped)")
        time.sleep(PROGRESS_EVERY_S)


def _check_outcome(link_home: Path, run_id: int, out_dir: Path, status: str, events: list[dict[str, Any]]) -> None:
    """Success needs the SuperLink's "finished:completed" and the coordinator's "done" event; the
    ServerApp log is kept for any other ending, and when the coordinator reported a failure."""
    failed = [e for e in events if e.get("event") == "failed"]
    if status != "finished:completed" or failed:
        _, log_text = flwr_cli(["log", str(run_id), CONNECTION, "--show"], link_home, timeout=60)
        with contextlib.suppress(OSError):
            (out_dir / "serverapp.log").write_text(log_text)
    if failed:
        raise InputError(f"run {run_id} failed: {failed[-1]['reason']}")
    if status != "finished:completed" or not any(e.get("event") == "done" for e in events):
        raise InputError(f"run {run_id} ended with status {status or 'unknown'}; see {out_dir / 'serverapp.log'}")


@contextlib.contextmanager
def tracked() -> Iterator[list[Any]]:
    """Stop everything appended to the yielded list when the block ends (error or not)."""
    items: list[Any] = []
    try:
        yield items
    finally:
        for item in reversed(items):
            with contextlib.suppress(Exception):
                item.stop()
