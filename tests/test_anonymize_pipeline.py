"""anonymize.run on crafted tables: every removal counted by reason, figures computed on the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize import run
from anonymize.errors import InputError
from anonymize.policy.schema import Policy, load_policy
from anonymize.pseudonymize import Keys, reidentify
from anonymize.report import render_text, to_json

POLICY = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"
MASTER = bytes(range(32))
EDUCATION = ["primary", "secondary", "bachelor", "master", "doctorate"]
OCCUPATIONS = ["clerk", "nurse", "engineer", "teacher", "driver"]


def make_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Synthetic customers in the fixture policy's shape; churn depends on age and tenure."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    tenure = rng.integers(0, 240, n)
    logit = -1.0 + 0.04 * (age - 50) - 0.01 * (tenure - 120)
    return pd.DataFrame(
        {
            "customer_id": [f"CUST-{i:06d}" for i in range(n)],
            "national_id": [f"{rng.integers(10**8, 10**9)}-{i:04d}" for i in range(n)],
            "full_name": [f"Person Number{i}" for i in range(n)],
            "email": [f"person{i}@example.org" for i in range(n)],
            "age": age,
            "gender": rng.choice(["F", "M", "X"], n, p=[0.48, 0.48, 0.04]),
            "zip_code": [f"{z:05d}" for z in rng.integers(10000, 10400, n)],
            "education": rng.choice(EDUCATION, n),
            "occupation": rng.choice(OCCUPATIONS, n),
            "tenure_months": tenure,
            "channel": rng.choice(["branch", "app", "web"], n),
            "monthly_balance": np.round(rng.normal(2000, 500, n), 2),
            "churn": rng.random(n) < 1 / (1 + np.exp(-logit)),
            "consent_analytics": np.ones(n, dtype=bool),
            "shoe_size": rng.integers(36, 47, n),  # not in the policy: dropped and listed
        }
    )


def crafted() -> pd.DataFrame:
    """300 clean rows + 3 exact duplicates, 2 re-used identifiers, 5 refusals, 2 unknown consents, gaps."""
    df = make_table(300)
    df["consent_analytics"] = df["consent_analytics"].astype(object)
    df.loc[[10, 11, 12, 13, 14], "consent_analytics"] = False
    df.loc[[20, 21], "consent_analytics"] = None
    df.loc[[30, 31], "customer_id"] = df.loc[[40, 41], "customer_id"].to_numpy()  # same id, other rows
    df.loc[[50, 51, 52], "monthly_balance"] = np.nan  # missing feature values: kept, counted
    df["age"] = df["age"].astype(object)
    df.loc[60, "age"] = None  # missing quasi-identifier: removed before generalization
    dups = df.loc[[100, 101, 102]]
    return pd.concat([df, dups], ignore_index=True)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY)


@pytest.fixture(scope="module")
def release(policy: Policy):
    return run(crafted(), policy, Keys(MASTER, "insurer"), source="crafted.csv")


def test_step_counts_add_up(release) -> None:
    report = release.report
    counts = report["counts"]
    assert report["rows"] == {"input": 303, "released": len(release.data)}
    assert counts["validated_rows"] == 303
    assert counts["exact_duplicates"] == 3
    assert counts["duplicate_identifiers"] == {"customer_id": 2, "national_id": 0, "full_name": 0}
    assert counts["missing_values"] == {"age": 1, "monthly_balance": 3, "consent_analytics": 2}
    assert counts["consent_filtered"] == 7
    by_reason = counts["removed_by_reason"]
    assert by_reason["no_consent"] == 5 and by_reason["consent_missing"] == 2
    assert by_reason["missing_quasi_identifier"] == 1
    assert counts["rows_accounted"] is True
    assert len(release.data) + sum(by_reason.values()) == 303
    steps = [s["step"] for s in report["steps"]]
    assert steps == ["validate", "quality", "purpose", "pseudonymize", "generalize"]
    for before, after in zip(report["steps"], report["steps"][1:], strict=False):
        assert after["rows_in"] == before["rows_out"] or after["step"] == "generalize"


def test_columns_dropped_and_listed(release) -> None:
    dropped = release.report["steps"][2]["dropped_columns"]
    assert dropped == {
        "undeclared": ["shoe_size"],
        "role_drop": ["email"],
        "consent": ["consent_analytics"],
        "not_in_purpose": ["monthly_balance"],
    }
    assert "full_name" in release.report["counts"]["dropped_columns"]
    assert list(release.data.columns) == [
        "customer_id", "national_id", "age", "gender", "zip_code", "education", "occupation",
        "tenure_months", "channel", "churn",
    ]


def test_release_is_k_anonymous_and_pseudonymized(release, policy: Policy) -> None:
    data = release.data
    sizes = data.groupby(["age", "gender", "zip_code", "education"], dropna=False).size()
    assert sizes.min() >= policy.privacy.k
    assert release.report["privacy"]["achieved"]["k"] == int(sizes.min())
    raw = crafted()
    assert not set(data["customer_id"]) & set(raw["customer_id"])
    assert data["customer_id"].str.fullmatch(r"[0-9a-f]{16}").all()
    key = Keys(MASTER, "insurer").column_key("churn_modeling", "national_id")
    assert set(reidentify(data["national_id"], key, "national_id")) <= set(raw["national_id"])
    # the escrow covers exactly the released tokens
    assert release.escrow is not None
    assert set(release.escrow["token"]) == set(data["customer_id"])


def test_report_has_risk_utility_and_auc_and_no_raw_values(release) -> None:
    report = release.report
    assert 0 < report["risk"]["prosecutor_max"] <= 1 / 3
    assert report["utility"]["ncp"] >= 0 and "discernibility" in report["utility"]
    auc = report["model_utility"]["churn"]
    assert 0.5 < auc["auc_raw"] <= 1 and 0 < auc["auc_release"] <= 1 and auc["test_rows"] > 50
    text = to_json(report) + render_text(report)
    raw = crafted()
    for column in ("customer_id", "national_id", "full_name", "email"):
        for value in raw[column].dropna().astype(str).unique()[:50]:
            assert value not in text
    for token in release.data["customer_id"].head(20):
        assert token not in text
    assert MASTER.hex() not in text
    assert "k: required 3, achieved" in render_text(report)


def test_same_input_same_release(policy: Policy, release) -> None:
    again = run(crafted(), policy, Keys(MASTER, "insurer"), source="crafted.csv")
    pd.testing.assert_frame_equal(again.data, release.data)
    # everything but the wall-clock seconds of each stage is a function of the input
    stages = ["validate", "quality", "purpose", "pseudonymize", "generalize", "measures", "gate", "utility"]
    assert list(release.report["timings"]) == stages
    assert all(isinstance(v, float) and v >= 0 for v in release.report["timings"].values())
    assert "Timings (wall seconds" in render_text(release.report)
    without = [{k: v for k, v in r.report.items() if k != "timings"} for r in (again, release)]
    assert to_json(without[0]) == to_json(without[1])


def _error(df: pd.DataFrame, policy: Policy) -> str:
    with pytest.raises(InputError) as info:
        run(df, policy, MASTER, source="t.csv")
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_tables_are_one_line_errors_naming_column_and_row(policy: Policy) -> None:
    df = make_table(40)
    assert _error(df.iloc[0:0], policy) == "t.csv: table has no rows"
    assert _error(df.drop(columns=["channel"]), policy) == "t.csv: policy column 'channel' is not in the data"
    bad_age = df.astype({"age": object})
    bad_age.loc[7, "age"] = "forty"
    assert _error(bad_age, policy) == "t.csv: column 'age', row 8: value not an integer"
    old = df.copy()
    old.loc[3, "age"] = 130
    assert _error(old, policy) == "t.csv: column 'age', row 4: value outside the declared bounds"
    odd = df.copy()
    odd.loc[5, "channel"] = "carrier pigeon"
    message = _error(odd, policy)
    assert message == "t.csv: column 'channel', row 6: value not one of the declared categories"
    assert "pigeon" not in message
    school = df.copy()
    school.loc[9, "education"] = "kindergarten"
    assert _error(school, policy) == "t.csv: column 'education', row 10: value not in the column's hierarchy"
    empty = df.assign(occupation=None)
    assert _error(empty, policy) == "t.csv: column 'occupation' has no values (every row is missing)"
    few = make_table(2)
    assert "privacy.k = 3 is larger than the 2 rows left" in _error(few, policy)


def test_on_invalid_drop_row_removes_and_counts() -> None:
    text = POLICY.read_text().replace(
        "categories: [branch, app, web]}", "categories: [branch, app, web], on_invalid: drop_row}"
    )
    policy = Policy.from_yaml_text(text, "p.yaml", POLICY.parent)
    df = make_table(60)
    df.loc[[3, 4], "channel"] = "fax"
    result = run(df, policy, MASTER)
    assert result.report["steps"][0]["removed"] == {"invalid:channel": 2}
    assert result.report["counts"]["invalid_rows_removed"] == 2
    assert result.report["counts"]["rows_accounted"] is True


def test_population_gives_journalist_risk(policy: Policy) -> None:
    sample = make_table(200)
    population = pd.concat([sample, make_table(700, seed=1)], ignore_index=True)  # the sample is in it
    result = run(sample, policy, MASTER, population=population)
    risk = result.report["risk"]
    assert risk["journalist_max"] is not None and risk["journalist_max"] <= risk["prosecutor_max"]
    assert risk["journalist_avg"] < risk["prosecutor_avg"]
    assert run(sample, policy, MASTER).report["risk"]["journalist_max"] is None


DATES_POLICY = """
version: 1
name: dates
purpose: {name: retention}
privacy: {k: 4, l: {value: 2}, algorithm: mondrian}
columns:
  member_no:  {role: identifier, type: integer, method: token, length: 20}
  birth_date: {role: quasi_identifier, type: date, hierarchy: {type: date, levels: [month, year, decade]}}
  vip:        {role: quasi_identifier, type: boolean}
  balance:    {role: sensitive, type: float}
  active:     {role: label, type: boolean}
