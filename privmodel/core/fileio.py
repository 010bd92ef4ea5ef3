"""Outputs that never lose data, content hashes, one lock, one JSON cleaner, and table reading.

Every command output goes through `outputs(...)` (see its docstring): targets are checked against
the inputs before any work, written to staging paths beside them, and published by the caller only
after its ledger entry succeeded; a failure removes only what this run created. Secret files are
created 0600 by `os.open`, never chmod-ed later, and an existing directory's mode is never changed.

`atomic_path` / `atomic_write_*` / `write_table` remain for bookkeeping files that a module owns and
rewrites (the ledger head, a worker's state); a command's user-visible outputs use `outputs`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, overload

from anonymize.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")
PathLike = str | os.PathLike[str]
_CSV_FIELD_LIMIT = 16 << 20  # one field of 16 MiB is already no customer table; csv's default is 128 KiB
_TEXT_BLOCK = 1 << 22  # bytes read at a time by `check_text`


# --- identity of paths ---------------------------------------------------------------------------


def _real(path: PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _inode(path: PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file: same resolved path (symlinks followed) or inode."""
    if _real(a) == _real(b):
        return True
    ia, ib = _inode(a), _inode(b)
    return ia is not None and ia == ib


def _within(child: PathLike, parent: PathLike) -> bool:
    c, p = _real(child), _real(parent)
    return c == p or c.startswith(p.rstrip(os.sep) + os.sep)


# --- creating files and directories ------------------------------------------------------------


