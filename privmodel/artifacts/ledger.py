"""Append-only, hash-chained, Ed25519-signed audit ledger (JSON lines), checked against trust anchors.

Each line is one entry, written in canonical form (`canonical_json`: sorted keys, no whitespace,
UTF-8, no NaN) followed by a newline:
  seq, time, actor, action, inputs/outputs ([{name, sha256}]), params, privacy_cost,
  outcome ("ok" | "failed"), reason, prev_hash, key_id, hash, signature
`hash` is SHA-256 over the canonical JSON of every field except `hash` and `signature`; `signature`
is Ed25519 over that hash. Because the line must be byte-for-byte the canonical form of what was
signed, `verify` refuses any line whose bytes differ from it: re-ordered keys, whitespace, changed
escapes, duplicate keys (`{"outcome":"ok",...,"outcome":"failed"}`) and unsigned extra fields all
fail, so what a reader parses is exactly what was signed.

Trust: signatures are checked against trusted public keys given by the caller (`load_keyring`, a key
directory's `signing.pub`). The key that the genesis entry (`ledger.open`) carries is used only when
the caller asks for trust on first use (`tofu=True`): it proves the file is internally consistent,
not who wrote it.

Freshness: a signed head file (`<ledger>.head`) records the last seq and hash, so cutting the tail
off is detected -- unless ledger and head are rolled back together, or the whole ledger is
replaced by another valid one signed with the same key. Neither can be seen in a lone ledger;
`anchor` writes a signed head to a witness file kept elsewhere, and `verify(..., witness=...)`
checks that the ledger still extends every head witnessed for it. docs/ledger.md says exactly what
each check proves.

Concurrent appends from several processes are serialized with an exclusive `fcntl.flock` on a
sidecar lock file (`privmodel.core.fileio.file_lock`, stdlib; the `filelock` package adds nothing for a
single-host lock).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypedDict, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from anonymize.errors import InputError
from privmodel.core.fileio import atomic_write_bytes, atomic_write_text, file_lock, sha256_file
from privmodel.core.keys import Signer, key_id_of, load_keyring, load_public_key_pem, public_key_pem

__all__ = [
    "GENESIS_HASH", "Artifact", "Ledger", "LedgerEntry", "LedgerHead", "LineError", "Problem", "Verification",
    "WitnessRecord", "anchor", "artifact", "canonical_json",
    "entry_hash", "failure_reason", "ledger_head", "load_keyring", "parse_entry", "read_entries", "verify",
]

GENESIS_HASH = "0" * 64
SIGNED_FIELDS = (
    "seq", "time", "actor", "action", "inputs", "outputs", "params",
    "privacy_cost", "outcome", "reason", "prev_hash", "key_id",
)
ENTRY_FIELDS = frozenset((*SIGNED_FIELDS, "hash", "signature"))
HEAD_FIELDS = frozenset(("seq", "hash", "key_id", "signature"))
WITNESS_FIELDS = frozenset(("ledger_id", "ledger", "entries", "last_hash", "time", "key_id", "signature"))
# A ledger line is a few KB; anything past this is refused unread rather than parsed into memory.
MAX_LINE_BYTES = 1 << 20
# Parameter names that must never be written: key material has no business in a ledger.
_FORBIDDEN_PARAM_WORDS = ("secret", "passphrase", "password", "private_key", "token_key")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


class Artifact(TypedDict):
    """A file as the ledger names it: by content hash, never by content."""

    name: str
    sha256: str


class LedgerEntry(TypedDict):
    """One ledger line (field types checked by `parse_entry`); `params` / `privacy_cost` are free JSON."""

    seq: int
    time: str
    actor: str
    action: str
    inputs: list[Artifact]
    outputs: list[Artifact]
    params: dict[str, Any]
    privacy_cost: dict[str, Any] | None
    outcome: str  # "ok" or "failed"
    reason: str | None
    prev_hash: str
    key_id: str
    hash: str
    signature: str


class LedgerHead(TypedDict):
    """What a partner or witness records of a verified ledger."""

    ledger_id: str | None
    entries: int
    last_hash: str | None


class WitnessRecord(TypedDict):
    """One signed line of a witness file (`anchor`)."""

    ledger_id: str | None
    ledger: str
    entries: int
    last_hash: str | None
    time: str
    key_id: str
    signature: str


def canonical_json(obj: object) -> bytes:
    """The one byte form that is hashed, signed and written (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, object]) -> str:
    return hashlib.sha256(canonical_json({k: entry.get(k) for k in SIGNED_FIELDS})).hexdigest()


