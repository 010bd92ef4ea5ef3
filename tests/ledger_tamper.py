"""Named ways to tamper with a ledger, shared by tests/test_ledger_tamper.py and
benchmarks/tamper_classes.py (which prints the table of classes and whether each was detected).

Every case starts from the same scene: an organisation's key directory, a 6-entry ledger signed by
it, a copy of ledger + head taken after 4 entries, and a witness file holding a head anchored after
the last entry. A case changes the files the way an attacker would; the verifier is then run with
the organisation's key as the only trust anchor and the witness file.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from privmodel.artifacts.ledger import Ledger, anchor, canonical_json, entry_hash, verify
from privmodel.core.keys import Signer, init_keys, load_signer


@dataclass(frozen=True)
class Scene:
    root: Path
    keys: Path
    owner: Signer
    ledger: Path
    witness: Path
    snapshot: Path  # ledger copy after 4 entries (its head beside it, as <name>.head)

    @property
    def head(self) -> Path:
        return self.ledger.with_name(self.ledger.name + ".head")

    def lines(self) -> list[bytes]:
        return self.ledger.read_bytes().splitlines(keepends=True)

    def write(self, lines: list[bytes]) -> None:
        self.ledger.write_bytes(b"".join(lines))

    def entry(self, index: int) -> dict:
        return json.loads(self.lines()[index])

    def put(self, index: int, raw: bytes) -> None:
        lines = self.lines()
        lines[index] = raw
        self.write(lines)


def build_scene(root: Path) -> Scene:
    keys = root / "keys"
    init_keys(keys, actor="bank-a")
    owner = load_signer(keys)
    ledger = Ledger(root / "ledger.jsonl", owner)
    snapshot = root / "snapshot" / "ledger.jsonl"
    snapshot.parent.mkdir()
    for i in range(5):
        ledger.append("train", params={"i": i}, privacy_cost={"epsilon": 0.5, "delta": 1e-6} if i == 1 else None)
        if i == 2:  # 4 entries: genesis + 3
            shutil.copy(ledger.path, snapshot)
            shutil.copy(ledger.path.with_name("ledger.jsonl.head"), snapshot.with_name("ledger.jsonl.head"))
    witness = root / "witness.jsonl"
    anchor(ledger.path, witness, owner)
    return Scene(root, keys, owner, ledger.path, witness, snapshot)


def check(scene: Scene):  # -> Verification
    """The verification every case must fail: the owner's key trusted, the witness consulted."""
    return verify(scene.ledger, [scene.owner.public_key], witness=scene.witness)


def _line(entry: dict) -> bytes:
    return canonical_json(entry) + b"\n"


def _edit(scene: Scene, index: int, change: Callable[[dict], None]) -> None:
    entry = scene.entry(index)
    change(entry)
    scene.put(index, _line(entry))


def edit_field(s: Scene) -> None:
    _edit(s, 2, lambda e: e["privacy_cost"].update(epsilon=0.01))


def delete_line(s: Scene) -> None:
    lines = s.lines()
    del lines[2]
    s.write(lines)


def reorder_lines(s: Scene) -> None:
    lines = s.lines()
    lines[2], lines[3] = lines[3], lines[2]
    s.write(lines)


def insert_replayed_line(s: Scene) -> None:
    lines = s.lines()
    lines.insert(3, lines[2])
    s.write(lines)


def insert_forged_entry(s: Scene) -> None:
    """An attacker builds a well-formed, hashed entry chained after seq 2 and signs it with its key."""
    attacker = Signer.generate("bank-a")
    fake = Ledger(s.root / "fake.jsonl", attacker)
    fake.append("train", params={"i": 99})
    entry = json.loads(fake.path.read_bytes().splitlines()[1])
    previous = s.entry(2)
    entry.update(seq=3, prev_hash=previous["hash"])
    entry["hash"] = entry_hash(entry)
    entry["signature"] = base64.b64encode(attacker.sign(entry["hash"].encode())).decode()
    lines = s.lines()
    lines.insert(3, _line(entry))
    s.write(lines)


