"""Options and helpers shared by commands: the ledger and keys every data command takes."""

from __future__ import annotations

from pathlib import Path

import typer

from privmodel.audit import Ledger
from privmodel.keys import ensure_keys, load_signer

LEDGER_OPTION = typer.Option(None, "--ledger", help="Audit ledger (default: ledger.jsonl in the output directory).")
KEYS_OPTION = typer.Option(
    None, "--keys", help="Key directory from `privmodel keys init` (default: $PRIVMODEL_KEYS or ~/.privmodel/keys)."
)


def open_ledger(ledger: Path | None, out_dir: Path, keys: Path | None) -> Ledger:
    """The ledger a data command writes to, signed with the organisation's key."""
    signer = load_signer(ensure_keys(keys))
    return Ledger(ledger if ledger is not None else out_dir / "ledger.jsonl", signer)