def artifact(path: str | os.PathLike[str], name: str | None = None) -> Artifact:
    """Describe a file by content hash (never by content)."""
    p = Path(path)
    return {"name": name or p.name, "sha256": sha256_file(p)}


def _safe(text: object, limit: int = 40) -> str:
    """Attacker-controlled text shortened and stripped of control characters before it is shown."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in str(text)[:limit])
    return shown + ("..." if len(str(text)) > limit else "")


def refuse_key_material(obj: object, where: str = "params", record: str = "ledger") -> None:
    """THE rule that keeps keys out of every signed record (the ledger, the budget store): a field whose
    name looks like key material, or raw bytes, is refused (InputError, a ValueError) before writing."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if any(word in str(key).lower() for word in _FORBIDDEN_PARAM_WORDS):
                raise InputError(f"{record} {where}: field {key!r} looks like key material; refusing to record it")
            refuse_key_material(value, f"{where}.{key}", record)
    elif isinstance(obj, list | tuple):
        for item in obj:
            refuse_key_material(item, where, record)
    elif isinstance(obj, bytes | bytearray):
        raise InputError(f"{record} {where}: raw bytes are not recorded; record a hash instead")


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


# --------------------------------------------------------------------------------------------
# Strict line parsing: every crafted line becomes a LineError message, never an exception.


class LineError(ValueError):
    """One line of a ledger, head or witness file is malformed; the message says how."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise LineError(f"duplicate key {_safe(key)!r} (a second value hides the signed one)")
        seen[key] = value
    return seen


def _no_constant(name: str) -> NoReturn:
    raise LineError(f"non-finite number {name} (not valid in a ledger)")


def _parse_object(raw: bytes, fields: frozenset[str], canonical: bool) -> dict[str, Any]:
    """Decode one line (with its newline) into an object with exactly `fields`."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    if not body.strip():
        raise LineError("blank line")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except LineError:
        raise
    except (ValueError, RecursionError):
        raise LineError("not valid JSON (edited or truncated line)") from None
    if not isinstance(obj, dict):
        raise LineError(f"not a JSON object (a {type(obj).__name__})")
    missing = sorted(fields - obj.keys())
    if missing:
        raise LineError(f"missing field(s) {', '.join(missing)}")
    extra = sorted(obj.keys() - fields)
    if extra:
        raise LineError(f"unknown field(s) {', '.join(_safe(k) for k in extra[:5])} (unsigned data added)")
    if not raw.endswith(b"\n"):
        raise LineError("not terminated by a newline (truncated write)")
    if canonical:
        try:
            expected = canonical_json(obj) + b"\n"
        except (ValueError, UnicodeEncodeError):
            raise LineError("holds a value with no canonical form (lone surrogate or non-finite number)") from None
        if expected != raw:
            raise LineError("not in canonical form (bytes differ from what was signed: spacing, key order or escapes)")
    return obj


