"""Keys and the CLI shell: permissions, refusal to overwrite, light start-up, one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from anonymize.errors import InputError
from privmodel.artifacts.ledger import Ledger
from privmodel.core.keys import init_keys, load_pseudonym_secret, load_signer
from tests.conftest import run_cli


def test_init_keys_files_and_modes(tmp_path: Path) -> None:
    meta = init_keys(tmp_path / "k", actor="bank-a")
    k = tmp_path / "k"
    assert sorted(p.name for p in k.iterdir()) == ["keys.json", "pseudonym.secret", "signing.key", "signing.pub"]
    assert stat.S_IMODE((k / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((k / "pseudonym.secret").stat().st_mode) == 0o600
    assert len(load_pseudonym_secret(k)) == 32
    signer = load_signer(k)
    assert signer.actor == "bank-a" and signer.key_id == meta["key_id"]
    assert json.loads((k / "keys.json").read_text())["encrypted"] is False


def test_passphrase_protected_key(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", passphrase="correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k" / "signing.key").read_bytes()
    with pytest.raises(InputError, match="encrypted; set PRIVMODEL_KEY_PASSPHRASE"):
        load_signer(tmp_path / "k")
    with pytest.raises(InputError, match="wrong passphrase"):
        load_signer(tmp_path / "k", passphrase="wrong")
    assert load_signer(tmp_path / "k", passphrase="correct horse").key_id


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_keys(tmp_path / "k")
    before = (tmp_path / "k" / "signing.key").read_bytes()
    with pytest.raises(InputError, match="refusing to overwrite"):
        init_keys(tmp_path / "k")
    assert (tmp_path / "k" / "signing.key").read_bytes() == before


def test_cli_startup_imports_nothing_heavy() -> None:
    code = (
        "import sys, privmodel.cli; "
        "heavy = sorted(m for m in ('torch', 'flwr', 'sklearn', 'opacus', 'ray', 'pandas', 'faker') if m in sys.modules); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("keys", "audit"):
        assert command in result.stdout


def test_cli_keys_init_and_refusal(tmp_path: Path) -> None:
    ok = run_cli("keys", "init", str(tmp_path / "k"), "--actor", "bank-b")
    assert ok.returncode == 0 and "bank-b" in ok.stdout
    again = run_cli("keys", "init", str(tmp_path / "k"))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [f"error: {tmp_path / 'k'}: key directory already exists; refusing to overwrite keys"]


def test_cli_audit_verify_show_and_tamper(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", actor="bank-a")
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, load_signer(tmp_path / "k"))
    for i in range(3):
        ledger.append("train", params={"i": i}, privacy_cost={"epsilon": 1.0})
    ok = run_cli("audit", "verify", str(path), "--keys", str(tmp_path / "k"))
    assert ok.returncode == 0 and "4 entries" in ok.stdout
    shown = run_cli("audit", "show", str(path))
    assert shown.returncode == 0 and "ledger.open" in shown.stdout and "epsilon=1.0" in shown.stdout
    content = path.read_text().splitlines()
    content[2] = content[2].replace('"i":1', '"i":7')
    path.write_text("\n".join(content) + "\n")
    bad = run_cli("audit", "verify", str(path), "--keys", str(tmp_path / "k"))
    assert bad.returncode == 2
    assert "first bad entry: line 3 (seq 2): content does not match its hash" in " ".join(bad.stdout.split())


@pytest.mark.parametrize(
    "args, message",
    [
        (("audit", "verify", "missing.jsonl"), "missing.jsonl: no such ledger file"),
        (("audit", "show", "missing.jsonl"), "missing.jsonl: no such ledger file"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}"
    assert "Traceback" not in result.stderr


def test_cli_corrupt_ledger_show(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"seq": 0}\nnot json\n')
    result = run_cli("audit", "show", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: line 1 is corrupt: missing field(s) action, actor, hash, inputs, " \
        "key_id, outcome, outputs, params, prev_hash, privacy_cost, reason, signature, time"


def test_read_table_keeps_leading_zeros_of_text_columns(tmp_path: Path) -> None:
    from privmodel.core.fileio import read_table

    src = tmp_path / "t.csv"
    src.write_text("zip_code,age\n02139,30\n00501,41\n")
    frame = read_table(src, text_columns=["zip_code", "not_there"])
    assert frame["zip_code"].tolist() == ["02139", "00501"]
    assert frame["age"].tolist() == [30, 41]
    assert read_table(src)["zip_code"].tolist() == [2139, 501]


def test_read_table_errors_name_the_file(tmp_path: Path) -> None:
    from privmodel.core.fileio import read_table

    (tmp_path / "latin1.csv").write_bytes("name\nJos\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.csv: not UTF-8 text \(invalid byte at line 2\)"):
        read_table(tmp_path / "latin1.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv: empty file"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="header.csv: table has a header but no rows"):
        read_table(tmp_path / "header.csv")
    with pytest.raises(InputError, match="nope.csv: no such file"):
        read_table(tmp_path / "nope.csv")


def test_cli_markup_in_actor_names_is_printed_not_parsed(tmp_path: Path) -> None:
    ok = run_cli("keys", "init", str(tmp_path / "[bold]k"), "--actor", "[/x] bank [bold]a")
    assert ok.returncode == 0, ok.stderr
    printed = " ".join(ok.stdout.split())
    assert f"created keys in {tmp_path / '[bold]k'}: actor [/x] bank [bold]a, key id" in printed
    assert json.loads((tmp_path / "[bold]k" / "keys.json").read_text())["actor"] == "[/x] bank [bold]a"
    bad = run_cli("keys", "init", str(tmp_path / "k2"), "--actor", "evil\x1b]0;pwned\x07")
    assert bad.returncode == 2 and not (tmp_path / "k2").exists()
    assert bad.stderr.strip() == "error: --actor: must be 1-200 printable characters (no control characters)"


def test_cli_show_and_verify_escape_ledger_text(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", actor="bank-a")
    path = tmp_path / "[bold]l.jsonl"
    ledger = Ledger(path, load_signer(tmp_path / "k"))
    ledger.append("train[/x]", actor="[/x]\x1b[31m", outcome="failed", reason="[red]boom[/] \x1b]0;t\x07",
                  inputs=[{"name": "[/b]in.csv", "sha256": "ab" * 32}])
    shown = run_cli("audit", "show", str(path))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "[/x]?[31m" in text and "train[/x]" in text and "failed: [red]boom[/] ?]0;t?" in text
    assert "[/b]in.csv:abababab" in text and "\x1b" not in text
    checked = run_cli("audit", "verify", str(path), "--keys", str(tmp_path / "k"))
    assert checked.returncode == 0 and checked.stdout.startswith(f"OK {path}: 2 entries")


def test_cli_verify_trust_modes(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", actor="bank-a")
    init_keys(tmp_path / "evil", actor="bank-a")
    path = tmp_path / "ledger.jsonl"
    Ledger(path, load_signer(tmp_path / "evil")).append("train")  # entirely signed by an attacker key
    evil_id = json.loads((tmp_path / "evil" / "keys.json").read_text())["key_id"]
    no_store = {"PRIVMODEL_KEYS": str(tmp_path / "no-store")}

    refused = run_cli("audit", "verify", str(path), env=no_store)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "error: no trusted keys: give --trust KEYRING or --keys DIR (or --tofu to trust the key the ledger carries, "
        "which proves nothing about who wrote it)"
    ]
    tofu = run_cli("audit", "verify", str(path), "--tofu", env=no_store)
    assert tofu.returncode == 0 and "trust on first use" in tofu.stdout

    ring = tmp_path / "trusted.pem"
    ring.write_text((tmp_path / "k" / "signing.pub").read_text())
    for args, env in ((["--trust", str(ring)], no_store), (["--keys", str(tmp_path / "k")], no_store),
                      ([], {"PRIVMODEL_KEYS": str(tmp_path / "k")})):
        bad = run_cli("audit", "verify", str(path), *args, env=env)
        assert bad.returncode == 2
        assert " ".join(bad.stdout.split()).startswith(
            f"FAILED {path}: first bad entry: line 1 (seq 0): signed by an untrusted key {evil_id}")
        assert bad.stdout.count("\n") == 1
    good = run_cli("audit", "verify", str(path), "--keys", str(tmp_path / "evil"), env=no_store)
    assert good.returncode == 0 and "trusted: given keys; key ids " + evil_id in " ".join(good.stdout.split())
    both = run_cli("audit", "verify", str(path), "--tofu", "--keys", str(tmp_path / "k"))
    assert both.returncode == 2 and "--tofu cannot be combined" in both.stderr


def test_cli_anchor_then_rollback_is_caught(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", actor="bank-a")
    path, head = tmp_path / "ledger.jsonl", tmp_path / "ledger.jsonl.head"
    ledger = Ledger(path, load_signer(tmp_path / "k"))
    ledger.append("train", params={"i": 0})
    saved = path.read_bytes(), head.read_bytes()
    ledger.append("train", params={"i": 1})
    witness = tmp_path / "elsewhere" / "witness.jsonl"
    witness.parent.mkdir()
    anchored = run_cli("audit", "anchor", str(path), "--witness", str(witness), "--keys", str(tmp_path / "k"))
    assert anchored.returncode == 0, anchored.stderr
    assert "anchored" in anchored.stdout and "3 entries" in anchored.stdout
    args = ("audit", "verify", str(path), "--keys", str(tmp_path / "k"), "--witness", str(witness))
    assert run_cli(*args).returncode == 0
    path.write_bytes(saved[0])
    head.write_bytes(saved[1])
    assert run_cli("audit", "verify", str(path), "--keys", str(tmp_path / "k")).returncode == 0  # alone: fine
    rolled = run_cli(*args)
    assert rolled.returncode == 2
    assert "rolled back: witness witness.jsonl line 1" in rolled.stdout and "saw 3 entries, the ledger has 2" in rolled.stdout
    again = run_cli("audit", "anchor", str(path), "--witness", str(witness), "--keys", str(tmp_path / "k"))
    assert again.returncode == 2 and "refusing to anchor" in again.stderr
    assert len(witness.read_bytes().splitlines()) == 1
