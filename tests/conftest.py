"""Shared test setup: keys and Flower state never touch the real home directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    os.environ["PRIVMODEL_KEYS"] = str(home / "keys")
    os.environ["FLWR_HOME"] = str(home / "flwr")
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ.pop("PRIVMODEL_KEY_PASSPHRASE", None)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data missing: {SHARED_DATA} (../shared/data beside the project)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300):
    """Run `privmodel ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "privmodel.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout,
    )


# --- a throwaway PostgreSQL server for the budget store's shared-database tests ------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _pg_user() -> str | None:
    """The unprivileged user to run PostgreSQL as when the tests run as root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for candidate in ("postgres", "nobody"):
        try:
            pwd.getpwnam(candidate)
        except KeyError:
            continue
        return candidate
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def _pg_base(user: str | None) -> Path:
    """A fresh 0700 directory for the cluster, owned by the user the server runs as."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="privmodel-pg-"))
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    base.chmod(0o700)
    return base


def _pg_start(run, bindir: Path, base: Path, db_user: str, port: int) -> None:
    """initdb + pg_ctl start; a failure removes `base` and FAILS with the last lines of the log."""
    import shutil

    data = base / "data"
    done = run(str(bindir / "initdb"), "-D", str(data), "-U", db_user, "--auth=trust", "-E", "UTF8",
               "--no-locale", "--no-sync")
    if done.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"
    done = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options, "-w",
               "-t", "60", "start")
    if done.returncode != 0:
        log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {(log or done.stderr).strip().splitlines()[-3:]}")


def _pg_wait(port: int, db_user: str) -> None:
    """Wait up to 30 s until the server accepts a connection."""
    import time

    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user={db_user} dbname=postgres", connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL started but accepts no connection")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_server():
    """Start PostgreSQL (Debian's package: initdb + pg_ctl) on 127.0.0.1 and a free port, in a temp
    directory, for this test session; stop and remove it afterwards. Yields the admin URL
    `postgresql+psycopg://USER@127.0.0.1:PORT/postgres`. A server that cannot start FAILS the test
    (the Makefile installs the package), it never skips."""
    import shutil

    bindir = _pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb missing); `make test` installs "
                    "Debian's postgresql package")
    user = _pg_user()
    run_as = [] if user is None else ["runuser", "-u", user, "--"]
    base = _pg_base(user)
    db_user = "privmodel"
    port = _free_port()

    def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*run_as, *cmd], capture_output=True, text=True, timeout=timeout, cwd=base)

    _pg_start(run, bindir, base, db_user, port)
    try:
        _pg_wait(port, db_user)
        yield f"postgresql+psycopg://{db_user}@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: str) -> str:
    """A fresh, empty database on the session's server for one test (dropped afterwards)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True, scope="session")
def _no_shared_budget_store() -> None:
    """A developer's $PRIVMODEL_BUDGET_URL (the team's real budget database) is never touched by tests."""
    os.environ.pop("PRIVMODEL_BUDGET_URL", None)


@pytest.fixture
def isolated_budget(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh default keys dir ($PRIVMODEL_KEYS) for one test, hence a fresh budget store: the session's
    default keys dir is one organisation, whose budget every test that trains the same table shares."""
    keys = tmp_path_factory.mktemp("org") / "keys"
    monkeypatch.setenv("PRIVMODEL_KEYS", str(keys))
    monkeypatch.delenv("PRIVMODEL_BUDGET_URL", raising=False)
    return keys


@pytest.fixture(scope="session")
def vertical_parties(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic bank and retailer (`synth --vertical`, 1,500 people), written once a session."""
    root = tmp_path_factory.mktemp("vertical-parties")
    done = run_cli("synth", "--vertical", "--customers", "1500", "--out", str(root / "data"), "--seed", "5")
    assert done.returncode == 0, done.stderr
    return root / "data"


def vertical_inputs(data: Path, tmp: Path):  # -> tuple[PartyInput, PartyInput]
    """The two parties of `vertical_parties`, each with fresh keys (its own budget) under `tmp`."""
    from federated.vertical.workflow import PartyInput
    from privmodel.core.keys import init_keys

    for name in ("bank", "retailer"):
        init_keys(tmp / f"keys-{name}", actor=name)
    return (PartyInput(data / "bank.party.yaml", data / "bank.parquet", tmp / "keys-bank"),
            PartyInput(data / "retailer.party.yaml", data / "retailer.parquet", tmp / "keys-retailer"))


@contextlib.contextmanager
def ray_session() -> Iterator[Any]:
    """A local Ray on 2 CPUs for one test module, in its own temp dir, shut down after; yields `ray`."""
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    temp = tempfile.mkdtemp(prefix="ray_t_", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