def _is_int(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_text(value: object, limit: int = 100_000) -> bool:
    if not isinstance(value, str) or len(value) > limit:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_entry(obj: dict[str, Any]) -> None:
    """Field types of a ledger entry; a crafted value names its field, never its content."""
    checks: list[tuple[str, bool, str]] = [
        ("seq", _is_int(obj["seq"]), "a non-negative integer"),
        ("time", _is_text(obj["time"], 64), "a time string"),
        ("actor", _is_text(obj["actor"], 1000), "a string"),
        ("action", _is_text(obj["action"], 200) and bool(obj["action"]), "a non-empty string"),
        ("params", isinstance(obj["params"], dict), "an object"),
        ("privacy_cost", obj["privacy_cost"] is None or isinstance(obj["privacy_cost"], dict), "an object or null"),
        ("outcome", obj["outcome"] in ("ok", "failed"), '"ok" or "failed"'),
        ("reason", obj["reason"] is None or _is_text(obj["reason"]), "a string or null"),
        ("prev_hash", isinstance(obj["prev_hash"], str) and bool(_HEX64.fullmatch(obj["prev_hash"])), "64 hex digits"),
        ("key_id", isinstance(obj["key_id"], str) and bool(_HEX16.fullmatch(obj["key_id"])), "a 16-hex-digit key id"),
        ("hash", isinstance(obj["hash"], str) and bool(_HEX64.fullmatch(obj["hash"])), "64 hex digits"),
        ("signature", isinstance(obj["signature"], str) and len(obj["signature"]) <= 200, "a base64 string"),
    ]
    for name in ("inputs", "outputs"):
        items = obj[name]
        good = isinstance(items, list) and all(
            isinstance(a, dict) and _is_text(a.get("name"), 4096) and _is_text(a.get("sha256"), 128) for a in items
        )
        checks.append((name, good, "a list of {name, sha256} objects"))
    for name, good, what in checks:
        if not good:
            raise LineError(f"field {name} is not {what}")


def _check_head(obj: dict[str, Any]) -> None:
    if not (_is_int(obj["seq"]) and isinstance(obj["hash"], str) and _HEX64.fullmatch(obj["hash"])
            and isinstance(obj["key_id"], str) and _HEX16.fullmatch(obj["key_id"])
            and isinstance(obj["signature"], str)):
        raise LineError("fields have the wrong types")


def _check_witness(obj: dict[str, Any]) -> None:
    if not (isinstance(obj["ledger_id"], str) and _HEX64.fullmatch(obj["ledger_id"])
            and isinstance(obj["last_hash"], str) and _HEX64.fullmatch(obj["last_hash"])
            and type(obj["entries"]) is int and obj["entries"] >= 1
            and _is_text(obj["ledger"], 4096) and _is_text(obj["time"], 64)
            and isinstance(obj["key_id"], str) and _HEX16.fullmatch(obj["key_id"])
            and isinstance(obj["signature"], str) and len(obj["signature"]) <= 200):
        raise LineError("fields have the wrong types")


def parse_entry(raw: bytes, *, canonical: bool = True) -> LedgerEntry:
    """One ledger line -> entry dict with checked field types, or LineError."""
    obj = _parse_object(raw, ENTRY_FIELDS, canonical)
    _check_entry(obj)
    return cast(LedgerEntry, obj)


def _iter_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes with newline) per line; None for a line over MAX_LINE_BYTES (skipped)."""
    number = 0
    while True:
        chunk = handle.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES:
            while not chunk.endswith(b"\n"):
                chunk = handle.readline(1 << 16)
                if not chunk:
                    break
            yield number, None
            continue
        yield number, chunk


def _read_lines(path: Path, what: str) -> list[tuple[int, bytes | None]]:
    try:
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file")
        with open(path, "rb") as handle:
            return list(_iter_lines(handle))
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None


def _too_long() -> str:
    return f"longer than {MAX_LINE_BYTES // (1 << 20)} MiB (not a ledger line)"


# --------------------------------------------------------------------------------------------
# Writing


def failure_reason(exc: BaseException) -> str:
    """What the ledger says about a failure: an InputError's first line, else only its type name."""
    lines = str(exc).splitlines()
    if isinstance(exc, InputError) and lines and lines[0].strip():
        return lines[0]
    return f"internal error ({type(exc).__name__})"


