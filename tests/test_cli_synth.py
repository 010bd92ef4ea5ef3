"""`privmodel synth` end to end: files, summary, signed ledger entry, bad input -> one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from privmodel.artifacts.ledger import read_entries, verify
from privmodel.cli import main
from privmodel.core.fileio import read_table, sha256_file
from privmodel.core.keys import load_public_key
from tests.conftest import run_cli


def _run(*args: str, keys: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRIVMODEL_KEYS": str(keys), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "privmodel.cli", "synth", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_synth_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "silos"
    args = [
        "--customers",
        "3000",
        "--silos",
        "3",
        "--seed",
        "7",
        "--format",
        "csv",
        "--heterogeneity",
        "0.8",
        "--locale",
        "en_US",
        "--locale",
        "zh_CN",
        "--out",
        str(out),
    ]
    result = _run(*args, keys=tmp_path / "keys")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "ledger.jsonl",
        "ledger.jsonl.head",
        "ledger.jsonl.lock",
        "policy.yaml",
        "silo_0.csv",
        "silo_1.csv",
        "silo_2.csv",
    ]
    frames = [read_table(out / f"silo_{s}.csv") for s in range(3)]
    assert [len(f) for f in frames] == [1000, 1000, 1000]
    # summary: one row per silo with its churn rate, plus the files
    for s, frame in enumerate(frames):
        line = next(ln for ln in result.stdout.splitlines() if ln.strip("│┃ ").startswith(f"{s} "))
        assert "1,000" in line and f"{frame['churn'].mean():.3f}" in line
    assert "Bayes AUC churn 0.8" in result.stdout
    assert "silo_0.csv, silo_1.csv, silo_2.csv, policy.yaml" in result.stdout

    check = verify(out / "ledger.jsonl", [load_public_key(tmp_path / "keys")])  # the key synth signed with
    assert check.ok, check.problems
    entry = read_entries(out / "ledger.jsonl")[-1]
    assert entry["action"] == "synth" and entry["outcome"] == "ok"
    assert entry["outputs"] == [
        {"name": n, "sha256": sha256_file(out / n)} for n in ("silo_0.csv", "silo_1.csv", "silo_2.csv", "policy.yaml")
    ]
    assert entry["params"] == {
        "customers": 3000,
        "silos": 3,
        "seed": 7,
        "format": "csv",
        "heterogeneity": 0.8,
        "locales": ["en_US", "zh_CN"],
        "one_file": False,
        "mess_rate": 0.0,
    }
    ledger_text = (out / "ledger.jsonl").read_text()
    for value in (frames[0]["customer_id"][0], frames[0]["email"][0], frames[1]["national_id"][0]):
        assert str(value) not in ledger_text  # never a generated value in the ledger

    # same seed, same bytes (one-file parquet layout this time, ledger elsewhere)
    again = [tmp_path / "a", tmp_path / "b"]
    for target in again:
        r = _run(
            "--customers",
            "800",
            "--silos",
            "2",
            "--seed",
            "3",
            "--one-file",
            "--mess-rate",
            "0.01",
            "--out",
            str(target),
            "--ledger",
            str(tmp_path / "shared.jsonl"),
            keys=tmp_path / "keys",
        )
        assert r.returncode == 0, r.stderr
        assert "duplicates 8" in r.stdout
    assert sha256_file(again[0] / "customers.parquet") == sha256_file(again[1] / "customers.parquet")
    assert sorted(p.name for p in again[0].iterdir()) == ["customers.parquet", "policy.yaml"]
    assert [e["action"] for e in read_entries(tmp_path / "shared.jsonl")] == ["ledger.open", "synth", "synth"]


def test_bad_input_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = _run("--customers", "10", "--silos", "11", "--out", str(out), keys=tmp_path / "keys")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --silos must not exceed --customers (every silo needs a customer)"
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--customers", "0"], "error: --customers must be a positive integer"),
        (["--customers", "-5"], "error: --customers must be a positive integer"),
        (["--silos", "0"], "error: --silos must be a positive integer"),
        (["--customers", "3", "--silos", "4"], "error: --silos must not exceed --customers"),
        (["--locale", "en_US", "--locale", "xx_XX"], "error: --locale: unknown locale 'xx_XX'"),
        (["--format", "xlsx"], "error: --format must be one of parquet, csv"),
        (["--heterogeneity", "1.5"], "error: --heterogeneity must be between 0 and 1"),
        (["--mess-rate", "0.5"], "error: --mess-rate must be between 0 and 0.2"),
        (["--ledger", "/nonexistent-dir/ledger.jsonl"], "error: --ledger: /nonexistent-dir: directory does not exist"),
    ],
)
def test_bad_input_exit_2_no_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--customers", "50", "--out", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


def test_unwritable_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for target, message in ((blocker, "exists and is not a directory"), (blocker / "sub", "cannot create output")):
        with pytest.raises(SystemExit) as exc:
            main(["synth", "--customers", "50", "--out", str(target)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_command_module_imports_light() -> None:
    code = (
        "import sys, privmodel.cli.synth; "
        "print(sorted(m for m in ('faker', 'privmodel.data.synth', 'torch', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout.replace("'", '"')) == []


def test_one_file_with_one_silo_writes_a_policy_anonymize_accepts(tmp_path: Path) -> None:
    """Regression: one silo in one file wrote `silo` bounds [0, 0], which the policy loader refuses."""
    done = run_cli("synth", "--customers", "400", "--one-file", "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    policy = yaml.safe_load((tmp_path / "d" / "policy.yaml").read_text())
    assert policy["columns"]["silo"]["bounds"] == [0, 1]
    assert run_cli("keys", "init", str(tmp_path / "keys")).returncode == 0
    rel = run_cli("anonymize", str(tmp_path / "d" / "customers.parquet"), "--policy", str(tmp_path / "d" / "policy.yaml"),
                  "--out", str(tmp_path / "rel"), "--keys", str(tmp_path / "keys"))
    assert rel.returncode == 0, rel.stderr
