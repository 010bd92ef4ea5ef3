"""Append-only, hash-chained, Ed25519-signed audit ledger (JSON lines).

Each line is one entry:
  seq, time, actor, action, inputs/outputs ([{name, sha256}]), params, privacy_cost,
  outcome ("ok" | "failed"), reason, prev_hash, key_id, hash, signature
`hash` is SHA-256 over the canonical JSON of every other field (including prev_hash), `signature`
is Ed25519 over that hash. The first entry (action "ledger.open") carries the public key of the
ledger's owner, so `verify` can run with no other input (trust on first use); passing trusted keys
makes it strict. A signed head file (`<ledger>.head`) records the last seq and hash: deleting the
tail of the ledger is detected even though every remaining entry is intact.

Concurrent appends from several processes are serialized with an exclusive `fcntl.flock` on a
sidecar lock file (stdlib; the `filelock` package adds nothing for a single-host lock).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from anonymize.errors import InputError
from privmodel.fileio import atomic_write_text, sha256_file
from privmodel.keys import Signer, key_id_of, load_public_key_pem, public_key_pem

GENESIS_HASH = "0" * 64
SIGNED_FIELDS = (
    "seq", "time", "actor", "action", "inputs", "outputs", "params",
    "privacy_cost", "outcome", "reason", "prev_hash", "key_id",
)
# Parameter names that must never be written: key material has no business in a ledger.
_FORBIDDEN_PARAM_WORDS = ("secret", "passphrase", "password", "private_key", "token_key")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: entry.get(k) for k in SIGNED_FIELDS})).hexdigest()


def artifact(path: str | os.PathLike[str], name: str | None = None) -> dict[str, str]:
    """Describe a file by content hash (never by content)."""
    p = Path(path)
    return {"name": name or p.name, "sha256": sha256_file(p)}


def _check_params(obj: Any, where: str = "params") -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if any(word in str(key).lower() for word in _FORBIDDEN_PARAM_WORDS):
                raise ValueError(f"ledger {where}: field {key!r} looks like key material; refusing to record it")
            _check_params(value, f"{where}.{key}")
    elif isinstance(obj, list | tuple):
        for item in obj:
            _check_params(item, where)
    elif isinstance(obj, bytes | bytearray):
        raise ValueError(f"ledger {where}: raw bytes are not recorded; record a hash instead")


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(_lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Ledger:
    """A ledger file plus the signer that appends to it."""

    def __init__(self, path: str | os.PathLike[str], signer: Signer) -> None:
        self.path = Path(path)
        self.signer = signer

    def append(
        self,
        action: str,
        *,
        inputs: Iterable[Mapping[str, str]] = (),
        outputs: Iterable[Mapping[str, str]] = (),
        params: Mapping[str, Any] | None = None,
        privacy_cost: Mapping[str, Any] | None = None,
        outcome: str = "ok",
        reason: str | None = None,
        actor: str | None = None,
    ) -> dict[str, Any]:
        """Append one signed entry (and the genesis entry first if the ledger is new)."""
        if outcome not in ("ok", "failed"):
            raise ValueError("outcome must be 'ok' or 'failed'")
        params = dict(params or {})
        _check_params(params)
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path.parent}: ledger directory does not exist")
        with _locked(self.path):
            last = _read_last_entry(self.path)
            if last is None:
                last = self._write(
                    _last=None,
                    action="ledger.open",
                    params={"public_key": public_key_pem(self.signer.public_key), "format": 1},
                )
            return self._write(
                _last=last, action=action, inputs=list(inputs), outputs=list(outputs), params=params,
                privacy_cost=dict(privacy_cost) if privacy_cost else None, outcome=outcome,
                reason=reason, actor=actor,
            )

    def _write(self, _last: dict | None, action: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": 0 if _last is None else _last["seq"] + 1,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "actor": fields.get("actor") or self.signer.actor,
            "action": action,
            "inputs": fields.get("inputs", []),
            "outputs": fields.get("outputs", []),
            "params": fields.get("params", {}),
            "privacy_cost": fields.get("privacy_cost"),
            "outcome": fields.get("outcome", "ok"),
            "reason": fields.get("reason"),
            "prev_hash": GENESIS_HASH if _last is None else _last["hash"],
            "key_id": self.signer.key_id,
        }
        entry["hash"] = entry_hash(entry)
        entry["signature"] = base64.b64encode(self.signer.sign(entry["hash"].encode())).decode()
        line = canonical_json(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        head = {"seq": entry["seq"], "hash": entry["hash"], "key_id": self.signer.key_id}
        head["signature"] = base64.b64encode(self.signer.sign(canonical_json(head))).decode()
        atomic_write_text(_head_path(self.path), json.dumps(head) + "\n")
        return entry


def _read_last_entry(path: Path) -> dict | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, 1 << 16)
        while True:
            handle.seek(size - block)
            data = handle.read(block)
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or block == size:
                break
            block = min(size, block * 2)
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise InputError(f"{path}: last ledger line is corrupt; run `privmodel audit verify`") from None


def read_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Parse a ledger for display (no verification). Corrupt lines raise InputError."""
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such ledger file")
    entries = []
    for number, line in enumerate(src.read_bytes().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise InputError(f"{src}: line {number} is not valid JSON (corrupt ledger)") from None
    return entries


@dataclass
class Problem:
    line: int | None  # 1-based line in the file; None for file-level problems
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "ledger"
        if self.seq is not None:
            where += f" (seq {self.seq})"
        return f"{where}: {self.message}"


@dataclass
class Verification:
    path: Path
    entries: int
    trusted_key_ids: list[str]
    trust: str  # "given keys" or "key in genesis entry (trust on first use)"
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _valid_signature(key: Ed25519PublicKey, signature_b64: str, data: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(
    path: str | os.PathLike[str], trusted_keys: Iterable[Ed25519PublicKey] | None = None
) -> Verification:
    """Check every entry: JSON, fields, hash, signature, key, order, chain, and the signed head.

    Problems are listed in file order; `first_problem` is the first bad entry.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such ledger file")
    raw_lines = src.read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    keys: dict[str, Ed25519PublicKey] = {}
    trust = "given keys"
    if trusted_keys is not None:
        keys = {key_id_of(k): k for k in trusted_keys}
    result = Verification(src, len(raw_lines), [], trust)
    if not raw_lines:
        result.problems.append(Problem(None, None, "ledger is empty"))
        return result

    entries: list[dict | None] = []
    for number, line in enumerate(raw_lines, start=1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            result.problems.append(Problem(number, None, "not valid JSON (edited or truncated line)"))
            entries.append(None)
            continue
        missing = [k for k in (*SIGNED_FIELDS, "hash", "signature") if k not in entry]
        if missing:
            result.problems.append(Problem(number, entry.get("seq"), f"missing field(s) {', '.join(missing)}"))
            entries.append(None)
            continue
        entries.append(entry)

    if trusted_keys is None:
        genesis = entries[0]
        if genesis is not None and genesis.get("action") == "ledger.open":
            try:
                key = load_public_key_pem(genesis["params"]["public_key"], "genesis entry")
                keys = {key_id_of(key): key}
                result.trust = "key in genesis entry (trust on first use)"
            except (InputError, KeyError, TypeError):
                result.problems.append(Problem(1, 0, "genesis entry carries no valid public key"))
        else:
            result.problems.append(Problem(1, None, "first entry is not the ledger.open genesis entry"))
    result.trusted_key_ids = sorted(keys)

    seqs = [e["seq"] for e in entries if e is not None]
    prev_hash: str | None = GENESIS_HASH
    expected_seq = 0
    for number, entry in enumerate(entries, start=1):
        if entry is None:
            prev_hash, expected_seq = None, expected_seq + 1
            continue
        seq = entry["seq"]
        if entry_hash(entry) != entry["hash"]:
            result.problems.append(Problem(number, seq, "content does not match its hash: a field was edited"))
        elif entry["key_id"] not in keys:
            result.problems.append(Problem(number, seq, f"signed by unknown key {entry['key_id']}"))
        elif not _valid_signature(keys[entry["key_id"]], entry["signature"], entry["hash"].encode()):
            result.problems.append(Problem(number, seq, "signature is invalid (forged or altered)"))
        if seq != expected_seq:
            if isinstance(seq, int) and seq > expected_seq and expected_seq not in seqs:
                gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                result.problems.append(Problem(number, seq, f"entry seq {gap} is missing (deleted)"))
            else:
                result.problems.append(
                    Problem(number, seq, f"out of order: expected seq {expected_seq} here (entries reordered)")
                )
        elif prev_hash is not None and entry["prev_hash"] != prev_hash:
            result.problems.append(Problem(number, seq, "prev_hash does not match the previous entry (chain broken)"))
        prev_hash = entry["hash"]
        expected_seq = seq + 1 if isinstance(seq, int) else expected_seq + 1

    _verify_head(src, entries, keys, result)
    result.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return result


def _verify_head(src: Path, entries: list[dict | None], keys: dict[str, Ed25519PublicKey], result: Verification) -> None:
    head_file = _head_path(src)
    last = entries[-1]
    if not head_file.is_file():
        result.problems.append(Problem(None, None, f"head file {head_file.name} is missing: truncation cannot be ruled out"))
        return
    try:
        head = json.loads(head_file.read_text())
        signed = {k: head[k] for k in ("seq", "hash", "key_id")}
    except (ValueError, KeyError, TypeError):
        result.problems.append(Problem(None, None, f"head file {head_file.name} is corrupt"))
        return
    key = keys.get(signed["key_id"])
    if key is None or not _valid_signature(key, head.get("signature", ""), canonical_json(signed)):
        result.problems.append(Problem(None, None, f"head file {head_file.name} has an invalid or untrusted signature"))
        return
    if last is None:
        return
    if signed["seq"] > last["seq"]:
        result.problems.append(
            Problem(None, None, f"truncated: head records seq {signed['seq']} but the last entry is seq {last['seq']}")
        )
    elif signed["seq"] < last["seq"]:
        result.problems.append(
            Problem(len(entries), last["seq"], f"entries after the signed head (seq {signed['seq']}) were appended outside privmodel")
        )
    elif signed["hash"] != last["hash"]:
        result.problems.append(Problem(len(entries), last["seq"], "last entry does not match the signed head"))
