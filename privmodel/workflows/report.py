"""The report workflow: collect the evidence under a ledger or run directory, verify it, write one HTML page.

The page never replaces what it reports on (a ledger, its head, an artifact, a key file) nor any file
that an earlier `privmodel report` did not write (recognised by the generator marker in its head).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from anonymize.errors import InputError

if TYPE_CHECKING:
    from privmodel.artifacts.report.evidence import Evidence

GENERATOR = b'<meta name="generator" content="privmodel report">'


def refuse_input_as_output(out: Path, inputs: list[Path]) -> None:
    """The page must never replace what it reports on."""
    target = out.resolve()
    if target.is_dir():
        raise InputError(f"{out}: --out is a directory; give the HTML file to write")
    for path in inputs:
        if target == path.resolve():
            raise InputError(f"{out}: --out is one of the report's inputs ({path}); refusing to overwrite it")


def refuse_foreign_file(out: Path) -> None:
    """`out` may replace an earlier report, never any other file (a run never overwrites what it did not make)."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_file():
        raise InputError(f"{out}: exists and is not a report file; refusing to overwrite")
    with open(out, "rb") as handle:
        head = handle.read(2048)
    if GENERATOR not in head:
        raise InputError(f"{out}: exists and was not written by `privmodel report`; refusing to overwrite")


def write_report(source: Path, out: Path, trust: list[Path], tofu: bool = False) -> Evidence:
    """Verify every ledger against the trusted keys (or each ledger's own, with `tofu`) and write the page.

    The page is written even when a ledger fails (with the failure on top); the caller decides the exit.
    """
    from privmodel.artifacts.report.evidence import collect, load_trusted_keys
    from privmodel.artifacts.report.html import render
    from privmodel.core.fileio import atomic_write_text

    if trust and tofu:
        raise InputError("give either --trust KEYS or --tofu, not both")
    for path in trust:
        refuse_input_as_output(out, [path, path / "signing.pub"] if path.is_dir() else [path])
    keys = load_trusted_keys(trust) if trust else None
    evidence = collect(source, trusted_keys=keys, tofu=tofu)
    refuse_input_as_output(out, evidence.input_paths())
    refuse_foreign_file(out)
    atomic_write_text(out, render(evidence))
    return evidence