def _create(path: Path, mode: int) -> None:
    """Create an empty file with `mode` (the umask applies) from its first byte; never replace one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    os.close(fd)


def _hidden_beside(target: Path, tag: str) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.{tag}")


def _write_frame(frame: pd.DataFrame, path: Path, suffix: str) -> None:
    """Write a DataFrame into an existing (staged) file; the file keeps its mode."""
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise InputError(f"{path}: unsupported table format {suffix!r} (use .csv or .parquet)")


def _recorded_outputs(ledger: Path | None, action: str | None) -> set[tuple[str, str]]:
    """(name, sha256) of every output an `ok` entry of `action` recorded in `ledger`."""
    if ledger is None or not ledger.is_file():
        return set()
    import json

    found: set[tuple[str, str]] = set()
    try:
        for line in ledger.read_bytes().splitlines():
            entry = json.loads(line)
            if not isinstance(entry, dict) or entry.get("outcome") != "ok":
                continue
            if action is not None and entry.get("action") != action:
                continue
            for item in entry.get("outputs") or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("sha256"), str):
                    found.add((item["name"], item["sha256"]))
    except (OSError, ValueError):  # unreadable or not a ledger: it proves nothing
        return set()
    return found


# --- staged outputs ------------------------------------------------------------------------------


@dataclass
class _Target:
    path: Path
    is_dir: bool
    secret: bool
    replaces: bool  # an existing file, proven to be this tool's earlier output, will be replaced
    staged: Path | None = None
    retire: bool = False


class Staging:
    """The handle `outputs()` yields: staging paths for the declared targets, then `publish()`."""

    def __init__(self, targets: list[_Target], ledger: Path | None, dir_mode: int, private_dirs: set[str]) -> None:
        self._targets = {os.path.abspath(t.path): t for t in targets}
        self.ledger = ledger
        self._dir_mode = dir_mode
        self._private_dirs = private_dirs
        self._created_dirs: list[Path] = []
        self.published = False

    def _target(self, target: PathLike) -> _Target:
        found = self._targets.get(os.path.abspath(os.fspath(target)))
        if found is None:
            raise ValueError(f"{target}: not declared as an output of this run")
        if self.published:
            raise ValueError("outputs already published")
        return found

    def _ensure_parent(self, path: Path) -> None:
        missing: list[Path] = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            mode = 0o700 if os.path.abspath(directory) in self._private_dirs else self._dir_mode
            try:
                os.mkdir(directory, mode)
            except OSError as exc:
                raise InputError(f"{directory}: cannot create output directory ({exc.strerror})") from None
            self._created_dirs.append(directory)

    def path(self, target: PathLike) -> Path:
        """The staging file for `target` (created empty: 0600 when secret, else 0666 less umask)."""
        t = self._target(target)
        if t.is_dir:
            raise ValueError(f"{target}: declared as a directory; use dir()")
        if t.staged is None:
            self._ensure_parent(t.path)
            staged = _hidden_beside(t.path, "tmp")
            _create(staged, 0o600 if t.secret else 0o666)
            t.staged = staged
        return t.staged

    def dir(self, target: PathLike) -> Path:
        """The staging directory for a directory `target` (0700 when secret)."""
        t = self._target(target)
        if not t.is_dir:
            raise ValueError(f"{target}: declared as a file; use path()")
        if t.staged is None:
            self._ensure_parent(t.path)
            staged = _hidden_beside(t.path, "tmpdir")
            os.mkdir(staged, 0o700 if t.secret else 0o777)
            t.staged = staged
        return t.staged

    def write_bytes(self, target: PathLike, data: bytes) -> Path:
        with open(self.path(target), "wb") as handle:
            handle.write(data)
        return Path(target)

    def write_text(self, target: PathLike, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def write_table(self, target: PathLike, frame: pd.DataFrame) -> Path:
        """Write a DataFrame as CSV or Parquet, chosen by the target's suffix."""
        suffix = Path(target).suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise InputError(f"{target}: unsupported table format {suffix!r} (use .csv or .parquet)")
        _write_frame(frame, self.path(target), suffix)
        return Path(target)

    def retire(self, target: PathLike) -> None:
        """Delete `target` at publish time: only an existing file proven to be this tool's output."""
        t = self._target(target)
        if t.replaces:
            t.retire = True

    def staged_targets(self) -> list[Path]:
        return [t.path for t in self._targets.values() if t.staged is not None]

    def artifacts(self) -> list[dict[str, str]]:
        """`{name, sha256}` of each staged file under its final name, for the ledger entry.

        Files inside a staged directory are named `<dir name>/<relative path>`.
        """
        found: list[dict[str, str]] = []
        for t in self._targets.values():
            if t.staged is None:
                continue
            if not t.is_dir:
                found.append({"name": t.path.name, "sha256": sha256_file(t.staged)})
                continue
            for path in sorted(p for p in t.staged.rglob("*") if p.is_file()):
                name = f"{t.path.name}/{path.relative_to(t.staged).as_posix()}"
                found.append({"name": name, "sha256": sha256_file(path)})
        return found

    def publish(self) -> list[Path]:
        """Move every staged output into place; all or nothing. Returns the published paths."""
        if self.published:
            raise ValueError("outputs already published")
        done: list[tuple[_Target, Path | None, bool]] = []  # (target, backup of what it replaced, published)
        try:
            for t in self._targets.values():
                _place(t, done)
        except BaseException as exc:
            _roll_back(done)
            error = _publish_error(exc)
            if error is None:
                raise
            raise error from None
        for _, backup, _ in done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)
        self.published = True
        return [t.path for t, _, placed in done if placed]

    def _discard(self) -> None:
        """Remove whatever this run staged and the directories it created, if left empty."""
        for t in self._targets.values():
            if t.staged is not None:
                with contextlib.suppress(OSError):
                    if t.is_dir:
                        shutil.rmtree(t.staged)
                    else:
                        os.unlink(t.staged)
                t.staged = None
        for directory in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only when empty: never removes anything this run did not create


def _place(t: _Target, done: list[tuple[_Target, Path | None, bool]]) -> None:
    """Publish one target (or retire it), moving what it replaces to a backup; `done` records both."""
    staged = t.staged
    retire = t.retire and staged is None
    if staged is None and not retire:
        return
    backup = None
    if t.replaces and os.path.lexists(t.path):
        backup = _hidden_beside(t.path, "old")
        os.rename(t.path, backup)
    done.append((t, backup, False))
    if staged is None:  # retired: its backup is deleted once everything is in place
        return
    if t.is_dir or backup is not None:
        if os.path.lexists(t.path):
            raise FileExistsError(t.path)
        os.rename(staged, t.path)
    else:
        _link_new(staged, t.path)
    t.staged = None
    done[-1] = (t, backup, True)


