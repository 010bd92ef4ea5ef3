"""Nothing lost: the data-loss scenarios of issue 11 (finding 1), each refused with one line, exit 2,
and every file's bytes and mode unchanged; plus the staged-output mechanism and hostile CSV rows."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from anonymize.errors import InputError
from privmodel.artifacts.ledger import read_entries
from privmodel.cli import main
from privmodel.core.fileio import outputs, read_table, same_file
from privmodel.core.keys import init_keys
from tests.test_anonymize_pipeline import crafted

POLICY = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"
LEDGER_FILES = ("ledger.jsonl", "ledger.jsonl.head", "ledger.jsonl.lock")


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, int]]:
    """Every path under `root` (root included) -> (sha256 of its bytes or 'dir', mode)."""
    found: dict[str, tuple[str, int]] = {".": ("dir", stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        if path.name in skip:
            continue
        st = path.lstat()
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(st.st_mode) else "other")  # never read a FIFO (it would block)
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return found


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run `privmodel ARGS` in this process; (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0), capsys.readouterr().err


def refused(capsys: pytest.CaptureFixture, expected: str, *args: str) -> str:
    code, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A release made by `privmodel anonymize` (with an escrow), and the keys it was made with."""
    root = tmp_path_factory.mktemp("safety")
    keys = root / "keys"
    init_keys(keys, actor="bank-a")
    raw = root / "customers.csv"
    crafted().to_csv(raw, index=False)
    out = root / "rel"
    with pytest.raises(SystemExit) as exc:
        main(["anonymize", str(raw), "--policy", str(POLICY), "--keys", str(keys), "--out", str(out)])
    assert exc.value.code in (0, None)
    assert (out / "release.escrow.parquet").is_file()
    return {"root": root, "keys": keys, "raw": raw, "out": out}