class Ledger:
    """A ledger file plus the signer that appends to it."""

    def __init__(self, path: str | os.PathLike[str], signer: Signer) -> None:
        self.path = Path(path)
        self.signer = signer

    def append(
        self,
        action: str,
        *,
        inputs: Iterable[Artifact | Mapping[str, str]] = (),
        outputs: Iterable[Artifact | Mapping[str, str]] = (),
        params: Mapping[str, Any] | None = None,
        privacy_cost: Mapping[str, Any] | None = None,
        outcome: str = "ok",
        reason: str | None = None,
        actor: str | None = None,
    ) -> LedgerEntry:
        """Append one signed entry (and the genesis entry first if the ledger is new)."""
        if outcome not in ("ok", "failed"):
            raise ValueError("outcome must be 'ok' or 'failed'")
        params = dict(params or {})
        refuse_key_material(params)
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path.parent}: ledger directory does not exist")
        if not self.path.name or self.path.is_dir():
            raise InputError(f"{self.path}: the ledger must be a file, not a directory")
        with file_lock(_lock_path(self.path)):
            last = _read_last_entry(self.path)
            if last is None:
                last = self._write(
                    _last=None,
                    action="ledger.open",
                    params={"public_key": public_key_pem(self.signer.public_key), "format": 1},
                )
            return self._write(
                _last=last, action=action, inputs=[dict(a) for a in inputs], outputs=[dict(a) for a in outputs],
                params=params, privacy_cost=dict(privacy_cost) if privacy_cost else None, outcome=outcome,
                reason=reason, actor=actor,
            )

    def record_failure(
        self,
        action: str,
        *,
        inputs: Iterable[Artifact | Mapping[str, str]] = (),
        params: Mapping[str, Any] | None = None,
        exc: BaseException,
    ) -> LedgerEntry:
        """Append a `failed` entry of `action` for `exc`: the one way a failure is recorded.

        The reason is an InputError's first line (those messages name no raw value), else only
        "internal error (TypeName)": other exceptions may quote data, keys or paths, so their
        message never reaches the ledger.
        """
        return self.append(action, inputs=inputs, params=params, outcome="failed", reason=failure_reason(exc))

    def _write(self, _last: LedgerEntry | None, action: str, **fields: Any) -> LedgerEntry:
        entry: LedgerEntry = {
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
            "hash": "",  # not a signed field: filled in below from the signed ones
            "signature": "",
        }
        try:
            entry["hash"] = entry_hash(entry)
            entry["signature"] = base64.b64encode(self.signer.sign(entry["hash"].encode())).decode()
            line = canonical_json(entry) + b"\n"
            # What is written must read back as a valid entry, byte for byte (no lone surrogates,
            # no oversized line): a ledger never holds a line its own verifier refuses.
            parse_entry(line)
            if len(line) > MAX_LINE_BYTES:
                raise LineError(_too_long())
        except (LineError, UnicodeEncodeError) as exc:
            raise InputError(f"{self.path}: ledger entry {action!r} cannot be recorded: {exc}") from None
        except ValueError:
            raise InputError(f"{self.path}: ledger entry {action!r} holds a non-finite number (NaN or infinity)") from None
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


def _read_last_entry(path: Path) -> LedgerEntry | None:
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
        return parse_entry(lines[-1] + b"\n", canonical=False)
    except LineError as exc:
        raise InputError(f"{path}: last ledger line is corrupt ({exc}); run `privmodel audit verify`") from None


def read_entries(path: str | os.PathLike[str]) -> list[LedgerEntry]:
    """Parse a ledger for display (no signature check). A malformed line raises InputError.

    Duplicate keys, unknown fields and wrong field types are refused here too, so a caller never
    reads a value that a verifier would not have seen.
    """
    src = Path(path)
    entries = []
    for number, raw in _read_lines(src, "ledger"):
        if raw is None:
            raise InputError(f"{src}: line {number} is {_too_long()} (corrupt ledger)")
        try:
            entries.append(parse_entry(raw, canonical=False))
        except LineError as exc:
            raise InputError(f"{src}: line {number} is corrupt: {exc}") from None
    return entries