def truncate_tail(s: Scene) -> None:
    s.write(s.lines()[:-2])


def half_written_line(s: Scene) -> None:
    s.ledger.write_bytes(s.ledger.read_bytes()[:-40])


def rollback_with_head(s: Scene) -> None:
    shutil.copy(s.snapshot, s.ledger)
    shutil.copy(s.snapshot.with_name("ledger.jsonl.head"), s.head)


def fork_after_rollback(s: Scene) -> None:
    """Roll back, then write a different future with the real key: longer than the witnessed head."""
    rollback_with_head(s)
    ledger = Ledger(s.ledger, s.owner)
    for i in range(3):
        ledger.append("train", params={"i": 100 + i})


def replace_by_other_valid_ledger(s: Scene) -> None:
    """Same key, a different (fully valid) history: a second ledger the key holder made."""
    (s.root / "other").mkdir()
    other = Ledger(s.root / "other" / "ledger.jsonl", s.owner)
    for i in range(6):
        other.append("train", params={"i": i})
    shutil.copy(other.path, s.ledger)
    shutil.copy(other.path.with_name("ledger.jsonl.head"), s.head)


def unsigned_extra_field(s: Scene) -> None:
    _edit(s, 2, lambda e: e.update(approved_by="cfo"))


def duplicate_outcome_key(s: Scene) -> None:
    raw = s.lines()[2]
    assert b'"outcome":"ok"' in raw
    s.put(2, raw.replace(b'"outcome":"ok"', b'"outcome":"failed","outcome":"ok"'))


def resign_with_attacker_key(s: Scene) -> None:
    """The whole ledger (and its head) rewritten and signed by an attacker: valid under TOFU."""
    s.ledger.unlink()
    s.head.unlink()
    forged = Ledger(s.ledger, Signer.generate("bank-a"))
    for i in range(5):
        forged.append("train", params={"i": i})


def integer_signature(s: Scene) -> None:
    _edit(s, 2, lambda e: e.update(signature=12345))


def list_key_id(s: Scene) -> None:
    _edit(s, 2, lambda e: e.update(key_id=["a", "b"]))


def string_seq(s: Scene) -> None:
    _edit(s, 2, lambda e: e.update(seq="2"))


def non_utf8_bytes(s: Scene) -> None:
    s.put(2, s.lines()[2].replace(b'"bank-a"', b'"bank-\xff"'))


def whitespace_reformatted(s: Scene) -> None:
    s.put(2, json.dumps(s.entry(2), sort_keys=True).encode() + b"\n")


