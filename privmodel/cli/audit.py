"""`privmodel audit verify|show|anchor`: check, read and witness the signed ledger.

Everything read from a ledger is attacker-controlled text: it is printed through rich `Text`
objects (never markup) with control characters replaced, so `[/x]` or an escape sequence in an
actor name is shown, not interpreted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from anonymize.errors import InputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Verify, read and witness the signed audit ledger.", no_args_is_help=True)
    audit_app.command("verify")(verify)
    audit_app.command("show")(show)
    audit_app.command("anchor")(anchor)
    app.add_typer(audit_app, name="audit")


def _plain(value: object) -> str:
    """Ledger text for a terminal: control characters (escape sequences, newlines) become '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def trusted_keys(trust: list[Path] | None, keys: list[Path] | None, tofu: bool) -> tuple[list[Ed25519PublicKey] | None, str]:
    """The trust anchors a command verifies against, and how to describe them.

    `--trust FILE` keyrings and `--keys DIR` (that organisation's own public key) add up; with
    neither, this machine's key store ($PRIVMODEL_KEYS or ~/.privmodel/keys) is trusted if it
    exists. Trust on first use happens only with `--tofu`, never by default.
    """
    from privmodel.core.keys import PUBLIC_KEY, default_keys_dir, key_id_of, load_keyring, load_public_key

    if tofu:
        if trust or keys:
            raise InputError("--tofu cannot be combined with --trust or --keys: trust either given keys or the ledger's own")
        return None, "the ledger's own genesis key (trust on first use: proves consistency, not authorship)"
    found = [k for path in trust or [] for k in load_keyring(path)]
    found += [load_public_key(path) for path in keys or []]
    if not found:
        store = default_keys_dir()
        if not (store / PUBLIC_KEY).is_file():
            raise InputError(
                "no trusted keys: give --trust KEYRING or --keys DIR (or --tofu to trust the key the ledger "
                "carries, which proves nothing about who wrote it)"
            )
        found = [load_public_key(store)]
        source = f"this machine's key store {store}"
    else:
        source = "given keys"
    ids = sorted({key_id_of(k) for k in found})
    return found, f"{source}; key ids {', '.join(ids)}"


def verify(
    ledger: Path = typer.Argument(..., help="Ledger file (JSON lines)."),
    trust: list[Path] = typer.Option(
        None, "--trust", help="Keyring of trusted Ed25519 public keys: PEM blocks or `<key id> <base64 key>` lines (repeatable)."
    ),
    keys: list[Path] = typer.Option(
        None, "--keys", help="Trust this key directory's (or .pub file's) public key (repeatable). "
        "Default: this machine's key store."
    ),
    tofu: bool = typer.Option(
        False, "--tofu", help="Trust the key in the ledger's first entry (trust on first use): proves only consistency."
    ),
    witness: Path = typer.Option(
        None, "--witness", help="Witness file written by `audit anchor`: the ledger must extend every head it recorded."
    ),
    witness_trust: list[Path] = typer.Option(
        None, "--witness-trust", help="Keyring of the witnesses' keys (default: the trusted keys)."
    ),
    all_problems: bool = typer.Option(False, "--all", help="List every problem, not only the first."),
) -> None:
    """Check lines, chain, signatures by trusted keys, head and witnessed heads: exit 0 if intact, else 2."""
    from privmodel.artifacts.ledger import verify as verify_ledger
    from privmodel.core.keys import load_keyring

    if not ledger.is_file():
        raise InputError(f"{ledger}: no such ledger file")
    anchors, described = trusted_keys(trust, keys, tofu)
    witness_keys = [k for path in witness_trust for k in load_keyring(path)] if witness_trust else None
    result = verify_ledger(ledger, anchors, tofu=tofu, witness=witness, witness_keys=witness_keys)
    console = Console(highlight=False, soft_wrap=True)
    if result.ok:
        seen = f"; extends {result.witnessed_heads} witnessed head(s) in {witness}" if witness else ""
        console.print(Text.assemble(
            ("OK", "green"),
            _plain(f" {ledger}: {result.entries} entries, chain and signatures intact (trusted: {described}){seen}"),
        ))
        return
    more = len(result.problems) - 1
    tail = f" ({more} more problem{'s' if more != 1 else ''}; --all lists them)" if more and not all_problems else ""
    console.print(Text.assemble(("FAILED", "red"), _plain(f" {ledger}: first bad entry: {result.first_problem}{tail}")))
    if all_problems:
        for problem in result.problems[1:]:
            console.print(Text(_plain(f"  also: {problem}")))
    raise typer.Exit(2)


def show(
    ledger: Path = typer.Argument(..., help="Ledger file (JSON lines)."),
    limit: int = typer.Option(0, "--limit", help="Show only the last N entries (0 = all)."),
) -> None:
    """Print the ledger as a readable table (no verification: run `audit verify` for that)."""
    from privmodel.artifacts.ledger import read_entries

    entries = read_entries(ledger)
    if limit > 0:
        entries = entries[-limit:]
    table = Table(title=Text(_plain(ledger)), show_lines=False)
    for column in ("seq", "time", "actor", "action", "outcome", "inputs -> outputs", "privacy cost"):
        table.add_column(column, overflow="fold")
    for e in entries:
        files = ", ".join(f"{a['name']}:{a['sha256'][:8]}" for a in e["inputs"])
        outs = ", ".join(f"{a['name']}:{a['sha256'][:8]}" for a in e["outputs"])
        cost = e["privacy_cost"] or {}
        cost_text = ", ".join(f"{k}={v}" for k, v in cost.items())
        outcome = e["outcome"]
        if outcome == "failed" and e["reason"]:
            outcome = f"failed: {e['reason']}"
        cells = (str(e["seq"]), e["time"][:19], e["actor"], e["action"], outcome,
                 f"{files} -> {outs}" if files or outs else "", cost_text)
        table.add_row(*(Text(_plain(cell)) for cell in cells))
    # A pipe or file gets the full table, not one squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200, highlight=False).print(table)


def anchor(
    ledger: Path = typer.Argument(..., help="Ledger file to witness."),
    witness: Path = typer.Option(..., "--witness", help="Witness file (JSON lines, appended atomically); keep it elsewhere."),
    keys: Path = typer.Option(None, "--keys", help="Key directory of whoever signs the head (default: this machine's)."),
    trust: list[Path] = typer.Option(
        None, "--trust", help="Keyring the ledger must verify against (default: the signing key directory's own key)."
    ),
    tofu: bool = typer.Option(False, "--tofu", help="Anchor a ledger verified only by its own genesis key."),
) -> None:
    """Verify the ledger and append its signed head (id, entries, last hash, time) to a witness file."""
    from privmodel.artifacts.ledger import anchor as anchor_ledger
    from privmodel.core.keys import ensure_keys, load_keyring, load_signer

    if tofu and trust:
        raise InputError("--tofu cannot be combined with --trust")
    signer = load_signer(ensure_keys(keys))
    anchors = [k for path in trust for k in load_keyring(path)] if trust else None
    record = anchor_ledger(ledger, witness, signer, anchors, tofu=tofu)
    Console(highlight=False, soft_wrap=True).print(Text(_plain(
        f"anchored {ledger}: {record['entries']} entries, last hash {(record['last_hash'] or '')[:16]}, "
        f"ledger id {(record['ledger_id'] or '')[:16]} -> {witness} (signed by key {record['key_id']})"
    )))
