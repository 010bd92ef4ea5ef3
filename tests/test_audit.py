"""The ledger detects every kind of tampering, trusts only given keys, and survives concurrent appends.

The full table of tamper classes (31, with rollback, fork and replacement) is tests/test_ledger_tamper.py.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from pathlib import Path

import pytest

from anonymize.errors import InputError
from privmodel.artifacts.ledger import (
    Ledger,
    anchor,
    artifact,
    canonical_json,
    ledger_head,
    load_keyring,
    read_entries,
    verify,
)
from privmodel.core.keys import (
    Signer,
    init_keys,
    key_id_of,
    keyring_line,
    load_public_key,
    load_signer,
    public_key_pem,
)


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
    result = verify(path, [signer.public_key])
    assert result.ok, result.problems
    assert result.trust == "given keys" and result.trusted_key_ids == [signer.key_id]
    entries = read_entries(path)
    assert [e["seq"] for e in entries] == list(range(6))
    assert entries[0]["action"] == "ledger.open"
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    assert entries[3]["privacy_cost"] == {"epsilon": 0.5, "delta": 1e-6}
    assert verify(path, tofu=True).ok


def test_edited_field_is_named(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    entry = json.loads(content[3])
    entry["privacy_cost"]["epsilon"] = 0.1
    content[3] = canonical_json(entry).decode()
    write_lines(path, content)
    problem = verify(path, [signer.public_key]).first_problem
    assert (problem.line, problem.seq) == (4, 3)
    assert "field was edited" in problem.message


def test_deleted_entry(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    del content[2]
    write_lines(path, content)
    problem = verify(path, [signer.public_key]).first_problem
    assert problem.line == 3 and "seq 2 is missing (deleted)" in problem.message


def test_reordered_entries(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    content[2], content[3] = content[3], content[2]
    write_lines(path, content)
    problem = verify(path, [signer.public_key]).first_problem
    assert problem.line == 3 and "reordered" in problem.message


def test_truncated_tail(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    write_lines(path, lines(path)[:-2])
    result = verify(path, [signer.public_key])
    assert not result.ok
    assert "truncated: head records seq 5 but the last entry is seq 3" in str(result.first_problem)


def test_half_written_last_line(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    problem = verify(path, [signer.public_key]).first_problem
    assert problem.line == 6 and "not valid JSON" in problem.message


def test_missing_head_is_reported(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    (tmp_path / "ledger.jsonl.head").unlink()
    assert "truncation cannot be ruled out" in str(verify(path, [signer.public_key]).first_problem)


def test_forged_signature(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer)
    content = lines(path)
    entry = json.loads(content[2])
    other = json.loads(content[1])
    entry["signature"] = other["signature"]
    content[2] = canonical_json(entry).decode()
    write_lines(path, content)
    problem = verify(path, [signer.public_key]).first_problem
    assert problem.line == 3 and "signature is invalid" in problem.message


def test_entry_signed_by_unknown_key(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=2)
    intruder = Signer.generate("intruder")
    Ledger(path, intruder).append("sneaky", params={"x": 1})
    for result in (verify(path, [signer.public_key]), verify(path, tofu=True)):
        assert result.first_problem.message == f"signed by an untrusted key {intruder.key_id}"
        assert result.first_problem.seq == 3


def test_rewritten_ledger_fails_against_trusted_key(tmp_path: Path, signer: Signer) -> None:
    """An attacker who re-signs a whole new ledger passes trust-on-first-use only when asked for."""
    path = tmp_path / "ledger.jsonl"
    attacker = Signer.generate("attacker")
    make_ledger(path, attacker, n=2)
    assert verify(path, tofu=True).ok
    result = verify(path, [signer.public_key])
    assert str(result.first_problem) == f"line 1 (seq 0): signed by an untrusted key {attacker.key_id}"
    assert "head file ledger.jsonl.head has an invalid or untrusted signature" in [p.message for p in result.problems]


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
    result = verify(path, [load_public_key(keys)])
    assert result.ok, result.problems
    assert result.entries == 81


# ---- trust anchors --------------------------------------------------------------------------


def test_no_trusted_keys_refuses_trust_on_first_use(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=1)
    result = verify(path)
    assert not result.ok and result.trust == "none" and result.trusted_key_ids == []
    assert result.first_problem.message.startswith("no trusted keys given: refusing trust on first use")
    tofu = verify(path, tofu=True)
    assert tofu.ok and tofu.trust == "key in genesis entry (trust on first use)"
    assert tofu.trusted_key_ids == [signer.key_id]
    assert verify(path, []).first_problem.message == "the trusted keyring is empty: nothing can be verified"


def test_line_bytes_are_the_signed_canonical_form(tmp_path: Path, signer: Signer) -> None:
    """Recomputed independently: each line is canonical JSON, its hash covers every field but
    hash/signature, and the Ed25519 signature over that hash checks with the public key."""
    import base64

    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=2)
    for raw in path.read_bytes().splitlines(keepends=True):
        entry = json.loads(raw)
        assert raw == json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
        assert digest.hexdigest() == entry["hash"]
        signer.public_key.verify(base64.b64decode(entry["signature"]), entry["hash"].encode())


def test_append_refuses_values_the_verifier_would_refuse(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=1)
    before = path.read_bytes()
    with pytest.raises(InputError, match="cannot be recorded"):
        Ledger(path, signer).append("x", actor="bank-\udcff")
    with pytest.raises(InputError, match="non-finite number"):
        Ledger(path, signer).append("x", privacy_cost={"epsilon": float("nan")})
    assert path.read_bytes() == before
    assert verify(path, [signer.public_key]).ok


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"seq": 0}\n', "missing field(s)"),
        (b"\xff\xfe\n", "not UTF-8"),
        (b'"text"\n', "not a JSON object (a str)"),
        (b"{not json\n", "not valid JSON"),
    ],
)
def test_read_entries_refuses_crafted_lines(tmp_path: Path, signer: Signer, raw: bytes, message: str) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=1)
    path.write_bytes(path.read_bytes() + raw)
    with pytest.raises(InputError, match=rf"ledger.jsonl: line 3 is corrupt: {re.escape(message)}"):
        read_entries(path)
    result = verify(path, [signer.public_key])  # the verifier reports it, it does not raise
    assert str(result.first_problem).startswith(f"line 3: {message}")


def test_append_after_a_corrupt_last_line_is_refused(tmp_path: Path, signer: Signer) -> None:
    path = tmp_path / "ledger.jsonl"
    make_ledger(path, signer, n=1)
    path.write_bytes(path.read_bytes() + b'{"seq":"2"}\n')
    with pytest.raises(InputError, match="last ledger line is corrupt"):
        Ledger(path, signer).append("x")


# ---- keyrings ---------------------------------------------------------------------------------


def test_keyring_formats(tmp_path: Path) -> None:
    a, b, c = (Signer.generate(n) for n in "abc")
    ring = tmp_path / "trusted.keys"
    ring.write_text(
        "# auditors' trust anchors\n"
        + public_key_pem(a.public_key)
        + "\n" + keyring_line(b.public_key, "bank-b") + "\n"
        + f"  {keyring_line(c.public_key)}  \n"
    )
    assert sorted(key_id_of(k) for k in load_keyring(ring)) == sorted([a.key_id, b.key_id, c.key_id])
    line = keyring_line(b.public_key, "bank-b").split()
    assert line[0] == b.key_id and line[2] == "bank-b"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "keyring holds no keys"),
        ("# only a comment\n", "keyring holds no keys"),
        ("0123456789abcdef\n", "line 1: expected `<key id> <base64 Ed25519 public key> [label]`"),
        ("0123456789abcdef bm90IGEga2V5\n", "line 1: not a base64 Ed25519 public key"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n", "PEM block is not terminated"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "PEM block ending at line 3: not a PEM public key"),
    ],
)
def test_keyring_errors_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    ring = tmp_path / "ring"
    ring.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        load_keyring(ring)


def test_keyring_key_id_must_match_its_key(tmp_path: Path) -> None:
    a, b = Signer.generate("a"), Signer.generate("b")
    ring = tmp_path / "ring"
    ring.write_text(f"{a.key_id} {keyring_line(b.public_key).split()[1]}\n")
    with pytest.raises(InputError, match=f"line 1: key id does not match the key \\(expected {b.key_id}\\)"):
        load_keyring(ring)
    (tmp_path / "bin").write_bytes(b"\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_keyring(tmp_path / "bin")
    with pytest.raises(InputError, match="no such keyring file"):
        load_keyring(tmp_path / "missing")


# ---- witnessed heads ---------------------------------------------------------------------------


def test_anchor_appends_signed_heads(tmp_path: Path, signer: Signer) -> None:
    import base64

    path, witness = tmp_path / "ledger.jsonl", tmp_path / "witness.jsonl"
    ledger = make_ledger(path, signer, n=2)
    first = anchor(path, witness, signer)
    genesis = read_entries(path)[0]
    assert first["ledger_id"] == genesis["hash"] and first["entries"] == 3
    assert first["last_hash"] == read_entries(path)[-1]["hash"] and first["key_id"] == signer.key_id
    before = witness.read_bytes()
    ledger.append("more")
    second = anchor(path, witness, signer)
    assert witness.read_bytes().startswith(before) and len(witness.read_bytes().splitlines()) == 2
    assert second["entries"] == 4
    record = json.loads(witness.read_bytes().splitlines()[1])
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    signer.public_key.verify(base64.b64decode(record["signature"]), canonical_json(unsigned))
    result = verify(path, [signer.public_key], witness=witness)
    assert result.ok and result.witnessed_heads == 2
    assert ledger_head(path, [signer.public_key]) == {k: second[k] for k in ("ledger_id", "entries", "last_hash")}


def test_anchor_refuses_a_rolled_back_or_broken_ledger(tmp_path: Path, signer: Signer) -> None:
    path, witness = tmp_path / "ledger.jsonl", tmp_path / "witness.jsonl"
    ledger = make_ledger(path, signer, n=2)
    old = path.read_bytes(), (tmp_path / "ledger.jsonl.head").read_bytes()
    ledger.append("more")
    anchor(path, witness, signer)
    path.write_bytes(old[0])
    (tmp_path / "ledger.jsonl.head").write_bytes(old[1])
    assert verify(path, [signer.public_key]).ok  # alone, the rolled-back copy is consistent
    before = witness.read_bytes()
    with pytest.raises(InputError, match="refusing to anchor: ledger: rolled back: witness witness.jsonl line 1"):
        anchor(path, witness, signer)
    with pytest.raises(InputError, match="refusing to anchor: line 1 \\(seq 0\\): signed by an untrusted key"):
        anchor(path, witness, Signer.generate("someone-else"))
    with pytest.raises(InputError, match="cannot be the ledger or its head"):
        anchor(path, path, signer)
    assert witness.read_bytes() == before


def test_witness_needs_trusted_witness_keys(tmp_path: Path, signer: Signer) -> None:
    path, witness = tmp_path / "ledger.jsonl", tmp_path / "witness.jsonl"
    make_ledger(path, signer, n=1)
    auditor = Signer.generate("auditor")
    anchor(path, witness, auditor, [signer.public_key])
    untrusted = verify(path, [signer.public_key], witness=witness)
    assert f"witness witness.jsonl line 1: signed by an untrusted key {auditor.key_id}" in str(untrusted.first_problem)
    assert verify(path, [signer.public_key], witness=witness, witness_keys=[auditor.public_key]).ok
    missing = verify(path, [signer.public_key], witness=tmp_path / "nope.jsonl")
    assert "witness file nope.jsonl does not exist" in str(missing.first_problem)