def _roll_back(done: list[tuple[_Target, Path | None, bool]]) -> None:
    """Undo a partial publish: remove what this run placed, put every backup back."""
    for t, backup, placed in reversed(done):
        with contextlib.suppress(OSError):
            if placed and t.is_dir:  # this run put it there a moment ago
                shutil.rmtree(t.path)
            elif placed:
                os.unlink(t.path)
            if backup is not None:
                os.rename(backup, t.path)


def _publish_error(exc: BaseException) -> InputError | None:
    """The one-line error for a failed publish; None = re-raise `exc` as it is (not a file problem)."""
    if isinstance(exc, FileExistsError):
        return InputError(f"{exc.args[0]}: appeared while this run was writing; refusing to overwrite")
    if isinstance(exc, OSError):
        where = exc.filename or "output"
        return InputError(f"{where}: cannot publish the output ({exc.strerror})")
    return None


def _link_new(staged: Path, target: Path) -> None:
    """Publish a new file without ever replacing one that appeared meanwhile."""
    try:
        os.link(staged, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(target):
            raise FileExistsError(target) from None
        os.rename(staged, target)
        return
    os.unlink(staged)


def _as_set(paths: Iterable[PathLike] | None) -> set[str]:
    return {os.path.abspath(os.fspath(p)) for p in (paths or ()) if p is not None}


@contextlib.contextmanager
def outputs(
    targets: Iterable[PathLike],
    *,
    inputs: Iterable[PathLike | None] = (),
    secret: Iterable[PathLike] = (),
    dirs: Iterable[PathLike] = (),
    replace: bool | Iterable[PathLike] = False,
    ledger: PathLike | None = None,
    action: str | None = None,
    dir_mode: int = 0o777,
) -> Iterator[Staging]:
    """Stage a run's outputs; refuse unsafe ones before any work; publish only on `stage.publish()`.

    targets  every path the run may write (files; the ones in `dirs` are directories).
    inputs   files or directories the run reads: no target (nor the ledger) may resolve to one
             (symlinks followed, hard links by inode), no directory target may contain one.
    secret   targets created 0600 (directories 0700) from their first byte; a directory listed
             here that the run has to create (a target's parent) is created 0700.
    replace  True or the targets that may replace an existing file: only a file whose name and
             sha256 an `ok` entry (of `action`, when given) in `ledger` records as an output, i.e.
             a file this tool wrote earlier and nobody changed since; with no ledger the command's
             word is taken. Every other existing target is refused; directories are never replaced.
    ledger   the ledger the caller appends to before publishing: refused when it is an input or a
             target, is a directory, or lies in a directory that does not exist and is not created.
    dir_mode mode for the directories this run creates (the umask applies); existing ones keep theirs.

    Inside the block write to `stage.path(t)` / `stage.dir(t)` (or `stage.write_table/text/bytes`),
    record `stage.artifacts()` in the ledger, then call `stage.publish()`. On leaving the block
    without publishing (an exception included) the staged files and the empty directories this run
    created are removed; nothing that existed before is touched.
    """
    dir_set, secret_set = _as_set(dirs), _as_set(secret)
    target_paths = [Path(os.path.abspath(os.fspath(t))) for t in targets]
    replace_set = {str(p) for p in target_paths} if replace is True else _as_set(replace or ())
    input_paths = [Path(p) for p in inputs if p is not None]
    ledger_path = Path(ledger) if ledger is not None else None
    if len(set(target_paths)) != len(target_paths):
        raise ValueError("outputs: a target is declared twice")
    _check_not_inputs(target_paths, input_paths, dir_set)
    if ledger_path is not None:
        _check_ledger(ledger_path, input_paths, target_paths, dir_set)
    recorded = _RecordedOutputs(ledger_path, action)
    specs = [_target_spec(target, str(target) in dir_set, str(target) in secret_set, replace_set, recorded)
             for target in target_paths]

    stage = Staging(specs, ledger_path, dir_mode, secret_set)
    try:
        yield stage
    finally:
        stage._discard()


def _check_not_inputs(target_paths: list[Path], input_paths: list[Path], dir_set: set[str]) -> None:
    """No output may be an input, and no output directory may hold one."""
    for target in target_paths:
        for source in input_paths:
            if same_file(target, source):
                raise InputError(f"{target}: this output is the input {source}; refusing to overwrite an input")
            if str(target) in dir_set and os.path.lexists(source) and _within(source, target):
                raise InputError(f"{target}: this output directory holds the input {source}; refusing to replace it")


def _check_ledger(ledger_path: Path, input_paths: list[Path], target_paths: list[Path], dir_set: set[str]) -> None:
    """The ledger is a regular file (or a new one) that is neither an input nor an output."""
    for source in input_paths:
        if same_file(ledger_path, source):
            raise InputError(f"{ledger_path}: the ledger is the input {source}; refusing to append to an input")
    for target in target_paths:
        if same_file(ledger_path, target):
            raise InputError(f"{ledger_path}: the ledger is also an output of this run; refusing")
    if ledger_path.is_dir():
        raise InputError(f"{ledger_path}: is a directory, not a ledger file")
    if ledger_path.exists() and not ledger_path.is_file():
        raise InputError(f"{ledger_path}: is not a regular file, not a ledger file")
    _check_ledger_place(ledger_path, target_paths, dir_set)


def _check_ledger_place(ledger_path: Path, target_paths: list[Path], dir_set: set[str]) -> None:
    """The ledger's directory exists (or this run creates it) and is not an output directory."""
    for target in target_paths:
        if str(target) in dir_set and _within(ledger_path, target):
            raise InputError(f"{ledger_path}: the ledger cannot live inside the output directory {target} "
                             "that this run creates; give --ledger elsewhere")
    parent = ledger_path.parent if str(ledger_path.parent) else Path(".")
    parent_abs = Path(os.path.abspath(parent))
    will_create = not parent.exists() and any(parent_abs in t.parents for t in target_paths)
    if not parent.is_dir() and not will_create:
        raise InputError(f"{parent}: ledger directory does not exist")


class _RecordedOutputs:
    """(name, sha256) of the outputs the ledger records, read on first use (only when a file is replaced)."""

    def __init__(self, ledger: Path | None, action: str | None) -> None:
        self.ledger, self._action = ledger, action
        self._found: set[tuple[str, str]] | None = None

    def __contains__(self, item: object) -> bool:
        if self._found is None:
            self._found = _recorded_outputs(self.ledger, self._action)
        return item in self._found


def _target_spec(target: Path, is_dir: bool, secret: bool, replace_set: set[str],
                 recorded: _RecordedOutputs) -> _Target:
    """Check that `target` can be written; an existing file only when it may be replaced."""
    _check_parent(target)
    if os.path.islink(target):
        raise InputError(f"{target}: is a symbolic link; refusing to replace it")
    replaces = os.path.lexists(target)
    if replaces:
        _check_replaceable(target, is_dir, replace_set, recorded)
    return _Target(target, is_dir, secret, replaces)


def _check_replaceable(target: Path, is_dir: bool, replace_set: set[str], recorded: _RecordedOutputs) -> None:
    """An existing target is replaced only when allowed and, with a ledger, recorded there unchanged."""
    if is_dir or target.is_dir():
        raise InputError(f"{target}: already exists; refusing to replace a directory")
    if not target.is_file():
        raise InputError(f"{target}: exists and is not a regular file; refusing to replace it")
    if str(target) not in replace_set:
        raise InputError(f"{target}: already exists; refusing to overwrite (remove it or choose another output)")
    if recorded.ledger is not None and (target.name, _sha_or_none(target)) not in recorded:
        raise InputError(
            f"{target}: already exists and is not an unchanged output recorded in {recorded.ledger}; "
            "refusing to overwrite (remove it or choose another output)"
        )


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _check_parent(target: Path) -> None:
    """The nearest existing ancestor must be a writable directory (so staging can start)."""
    parent = target.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir() and parent == target.parent:
        raise InputError(f"{parent}: exists and is not a directory")
    if not parent.is_dir():
        raise InputError(f"{target.parent}: cannot create output directory ({parent} is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent}: directory is not writable")


# --- single bookkeeping files (always replaced; not for user-named outputs) --------------------


@contextlib.contextmanager
def atomic_path(path: PathLike, mode: int = 0o666) -> Iterator[Path]:
    """Yield a new file beside `path`, created with `mode`; rename it onto `path` if the block succeeds."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise InputError(f"{directory}: output directory does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{directory}: output directory is not writable")
    tmp = _hidden_beside(target, "tmp")
    _create(tmp, mode)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(path, 0o666 if mode is None else mode) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_table(frame: pd.DataFrame, path: PathLike) -> Path:
    """Write a DataFrame atomically as CSV or Parquet, chosen by the suffix (replaces the file)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{target}: unsupported table format {suffix!r} (use .csv or .parquet)")
    with atomic_path(target) as tmp:
        _write_frame(frame, tmp, suffix)
    return target


def ensure_output_dir(path: PathLike) -> Path:
    """Create `path` (and parents) or fail with one line; an existing directory keeps its mode."""
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


# --- hashes, locks, JSON ----------------------------------------------------------------------


def sha256_file(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def file_lock(lock_path: PathLike) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `lock_path` (created if missing) for the block.

    The one lock of the project (ledger appends, witness files, the budget store): a lock file that
    cannot be created or opened is one InputError line naming it.
    """
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise InputError(f"{lock_path}: cannot create or open this lock file ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- reading tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowOrigin:
    """Where each data row of a table sits in its file, so messages quote the file's own place."""

    file: str
    lines: tuple[int, ...] | None  # CSV: the line each data record starts on (header = line 1)

    def __call__(self, position: int) -> str:
        """'line 9' (CSV) or 'row 8' (Parquet: 1-based data row) for 0-based data row `position`."""
        if self.lines is not None and 0 <= position < len(self.lines):
            return f"line {self.lines[position]}"
        return f"row {position + 1}"


def _scan_csv(src: Path) -> tuple[list[str], list[int]]:
    """Header and the file line each data record starts on; ragged rows are one line, never padded."""
    header, starts = scan_csv_records(src)
    return header, list(starts)


def scan_csv_records(src: Path) -> tuple[list[str], Iterator[int]]:
    """The header (checked now) and an iterator over the file line each data record starts on, read as
    it goes (the file is never whole in memory); a ragged or malformed row is one InputError line."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    handle = open(src, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the iterator or here
    reader = csv.reader(handle, skipinitialspace=True, strict=False)
    try:
        header: list[str] = []
        while not header:
            header = next(reader)
        seen: set[str] = set()
        for position, name in enumerate(header, start=1):
            if name in seen:
                raise InputError(f"{src}: header field {position} repeats a column name; names must be unique")
            seen.add(name)
    except StopIteration:
        handle.close()
        raise InputError(f"{src}: empty file (no header row)") from None
    except csv.Error as exc:
        handle.close()
        raise InputError(f"{src}: malformed CSV near line {reader.line_num} ({str(exc).splitlines()[0]})") from None
    except BaseException:
        handle.close()
        raise
    return header, _record_starts(src, handle, reader, len(header))


def _record_starts(src: Path, handle: IO[str], reader: Any, expected: int) -> Iterator[int]:
    """The start line of each data record after the header (blank lines skipped, as pandas does)."""
    with handle:
        start = reader.line_num + 1
        try:
            for record in reader:
                blank = not record or (len(record) == 1 and record[0] == "" and expected > 1)
                if not blank and len(record) != expected:
                    raise InputError(
                        f"{src}: line {start} has {len(record)} field{'s' * (len(record) != 1)}, expected {expected}"
                    )
                if not blank:
                    yield start
                start = reader.line_num + 1
        except csv.Error as exc:
            raise InputError(f"{src}: malformed CSV near line {reader.line_num} ({str(exc).splitlines()[0]})") from None


def _check_finite(frame: pd.DataFrame, src: Path, lines: Sequence[int] | None) -> None:
    import numpy as np

    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind != "f":
            continue
        bad = np.flatnonzero(np.isinf(column.to_numpy(dtype="float64", na_value=np.nan)))
        if bad.size:
            where = f"line {lines[bad[0]]}" if lines is not None else f"row {int(bad[0]) + 1}"
            raise InputError(f"{src}: {where}: column {name!r} holds an infinite number")


@overload
def read_table(path: PathLike, text_columns: Iterable[str] = (), with_origin: Literal[False] = False) -> pd.DataFrame: ...
@overload
def read_table(path: PathLike, text_columns: Iterable[str] = (), *,
               with_origin: Literal[True]) -> tuple[pd.DataFrame, RowOrigin]: ...
def read_table(path: PathLike, text_columns: Iterable[str] = (),
               with_origin: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, RowOrigin]:
    """Read a CSV or Parquet file; every failure becomes one InputError line naming the file.

    `text_columns` are read from CSV as text, so zip codes and ID numbers keep their leading zeros.
    Errors name the file's own place: 'line N' for CSV (header = line 1), 'row N' (1-based data row)
    for Parquet. A CSV row with too few or too many fields is refused, never padded; an infinite
    number is refused. `with_origin=True` returns `(frame, RowOrigin)`: `origin(i)` names the file's
    place of data row i, for messages about rows found later (non-finite features, say).
    """
    src = Path(path)
    check_readable(src)
    suffix = src.suffix.lower()
    lines: list[int] | None
    if suffix == ".parquet":
        frame, lines = _read_parquet(src), None
    elif suffix == ".csv":
        frame, lines = _read_csv(src, text_columns)
    else:
        raise InputError(f"{src}: unsupported table format {suffix!r} (use .csv or .parquet)")
    _check_finite(frame, src, lines)
    return (frame, RowOrigin(str(src), None if lines is None else tuple(lines))) if with_origin else frame


def check_readable(src: Path) -> None:
    if not src.exists():
        raise InputError(f"{src}: no such file")
    if not src.is_file():
        raise InputError(f"{src}: not a file")
    if not os.access(src, os.R_OK):
        raise InputError(f"{src}: not readable")
    if src.stat().st_size == 0:
        raise InputError(f"{src}: empty file")


def _read_parquet(src: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_parquet(src)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{src}: not a readable Parquet file ({type(exc).__name__})") from None
    if frame.empty:
        raise InputError(f"{src}: table has no rows")
    return frame


def check_text(src: Path) -> None:
    """UTF-8 without NUL bytes, or one line naming the first bad line; read a block at a time."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    nul_line = 0  # the first NUL's line: reported once the whole file is known to be UTF-8
    with open(src, "rb") as handle:
        while True:
            block = handle.read(_TEXT_BLOCK)
            pending = decoder.getstate()[0]  # the bytes of a character cut by the last block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = lines_before + (pending + block)[: max(exc.start, 0)].count(b"\n") + 1
                raise InputError(f"{src}: not UTF-8 text (invalid byte at line {line})") from None
            if b"\x00" in block and not nul_line:
                nul_line = lines_before + block[: block.index(b"\x00")].count(b"\n") + 1
            if not block:
                break
            lines_before += block.count(b"\n")
    if nul_line:
        raise InputError(f"{src}: line {nul_line} holds a NUL byte; not a text table")


def _read_csv(src: Path, text_columns: Iterable[str]) -> tuple[pd.DataFrame, list[int]]:
    """The frame and the file line of each data row; the csv scan and pandas must agree on the rows."""
    import pandas as pd

    check_text(src)
    header, lines = _scan_csv(src)
    try:
        dtype = {c: "str" for c in text_columns if c in header}
        frame = pd.read_csv(src, skipinitialspace=True, dtype=dtype or None, index_col=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{src}: empty file (no header row)") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        raise InputError(f"{src}: malformed CSV ({type(exc).__name__})") from None
    if frame.empty:
        raise InputError(f"{src}: table has a header but no rows")
    if len(frame) != len(lines):  # the two parsers disagree: refuse rather than guess
        raise InputError(f"{src}: malformed CSV (ambiguous quoting or line breaks)")
    return frame, lines