# --------------------------------------------------------------------------------------------
# Verification


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
    trust: str  # "given keys", "key in genesis entry (trust on first use)" or "none"
    problems: list[Problem] = field(default_factory=list)
    witness: Path | None = None
    witnessed_heads: int = 0  # heads in the witness file that this ledger was checked against
    ledger_id: str | None = None  # hash of the genesis entry: the ledger's identity in a witness file
    last_hash: str | None = None  # hash of the last entry (None when that line is malformed)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _valid_signature(key: Ed25519PublicKey, signature_b64: str, data: bytes) -> bool:
    """Ed25519 check; the base64 text must also be the one canonical encoding of the signature,
    so a re-encoded signature (same bytes, other padding bits) is not a second valid line."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if base64.b64encode(signature).decode("ascii") != signature_b64:
            return False
        key.verify(signature, data)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def verify(
    path: str | os.PathLike[str],
    trusted_keys: Iterable[Ed25519PublicKey] | None = None,
    *,
    tofu: bool = False,
    witness: str | os.PathLike[str] | None = None,
    witness_keys: Iterable[Ed25519PublicKey] | None = None,
) -> Verification:
    """Check every line (canonical bytes, fields), hash, signature by a TRUSTED key, order, chain,
    the signed head, and (with `witness`) that the ledger extends every head witnessed for it.

    Without `trusted_keys` nothing is trusted and the result fails, unless `tofu=True` asks to
    trust the key in the genesis entry. Witness records must be signed by `witness_keys` (default:
    the trusted keys). Crafted input gives problems, never an exception; only a missing or
    unreadable ledger file raises InputError. Problems are listed in file order.
    """
    wkeys = list(witness_keys) if witness_keys is not None else None
    return _verify(Path(path), trusted_keys, tofu, witness, wkeys, require_head=True)


def _verify(
    src: Path,
    trusted_keys: Iterable[Ed25519PublicKey] | None,
    tofu: bool,
    witness: str | os.PathLike[str] | None,
    witness_keys: list[Ed25519PublicKey] | None,
    require_head: bool,
) -> Verification:
    """One read of the ledger, every check; `anchor` uses it so what it records is what it checked."""
    raw_lines = _read_lines(src, "ledger")
    result = Verification(src, len(raw_lines), [], "given keys")
    if not raw_lines:
        result.problems.append(Problem(None, None, "ledger is empty"))
        return result

    entries: list[LedgerEntry | None] = []
    for number, raw in raw_lines:
        try:
            if raw is None:
                raise LineError(_too_long())
            entries.append(parse_entry(raw))
        except LineError as exc:
            result.problems.append(Problem(number, None, str(exc)))
            entries.append(None)
    result.last_hash = entries[-1]["hash"] if entries[-1] is not None else None

    keys, trust_problem = _trust(entries, trusted_keys, tofu, result)
    result.trusted_key_ids = sorted(keys)
    _check_genesis(entries, result)
    _check_chain(entries, keys, result)
    _verify_head(src, entries, keys, result)
    if witness is not None:
        wkeys = {key_id_of(k): k for k in witness_keys} if witness_keys is not None else keys
        _verify_witness(Path(witness), entries, wkeys, result, require_head=require_head)
    result.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    if trust_problem is not None:
        result.problems.insert(0, trust_problem)
    return result


def _trust(
    entries: list[LedgerEntry | None], trusted_keys: Iterable[Ed25519PublicKey] | None, tofu: bool, result: Verification
) -> tuple[dict[str, Ed25519PublicKey], Problem | None]:
    if trusted_keys is not None:
        keys = {key_id_of(k): k for k in trusted_keys}
        if not keys:
            return keys, Problem(None, None, "the trusted keyring is empty: nothing can be verified")
        return keys, None
    if not tofu:
        result.trust = "none"
        return {}, Problem(None, None, "no trusted keys given: refusing trust on first use "
                                       "(give trusted keys, --trust KEYRING or --keys DIR; or ask for --tofu)")
    result.trust = "key in genesis entry (trust on first use)"
    genesis = entries[0]
    if genesis is None or genesis["action"] != "ledger.open":
        return {}, None  # _check_genesis names the problem
    try:
        key = load_public_key_pem(genesis["params"]["public_key"], "genesis entry")
    except (InputError, KeyError, TypeError, UnicodeEncodeError, AttributeError):
        return {}, None
    return {key_id_of(key): key}, None


def _check_genesis(entries: list[LedgerEntry | None], result: Verification) -> None:
    genesis = entries[0]
    if genesis is None:
        return
    if genesis["action"] != "ledger.open" or genesis["seq"] != 0:
        result.problems.append(Problem(1, None, "first entry is not the ledger.open genesis entry"))
        return
    result.ledger_id = genesis["hash"]
    pem = genesis["params"].get("public_key")
    try:
        key = load_public_key_pem(pem, "genesis entry") if isinstance(pem, str) else None
    except (InputError, UnicodeEncodeError):
        key = None
    if key is None:
        result.problems.append(Problem(1, 0, "genesis entry carries no valid public key"))
    elif key_id_of(key) != genesis["key_id"]:
        result.problems.append(Problem(1, 0, "genesis entry's public key does not match its key id"))


def _check_chain(entries: list[LedgerEntry | None], keys: dict[str, Ed25519PublicKey], result: Verification) -> None:
    seqs = {e["seq"] for e in entries if e is not None}
    prev_hash: str | None = GENESIS_HASH
    expected_seq = 0
    for number, entry in enumerate(entries, start=1):
        if entry is None:
            prev_hash, expected_seq = None, expected_seq + 1
            continue
        seq = entry["seq"]
        if entry_hash(entry) != entry["hash"]:
            result.problems.append(Problem(number, seq, "content does not match its hash: a field was edited"))
        elif keys and entry["key_id"] not in keys:
            result.problems.append(Problem(number, seq, f"signed by an untrusted key {entry['key_id']}"))
        elif keys and not _valid_signature(keys[entry["key_id"]], entry["signature"], entry["hash"].encode()):
            result.problems.append(Problem(number, seq, "signature is invalid (forged or altered)"))
        if seq != expected_seq:
            if seq > expected_seq and expected_seq not in seqs:
                gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                result.problems.append(Problem(number, seq, f"entry seq {gap} is missing (deleted)"))
            else:
                result.problems.append(
                    Problem(number, seq, f"out of order: expected seq {expected_seq} here (entries reordered or inserted)")
                )
        elif prev_hash is not None and entry["prev_hash"] != prev_hash:
            result.problems.append(Problem(number, seq, "prev_hash does not match the previous entry (chain broken)"))
        prev_hash = entry["hash"]
        expected_seq = seq + 1


def _verify_head(src: Path, entries: list[LedgerEntry | None], keys: dict[str, Ed25519PublicKey], result: Verification) -> None:
    head_file = _head_path(src)
    last = entries[-1]
    if not head_file.is_file():
        result.problems.append(Problem(None, None, f"head file {head_file.name} is missing: truncation cannot be ruled out"))
        return
    try:
        with open(head_file, "rb") as handle:
            raw = handle.read(4096 + 1)
        if len(raw) > 4096:
            raise LineError("too long")
        head = _parse_object(raw, HEAD_FIELDS, canonical=False)
        _check_head(head)
    except (OSError, LineError):
        result.problems.append(Problem(None, None, f"head file {head_file.name} is corrupt"))
        return
    signed = {k: head[k] for k in ("seq", "hash", "key_id")}
    key = keys.get(signed["key_id"])
    if keys and (key is None or not _valid_signature(key, head["signature"], canonical_json(signed))):
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


# --------------------------------------------------------------------------------------------
# Witnessed heads: rollback and replacement detection


def _read_witness(path: Path, keys: dict[str, Ed25519PublicKey], result: Verification) -> list[tuple[int, WitnessRecord]]:
    """Valid, trusted records of a witness file; every bad line is a problem."""
    name = path.name or str(path)
    if not path.is_file():
        result.problems.append(Problem(None, None, f"witness file {name} does not exist"))
        return []
    try:
        with open(path, "rb") as handle:
            lines = list(_iter_lines(handle))
    except OSError as exc:
        result.problems.append(Problem(None, None, f"witness file {name} cannot be read ({exc.strerror})"))
        return []
    records = []
    for number, raw in lines:
        try:
            if raw is None:
                raise LineError(_too_long())
            record = _parse_object(raw, WITNESS_FIELDS, canonical=True)
            _check_witness(record)
        except LineError as exc:
            result.problems.append(Problem(None, None, f"witness {name} line {number}: {exc}"))
            continue
        key = keys.get(record["key_id"])
        if key is None:
            result.problems.append(Problem(None, None, f"witness {name} line {number}: signed by an untrusted key {record['key_id']}"))
            continue
        unsigned = {k: v for k, v in record.items() if k != "signature"}
        if not _valid_signature(key, record["signature"], canonical_json(unsigned)):
            result.problems.append(Problem(None, None, f"witness {name} line {number}: signature is invalid"))
            continue
        records.append((number, cast(WitnessRecord, record)))  # field types checked by _check_witness
    return records


def _verify_witness(
    path: Path, entries: list[LedgerEntry | None], keys: dict[str, Ed25519PublicKey], result: Verification, require_head: bool
) -> None:
    result.witness = path
    records = _read_witness(path, keys, result)
    if result.ledger_id is None:
        result.problems.append(Problem(None, None, "ledger has no valid genesis entry: its witnessed heads cannot be found"))
        return
    mine = [(n, r) for n, r in records if r["ledger_id"] == result.ledger_id]
    result.witnessed_heads = len(mine)
    if not mine and require_head:
        result.problems.append(Problem(
            None, None,
            f"witness {path.name} holds no head for this ledger (id {result.ledger_id[:16]}): "
            "replaced by another ledger, or never anchored",
        ))
    for number, record in mine:
        count = record["entries"]
        if count > len(entries):
            result.problems.append(Problem(
                None, None,
                f"rolled back: witness {path.name} line {number} ({_safe(record['time'], 32)}) saw {count} entries, "
                f"the ledger has {len(entries)}",
            ))
            continue
        entry = entries[count - 1]
        if entry is None or entry["hash"] != record["last_hash"]:
            result.problems.append(Problem(
                count, None,
                f"forked: this entry is not the one witness {path.name} line {number} saw as entry {count}",
            ))


def ledger_head(path: str | os.PathLike[str], trusted_keys: Iterable[Ed25519PublicKey] | None = None,
                *, tofu: bool = False) -> LedgerHead:
    """The head a partner or witness records: {ledger_id, entries, last_hash} of a verified ledger."""
    check = verify(path, trusted_keys, tofu=tofu)
    if not check.ok:
        raise InputError(f"{path}: ledger fails verification ({check.first_problem})")
    return {"ledger_id": check.ledger_id, "entries": check.entries, "last_hash": check.last_hash}


def anchor(
    path: str | os.PathLike[str],
    witness: str | os.PathLike[str],
    signer: Signer,
    trusted_keys: Iterable[Ed25519PublicKey] | None = None,
    *,
    tofu: bool = False,
) -> WitnessRecord:
    """Verify the ledger, check it extends every head already witnessed for it, and append a
    signed head record to the witness file (JSON lines, rewritten atomically under a lock).

    Trusted keys default to the signer's own public key (an organisation anchoring its own ledger).
    """
    src, target = Path(path), Path(witness)
    keys = list(trusted_keys) if trusted_keys is not None else (None if tofu else [signer.public_key])
    if not target.name or target.is_dir():
        raise InputError(f"{target}: the witness must be a file, not a directory")
    if not target.parent.is_dir():
        raise InputError(f"{target.parent}: witness directory does not exist")
    if target.resolve() in (src.resolve(), _head_path(src).resolve()):
        raise InputError(f"{target}: the witness file cannot be the ledger or its head")
    with file_lock(_lock_path(target)):
        # The witness's existing heads for this ledger must be extended; records are trusted when
        # signed by the ledger's trusted keys or by this signer.
        wkeys = [*(keys or []), signer.public_key]
        check = _verify(src, keys, tofu, target if target.exists() else None, wkeys, require_head=False)
        if not check.ok:
            raise InputError(f"{src}: refusing to anchor: {check.first_problem}")
        record: WitnessRecord = {
            "ledger_id": check.ledger_id,
            "ledger": src.name,
            "entries": check.entries,
            "last_hash": check.last_hash,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "key_id": signer.key_id,
            "signature": "",
        }
        unsigned = {k: v for k, v in record.items() if k != "signature"}
        record["signature"] = base64.b64encode(signer.sign(canonical_json(unsigned))).decode()
        previous = target.read_bytes() if target.exists() else b""
        if previous and not previous.endswith(b"\n"):
            raise InputError(f"{target}: witness file does not end with a newline (corrupt); refusing to append")
        atomic_write_bytes(target, previous + canonical_json(record) + b"\n")
    return record
