"""Collect a run's evidence: its ledgers (verified), and the JSON artifacts they record.

A run directory holds one or more ledgers (`ledger.jsonl` of the coordinator and of each partner)
and JSON artifacts: anonymization reports (`report.json`), model cards (`model_card.json`),
federated cards. An artifact is only trusted if its content hash appears among the outputs of a
ledger entry of the same run: a ledger from another run is refused rather than mixed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anonymize.errors import InputError
from privmodel.audit import Verification, read_entries, verify
from privmodel.fileio import sha256_file

LEDGER_NAME = "ledger.jsonl"
RELEASE_REPORT = "report.json"
MODEL_CARD = "model_card.json"
FEDERATED_CARD = "federated_card.json"
CURVE = "curve.json"


@dataclass
class LedgerEvidence:
    path: Path
    verification: Verification
    entries: list[dict[str, Any]]


@dataclass
class Artifact:
    path: Path
    sha256: str
    data: dict[str, Any]
    recorded_by: dict[str, Any]  # the ledger entry whose outputs include this file


@dataclass
class Evidence:
    root: Path
    ledgers: list[LedgerEvidence]
    releases: list[Artifact] = field(default_factory=list)
    models: list[Artifact] = field(default_factory=list)
    federated: list[Artifact] = field(default_factory=list)
    curves: list[Artifact] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return all(le.verification.ok for le in self.ledgers)


def _load_ledger(path: Path) -> LedgerEvidence:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: ledger is empty")
    verification = verify(path)
    try:
        entries = read_entries(path)
    except InputError:
        entries = []  # unparseable lines: verification already names them; the report shows it
    return LedgerEvidence(path, verification, entries)


def _recorded_outputs(ledgers: list[LedgerEvidence]) -> dict[str, dict[str, Any]]:
    recorded: dict[str, dict[str, Any]] = {}
    for le in ledgers:
        for entry in le.entries:
            for out in entry.get("outputs") or []:
                if isinstance(out, dict) and "sha256" in out:
                    recorded.setdefault(out["sha256"], entry)
    return recorded


def collect(path: str | Path) -> Evidence:
    """Evidence from a ledger file or a run directory; InputError (exit 2) when there is none."""
    target = Path(path).resolve()
    if not target.exists():
        raise InputError(f"{target}: no such ledger or run directory")
    if target.is_file():
        return Evidence(target.parent, [_load_ledger(target)])
    ledger_paths = sorted(target.rglob(LEDGER_NAME))
    if not ledger_paths:
        raise InputError(f"{target}: run directory holds no {LEDGER_NAME}")
    evidence = Evidence(target, [_load_ledger(p) for p in ledger_paths])
    recorded = _recorded_outputs(evidence.ledgers)
    buckets = {RELEASE_REPORT: evidence.releases, MODEL_CARD: evidence.models, FEDERATED_CARD: evidence.federated,
               CURVE: evidence.curves}
    for name, bucket in buckets.items():
        for file in sorted(target.rglob(name)):
            digest = sha256_file(file)
            entry = recorded.get(digest)
            if entry is None:
                raise InputError(
                    f"{file}: not recorded in any ledger under {target} (ledger from another run, or edited file)"
                )
            try:
                data = json.loads(file.read_text())
            except (OSError, json.JSONDecodeError):
                raise InputError(f"{file}: not a readable JSON artifact") from None
            bucket.append(Artifact(file, digest, data, entry))
    return evidence
