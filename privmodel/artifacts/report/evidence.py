"""Collect a run's evidence: its ledgers (verified), and the JSON artifacts they record.

A run directory holds one or more ledgers (`ledger.jsonl` of the coordinator and of each partner)
and JSON artifacts: anonymization reports (`report.json`), model cards (`model_card.json`),
federated cards, vertical cards (`card.json` of a vertical run's label party). An artifact is only
trusted if its content hash appears among the outputs of a ledger entry of the same run: a ledger
from another run is refused rather than mixed in.

Everything read here is untrusted input: a forged ledger may hold any JSON value in any field.
Entries are kept for display only when they are JSON objects; the page escapes every field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from anonymize.errors import InputError
from privmodel.artifacts import ledger as audit
from privmodel.artifacts.ledger import Problem, Verification
from privmodel.core.fileio import sha256_file

LEDGER_NAME = "ledger.jsonl"
RELEASE_REPORT = "report.json"
MODEL_CARD = "model_card.json"
FEDERATED_CARD = "federated_card.json"
CURVE = "curve.json"
VERTICAL_CARD = "card.json"  # only one whose "kind" starts with "vertical": the name is generic

TRUSTED = "trusted keys"
TOFU = "trust on first use"
NO_TRUST = "no trusted keys"


@dataclass
class LedgerEvidence:
    path: Path
    verification: Verification
    entries: list[dict[str, object]]


@dataclass
class Artifact:
    path: Path
    sha256: str
    data: dict[str, object]
    recorded_by: dict[str, object]  # the ledger entry whose outputs include this file


@dataclass
class Evidence:
    root: Path
    ledgers: list[LedgerEvidence]
    releases: list[Artifact] = field(default_factory=list)
    models: list[Artifact] = field(default_factory=list)
    federated: list[Artifact] = field(default_factory=list)
    vertical: list[Artifact] = field(default_factory=list)
    curves: list[Artifact] = field(default_factory=list)
    trust: str = NO_TRUST  # TRUSTED: keys the user gave; TOFU: each ledger's own genesis key; NO_TRUST: none
    trusted_key_ids: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        """Every ledger intact (chain, signatures, head) under the keys it was checked against."""
        return all(le.verification.ok for le in self.ledgers)

    @property
    def status(self) -> str:
        """"fail", "tofu" (intact, but only under the ledgers' own keys) or "ok" (trusted keys)."""
        if not self.verified or self.trust == NO_TRUST:
            return "fail"
        return "ok" if self.trust == TRUSTED else "tofu"

    @property
    def artifacts(self) -> list[Artifact]:
        return [*self.releases, *self.models, *self.federated, *self.vertical, *self.curves]

    def input_paths(self) -> list[Path]:
        """Every file this report reads: an output path equal to one of them is refused."""
        paths = [self.root]
        for le in self.ledgers:
            paths += [le.path, le.path.with_name(le.path.name + ".head")]
        paths += [a.path for a in self.artifacts]
        return paths


def load_trusted_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    """Public keys from keyring files (`audit.load_keyring`: PEM blocks or key-id lines) or key
    directories (their signing.pub)."""
    from privmodel.core.keys import PUBLIC_KEY

    keys: list[Ed25519PublicKey] = []
    for given in paths:
        path = Path(given) / PUBLIC_KEY if Path(given).is_dir() else Path(given)
        keys += list(audit.load_keyring(path))
    return keys


def _parse_entries(raw: bytes) -> list[dict[str, object]]:
    """Every line that is a JSON object (verification reports the others); never raises."""
    entries = []
    for line in raw.splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, absurd nesting
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _verify(path: Path, trusted_keys: list[Ed25519PublicKey] | None, tofu: bool) -> Verification:
    """audit.verify, failing closed: a crafted ledger the verifier cannot parse is a failed ledger.

    With neither trusted keys nor `tofu`, verify trusts nothing and the ledger fails (as it should).
    """
    try:
        return audit.verify(path, trusted_keys=trusted_keys, tofu=tofu and trusted_keys is None)
    except InputError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "unreadable"
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as exc:
        message = f"malformed ledger: the verifier could not check it ({type(exc).__name__})"
    lines = path.read_bytes().count(b"\n")
    return Verification(path, lines, [], "not checked", [Problem(None, None, message)])


def _load_ledger(path: Path, trusted_keys: list[Ed25519PublicKey] | None, tofu: bool) -> LedgerEvidence:
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a ledger") from None
    except OSError as exc:
        raise InputError(f"{path}: ledger is not readable ({exc.strerror or type(exc).__name__})") from None
    if not raw:
        raise InputError(f"{path}: ledger is empty")
    return LedgerEvidence(path, _verify(path, trusted_keys, tofu), _parse_entries(raw))


def _recorded_outputs(ledgers: Iterable[LedgerEvidence]) -> dict[str, dict[str, object]]:
    recorded: dict[str, dict[str, object]] = {}
    for le in ledgers:
        for entry in le.entries:
            outputs = entry.get("outputs")
            for out in outputs if isinstance(outputs, list) else []:
                if isinstance(out, dict) and isinstance(out.get("sha256"), str):
                    recorded.setdefault(out["sha256"], entry)
    return recorded


def collect(
    path: str | os.PathLike[str], trusted_keys: Sequence[Ed25519PublicKey] | None = None, *, tofu: bool = False
) -> Evidence:
    """Evidence from a ledger file or a run directory; InputError (exit 2) when there is none.

    Ledgers are verified against `trusted_keys`; without them only `tofu=True` (each ledger's own
    genesis key, shown as such: it proves a ledger is intact, not who wrote it) lets one pass.
    """
    target = Path(path).resolve()
    keys = list(trusted_keys) if trusted_keys is not None else None
    if not target.exists():
        raise InputError(f"{target}: no such ledger or run directory")
    trust = TRUSTED if keys is not None else TOFU if tofu else NO_TRUST
    if keys is not None:
        from privmodel.core.keys import key_id_of

        key_ids = sorted({key_id_of(k) for k in keys})
    else:
        key_ids = []
    if target.is_file():
        return Evidence(target.parent, [_load_ledger(target, keys, tofu)], trust=trust, trusted_key_ids=key_ids)
    try:
        ledger_paths = sorted(target.rglob(LEDGER_NAME))
    except OSError:
        raise InputError(f"{target}: run directory is not readable") from None
    if not ledger_paths:
        raise InputError(f"{target}: run directory holds no {LEDGER_NAME}")
    evidence = Evidence(target, [_load_ledger(p, keys, tofu) for p in ledger_paths], trust=trust, trusted_key_ids=key_ids)
    recorded = _recorded_outputs(evidence.ledgers)
    buckets = {RELEASE_REPORT: evidence.releases, MODEL_CARD: evidence.models, FEDERATED_CARD: evidence.federated,
               CURVE: evidence.curves}
    for name, bucket in buckets.items():
        for file in sorted(target.rglob(name)):
            try:
                digest = sha256_file(file)
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise InputError(f"{file}: not a readable JSON artifact") from None
            entry = recorded.get(digest)
            if entry is None:
                raise _unrecorded(file, target)
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
                raise InputError(f"{file}: not a readable JSON artifact") from None
            if not isinstance(data, dict):
                raise InputError(f"{file}: not a JSON object")
            bucket.append(Artifact(file, digest, data, entry))
    evidence.vertical += [card for file in sorted(target.rglob(VERTICAL_CARD))
                          if (card := _vertical_card(file, recorded, target)) is not None]
    return evidence


def _unrecorded(file: Path, target: Path) -> InputError:
    return InputError(f"{file}: not recorded in any ledger under {target} (ledger from another run, or edited file)")


def _vertical_card(file: Path, recorded: dict[str, dict[str, object]], target: Path) -> Artifact | None:
    """A vertical run's card, trusted like every artifact only when a ledger entry records its hash.

    `card.json` is a generic name, so a file that is not a JSON object whose "kind" starts with
    "vertical" is some other tool's file and is left alone rather than refused.
    """
    try:
        digest = sha256_file(file)
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(kind, str) or not kind.startswith("vertical"):
        return None
    entry = recorded.get(digest)
    if entry is None:
        raise _unrecorded(file, target)
    return Artifact(file, digest, data, entry)