def keys_reordered(s: Scene) -> None:
    entry = s.entry(2)
    s.put(2, json.dumps(dict(reversed(entry.items())), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")


def escapes_changed(s: Scene) -> None:
    s.put(2, s.lines()[2].replace(b'"bank-a"', b'"\\u0062ank-a"'))


def forged_signature(s: Scene) -> None:
    _edit(s, 2, lambda e: e.update(signature=s.entry(1)["signature"]))


def signature_reencoded(s: Scene) -> None:
    """Same signature bytes, other base64 text (the unused padding bits set): a second line form."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def reencode(entry: dict) -> None:
        sig = entry["signature"]
        assert sig.endswith("==")
        last = alphabet.index(sig[-3])
        entry["signature"] = sig[:-3] + alphabet[last ^ 1] + "=="
        assert base64.b64decode(entry["signature"]) == base64.b64decode(sig)

    _edit(s, 2, reencode)


def huge_line(s: Scene) -> None:
    lines = s.lines()
    lines.insert(2, b'{"seq":' + b" " * (2 << 20) + b"2}\n")
    s.write(lines)


def non_object_json(s: Scene) -> None:
    s.put(2, b"[1,2,3]\n")


def missing_field(s: Scene) -> None:
    _edit(s, 2, lambda e: e.pop("reason"))


def nan_number(s: Scene) -> None:
    s.put(2, s.lines()[2].replace(b'"epsilon":0.5', b'"epsilon":NaN'))


def deeply_nested_json(s: Scene) -> None:
    s.put(2, b"[" * 200_000 + b"]" * 200_000 + b"\n")


def blank_line_inserted(s: Scene) -> None:
    lines = s.lines()
    lines.insert(2, b"\n")
    s.write(lines)


def head_rolled_back_alone(s: Scene) -> None:
    shutil.copy(s.snapshot.with_name("ledger.jsonl.head"), s.head)


def head_deleted(s: Scene) -> None:
    s.head.unlink()


def witness_record_edited(s: Scene) -> None:
    record = json.loads(s.witness.read_bytes())
    record["entries"] = 2
    s.witness.write_bytes(canonical_json(record) + b"\n")


@dataclass(frozen=True)
class Case:
    tamper: Callable[[Scene], None]
    expected: str  # text of the first problem the verifier must report
    malformed: bool = False  # a line no parser may accept: `audit show` must refuse it too


CASES: dict[str, Case] = {
    "edit a field": Case(edit_field, "line 3 (seq 2): content does not match its hash"),
    "delete a line": Case(delete_line, "line 3 (seq 3): entry seq 2 is missing (deleted)"),
    "reorder lines": Case(reorder_lines, "line 3 (seq 3): out of order"),
    "insert a replayed line": Case(insert_replayed_line, "line 4 (seq 2): out of order"),
    "insert a forged entry": Case(insert_forged_entry, "line 4 (seq 3): signed by an untrusted key"),
    "truncate the tail": Case(truncate_tail, "truncated: head records seq 5 but the last entry is seq 3"),
    "half-written last line": Case(half_written_line, "line 6: not valid JSON", malformed=True),
    "rollback with head": Case(rollback_with_head, "rolled back: witness witness.jsonl line 1"),
    "fork after rollback": Case(fork_after_rollback, "line 6: forked: this entry is not the one witness witness.jsonl"),
    "replace by another valid ledger": Case(replace_by_other_valid_ledger, "holds no head for this ledger"),
    "unsigned extra field": Case(unsigned_extra_field, "line 3: unknown field(s) approved_by", malformed=True),
    "duplicate key": Case(duplicate_outcome_key, "line 3: duplicate key 'outcome'", malformed=True),
    "re-sign with attacker key": Case(resign_with_attacker_key, "line 1 (seq 0): signed by an untrusted key"),
    "integer signature": Case(integer_signature, "line 3: field signature is not a base64 string", malformed=True),
    "list key_id": Case(list_key_id, "line 3: field key_id is not a 16-hex-digit key id", malformed=True),
    "string seq": Case(string_seq, "line 3: field seq is not a non-negative integer", malformed=True),
    "non-UTF-8 bytes": Case(non_utf8_bytes, "line 3: not UTF-8", malformed=True),
    "whitespace reformatted": Case(whitespace_reformatted, "line 3: not in canonical form"),
    "keys reordered": Case(keys_reordered, "line 3: not in canonical form"),
    "escapes changed": Case(escapes_changed, "line 3: not in canonical form"),
    "signature swapped": Case(forged_signature, "line 3 (seq 2): signature is invalid"),
    "signature re-encoded": Case(signature_reencoded, "line 3 (seq 2): signature is invalid"),
    "huge line": Case(huge_line, "line 3: longer than 1 MiB", malformed=True),
    "non-object JSON": Case(non_object_json, "line 3: not a JSON object", malformed=True),
    "missing field": Case(missing_field, "line 3: missing field(s) reason", malformed=True),
    "NaN number": Case(nan_number, "line 3: non-finite number NaN", malformed=True),
    "deeply nested JSON": Case(deeply_nested_json, "line 3: not valid JSON", malformed=True),
    "blank line inserted": Case(blank_line_inserted, "line 3: blank line", malformed=True),
    "head rolled back alone": Case(head_rolled_back_alone, "entries after the signed head (seq 3)"),
    "head deleted": Case(head_deleted, "head file ledger.jsonl.head is missing"),
    "witness record edited": Case(witness_record_edited, "witness witness.jsonl line 1: signature is invalid"),
}
