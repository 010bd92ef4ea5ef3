"""Every named tamper class (tests/ledger_tamper.py) is detected by `verify` against the owner's key
and the witness, and by `privmodel audit verify` with one line and exit 2; crafted lines make
`privmodel audit show` print one line and exit 2 too, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from privmodel.cli import main
from tests.ledger_tamper import CASES, build_scene, check


def test_there_are_at_least_twelve_named_classes() -> None:
    required = {
        "edit a field", "delete a line", "reorder lines", "insert a forged entry", "truncate the tail",
        "rollback with head", "replace by another valid ledger", "unsigned extra field", "duplicate key",
        "re-sign with attacker key", "integer signature", "list key_id", "string seq", "non-UTF-8 bytes",
    }
    assert required <= CASES.keys()
    assert len(CASES) >= 12


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("name", list(CASES))
def test_tamper_class_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    case = CASES[name]
    scene = build_scene(tmp_path)
    assert check(scene).ok, check(scene).problems  # the untouched scene verifies
    code, out, _ = _cli(capsys, "audit", "verify", str(scene.ledger), "--keys", str(scene.keys),
                        "--witness", str(scene.witness))
    assert code == 0 and out.startswith("OK ") and "extends 1 witnessed head(s)" in out

    case.tamper(scene)
    result = check(scene)
    assert not result.ok
    assert case.expected in str(result.first_problem)

    code, out, err = _cli(capsys, "audit", "verify", str(scene.ledger), "--keys", str(scene.keys),
                          "--witness", str(scene.witness))
    assert code == 2 and err == ""
    assert out.count("\n") == 1 and out.startswith(f"FAILED {scene.ledger}: first bad entry: ")
    assert case.expected in out

    code, out, err = _cli(capsys, "audit", "show", str(scene.ledger))
    assert "Traceback" not in out + err
    if case.malformed:
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"error: {scene.ledger}: line ")
    else:
        assert code in (0, 2)
        assert code == 0 or err.count("\n") == 1
