"""anonymize.pipeline.minimise: the one consent filter every model path calls.

Checked on the synthetic customers of `privmodel.data.synth` against counts made independently with
pandas on the raw table: exactly the rows without consent go, identifiers never come out raw,
features and labels stay, and quasi-identifiers keep their exact values (no data-dependent
generalization: the customer, not a release row, stays the unit of privacy).
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from anonymize.errors import InputError
from anonymize.pipeline import Minimised, minimise, run
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import Keys, reidentify, tokenize_series
from privmodel.data.synth import generate_data
from privmodel.data.synth.output import CHURN_FEATURES, starter_policy

MASTER = bytes(range(32))
MISSING_CONSENT = [7, 8, 9, 10, 11]  # raw positions whose consent is unknown (not given)


@pytest.fixture(scope="module")
def synth() -> tuple[pd.DataFrame, Policy]:
    data = generate_data(1500, seed=11)
    policy = Policy.from_yaml_text(yaml.safe_dump(starter_policy(data), sort_keys=False), "synth-policy.yaml")
    df = data.to_pandas()
    df["consent_analytics"] = df["consent_analytics"].astype(object)
    df.loc[MISSING_CONSENT, "consent_analytics"] = None
    return df, policy


@pytest.fixture(scope="module")
def minimised(synth) -> Minimised:
    df, policy = synth
    return minimise(df, policy, Keys(MASTER, "bank-a"), source="customers.parquet")


def test_removes_exactly_the_rows_without_consent(synth, minimised: Minimised) -> None:
    df, _ = synth
    refused = int((df["consent_analytics"] == False).sum())  # noqa: E712 - object column, None stays out
    unknown = int(df["consent_analytics"].isna().sum())
    assert refused > 100 and unknown == len(MISSING_CONSENT)
    assert minimised.removed == {"no_consent": refused, "consent_missing": unknown}
    assert minimised.rows_in == len(df) == len(minimised.data) + refused + unknown
    # the rows kept are exactly the consenting ones (index = 1-based input row numbers)
    consenting = df.index[(df["consent_analytics"] == True).to_numpy()] + 1  # noqa: E712
    assert list(minimised.data.index) == list(consenting)
    assert list(minimised.positions) == list(consenting - 1)
    assert minimised.steps[2]["consent_applicable"] is True


def test_identifiers_dropped_or_keyed_never_raw(synth, minimised: Minimised) -> None:
    df, policy = synth
    data = minimised.data
    for dropped in ("full_name", "email", "phone", "street_address", "consent_analytics", "consent_marketing"):
        assert dropped not in data.columns
    raw = df.iloc[data.index - 1]
    assert not set(data["customer_id"]) & set(df["customer_id"])
    key = Keys(MASTER, "bank-a").column_key(policy.purpose.name, "customer_id")
    assert list(data["customer_id"]) == list(tokenize_series(raw["customer_id"].reset_index(drop=True), key, 16))
    assert not set(data["national_id"]) & set(df["national_id"])
    nid_key = Keys(MASTER, "bank-a").column_key(policy.purpose.name, "national_id")
    assert list(reidentify(data["national_id"], nid_key, "national_id")) == list(raw["national_id"])
    assert minimised.pseudonymization["full_name"]["method"] == "drop"


def test_features_label_and_exact_quasi_identifiers_kept(synth, minimised: Minimised) -> None:
    df, _ = synth
    data = minimised.data
    assert list(data.columns) == ["customer_id", "national_id", *CHURN_FEATURES, "churn"]
    raw = df.iloc[data.index - 1]
    for column in ("age", "gender", "zip_code", "occupation", "tenure_months", "monetary", "channel"):
        assert list(data[column].astype(object)) == list(raw[column].astype(object)), column
    assert list(data["churn"].astype(bool)) == list(raw["churn"].astype(bool))


def test_run_reuses_minimise_step_records(synth, minimised: Minimised) -> None:
    df, policy = synth
    small = policy.model_copy(update={"privacy": policy.privacy.model_copy(update={"k": 5})})
    release = run(df, small, Keys(MASTER, "bank-a"), source="customers.parquet")
    assert release.report["steps"][:4] == minimised.steps
    assert [s["step"] for s in minimised.steps] == ["validate", "quality", "purpose", "pseudonymize"]
    assert release.report["counts"]["removed_by_reason"]["no_consent"] == minimised.removed["no_consent"]


def test_no_identifier_policy_marks_pseudonymization_not_applicable(synth) -> None:
    df, _ = synth
    text = """
version: 1
name: plain
purpose: {name: churn_modeling, consent: consent_analytics, columns: [age, churn]}
privacy: {k: 5}
columns:
  age: {role: feature, type: integer, bounds: [16, 100]}
  churn: {role: label, type: boolean}
  consent_analytics: {role: consent, type: boolean}
