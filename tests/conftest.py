"""Shared test setup: keys and Flower state never touch the real home directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
