"""Hostile policy files (issue 11, finding 6): alias bombs, deep nesting, .inf / .nan numbers.

Each is one InputError line naming the file, the YAML line and what is wrong, returned at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from anonymize.errors import InputError
from anonymize.policy.schema import Policy, load_policy

POLICY = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"


def _error(text: str, source: str = "hostile.yaml") -> str:
    with pytest.raises(InputError) as info:
        Policy.from_yaml_text(text, source)
    message = str(info.value)
    assert "\n" not in message
    return message


def alias_bomb(levels: int = 40, width: int = 25) -> str:
    """Nested aliases: `levels` x `width` short lines that stand for width ** levels values."""
    lines = ["version: 1", "name: bomb", 'l0: &l0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"columns: {{x: {{role: drop}}, y: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    text = alias_bomb()
    assert 5_000 < len(text.encode()) < 7_000  # the 6 KB of the finding
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        load_policy(path)
    assert time.perf_counter() - start < 1.0
    assert str(info.value) == (
        f"{path} line 3: YAML anchor found; anchors and aliases are not allowed in a policy (write each value out)"
    )


def test_a_harmless_alias_is_refused_too_naming_its_line() -> None:
    text = POLICY.read_text()
    text = text.replace("channel:     {role: feature, type: categorical, categories: [branch, app, web]}",
                        "channel:     {role: feature, type: categorical, categories: &chan [branch, app, web]}")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "&chan" in row)
    assert _error(text) == (
        f"hostile.yaml line {line}: YAML anchor found; anchors and aliases are not allowed in a policy "
        "(write each value out)"
    )
    bare = "version: 1\nname: x\nother: *nowhere\n"  # an alias without its anchor
    assert "line 3" in _error(bare)


def test_deep_nesting_is_one_line_not_a_recursion_error() -> None:
    start = time.perf_counter()
    message = _error("version: 1\nname: deep\ncolumns: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert time.perf_counter() - start < 1.0
    assert message == "hostile.yaml line 3: nested more than 32 levels deep"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("bounds: [18, 100]", "bounds: [18, .inf]", "columns.age.bounds.1"),
        ("bounds: [18, 100]", "bounds: [.nan, 100]", "columns.age.bounds.0"),
        ("widths: [5, 10, 20]", "widths: [5, 10, .inf]", "columns.age.hierarchy.widths.2"),
        ("widths: [5, 10, 20]", "widths: [5, 10, 20], origin: .nan", "columns.age.hierarchy.origin"),
        ("epsilon: 3.0", "epsilon: .inf", "budget.epsilon"),
        ("epsilon: 3.0", "epsilon: .nan", "budget.epsilon"),
        ("delta: 1.0e-6", "delta: .nan", "budget.delta"),
        ("k: 3", "k: .inf", "privacy.k"),
        ("k: 3", "k: 3, t: .nan", "privacy.t"),
        ("suppression_limit: 0.05", "suppression_limit: .nan", "privacy.suppression_limit"),
        ("k: 3", "k: 3, l: {value: 2, variant: recursive, c: .inf}", "privacy.l.c"),
        ("epsilon: 3.0", "epsilon: 1e400", "budget.epsilon"),  # a string YAML leaves alone; overflows to inf
    ],
)
def test_every_number_must_be_finite(old: str, new: str, field: str) -> None:
    text = POLICY.read_text()
    assert old in text
    bad = text.replace(old, new, 1)
    line = next(i for i, row in enumerate(bad.splitlines(), 1) if new in row)
    message = _error(bad)
    assert message.startswith(f"hostile.yaml line {line}, {field}: "), message
    assert "finite number" in message, message