"""
    result = minimise(df, Policy.from_yaml_text(text, "plain.yaml"), MASTER)
    step = result.steps[-1]
    assert step["step"] == "pseudonymize" and step["applicable"] is False
    assert "not applicable" in step["decisions"][0]
    assert list(result.data.columns) == ["age", "churn"]
    no_consent = text.replace(", consent: consent_analytics", "").replace(
        "  consent_analytics: {role: consent, type: boolean}\n", "  consent_analytics: {role: drop}\n"
    )
    everyone = minimise(df, Policy.from_yaml_text(no_consent, "plain.yaml"), MASTER)
    purpose = everyone.steps[2]
    assert purpose["consent_applicable"] is False and purpose["removed"] == {}
    assert purpose["decisions"][0].startswith("consent filter not applicable")
    assert len(everyone.data) == len(df) and everyone.removed == {}


def test_bad_input_is_one_line_naming_the_source(synth) -> None:
    df, policy = synth
    with pytest.raises(InputError) as info:
        minimise(df.drop(columns=["age"]), policy, MASTER, source="customers.parquet")
    assert str(info.value) == "customers.parquet: policy column 'age' is not in the data"
    nobody = df.assign(consent_analytics=False)
    with pytest.raises(InputError, match="no rows left after the consent filter"):
        minimise(nobody, policy, MASTER)


def _recoded_policy(data_policy: dict, level: int = 1) -> Policy:
    doc = {**data_policy, "columns": {k: dict(v) for k, v in data_policy["columns"].items()}}
    doc["columns"]["age"]["recode"] = level
    return Policy.from_yaml_text(yaml.safe_dump(doc, sort_keys=False), "recode.yaml")


@pytest.fixture(scope="module")
def recode_case() -> tuple[pd.DataFrame, Policy]:
    data = generate_data(600, seed=5)
    return data.to_pandas(), _recoded_policy(starter_policy(data))


def test_fixed_recoding_uses_fixed_bins(recode_case) -> None:
    df, policy = recode_case
    result = minimise(df, policy, MASTER)
    assert result.steps[-1]["step"] == "recode" and result.steps[-1]["columns"] == {"age": 1}
    raw_age = df["age"].iloc[result.positions].to_numpy()
    for label, age in zip(result.data["age"], raw_age, strict=True):
        lo, hi = (int(x) for x in label.strip("[]").split(", "))
        assert lo % 5 == 0 and hi == lo + 4 and lo <= age <= hi  # widths [5, ...], origin 0
    assert run(df, policy.model_copy(update={"privacy": policy.privacy.model_copy(update={"k": 5})}), MASTER) \
        .report["steps"][:4] == result.steps[:4]  # the release path generalizes from exact values


def test_one_customer_leaving_changes_no_other_customers_row(recode_case) -> None:
    """Issue 10 finding 4, for the model path: minimised (and recoded) rows are per customer."""
    df, policy = recode_case
    full = minimise(df, policy, MASTER).data.set_index("customer_id")
    for gone in (0, 17, 333):
        without = minimise(df.drop(index=gone), policy, MASTER).data.set_index("customer_id")
        assert len(without) >= len(full) - 1
        pd.testing.assert_frame_equal(without, full.loc[without.index], check_dtype=False)


def test_the_dp_encoder_reads_a_recoded_value_as_its_range(recode_case) -> None:
    from privmodel.data.features import TabularEncoder

    df, policy = recode_case
    data = minimise(df, policy, MASTER).data
    encoder = TabularEncoder.from_policy(policy, "churn", columns=["age"])
    encoded = encoder.transform(data.assign(churn=data["churn"]))
    lo, hi = policy.columns["age"].bounds
    mids = data["age"].map(lambda s: sum(int(x) for x in s.strip("[]").split(", ")) / 2)
    expected = ((mids - lo) / (hi - lo)).clip(0, 1).to_numpy()  # a bin may start below the public bound
    assert encoded.x_num[:, 0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("column", "level", "message"),
    [
        ("age", 4, "recode level 4 is above the hierarchy's 3 levels"),
        ("tenure_months", 1, "recode applies to quasi_identifier columns with an intervals hierarchy"),
        ("zip_code", 1, "recode applies to quasi_identifier columns with an intervals hierarchy"),
    ],
)
def test_recode_mistakes_are_refused(column: str, level: int, message: str) -> None:
    data = generate_data(50, seed=1)
    doc = starter_policy(data)
    doc["columns"][column]["recode"] = level
    with pytest.raises(InputError) as info:
        Policy.from_yaml_text(yaml.safe_dump(doc, sort_keys=False), "recode.yaml")
    assert f"columns.{column}.recode: {message}" in str(info.value)
