"""Attacks on the model path's privacy rules, through the command a user types.

Each test is a finding of the privacy audit (issue 10): a seed replay, budget bypasses by a second
ledger / output / a trivially changed file, consent ignored by train and score, and a model trained
on a data-dependent release presented as per-customer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from privmodel.artifacts.ledger import read_entries

FAST = ["--epochs", "2", "--batch-size", "128", "--lr", "0.3", "--seed", "3", "--delta", "1e-6"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from privmodel.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code), capsys.readouterr().err


@pytest.fixture(scope="module")
def customers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3,000 synthetic customers (some without analytics consent) and the starter policy, from `privmodel synth`."""
    from privmodel.cli import main

    tmp = tmp_path_factory.mktemp("customers")
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--customers", "3000", "--silos", "1", "--seed", "5", "--out", str(tmp / "data")])
    assert exc.value.code == 0
    return {"data": tmp / "data" / "silo_0.parquet", "policy": tmp / "data" / "policy.yaml", "tmp": tmp}


def _train(data: Path, policy: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    return _cli(["train", data, "--label", "churn", "--policy", policy, "--out", out, "--epsilon", "0.5", *FAST,
                 *extra], capsys)


def test_consent_is_applied_by_train_and_score(customers: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                               isolated_budget: Path) -> None:
    raw = pd.read_parquet(customers["data"])
    no_consent = int((raw["consent_analytics"] != True).sum())  # noqa: E712 - independent count with pandas
    assert no_consent > 100
    out = customers["tmp"] / "consent-model"
    code, err = _train(customers["data"], customers["policy"], out, capsys)
    assert code == 0, err
    card = json.loads((out / "model_card.json").read_text())
    removed = card["data"]
    assert removed["rows_read"] == len(raw) and removed["rows"] == len(raw) - no_consent
    assert removed["training_rows"] + removed["held_out_rows"] == len(raw) - no_consent
    scores = customers["tmp"] / "scores.csv"
    code, err = _cli(["score", out, customers["data"], "--out", scores], capsys)
    assert code == 0, err
    table = pd.read_csv(scores)
    scored_rows = set(table["row"] - 1)
    assert len(table) == len(raw) - no_consent
    assert not scored_rows & set(raw.index[raw["consent_analytics"] != True])  # noqa: E712
    assert raw["customer_id"].iloc[0] not in scores.read_text()


def test_seed_replay_reproduces_nothing(customers: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                        isolated_budget: Path) -> None:
    """Same data, same card settings, same --seed: the DP noise is secret, so the weights differ."""
    digests = []
    for name in ("replay-a", "replay-b"):
        out = customers["tmp"] / name
        code, err = _train(customers["data"], customers["policy"], out, capsys)
        assert code == 0, err
        digests.append(hashlib.sha256((out / "model.pt").read_bytes()).hexdigest())
        card = json.loads((out / "model_card.json").read_text())
        assert card["privacy"]["noise"] == "secure"
    assert digests[0] != digests[1]


def test_budget_bypasses_are_refused(customers: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                     isolated_budget: Path) -> None:
    """Cap ε 3: six runs at ε 0.5 fit; a seventh via another ledger, output or a copy with a newline does not."""
    tmp = customers["tmp"] / "bypass"
    tmp.mkdir()
    copy = tmp / "customers.csv"
    pd.read_parquet(customers["data"]).to_csv(copy, index=False)
    newline = tmp / "customers-newline.csv"
    newline.write_bytes(copy.read_bytes() + b"\n")
    for i in range(6):
        code, err = _train(customers["data"], customers["policy"], tmp / f"m{i}", capsys,
                           "--ledger", tmp / f"ledger{i}.jsonl")
        assert code == 0, err
    for attempt, data in (("another ledger", customers["data"]), ("csv copy", copy), ("appended newline", newline)):
        code, err = _train(data, customers["policy"], tmp / f"bypass-{attempt.replace(' ', '-')}", capsys,
                           "--ledger", tmp / f"fresh-{attempt.replace(' ', '-')}.jsonl")
        assert code == 2, attempt
        assert "privacy budget exceeded" in err and "cap 3" in err, (attempt, err)
    entries = read_entries(tmp / "fresh-appended-newline.jsonl")
    assert [e["outcome"] for e in entries if e["action"] == "budget.charge"] == ["failed"]
    # a second, independent computation: the store's figure equals the sum of the signed ledger charges
    from anonymize.policy.schema import load_policy
    from privmodel.dp import budget

    charged = [e["privacy_cost"]["epsilon"] for path in sorted(tmp.glob("*.jsonl")) for e in read_entries(path)
               if e["action"] == "budget.charge" and e["outcome"] == "ok"]
    store = budget.spent(budget.dataset_of(load_policy(customers["policy"]), customers["data"], isolated_budget),
                         isolated_budget)
    assert len(charged) == 6 and store.charges == 6
    assert store.epsilon == pytest.approx(sum(charged)) == pytest.approx(3.0)


def test_model_on_a_release_says_epsilon_is_per_release_row(customers: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str],
                                                             isolated_budget: Path) -> None:
    release_dir = customers["tmp"] / "release"
    code, err = _cli(["anonymize", customers["data"], "--policy", customers["policy"], "--out", release_dir], capsys)
    assert code == 0, err
    out = customers["tmp"] / "release-model"
    code, err = _train(release_dir / "release.parquet", customers["policy"], out, capsys)
    assert code == 0, err
    card = json.loads((out / "model_card.json").read_text())
    report = json.loads((release_dir / "report.json").read_text())
    assert card["data"]["unit_of_privacy"] == "release row"
    assert card["data"]["release_k"] == report["privacy"]["achieved"]["k"]
    first = "\n".join((out / "model_card.md").read_text().splitlines()[:12])
    assert "per RELEASE ROW, not per customer" in first and "release.parquet" in first
    # lineage: the release charges the raw table's budget, not a fresh one of its own
    from anonymize.policy.schema import load_policy
    from privmodel.dp import budget

    raw = budget.dataset_of(load_policy(customers["policy"]), customers["data"], isolated_budget)
    assert card["data"]["dataset"] == raw
    assert budget.spent(raw, isolated_budget).epsilon == pytest.approx(0.5)


def test_raw_rows_without_the_consent_column_are_refused(customers: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str],
                                                         isolated_budget: Path) -> None:
    data = customers["tmp"] / "no-consent-column.parquet"
    pd.read_parquet(customers["data"]).drop(columns=["consent_analytics"]).to_parquet(data, index=False)
    code, err = _train(data, customers["policy"], customers["tmp"] / "never", capsys)
    assert code == 2 and "consent column consent_analytics is missing" in err
    assert not (customers["tmp"] / "never").exists()


def test_bad_value_is_reported_at_the_files_row(customers: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                isolated_budget: Path) -> None:
    """Rows removed for consent before the bad one must not shift the row number the error names."""
    frame = pd.read_parquet(customers["data"])
    consenting = frame.index[frame["consent_analytics"] == True]  # noqa: E712
    bad_row = int(consenting[200])
    assert (frame.loc[:bad_row, "consent_analytics"] != True).sum() > 10  # noqa: E712 - rows removed before it
    frame["tenure_months"] = frame["tenure_months"].astype("float64")
    frame.loc[bad_row, "tenure_months"] = float("nan")
    data = customers["tmp"] / "nan-tenure.parquet"
    frame.to_parquet(data, index=False)
    code, err = _train(data, customers["policy"], customers["tmp"] / "never-nan", capsys)
    assert code == 2 and f"row {bad_row + 1}" in err and "tenure_months" in err, err
