"""`privmodel anonymize | reidentify | rotate-keys` end to end, as a user runs them (subprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import init_keys, load_public_key
from tests.conftest import run_cli
from tests.test_anonymize_pipeline import crafted, make_table

FIXTURES = Path(__file__).parent / "fixtures" / "anonymize"
POLICY = FIXTURES / "policy.yaml"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    keys = root / "keys"
    init_keys(keys, actor="bank-a")
    raw = root / "customers.csv"
    crafted().to_csv(raw, index=False)
    out = root / "release"
    result = run_cli("anonymize", str(raw), "--policy", str(POLICY), "--keys", str(keys), "--out", str(out),
                     "--partner", "insurer", env={"PRIVMODEL_KEYS": str(keys)})
    assert result.returncode == 0, result.stderr
    return {"root": root, "keys": keys, "raw": raw, "out": out}


def test_release_report_and_ledger_written(workspace: dict[str, Path]) -> None:
    out = workspace["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "ledger.jsonl", "ledger.jsonl.head", "ledger.jsonl.lock", "release.escrow.parquet", "release.parquet",
        "report.json", "report.txt",
    ]
    release = pd.read_parquet(out / "release.parquet")
    report = json.loads((out / "report.json").read_text())
    assert report["rows"]["released"] == len(release) and report["partner"] == "insurer"
    assert (out / "release.escrow.parquet").stat().st_mode & 0o077 == 0
    entries = read_entries(out / "ledger.jsonl")
    assert [e["action"] for e in entries] == ["ledger.open", "anonymize.release"]
    entry = entries[-1]
    assert [a["name"] for a in entry["inputs"]] == ["customers.csv", "policy.yaml"]
    assert {a["name"] for a in entry["outputs"]} == {"release.parquet", "release.escrow.parquet", "report.json", "report.txt"}
    assert entry["params"]["k"] == report["privacy"]["achieved"]["k"] >= 3
    assert entry["params"]["counts"]["consent_filtered"] == 7
    assert verify(out / "ledger.jsonl", [load_public_key(workspace["keys"])]).ok
    check = run_cli("audit", "verify", str(out / "ledger.jsonl"), "--keys", str(workspace["keys"]))
    assert check.returncode == 0, check.stdout + check.stderr


def test_no_raw_identifier_in_report_or_ledger(workspace: dict[str, Path]) -> None:
    raw = crafted()
    out = workspace["out"]
    texts = {name: (out / name).read_text() for name in ("report.json", "report.txt", "ledger.jsonl")}
    secret = (workspace["keys"] / "pseudonym.secret").read_text().strip()
    for name, text in texts.items():
        assert secret not in text, name
        for column in ("customer_id", "national_id", "full_name", "email"):
            for value in raw[column].astype(str).unique():
                assert value not in text, (name, column)


def test_reidentify_and_its_ledger_entry(workspace: dict[str, Path]) -> None:
    out, keys = workspace["out"], workspace["keys"]
    target = workspace["root"] / "reid" / "ids.csv"
    target.parent.mkdir()
    result = run_cli("reidentify", str(out / "release.parquet"), "--column", "national_id", "--keys", str(keys),
                     "--policy", str(POLICY), "--out", str(target), "--rows", "1,3-5", "--partner", "insurer",
                     "--ledger", str(out / "ledger.jsonl"))
    assert result.returncode == 0, result.stderr
    got = pd.read_csv(target, dtype=str)
    assert got["row"].tolist() == ["1", "3", "4", "5"]
    assert set(got["national_id"]) <= set(crafted()["national_id"])
    entry = read_entries(out / "ledger.jsonl")[-1]
    assert entry["action"] == "anonymize.reidentify" and entry["actor"] == "bank-a"
    assert entry["params"]["column"] == "national_id" and entry["params"]["rows"] == 4
    assert not any(v in (out / "ledger.jsonl").read_text() for v in got["national_id"])
    dropped = run_cli("reidentify", str(out / "release.parquet"), "--column", "full_name", "--keys", str(keys),
                      "--policy", str(POLICY), "--out", str(target.with_name("x.csv")))
    assert dropped.returncode == 2 and "has method drop; only encrypt columns and token columns kept with an escrow" in dropped.stderr


def test_reidentify_token_column_through_its_escrow(workspace: dict[str, Path]) -> None:
    out, keys = workspace["out"], workspace["keys"]
    target = workspace["root"] / "reid-token" / "customers.csv"
    target.parent.mkdir()
    args = ["reidentify", str(out / "release.parquet"), "--column", "customer_id", "--keys", str(keys),
            "--policy", str(POLICY), "--partner", "insurer", "--ledger", str(out / "ledger.jsonl")]
    result = run_cli(*args, "--out", str(target))
    assert result.returncode == 0, result.stderr
    got = pd.read_csv(target, dtype=str)
    release = pd.read_parquet(out / "release.parquet")
    assert len(got) == len(release)
    # independent check: each recovered id, tokenized with stdlib hmac under the same derived key, gives the release's token
    import hashlib
    import hmac

    from anonymize.pseudonymize import Keys
    from privmodel.core.keys import load_pseudonym_secret

    mac = Keys(load_pseudonym_secret(keys), "insurer").column_key("churn_modeling", "customer_id").mac
    assert [hmac.new(mac, v.encode(), hashlib.sha256).hexdigest()[:16] for v in got["customer_id"]] == release["customer_id"].tolist()
    assert set(got["customer_id"]) <= set(crafted()["customer_id"].astype(str))
    entry = read_entries(out / "ledger.jsonl")[-1]
    assert entry["params"]["method"] == "token" and entry["params"]["rows"] == len(release)
    assert "release.escrow.parquet" in [a["name"] for a in entry["inputs"]]
    # the wrong partner's key does not match the escrow: refused, nothing written
    wrong = run_cli(*args[:-4], "--partner", "retailer", "--out", str(target.with_name("wrong.csv")))
    assert wrong.returncode == 2 and "escrow does not match its tokens under the key" in wrong.stderr
    assert not target.with_name("wrong.csv").exists()


def test_rotate_keys_equals_anonymizing_with_new_keys(workspace: dict[str, Path]) -> None:
    root, out = workspace["root"], workspace["out"]
    new_keys = root / "keys-2026"
    init_keys(new_keys, actor="bank-a")
    rotated = root / "rotated" / "release.parquet"
    rotated.parent.mkdir()
    result = run_cli("rotate-keys", str(out / "release.parquet"), "--policy", str(POLICY),
                     "--old-keys", str(workspace["keys"]), "--new-keys", str(new_keys), "--out", str(rotated),
                     "--partner", "insurer", "--keys", str(workspace["keys"]))
    assert result.returncode == 0, result.stderr
    fresh = root / "fresh"
    again = run_cli("anonymize", str(workspace["raw"]), "--policy", str(POLICY), "--keys", str(new_keys),
                    "--out", str(fresh), "--partner", "insurer")
    assert again.returncode == 0, again.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(rotated), pd.read_parquet(fresh / "release.parquet"))
    entry = read_entries(rotated.parent / "ledger.jsonl")[-1]
    assert entry["action"] == "anonymize.rotate_keys" and entry["params"]["rotated"]["customer_id"] > 0


def _policy_variant(tmp: Path, old: str, new: str) -> Path:
    text = POLICY.read_text()
    assert old in text
    shutil.copy(FIXTURES / "education.csv", tmp / "education.csv")
    path = tmp / "bad-policy.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


BAD_CASES = {
    "unknown role": ("policy", ("role: sensitive", "role: secret"), "columns.occupation.role: unknown role"),
    "k below 2": ("policy", ("k: 3,", "k: 1,"), "privacy.k: Input should be greater than or equal to 2"),
    "missing hierarchy level": ("policy", ("levels: {F: [], M: [], X: []}", "levels: {F: [], M: []}"),
                                "missing hierarchy level"),
    "column not in data": ("data", lambda df: df.drop(columns=["tenure_months"]),
                           "policy column 'tenure_months' is not in the data"),
    "empty table": ("data", lambda df: df.iloc[0:0], "table has a header but no rows"),
    "k larger than table": ("data", lambda df: df.head(2), "privacy.k = 3 is larger than the 2 rows left"),
    "all-NaN column": ("data", lambda df: df.assign(occupation=None), "column 'occupation' has no values"),
    "non-UTF-8 file": ("bytes", None, "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exit_2_one_line_nothing_written(case: str, tmp_path: Path, workspace: dict[str, Path]) -> None:
    kind, change, expected = BAD_CASES[case]
    policy, data = POLICY, tmp_path / "in.csv"
    table = make_table(40)
    if kind == "policy":
        policy = _policy_variant(tmp_path, *change)
        table.to_csv(data, index=False)
    elif kind == "data":
        change(table).to_csv(data, index=False)
    else:
        data.write_bytes(table.to_csv(index=False).encode("utf-8").replace(b"Person", b"Pers\xf6n"))
    out = tmp_path / "out"
    result = run_cli("anonymize", str(data), "--policy", str(policy), "--keys", str(workspace["keys"]),
                     "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not out.exists()


def test_failure_is_recorded_in_a_known_ledger(tmp_path: Path, workspace: dict[str, Path]) -> None:
    data = tmp_path / "in.csv"
    make_table(2).to_csv(data, index=False)
    ledger = tmp_path / "audit.jsonl"
    out = tmp_path / "out"
    result = run_cli("anonymize", str(data), "--policy", str(POLICY), "--keys", str(workspace["keys"]),
                     "--out", str(out), "--ledger", str(ledger))
    assert result.returncode == 2
    assert not out.exists()
    entry = read_entries(ledger)[-1]
    assert entry["action"] == "anonymize.release" and entry["outcome"] == "failed"
    assert "is larger than the 2 rows left" in entry["reason"] and entry["outputs"] == []
    assert verify(ledger, [load_public_key(workspace["keys"])]).ok


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_lineage_names_the_release_by_the_hashes_a_reread_gives(suffix: str, tmp_path: Path,
                                                                workspace: dict[str, Path]) -> None:
    """The input's identity and the release's content hash are computed from the tables in memory
    (issue 13); they must be the hashes `content_id` gives when it reads the files again."""
    from anonymize.policy.schema import load_policy
    from privmodel.core.fileio import sha256_file
    from privmodel.dp import budget

    keys = tmp_path / "keys"
    init_keys(keys, actor="bank-a")
    raw = tmp_path / f"customers{suffix}"
    table = crafted()
    table.to_csv(raw, index=False) if suffix == ".csv" else table.to_parquet(raw, index=False)
    out = tmp_path / "release"
    result = run_cli("anonymize", str(raw), "--policy", str(POLICY), "--keys", str(keys), "--out", str(out))
    assert result.returncode == 0, result.stderr
    lineage = budget._Store.open(keys, create=False).read().lineage  # type: ignore[union-attr]
    source = budget.content_id(raw)
    assert source is not None and budget.dataset_of(load_policy(POLICY), raw, keys) == source
    release = out / "release.parquet"
    content = budget.content_id(release)
    assert content is not None and lineage[content] == source
    assert lineage[sha256_file(release)] == source
    report = json.loads((out / "report.json").read_text())
    assert {"read", "identity", "validate", "utility", "write"} <= set(report["timings"])