def copy_release(release: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the release directory (bytes and ledger), so a test may try to break it."""
    import shutil

    target = tmp_path / "rel"
    shutil.copytree(release["out"], target)
    return target


# --- anonymize ----------------------------------------------------------------------------------


def test_failed_anonymize_into_existing_release_keeps_the_old_release(release, tmp_path, capsys) -> None:
    out = copy_release(release, tmp_path)
    tiny = tmp_path / "tiny.csv"
    crafted().head(2).to_csv(tiny, index=False)
    before = snapshot(out, skip=LEDGER_FILES)
    raw_before = snapshot(tmp_path / "rel")
    assert raw_before
    refused(capsys, "is larger than the 2 rows left",
            "anonymize", tiny, "--policy", POLICY, "--keys", release["keys"], "--out", out)
    assert snapshot(out, skip=LEDGER_FILES) == before
    last = read_entries(out / "ledger.jsonl")[-1]
    assert last["action"] == "anonymize.release" and last["outcome"] == "failed" and last["outputs"] == []


def test_anonymize_with_a_bad_ledger_leaves_the_input_and_the_output_dir(release, tmp_path, capsys) -> None:
    raw = tmp_path / "raw.csv"
    crafted().to_csv(raw, index=False)
    bad = tmp_path / "not-a-ledger.jsonl"
    bad.write_text("this is not a ledger\n")
    out = tmp_path / "fresh"
    before = snapshot(tmp_path)
    code, err = cli(capsys, "anonymize", raw, "--policy", POLICY, "--keys", release["keys"], "--out", out,
                    "--ledger", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    print(err)
    # raw.csv and the bad ledger intact, no "fresh" directory left (the ledger module may leave its lock file)
    assert snapshot(tmp_path, skip=("not-a-ledger.jsonl.lock",)) == before
    # a ledger that is a directory: refused before any work
    refused(capsys, "is a directory, not a ledger file",
            "anonymize", raw, "--policy", POLICY, "--keys", release["keys"], "--out", out, "--ledger", tmp_path)
    assert snapshot(tmp_path, skip=("not-a-ledger.jsonl.lock",)) == before


def test_anonymize_refuses_an_input_inside_its_outputs(release, tmp_path, capsys) -> None:
    out = tmp_path / "dir"
    out.mkdir()
    raw = out / "release.csv"
    crafted().to_csv(raw, index=False)
    before = snapshot(tmp_path)
    audit = tmp_path / "audit.jsonl"
    refused(capsys, "this output is the input",
            "anonymize", raw, "--policy", POLICY, "--keys", release["keys"], "--out", out, "--format", "csv",
            "--ledger", audit)
    assert read_entries(audit)[-1]["outcome"] == "failed"  # the refusal is recorded in the named ledger
    before = snapshot(tmp_path, skip=("audit.jsonl", "audit.jsonl.head", "audit.jsonl.lock"))
    # the ledger may not be the input either (it would append signed lines to the raw data)
    other = tmp_path / "elsewhere"
    refused(capsys, "the ledger is the input",
            "anonymize", raw, "--policy", POLICY, "--keys", release["keys"], "--out", other, "--ledger", raw)
    assert snapshot(tmp_path, skip=("audit.jsonl", "audit.jsonl.head", "audit.jsonl.lock")) == before


def test_anonymize_refuses_to_overwrite_a_file_it_did_not_write(release, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.txt").write_text("my own notes\n")
    before = snapshot(tmp_path)
    refused(capsys, "report.txt: already exists and is not an unchanged output recorded in",
            "anonymize", release["raw"], "--policy", POLICY, "--keys", release["keys"], "--out", out)
    assert snapshot(tmp_path) == before


def test_anonymize_rerun_replaces_its_own_release(release, tmp_path, capsys) -> None:
    out = copy_release(release, tmp_path)
    code, err = cli(capsys, "anonymize", release["raw"], "--policy", POLICY, "--keys", release["keys"], "--out", out,
                    "--partner", "insurer")
    assert code == 0, err
    entry = read_entries(out / "ledger.jsonl")[-1]
    assert entry["outcome"] == "ok" and entry["params"]["partner"] == "insurer"
    recorded = {a["name"]: a["sha256"] for a in entry["outputs"]}
    for name, digest in recorded.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert stat.S_IMODE((out / "release.escrow.parquet").stat().st_mode) == 0o600
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers


# --- rotate-keys ---------------------------------------------------------------------------------


def test_failed_rotate_keys_leaves_release_and_escrow(release, tmp_path, capsys) -> None:
    out = copy_release(release, tmp_path)
    new_keys = tmp_path / "keys-new"
    init_keys(new_keys, actor="bank-a")
    before = snapshot(tmp_path, skip=LEDGER_FILES)
    base = ["rotate-keys", out / "release.parquet", "--policy", POLICY, "--old-keys", release["keys"],
            "--new-keys", new_keys, "--keys", release["keys"]]
    # in place: the output is the input
    refused(capsys, "this output is the input", *base, "--out", out / "release.parquet")
    # via a symlink to the release
    link = tmp_path / "link.parquet"
    link.symlink_to(out / "release.parquet")
    before_link = snapshot(tmp_path, skip=LEDGER_FILES)
    refused(capsys, "this output is the input", *base, "--out", link)
    # the escrow it would write beside --out is the escrow it reads
    refused(capsys, "this output is the input", *base, "--out", out / "release.csv",
            "--escrow", out / "release.escrow.csv")
    assert snapshot(tmp_path, skip=LEDGER_FILES) == before_link
    link.unlink()
    assert snapshot(tmp_path, skip=LEDGER_FILES) == before
    assert [e["outcome"] for e in read_entries(out / "ledger.jsonl")[-2:]] == ["failed"] * 2  # refusals recorded


def test_rotate_keys_failing_after_staging_leaves_the_earlier_rotation(release, tmp_path, capsys) -> None:
    out = copy_release(release, tmp_path)
    new_keys = tmp_path / "keys-new"
    init_keys(new_keys, actor="bank-a")
    rotated = tmp_path / "rotated" / "release.parquet"
    args = ["rotate-keys", out / "release.parquet", "--policy", POLICY, "--new-keys", new_keys,
            "--keys", release["keys"], "--out", rotated]
    code, err = cli(capsys, *args, "--old-keys", release["keys"])
    assert code == 0, err
    assert stat.S_IMODE((rotated.parent / "release.escrow.parquet").stat().st_mode) == 0o600
    before = snapshot(tmp_path, skip=LEDGER_FILES)
    # the wrong old keys: the escrow does not match; the earlier rotation and its escrow stay as they were
    refused(capsys, "", *args, "--old-keys", new_keys)
    assert snapshot(tmp_path, skip=LEDGER_FILES) == before
    assert read_entries(rotated.parent / "ledger.jsonl")[-1]["outcome"] == "failed"


# --- reidentify ----------------------------------------------------------------------------------


def _reid(release: dict[str, Path], source: Path, out: Path, *extra: str) -> list[str]:
    return ["reidentify", source, "--column", "national_id", "--keys", release["keys"], "--policy", POLICY,
            "--out", out, *extra]


def test_reidentify_never_replaces_the_release(release, tmp_path, capsys) -> None:
    out = copy_release(release, tmp_path)
    rel = out / "release.parquet"
    link = tmp_path / "ids.parquet"
    link.symlink_to(rel)
    hard = tmp_path / "hard.parquet"
    os.link(rel, hard)
    before = snapshot(tmp_path, skip=LEDGER_FILES)
    for target in (rel, link, hard, out / "release.escrow.parquet"):
        refused(capsys, "this output is the input", *_reid(release, rel, target))
    # also through a relative path with '..'
    refused(capsys, "this output is the input", *_reid(release, rel, out / ".." / "rel" / "release.parquet"))
    assert snapshot(tmp_path, skip=LEDGER_FILES) == before


def test_failed_reidentify_leaves_notes(release, tmp_path, capsys) -> None:
    rel = release["out"] / "release.parquet"
    notes_txt, notes_csv = tmp_path / "notes.txt", tmp_path / "notes.csv"
    notes_txt.write_text("meeting notes\n")
    notes_csv.write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    refused(capsys, "unsupported table format '.txt'", *_reid(release, rel, notes_txt))
    refused(capsys, "notes.csv: already exists", *_reid(release, rel, notes_csv))
    assert snapshot(tmp_path) == before
    # an earlier re-identification (recorded in the ledger) survives a later failing run into the same file
    ids = tmp_path / "ids.csv"
    code, err = cli(capsys, *_reid(release, rel, ids))
    assert code == 0, err
    kept = snapshot(tmp_path, skip=LEDGER_FILES)
    refused(capsys, "--rows", *_reid(release, rel, ids, "--rows", "99999"))
    assert snapshot(tmp_path, skip=LEDGER_FILES) == kept
    # and a good rerun replaces its own earlier output (0600 again)
    code, err = cli(capsys, *_reid(release, rel, ids, "--rows", "1"))
    assert code == 0, err
    assert len(pd.read_csv(ids)) == 1 and stat.S_IMODE(ids.stat().st_mode) == 0o600


def _watch_modes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Record (event, name, mode) whenever a file is created or moved into place."""
    seen: list[tuple[str, str, int]] = []
    real_open, real_link, real_replace, real_rename = os.open, os.link, os.replace, os.rename

    def spy_open(path, flags, mode=0o777, *a, **k):
        fd = real_open(path, flags, mode, *a, **k)
        if flags & os.O_CREAT:
            seen.append(("create", os.path.basename(os.fspath(path)), stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd

    def spy_move(real, event):
        def move(src, dst, *a, **k):
            if os.path.isfile(src):
                seen.append((event, os.path.basename(os.fspath(dst)), stat.S_IMODE(os.stat(src).st_mode)))
            return real(src, dst, *a, **k)
        return move

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "link", spy_move(real_link, "publish"))
    monkeypatch.setattr(os, "replace", spy_move(real_replace, "publish"))
    monkeypatch.setattr(os, "rename", spy_move(real_rename, "publish"))
    return seen


def test_reidentified_ids_are_0600_from_the_first_byte(release, tmp_path, capsys, monkeypatch) -> None:
    rel = release["out"] / "release.parquet"
    ids = tmp_path / "ids.parquet"
    seen = _watch_modes(monkeypatch)
    code, err = cli(capsys, *_reid(release, rel, ids))
    monkeypatch.undo()
    assert code == 0, err
    staged = [m for event, name, m in seen if event == "create" and name.startswith(".ids.parquet.")]
    published = [m for event, name, m in seen if event == "publish" and name == "ids.parquet"]
    assert staged == [0o600] and published == [0o600], seen
    assert stat.S_IMODE(ids.stat().st_mode) == 0o600


def test_escrow_is_0600_from_the_first_byte(release, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "rel2"
    seen = _watch_modes(monkeypatch)
    code, err = cli(capsys, "anonymize", release["raw"], "--policy", POLICY, "--keys", release["keys"], "--out", out)
    monkeypatch.undo()
    assert code == 0, err
    staged = [m for event, name, m in seen if event == "create" and name.startswith(".release.escrow.parquet.")]
    published = [m for event, name, m in seen if event == "publish" and name == "release.escrow.parquet"]
    assert staged == [0o600] and published == [0o600], seen
    assert stat.S_IMODE((out / "release.escrow.parquet").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "release.parquet").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- keys tls ------------------------------------------------------------------------------------


def test_keys_tls_keeps_an_existing_directory_mode(tmp_path, capsys) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    code, err = cli(capsys, "keys", "tls", shared)
    assert code == 0, err
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "ca.key").stat().st_mode) == 0o600
    before = snapshot(shared)
    # issue 11: partners make their own node keys (`federate keygen`); the coordinator's tool refuses to
    refused(capsys, "no longer creates partners' node keys", "keys", "tls", shared, "--node", "bank-a")
    refused(capsys, "no longer creates partners' node keys", "keys", "tls", tmp_path / "new", "--node", "bank-a")
    assert snapshot(shared) == before and not (tmp_path / "new").exists()
    fresh = tmp_path / "fresh" / "tls"
    code, err = cli(capsys, "keys", "tls", fresh)
    assert code == 0, err
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700  # a directory it creates is private


# --- the mechanism itself --------------------------------------------------------------------------


def test_outputs_refuse_inputs_before_any_work(tmp_path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n")
    (tmp_path / "sym.csv").symlink_to(data)
    os.link(data, tmp_path / "hard.csv")
    for target in (data, tmp_path / "sym.csv", tmp_path / "hard.csv", tmp_path / "x" / ".." / "data.csv"):
        with pytest.raises(InputError, match="this output is the input"), outputs([target], inputs=[data]):
            pytest.fail("the block must not run")
    with pytest.raises(InputError, match="holds the input"), outputs([tmp_path], inputs=[data], dirs=[tmp_path]):
        pytest.fail("the block must not run")
    with pytest.raises(InputError, match="the ledger is the input"), outputs([tmp_path / "o.csv"], inputs=[data],
                                                                             ledger=tmp_path / "sym.csv"):
        pytest.fail("the block must not run")
    with pytest.raises(InputError, match="also an output"), outputs([tmp_path / "o.csv"], ledger=tmp_path / "o.csv"):
        pytest.fail("the block must not run")
    assert same_file(data, tmp_path / "hard.csv") and not same_file(data, tmp_path / "o.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "hard.csv", "sym.csv"]


def test_failure_removes_only_what_the_run_created(tmp_path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    keep.chmod(0o1777)
    mine = keep / "mine.txt"
    mine.write_text("mine")
    new_dir_file = tmp_path / "a" / "b" / "out.txt"
    with pytest.raises(RuntimeError), outputs([keep / "out.txt", new_dir_file]) as stage:
        stage.write_text(keep / "out.txt", "x")
        stage.write_text(new_dir_file, "y")
        assert (tmp_path / "a" / "b").is_dir()
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert sorted(p.name for p in keep.iterdir()) == ["mine.txt"] and mine.read_text() == "mine"
    assert stat.S_IMODE(keep.stat().st_mode) == 0o1777
    # leaving the block without publish() publishes nothing either
    with outputs([keep / "out.txt"]) as stage:
        stage.write_text(keep / "out.txt", "x")
    assert sorted(p.name for p in keep.iterdir()) == ["mine.txt"]


def test_publish_is_all_or_nothing(tmp_path, monkeypatch) -> None:
    ledger = tmp_path / "ledger.jsonl"
    old = tmp_path / "old.txt"
    old.write_text("earlier output")
    digest = hashlib.sha256(b"earlier output").hexdigest()
    entry = {"action": "t", "outcome": "ok", "outputs": [{"name": "old.txt", "sha256": digest}]}
    ledger.write_text(json.dumps(entry) + "\n")
    real_link, real_rename = os.link, os.rename

    def failing(real):
        def move(src, dst, *a, **k):
            if os.path.basename(os.fspath(dst)) == "second.txt":
                raise PermissionError(13, "Permission denied", os.fspath(dst))
            return real(src, dst, *a, **k)
        return move

    with outputs([old, tmp_path / "first.txt", tmp_path / "second.txt"], replace=[old], ledger=ledger,
                 action="t") as stage:
        for t in (old, tmp_path / "first.txt", tmp_path / "second.txt"):
            stage.write_text(t, "new")
        monkeypatch.setattr(os, "link", failing(real_link))
        monkeypatch.setattr(os, "rename", failing(real_rename))
        with pytest.raises(InputError, match="cannot publish"):
            stage.publish()
        monkeypatch.undo()
    assert old.read_text() == "earlier output"  # restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl", "old.txt"]
    # a changed file is no longer "the tool's own output": refused
    old.write_text("edited by hand")
    with pytest.raises(InputError, match="not an unchanged output recorded"), outputs([old], replace=True,
                                                                                      ledger=ledger, action="t"):
        pytest.fail("the block must not run")


# --- hostile CSV -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,c,d,e,f,g,h\n" + "1,2,3,4,5,6,7,8\n" * 5 + "1,2,3,4,5\n", "line 7 has 5 fields, expected 8"),
        ("a,b,c\n1,2,3\n\n\n4,5,6,7\n", "line 5 has 4 fields, expected 3"),  # blank lines still count
        ('a,b,c\n1,"two\nlines",3\n4,5\n', "line 4 has 2 fields, expected 3"),
        ("a,b,c\n1,2,3,4\n5,6,7,8\n", "line 2 has 4 fields, expected 3"),  # no silent index column
        ("a,b,c\n1,2,3\n4,inf,6\n", "line 3: column 'b' holds an infinite number"),
        ("a,b\n1,1e999\n", "line 2: column 'b' holds an infinite number"),
        ("a,a\n1,2\n", "header field 2 repeats a column name; names must be unique"),
        ("a,b\n1,\x002\n", "line 2 holds a NUL byte; not a text table"),
    ],
)
def test_hostile_csv_rows_are_reported_by_file_line(tmp_path, text: str, message: str) -> None:
    src = tmp_path / "data.csv"
    src.write_text(text)
    with pytest.raises(InputError) as exc:
        read_table(src)
    assert str(exc.value) == f"{src}: {message}"


def test_row_origin_names_the_file_line(tmp_path) -> None:
    src = tmp_path / "data.csv"
    src.write_text('a,b\n1,x\n\n2,"multi\nline"\n3,z\n')
    frame, origin = read_table(src, with_origin=True)
    assert frame["a"].tolist() == [1, 2, 3]
    assert [origin(i) for i in range(3)] == ["line 2", "line 4", "line 6"]
    parquet = tmp_path / "data.parquet"
    frame.to_parquet(parquet)
    _, origin = read_table(parquet, with_origin=True)
    assert origin(0) == "row 1"


# --- the shared lock and JSON helpers ------------------------------------------------------------------


def test_json_ready_and_file_lock(tmp_path) -> None:
    import fcntl

    import numpy as np

    from anonymize.json_values import json_ready
    from privmodel.core.fileio import file_lock

    value = {1: np.float32("nan"), "a": (np.int64(3), {2, 1}), "b": np.array([1.5, np.inf]), "c": np.bool_(True),
             "d": pd.NA, "e": float("-inf")}
    assert json_ready(value) == {"1": None, "a": [3, [1, 2]], "b": [1.5, None], "c": True, "d": None, "e": None}
    json.dumps(json_ready(value), allow_nan=False)
    lock = tmp_path / "x.lock"
    with file_lock(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the block
        finally:
            os.close(fd)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after it
    os.close(fd)


def test_directory_targets_are_staged_whole_and_never_replaced(tmp_path) -> None:
    model = tmp_path / "model"
    with outputs([model], dirs=[model], ledger=tmp_path / "ledger.jsonl") as stage:
        staged = stage.dir(model)
        (staged / "weights.bin").write_bytes(b"w")
        (staged / "sub").mkdir()
        (staged / "sub" / "card.md").write_text("c")
        assert not model.exists()
        assert stage.artifacts() == [
            {"name": "model/sub/card.md", "sha256": hashlib.sha256(b"c").hexdigest()},
            {"name": "model/weights.bin", "sha256": hashlib.sha256(b"w").hexdigest()},
        ]
        assert stage.publish() == [model]
    assert (model / "sub" / "card.md").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(InputError, match="refusing to replace a directory"), outputs([model], dirs=[model]):
        pytest.fail("the block must not run")
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match="cannot live inside the output directory"), \
            outputs([fresh], dirs=[fresh], ledger=fresh / "ledger.jsonl"):
        pytest.fail("the block must not run")


def test_a_fifo_as_ledger_or_output_is_refused_not_waited_on(release, tmp_path) -> None:
    from tests.conftest import run_cli

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    before = snapshot(tmp_path)
    runs = [
        ("synth", "--customers", "20", "--out", tmp_path / "o", "--ledger", pipe, "--keys", release["keys"]),
        ("reidentify", release["out"] / "release.parquet", "--column", "national_id", "--keys", release["keys"],
         "--policy", POLICY, "--out", tmp_path / "ids.csv", "--ledger", pipe),
    ]
    for args in runs:
        done = run_cli(*map(str, args), timeout=60)  # a read of the FIFO would block: TimeoutExpired fails
        assert done.returncode == 2 and done.stderr.strip() == f"error: {pipe}: is not a regular file, not a ledger file"
    assert snapshot(tmp_path) == before
