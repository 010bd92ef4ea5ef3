"""Hostile input over the CLI (hypothesis): every bad input gets exit 2 and one line, never a traceback;
no file outside --out changes (a named ledger may only grow); nothing is left in --out on failure.

Each test counts the inputs it tried and how many were handled cleanly; `-s` prints the table, and
$PRIVMODEL_FUZZ_REPORT (a JSON-lines file) collects it for benchmarks/hostile_inputs.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privmodel.cli import main
from privmodel.core.keys import init_keys
from tests.test_anonymize_pipeline import crafted

POLICY = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"
MIN_TRIED = 15
BUDGET_STORE = "budget."  # budget.sqlite / budget.head (+ locks) beside the keys: grows on success, by design
FUZZ = settings(max_examples=22, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- running a command and checking the invariant ------------------------------------------------


def run_main(args: list[str]) -> tuple[int, str, str]:
    """`privmodel ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[str, int]]:
    """Every path under root (those in `skip` and below them excluded) -> (content hash or 'dir', mode)."""
    found: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.name.startswith(BUDGET_STORE):  # the organisation's budget store records lineage and charges
            continue
        st_ = path.lstat()
        kind = ("dir" if stat.S_ISDIR(st_.st_mode) else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(st_.st_mode) else "other")  # symlinks and FIFOs are not followed or read
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(st_.st_mode))
    return found


def _ledger_files(ledger: Path) -> set[Path]:
    return {ledger, ledger.with_name(ledger.name + ".head"), ledger.with_name(ledger.name + ".lock"),
            ledger.with_name(ledger.name + ".budget.lock")}


@dataclass
class Tally:
    """Inputs tried per command and how many were handled cleanly (the invariant held)."""

    tried: int = 0
    clean: int = 0
    accepted: int = 0  # valid inputs among them (exit 0)
    samples: list[str] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)  # distinct refusals, paths and quoted values removed


def check(tally: Tally, root: Path, args: list[str], out: Path | None = None, ledger: Path | None = None,
          may_succeed: bool = True, allowed: set[Path] | frozenset[Path] = frozenset()) -> int:
    """Run ARGS and assert the invariant; returns the exit code. `allowed`: paths a success may create."""
    ledger_before = ledger.read_bytes() if ledger is not None and ledger.is_file() else b""
    skip: set[Path] = set(allowed)
    if out is not None:
        skip.add(out)
    if ledger is not None:
        skip |= _ledger_files(ledger)
    out_before = snapshot(out, _ledger_files(out / "ledger.jsonl")) if out is not None and out.is_dir() else None
    out_existed = out is not None and os.path.lexists(out)
    before = snapshot(root, skip)
    tally.tried += 1
    code, stdout, stderr = run_main(args)
    text = stdout + stderr
    assert "Traceback" not in text, text
    assert code in ((0, 2) if may_succeed else (2,)), (code, text)
    if code == 2:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1, text
        assert lines[0].startswith(("error: ", "FAILED ")), text
        if out is not None:
            if not out_existed:
                assert not os.path.lexists(out), f"{out} left behind after a failure"
            elif out_before is not None:
                assert snapshot(out, _ledger_files(out / "ledger.jsonl")) == out_before
        if len(tally.samples) < 3:
            tally.samples.append(lines[0][:120])
        tally.kinds.add(re.sub(r"(/\S+|'[^']*'|\d+)", "_", lines[0])[:60])
    else:
        tally.accepted += 1
    assert snapshot(root, skip) == before, "a file outside --out changed"
    if ledger is not None and ledger.is_file():
        assert ledger.read_bytes().startswith(ledger_before), "the ledger was rewritten, not appended to"
    tally.clean += 1
    return code


def report(command: str, tally: Tally) -> None:
    assert tally.tried - tally.accepted >= MIN_TRIED, f"{command}: only {tally.tried - tally.accepted} bad inputs tried"
    assert tally.clean == tally.tried
    row = {"command": command, "tried": tally.tried, "clean": tally.clean, "accepted": tally.accepted,
           "rejected": tally.tried - tally.accepted, "distinct_refusals": len(tally.kinds),
           "refusals": sorted(tally.kinds)}
    print(f"\nhostile inputs: {command:<22} tried {tally.tried:3d}  handled cleanly {tally.clean:3d}  "
          f"(valid {tally.accepted}, refused with one line {tally.tried - tally.accepted}, "
          f"{len(tally.kinds)} distinct refusals)")
    if os.environ.get("PRIVMODEL_FUZZ_VERBOSE"):
        print("\n".join(f"    {k}" for k in sorted(tally.kinds)))
    target = os.environ.get("PRIVMODEL_FUZZ_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def sandbox(base: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(dir=base))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- shared material: keys, a valid CSV, a release, a ledger --------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz")
    keys = base / "keys"
    init_keys(keys, actor="fuzzer")
    raw = base / "customers.csv"
    crafted().to_csv(raw, index=False)
    rel = base / "rel"
    code, _, err = run_main(["anonymize", raw, "--policy", POLICY, "--keys", keys, "--out", rel])
    assert code == 0, err
    return {"base": base, "keys": keys, "raw": raw, "rel": rel}


def _copy_world(world: dict[str, Path], root: Path) -> dict[str, Path]:
    shutil.copytree(world["keys"], root / "keys")
    shutil.copytree(world["rel"], root / "rel")
    shutil.copy(world["raw"], root / "customers.csv")
    shutil.copy(POLICY, root / "policy.yaml")
    shutil.copy(POLICY.parent / "education.csv", root / "education.csv")  # a hierarchy file the policy names
    return {"keys": root / "keys", "rel": root / "rel", "raw": root / "customers.csv", "policy": root / "policy.yaml"}


# --- strategies ------------------------------------------------------------------------------------

junk_bytes = st.binary(min_size=0, max_size=400)
junk_text = st.text(min_size=0, max_size=40)


def mutate(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid file's bytes, damaged: truncated, a range deleted, junk inserted, a line doubled or cut."""
    n = len(data)
    lines = data.splitlines(keepends=True)
    return st.one_of(
        st.integers(0, n).map(lambda k: data[:k]),
        st.tuples(st.integers(0, n), st.integers(1, 64)).map(lambda t: data[: t[0]] + data[t[0] + t[1]:]),
        st.tuples(st.integers(0, n), junk_bytes).map(lambda t: data[: t[0]] + t[1] + data[t[0]:]),
        st.integers(0, max(len(lines) - 1, 0)).map(lambda i: b"".join(lines[: i + 1] + lines[i:])),
        st.integers(1, max(len(lines) - 1, 1)).map(
            lambda i: b"".join(lines[:i] + [b",".join(lines[i].split(b",")[:-2]) + b"\n"] + lines[i + 1:])),
        st.sampled_from([b"inf", b"nan", b"1e999", b"-1e309", b"\x00", b'"', b"\xff\xfe"]).flatmap(
            lambda tok: st.integers(0, n).map(lambda k: data[:k] + tok + data[k:])),
    )


# --- synth -------------------------------------------------------------------------------------------


SYNTH_BASE = {"customers": "40", "silos": "2", "heterogeneity": "0.5", "mess": "0.0", "fmt": "csv",
              "locale": "en_US", "out_kind": "new", "ledger_kind": "default"}
NUMBERS = ["nan", "inf", "-inf", "-0.5", "1.5", "1e308", "-0.0", "0.21"]
SYNTH_BREAKS = st.one_of(
    st.tuples(st.just("customers"), st.sampled_from(["0", "-1", "-1000000000000", "100000000000", "10000000000000"])),
    st.tuples(st.just("silos"), st.sampled_from(["0", "-3", "41", "1000"])),
    st.tuples(st.just("heterogeneity"), st.sampled_from(NUMBERS)),
    st.tuples(st.just("mess"), st.sampled_from(NUMBERS)),
    st.tuples(st.just("fmt"), st.sampled_from(["xlsx", "", "../x", "parquet\n"])),
    st.tuples(st.just("locale"), st.one_of(st.sampled_from(["xx_XX", "", "en_US\x00", "[/x]"]), junk_text)),
    st.tuples(st.just("out_kind"), st.sampled_from(["file", "under-file", "nested-new"])),
    st.tuples(st.just("ledger_kind"), st.sampled_from(["missing-dir", "is-dir", "garbage", "is-input", "fifo"])),
)


def test_fuzz_synth(world, tmp_path) -> None:
    tally = Tally()

    @FUZZ
    @given(breaks=st.lists(SYNTH_BREAKS, min_size=0, max_size=2))
    def run(breaks) -> None:
        p = {**SYNTH_BASE, **dict(breaks)}
        with sandbox(tmp_path) as root:
            shutil.copytree(world["keys"], root / "keys")
            (root / "file.txt").write_text("not a directory\n")
            out = {"new": root / "out", "file": root / "file.txt", "under-file": root / "file.txt" / "out",
                   "nested-new": root / "a" / "b" / "out"}[p["out_kind"]]
            args = ["synth", "--customers", p["customers"], "--silos", p["silos"], "--heterogeneity",
                    p["heterogeneity"], "--mess-rate", p["mess"], "--format", p["fmt"], "--locale", p["locale"],
                    "--out", out, "--keys", root / "keys"]
            ledger = {"default": None, "missing-dir": root / "nowhere" / "l.jsonl", "is-dir": root / "keys",
                      "garbage": root / "garbage.jsonl", "is-input": root / "file.txt",
                      "fifo": root / "pipe"}[p["ledger_kind"]]
            if p["ledger_kind"] == "fifo":
                os.mkfifo(ledger)  # reading it would block: must be refused, not waited on
            if p["ledger_kind"] == "garbage":
                ledger.write_bytes(b"not a ledger\n")
            if ledger is not None:
                args += ["--ledger", ledger]
            # the new directories --out names (for a/b/out: a and below) may appear on success only
            watched_out = {"new": out, "nested-new": root / "a"}.get(p["out_kind"])
            check(tally, root, args, out=watched_out, ledger=ledger if p["ledger_kind"] == "garbage" else None,
                  may_succeed=True)  # some "breaks" are valid (-0.0, a nested new --out): exit 0 then

    run()
    report("synth", tally)


# --- anonymize -----------------------------------------------------------------------------------------


def test_fuzz_anonymize(world, tmp_path) -> None:
    tally = Tally()
    csv_bytes = world["raw"].read_bytes()
    policy_bytes = POLICY.read_bytes()

    @FUZZ
    @given(
        data=st.one_of(mutate(csv_bytes), junk_bytes),
        policy=st.one_of(st.just(policy_bytes), mutate(policy_bytes), junk_bytes),
        suffix=st.sampled_from([".csv", ".csv", ".parquet", ".txt"]),
        fmt=st.sampled_from(["parquet", "csv", "json"]),
        out_kind=st.sampled_from(["new", "release-dir", "input-dir"]),
    )
    def run(data, policy, suffix, fmt, out_kind) -> None:
        with sandbox(tmp_path) as root:
            w = _copy_world(world, root)
            src = root / f"data{suffix}"
            src.write_bytes(data)
            w["policy"].write_bytes(policy)
            out = {"new": root / "out", "release-dir": w["rel"], "input-dir": root}[out_kind]
            args = ["anonymize", src, "--policy", w["policy"], "--keys", w["keys"], "--out", out, "--format", fmt]
            if out_kind == "input-dir":  # --out is the directory holding the inputs: only new files may appear
                made = {root / f"release.{fmt}", root / f"release.escrow.{fmt}", root / "report.json",
                        root / "report.txt"} | _ledger_files(root / "ledger.jsonl")
                code = check(tally, root, args, allowed=made)
                if code == 2:
                    assert not any(p.exists() for p in made - _ledger_files(root / "ledger.jsonl"))
            else:
                check(tally, root, args, out=out)

    run()
    report("anonymize", tally)


# --- reidentify ------------------------------------------------------------------------------------------


def test_fuzz_reidentify(world, tmp_path) -> None:
    tally = Tally()
    release_bytes = (world["rel"] / "release.parquet").read_bytes()

    @FUZZ
    @given(
        release=st.one_of(st.none(), mutate(release_bytes), junk_bytes),
        column=st.one_of(st.sampled_from(["national_id", "customer_id", "full_name", "age"]), junk_text),
        rows=st.one_of(st.none(), st.sampled_from(["1", "0", "-1", "1-", "3-1", "99999", "1,a", "", " , "]), junk_text),
        out_kind=st.sampled_from(["new", "release", "symlink", "notes", "escrow", "fifo"]),
    )
    def run(release, column, rows, out_kind) -> None:
        with sandbox(tmp_path) as root:
            w = _copy_world(world, root)
            rel = w["rel"] / "release.parquet"
            if release is not None:
                rel.write_bytes(release)
            (root / "notes.csv").write_text("my,notes\n1,2\n")
            (root / "link.parquet").symlink_to(rel)
            os.mkfifo(root / "pipe.csv")
            out = {"new": root / "ids" / "ids.csv", "release": rel, "symlink": root / "link.parquet",
                   "notes": root / "notes.csv", "escrow": w["rel"] / "release.escrow.parquet",
                   "fifo": root / "pipe.csv"}[out_kind]
            args = ["reidentify", rel, "--column", column or "x", "--keys", w["keys"], "--policy", w["policy"],
                    "--out", out, "--ledger", root / "audit.jsonl"]
            if rows is not None:
                args += ["--rows", rows]
            code = check(tally, root, args, out=out.parent if out_kind == "new" else None, ledger=root / "audit.jsonl",
                         may_succeed=out_kind == "new")
            if code == 0:
                assert stat.S_IMODE(out.stat().st_mode) == 0o600

    run()
    report("reidentify", tally)


# --- rotate-keys ---------------------------------------------------------------------------------------------


def test_fuzz_rotate_keys(world, tmp_path) -> None:
    tally = Tally()
    release_bytes = (world["rel"] / "release.parquet").read_bytes()
    escrow_bytes = (world["rel"] / "release.escrow.parquet").read_bytes()

    @FUZZ
    @given(
        release=st.one_of(st.none(), mutate(release_bytes), junk_bytes),
        escrow=st.one_of(st.none(), mutate(escrow_bytes), junk_bytes),
        keys_kind=st.sampled_from(["same", "missing", "empty-dir", "file"]),
        out_kind=st.sampled_from(["new", "release", "escrow-beside", "symlink", "txt"]),
    )
    def run(release, escrow, keys_kind, out_kind) -> None:
        with sandbox(tmp_path) as root:
            w = _copy_world(world, root)
            rel = w["rel"] / "release.parquet"
            if release is not None:
                rel.write_bytes(release)
            if escrow is not None:
                (w["rel"] / "release.escrow.parquet").write_bytes(escrow)
            (root / "empty").mkdir()
            new_keys = {"same": w["keys"], "missing": root / "nope", "empty-dir": root / "empty",
                        "file": w["policy"]}[keys_kind]
            (root / "link.parquet").symlink_to(rel)
            out = {"new": root / "rot" / "release.parquet", "release": rel, "symlink": root / "link.parquet",
                   "escrow-beside": w["rel"] / "release.escrow.parquet", "txt": root / "rot" / "r.txt"}[out_kind]
            args = ["rotate-keys", rel, "--policy", w["policy"], "--old-keys", w["keys"], "--new-keys", new_keys,
                    "--out", out, "--keys", w["keys"], "--ledger", root / "audit.jsonl"]
            check(tally, root, args, out=out.parent if out_kind in ("new", "txt") else None,
                  ledger=root / "audit.jsonl", may_succeed=out_kind == "new")

    run()
    report("rotate-keys", tally)


# --- keys tls ----------------------------------------------------------------------------------------------------


def test_fuzz_keys_tls(tmp_path) -> None:
    tally = Tally()

    @FUZZ
    @given(
        nodes=st.lists(st.one_of(st.sampled_from(["bank-a", "../x", "a/b", "", "-x", "a" * 64, "ok.1"]), junk_text),
                       max_size=3),
        hosts=st.lists(st.one_of(st.sampled_from(["10.0.0.1", "example.org", "::1"]), junk_text), max_size=2),
        dir_kind=st.sampled_from(["new", "file", "existing-ca", "shared-1777"]),
    )
    def run(nodes, hosts, dir_kind) -> None:
        with sandbox(tmp_path) as root:
            (root / "file.txt").write_text("x")
            directory = {"new": root / "tls", "file": root / "file.txt", "existing-ca": root / "ca",
                         "shared-1777": root / "shared"}[dir_kind]
            if dir_kind == "existing-ca":
                assert run_main(["keys", "tls", directory])[0] == 0
            if dir_kind == "shared-1777":
                directory.mkdir()
                directory.chmod(0o1777)
            args = ["keys", "tls", directory] + [a for n in nodes for a in ("--node", n)] + \
                   [a for h in hosts for a in ("--host", h)]
            if dir_kind == "new":
                check(tally, root, args, out=directory)
            elif dir_kind == "file":
                check(tally, root, args, may_succeed=False)
            else:  # an existing directory: only new node keys and tls.json may change
                nodes_before = snapshot(directory / "nodes", set()) if (directory / "nodes").is_dir() else {}
                check(tally, root, args, allowed={directory})
                if (directory / "nodes").is_dir():
                    after = snapshot(directory / "nodes", set())
                    assert all(after.get(k) == v for k, v in nodes_before.items())  # earlier node keys untouched
                if (directory / "ca.key").exists():
                    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
            if dir_kind == "shared-1777":
                assert stat.S_IMODE(directory.stat().st_mode) == 0o1777

    run()
    report("keys tls", tally)


# --- audit verify / show --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["verify", "show"])
def test_fuzz_audit(world, tmp_path, sub: str) -> None:
    tally = Tally()
    ledger_bytes = (world["rel"] / "ledger.jsonl").read_bytes()
    lines = ledger_bytes.splitlines(keepends=True)

    def edit_field(i: int, key: str, value: object) -> bytes:
        entry = json.loads(lines[i])
        entry[key] = value
        return b"".join(lines[:i] + [json.dumps(entry).encode() + b"\n"] + lines[i + 1:])

    field_edits = st.builds(
        edit_field,
        st.integers(0, len(lines) - 1),
        st.sampled_from(["seq", "signature", "key_id", "hash", "prev_hash", "actor", "outputs", "outcome", "extra"]),
        st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=2), st.none(),
                  st.just("[/x]"), st.just("<script>alert(1)</script>")),
    )

    @FUZZ
    @given(data=st.one_of(mutate(ledger_bytes), junk_bytes, field_edits), trust=st.sampled_from(["keys", "tofu", "none"]))
    def run(data, trust) -> None:
        with sandbox(tmp_path) as root:
            shutil.copytree(world["keys"], root / "keys")
            ledger = root / "ledger.jsonl"
            ledger.write_bytes(data)
            args = ["audit", sub, ledger]
            if sub == "verify" and trust == "keys":
                args += ["--keys", root / "keys"]
            elif sub == "verify" and trust == "tofu":
                args += ["--tofu"]
            code = check(tally, root, args, may_succeed=True)
            assert ledger.read_bytes() == data  # reading never writes
            if sub == "verify" and code == 0:
                # only the untouched ledger verifies (or a cut at a line boundary: a lone ledger without its
                # head or a witness cannot tell an earlier copy of itself from a rollback; docs say so)
                assert ledger_bytes.startswith(data) and data.endswith(b"\n"), data

    run()
    report(f"audit {sub}", tally)
