"""The ledger a run writes to, and the one way a failed run is recorded.

Every workflow that reads or writes data appends to a signed ledger: the one named, else
ledger.jsonl in its output directory. A failure is recorded only in a ledger that is known (named,
or already there) and is not one of the run's inputs, so a bad-input run into a fresh directory
leaves nothing behind and user data is never appended to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from privmodel.artifacts.ledger import Ledger
from privmodel.core.keys import ensure_keys, load_signer


def ledger_path(ledger: Path | None, out_dir: Path) -> Path:
    """The ledger a command appends to: the one named, else ledger.jsonl in its output directory."""
    return ledger if ledger is not None else out_dir / "ledger.jsonl"


def open_ledger(ledger: Path | None, out_dir: Path, keys: Path | None) -> Ledger:
    """The ledger a data command writes to, signed with the organisation's key."""
    signer = load_signer(ensure_keys(keys))
    return Ledger(ledger_path(ledger, out_dir), signer)


def known_ledger(ledger: Path | None, out_dir: Path, inputs: Sequence[Path | None] = ()) -> Path | None:
    """Where a failure may be recorded: the ledger named, or one already in the output directory.

    None when there is none yet (a bad-input run into a fresh directory leaves nothing behind), when
    it is not a regular file, or when it is one of the run's inputs (never append lines to user data).
    """
    from privmodel.core.fileio import same_file

    known = ledger_path(ledger, out_dir)
    if ledger is None and not known.is_file():
        return None
    if (known.exists() and not known.is_file()) or any(same_file(known, p) for p in inputs if p is not None):
        return None  # a directory, a FIFO or a device is no ledger (reading a FIFO would hang)
    return known


@contextlib.contextmanager
def recorded_failure(action: str, ledger: Path | None, out_dir: Path, keys: Path | None,
                     inputs: Sequence[Path | None] = ()) -> Iterator[None]:
    """Turn any failure of the block into a `failed` entry of `action` in the known ledger, then re-raise.

    The reason is the InputError's one line (it names no raw value) or the exception's type name
    (`Ledger.record_failure`).
    """
    try:
        yield
    except Exception as exc:
        known = known_ledger(ledger, out_dir, inputs)
        if known is not None:
            with contextlib.suppress(Exception):  # the original error matters more than its record
                from privmodel.artifacts.ledger import artifact

                open_ledger(known, out_dir, keys).record_failure(
                    action, inputs=[artifact(p) for p in inputs if p is not None and p.is_file()], exc=exc,
                )
        raise
