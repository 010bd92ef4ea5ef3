"""Options shared by commands: the ledger and keys every data command takes."""

from __future__ import annotations

import typer

LEDGER_OPTION = typer.Option(None, "--ledger", help="Audit ledger (default: ledger.jsonl in the output directory).")
KEYS_OPTION = typer.Option(
    None, "--keys", help="Key directory from `privmodel keys init` (default: $PRIVMODEL_KEYS or ~/.privmodel/keys)."
)
