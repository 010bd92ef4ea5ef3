"""`privmodel anonymize --engine ray --ray-address` across a Ray head and two worker nodes on loopback.

The test starts the three nodes itself (`ray start --block`, each in a process group of its own, one
CPU each, temp dir under /tmp), runs the command a user types against them, checks the release
against the single-machine engine, and stops every process it started (by process group, then any
left in its own temp dir, by pid). Skipped only where the `ray` command is absent.
"""

from __future__ import annotations

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
from pathlib import Path

import pandas as pd
import pytest

from anonymize.pipeline import run
from anonymize.policy.schema import load_policy
from privmodel.core.fileio import read_table
from privmodel.core.keys import init_keys, load_pseudonym_secret
from tests.conftest import PROJECT_ROOT, run_cli
from tests.test_anonymize_pipeline import POLICY, crafted

_BESIDE = Path(sys.executable).parent / "ray"
RAY = str(_BESIDE) if _BESIDE.exists() else shutil.which("ray")
pytestmark = pytest.mark.skipif(RAY is None, reason="the `ray` command is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "RAY_USAGE_STATS_ENABLED": "0"}


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`ray start ... --block` in a new process group (so the group can be stopped as one)."""
    assert RAY is not None
    with log.open("ab") as out:
        return subprocess.Popen([RAY, "start", *args, "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                                 "--object-store-memory", str(80 * 1024 * 1024), "--disable-usage-stats",
                                 "--dashboard-agent-listen-port", str(_free_port()), "--block"],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _wait_started(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Until the node's `ray start` says it runs (it says so once its raylet is registered with the head)."""
    while b"Ray runtime started" not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)


def _stop(procs: list[subprocess.Popen[bytes]], temp: str) -> None:
    """SIGTERM to each node's process group, then SIGKILL to anything still running from `temp`."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    for pid in _pids_using(temp):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_using(temp: str) -> list[int]:
    """Processes whose command line names `temp` (this test's Ray session and nothing else)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if temp.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_anonymize_across_a_head_and_two_worker_nodes(tmp_path: Path) -> None:
    temp = tempfile.mkdtemp(prefix="ray_mn_", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine: each raylet takes 5-30 s to register
        logs = [tmp_path / name for name in ("head.log", "worker0.log", "worker1.log")]
        procs.append(_start(["--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false"],
                            logs[0]))
        _wait_started(procs[0], logs[0], deadline)
        for log in logs[1:]:  # one at a time: raylets starting together on a busy host miss Ray's 30 s limit
            procs.append(_start(["--address", address], log))
            _wait_started(procs[-1], log, deadline)

        keys = tmp_path / "keys"
        init_keys(keys, actor="bank-a")
        raw = tmp_path / "customers.csv"
        crafted().to_csv(raw, index=False)
        out = tmp_path / "release"
        made = run_cli("anonymize", str(raw), "--policy", str(POLICY), "--keys", str(keys), "--out", str(out),
                       "--engine", "ray", "--ray-address", address, env=_env(), timeout=300)
        assert made.returncode == 0, made.stderr[-3000:]
        assert "Traceback" not in made.stderr

        policy = load_policy(POLICY)
        text = [n for n, c in policy.columns.items() if c.type in ("string", "categorical")]
        local = run(read_table(raw, text_columns=text), policy, load_pseudonym_secret(keys), source=str(raw))
        released = pd.read_parquet(out / "release.parquet")
        pd.testing.assert_frame_equal(released, pd.read_parquet(_written(local.data, tmp_path)))
        report = json.loads((out / "report.json").read_text())
        assert report["counts"] == json.loads(json.dumps(local.report["counts"]))
        assert report["gate"]["passed"] and report["rows"] == local.report["rows"]
    finally:
        _stop(procs, temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert _pids_using(temp) == []


def _written(data: pd.DataFrame, tmp_path: Path) -> Path:
    """The local release as the workflow writes it (Parquet), to compare like with like."""
    from privmodel.core.fileio import outputs

    target = tmp_path / "local" / "release.parquet"
    target.parent.mkdir()
    with outputs([target], inputs=[], replace=True) as stage:
        stage.write_table(target, data)
        stage.publish()
    return target