"""


def test_dates_booleans_integer_ids_and_text_booleans() -> None:
    rng = np.random.default_rng(3)
    n = 80
    days = rng.integers(0, 365 * 40, n)
    df = pd.DataFrame(
        {
            "member_no": np.arange(1000, 1000 + n),
            "birth_date": [str(pd.Timestamp("1950-01-01") + pd.Timedelta(days=int(d)))[:10] for d in days],
            "vip": rng.choice(["yes", "no"], n),
            "balance": np.round(rng.normal(100, 30, n), 1),
            "active": rng.choice(["true", "false"], n),
        }
    )
    policy = Policy.from_yaml_text(DATES_POLICY, "dates.yaml")
    result = run(df, policy, MASTER)
    data = result.report["privacy"]["achieved"]
    assert data["k"] >= 4 and data["l"]["balance"]["distinct"] >= 2
    released = result.data
    assert released["vip"].isin(["true", "false", "*"]).all()
    assert released["birth_date"].str.fullmatch(r"\[.*\]|\d{4}(-\d{2})?(-\d{2})?|\d{4}-Q[1-4]|\d{3}0s|\*").all()
    token_key = Keys(MASTER).column_key("retention", "member_no")
    from anonymize.pseudonymize import tokenize_series

    assert set(released["member_no"]) <= set(tokenize_series(pd.Series([str(i) for i in df["member_no"]]), token_key, 20))
    bad = df.assign(birth_date=df["birth_date"].where(df.index != 4, "31/02/1990"))
    assert _error(bad, policy) == "t.csv: column 'birth_date', row 5: value not an ISO date"


def test_controls_that_did_not_run_read_not_applicable() -> None:
    """Issue 10 finding 8: no identifier, no consent column -> 'not applicable', never 'passed' / '0'."""
    text = """
version: 1
name: bare
purpose: {name: study}
privacy: {k: 3}
columns:
  age: {role: quasi_identifier, type: integer, hierarchy: {type: intervals, widths: [10, 20]}}
  churn: {role: label, type: boolean}
"""
    df = make_table(60)[["age", "churn"]]
    release = run(df, Policy.from_yaml_text(text, "bare.yaml"), MASTER)
    steps = {s["step"]: s for s in release.report["steps"]}
    assert steps["pseudonymize"]["applicable"] is False
    assert steps["purpose"]["consent_applicable"] is False
    assert release.report["counts"]["consent_applicable"] is False
    rendered = render_text(release.report)
    assert "consent filter: not applicable (the purpose names no consent column)" in rendered
    assert "consent-filtered rows" not in rendered
    assert "Pseudonymization\n  not applicable: the policy declares no identifier column" in rendered
    with_ids = render_text(run(crafted(), load_policy(POLICY), MASTER).report)
    assert "consent-filtered rows: 7" in with_ids and "not applicable" not in with_ids
