"""Policy loading: the documented shape loads; every mistake is one line with the YAML line and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from anonymize.errors import InputError
from anonymize.policy.schema import DEFAULT_TOKEN_LENGTH, Policy, load_policy
from anonymize.policy.spec import CsvHierarchy, IntervalsHierarchy

FIXTURES = Path(__file__).parent / "fixtures" / "anonymize"
POLICY = FIXTURES / "policy.yaml"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _text() -> str:
    return POLICY.read_text()


def _error(text: str) -> str:
    with pytest.raises(InputError) as info:
        Policy.from_yaml_text(text, "policy.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_fixture_policy_loads_with_defaults_and_base_dir() -> None:
    policy = load_policy(POLICY)
    assert policy.base_dir == FIXTURES.resolve()
    assert policy.identifiers == ["customer_id", "national_id", "full_name"]
    assert policy.quasi_identifiers == ["age", "gender", "zip_code", "education"]
    assert policy.columns["customer_id"].escrow is True
    assert isinstance(policy.columns["age"].hierarchy, IntervalsHierarchy)
    assert isinstance(policy.columns["education"].hierarchy, CsvHierarchy)
    assert policy.privacy.k == 3 and policy.budget is not None and policy.budget.epsilon == 3.0
    # linkage keys first, then QIs, sensitive, features, labels; nothing outside the purpose
    assert policy.released_columns() == [
        "customer_id", "national_id", "age", "gender", "zip_code", "education", "occupation",
        "tenure_months", "channel", "churn",
    ]


def test_architecture_example_policy_loads() -> None:
    """The example in docs/architecture.md is the contract other modules code against."""
    block = re.search(r"```yaml\n(.*?)```", ARCHITECTURE.read_text(), re.S)
    assert block is not None
    policy = Policy.from_yaml_text(block.group(1), "architecture.md")
    assert policy.columns["customer_id"].method == "token" and policy.columns["customer_id"].length == 16
    assert policy.columns["email"].role == "drop" and policy.columns["email"].type is None
    assert policy.privacy.l is not None and policy.privacy.l.value == 2


def test_identifier_defaults_to_token_of_default_length() -> None:
    text = _text().replace("method: encrypt", "method: token").replace(
        "customer_id: {role: identifier, type: string, method: token, length: 16, escrow: true}",
        "customer_id: {role: identifier, type: string}",
    )
    policy = Policy.from_yaml_text(text, "policy.yaml")
    assert policy.columns["customer_id"].method == "token"
    assert policy.columns["customer_id"].length == DEFAULT_TOKEN_LENGTH


@pytest.mark.parametrize(
    ("old", "new", "line_needle", "field", "words"),
    [
        ("role: sensitive", "role: secret", "occupation:", "columns.occupation.role", "unknown role"),
        ("k: 3,", "k: 1,", "privacy:", "privacy.k", "greater than or equal to 2"),
        (
            "levels: {F: [], M: [], X: []}",
            "levels: {F: [], M: []}",
            "gender:",
            "columns.gender.hierarchy.levels",
            "missing hierarchy level",
        ),
        ("widths: [5, 10, 20]", "widths: [10, 5]", "age:", "columns.age.hierarchy.widths", "must not decrease"),
        ("keep: [4, 3, 2]", "keep: [2, 3]", "zip_code:", "columns.zip_code.hierarchy.keep", "strictly decreasing"),
        ("type: intervals", "type: prefix", "age:", "columns.age.hierarchy.keep", "Field required"),
        (
            "zip_code:    {role: quasi_identifier, type: string, hierarchy: {type: prefix, keep: [4, 3, 2]}}",
            "zip_code:    {role: quasi_identifier, type: string, hierarchy: {type: intervals, widths: [5]}}",
            "zip_code:",
            "columns.zip_code.hierarchy.type",
            "does not fit a string column",
        ),
        ("method: encrypt}", "method: encrypt, length: 12}", "national_id:", "columns.national_id.length", "token only"),
        ("method: encrypt}", "method: scramble}", "national_id:", "columns.national_id.method", "Input should be"),
        ("length: 16,", "length: 15,", "customer_id:", "columns.customer_id.length",
         "token length 15 hex characters = 60 bits is below the minimum of 64 bits (16 hex characters)"),
        ("bounds: [0, 480]", "bounds: [480, 0]", "tenure_months:", "columns.tenure_months.bounds", "low < high"),
        ("bounds: [0, 480]}", "bounds: [-1, 480], transform: log1p}", "tenure_months:",
         "columns.tenure_months.transform", "non-negative bounds"),
        ("type: string, hierarchy: {type: prefix", "type: string, transform: log1p, hierarchy: {type: prefix",
         "zip_code:", "columns.zip_code.transform", "integer and float columns only"),
        ("bounds: [0, 480]}", "bounds: [0, 480], transform: sqrt}", "tenure_months:",
         "columns.tenure_months.transform", "Input should be"),
        ("occupation:  {role: sensitive, type: categorical}", "occupation:  {role: sensitive}", "occupation:",
         "columns.occupation.type", "needs a type"),
        ("email:       {role: drop}", "email:       {role: drop, colour: red}", "email:", "columns.email.colour",
         "unknown field"),
        ("consent: consent_analytics", "consent: churn", "consent: churn", "purpose.consent", "role consent"),
        ("fairness_groups: [gender]", "fairness_groups: [sex]", "fairness_groups", "fairness_groups.0",
         "not declared"),
        ("columns: [age, gender,", "columns: [age, salary, gender,", "columns: [age", "purpose.columns.1",
         "not declared"),
        ("epsilon: 3.0", "epsilon: -1", "budget:", "budget.epsilon", "greater than 0"),
        ("version: 1", "version: 2", "version:", "version", "Input should be 1"),
    ],
)
def test_policy_errors_name_line_and_field(old: str, new: str, line_needle: str, field: str, words: str) -> None:
    text = _text()
    assert old in text
    bad = text.replace(old, new, 1)
    message = _error(bad)
    assert message.startswith(f"policy.yaml line {_line_of(bad, line_needle)}, {field}: "), message
    assert words in message


def test_transform_is_public_metadata_with_a_default() -> None:
    text = _text().replace("bounds: [0, 480]}", "bounds: [0, 480], transform: log1p}", 1)
    policy = Policy.from_yaml_text(text, "policy.yaml")
    assert policy.columns["tenure_months"].transform == "log1p"
    assert policy.columns["tenure_months"].bounds == (0, 480)  # bounds stay in the column's own units
    assert policy.columns["age"].transform == "none"


def test_missing_required_section_names_the_field() -> None:
    text = "\n".join(line for line in _text().splitlines() if not line.startswith("privacy:"))
    assert _error(text) == "policy.yaml line 2, privacy: Field required"


def test_yaml_syntax_error_and_duplicate_key_name_the_line() -> None:
    broken = _text().replace("categories: [F, M, X]", "categories: [F, M, X")
    assert re.match(r"policy\.yaml line \d+: not valid YAML", _error(broken))
    twice = _text().replace("name: test-churn-release", "name: test-churn-release\nname: again")
    assert _error(twice) == f"policy.yaml line {_line_of(twice, 'name: again')}: field 'name' appears twice"
    assert _error("") == "policy.yaml: empty policy file"
    assert _error("- just\n- a list\n") == "policy.yaml line 1: the policy must be a mapping of fields"


def test_load_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such policy file"):
        load_policy(tmp_path / "absent.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.yaml: policy file is not UTF-8 text"):
        load_policy(tmp_path / "latin1.yaml")
