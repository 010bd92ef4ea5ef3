"""The ledger detects every kind of tampering and survives concurrent appends."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest

from privmodel.audit import Ledger, artifact, read_entries, verify
from privmodel.keys import Signer, init_keys, load_signer


@pytest.fixture
def signer() -> Signer:
    return Signer.generate("bank-a")


def make_ledger(path: Path, signer: Signer, n: int = 5) -> Ledger:
    ledger = Ledger(path, signer)
    for i in range(n):
        ledger.append("step", params={"i": i}, privacy_cost={"epsilon": 0.5, "delta": 1e-6} if i == 2 else None)
    return ledger


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, content: list[str]) -> None:
    path.write_text("\n".join(content) + "\n")


def test_intact_ledger_verifies_and_chains(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    result = verify(path)
    assert result.ok, result.problems
    entries = read_entries(path)
    assert [e["seq"] for e in entries] == list(range(6))
    assert entries[0]["action"] == "ledger.open"
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    assert entries[3]["privacy_cost"] == {"epsilon": 0.5, "delta": 1e-6}
    assert verify(path, [signer.public_key]).ok


def test_edited_field_is_named(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    entry = json.loads(content[3])
    entry["privacy_cost"]["epsilon"] = 0.1
    content[3] = json.dumps(entry)
    write_lines(path, content)
    problem = verify(path).first_problem
    assert (problem.line, problem.seq) == (4, 3)
    assert "field was edited" in problem.message


def test_deleted_entry(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    del content[2]
    write_lines(path, content)
    problem = verify(path).first_problem
    assert problem.line == 3 and "seq 2 is missing (deleted)" in problem.message


def test_reordered_entries(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    content[2], content[3] = content[3], content[2]
    write_lines(path, content)
    problem = verify(path).first_problem
    assert problem.line == 3 and "reordered" in problem.message


def test_truncated_tail(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    write_lines(path, lines(path)[:-2])
    result = verify(path)
    assert not result.ok
    assert "truncated: head records seq 5 but the last entry is seq 3" in str(result.first_problem)


def test_half_written_last_line(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    problem = verify(path).first_problem
    assert problem.line == 6 and "not valid JSON" in problem.message


def test_missing_head_is_reported(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    (tmp_path / "ledger.jsonl.head").unlink()
    assert "truncation cannot be ruled out" in str(verify(path).first_problem)


def test_forged_signature(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    entry = json.loads(content[2])
    other = json.loads(content[1])
    entry["signature"] = other["signature"]
    content[2] = json.dumps(entry)
    write_lines(path, content)
    problem = verify(path).first_problem
    assert problem.line == 3 and "signature is invalid" in problem.message


def test_entry_signed_by_unknown_key(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=2)
    Ledger(path, Signer.generate("intruder")).append("sneaky", params={"x": 1})
    result = verify(path)
    assert "signed by unknown key" in result.first_problem.message
    assert result.first_problem.seq == 3


def test_rewritten_ledger_fails_against_trusted_key(tmp_path: Path, signer: Signer) -> None:
    """An attacker who re-signs a whole new ledger passes trust-on-first-use but not a trusted key."""
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, Signer.generate("attacker"), n=2)
    assert verify(path).ok
    result = verify(path, [signer.public_key])
    assert "signed by unknown key" in result.first_problem.message


def test_key_material_is_refused(tmp_path: Path, signer: Signer) -> None:
    with pytest.raises(ValueError, match="looks like key material"):
        Ledger(tmp_path / "l.jsonl", signer).append("x", params={"nested": {"hmac_secret": "abc"}})
    with pytest.raises(ValueError, match="raw bytes"):
        Ledger(tmp_path / "l.jsonl", signer).append("x", params={"v": b"raw"})


def test_artifact_is_content_hash(tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_bytes(b"a,b\n1,2\n")
    expected = hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert artifact(f) == {"name": "data.csv", "sha256": expected}


def _append_many(path: str, key_dir: str, n: int) -> None:
    ledger = Ledger(path, load_signer(key_dir))
    for i in range(n):
        ledger.append("concurrent", params={"i": i})


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, actor="bank-a")
    path = tmp_path / "ledger.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(path), str(keys), 40)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    result = verify(path)
    assert result.ok, result.problems
    assert result.entries == 81
