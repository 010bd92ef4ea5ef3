"""Atomic file output, content hashes and table reading with one-line errors.

Every output goes through `atomic_path`: written to a temp file in the target directory, then
renamed, so a failed step never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from anonymize.errors import InputError

TABLE_SUFFIXES = (".csv", ".parquet")
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{directory}: output directory does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{directory}: output directory is not writable")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode (keys chmod tighter)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if mode is not None:
            tmp.chmod(mode)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) or fail with one line if that is impossible."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: output directory is not writable")
    return out


def read_table(path: str | os.PathLike[str], text_columns: Iterable[str] = ()):  # -> pandas.DataFrame
    """Read a CSV or Parquet file; every failure becomes one InputError line naming the file.

    `text_columns` are read from CSV as text, so zip codes and ID numbers keep their leading zeros.
    """
    import pandas as pd

    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if not src.is_file():
        raise InputError(f"{src}: not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: not readable")
    if src.stat().st_size == 0:
        raise InputError(f"{src}: empty file")
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        try:
            return pd.read_parquet(src)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(f"{src}: not a readable Parquet file ({type(exc).__name__})") from None
    if suffix != ".csv":
        raise InputError(f"{src}: unsupported table format {suffix!r} (use .csv or .parquet)")
    raw = src.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{src}: not UTF-8 text (invalid byte at line {line})") from None
    try:
        header = pd.read_csv(src, nrows=0, skipinitialspace=True).columns
        dtype = {c: "str" for c in text_columns if c in header}
        frame = pd.read_csv(src, skipinitialspace=True, dtype=dtype or None)
    except pd.errors.EmptyDataError:
        raise InputError(f"{src}: empty file (no header row)") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"{src}: malformed CSV ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise InputError(f"{src}: table has a header but no rows")
    return frame


def write_table(frame, path: str | os.PathLike[str]) -> Path:
    """Write a DataFrame atomically as CSV or Parquet, chosen by the suffix."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{target}: unsupported table format {suffix!r} (use .csv or .parquet)")
    with atomic_path(target) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return target
