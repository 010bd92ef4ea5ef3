"""Property tests of the ledger parser: any change to a signed ledger's bytes is reported, and no
input -- arbitrary bytes included -- makes `verify` or `read_entries` raise anything but InputError."""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymize.errors import InputError
from privmodel.artifacts.ledger import Ledger, read_entries, verify
from privmodel.core.keys import Signer

SIGNER = Signer.generate("bank-a")
_TEMPLATE = Path(tempfile.mkdtemp(prefix="ledger-fuzz-"))
atexit.register(shutil.rmtree, _TEMPLATE, True)
_LEDGER = Ledger(_TEMPLATE / "ledger.jsonl", SIGNER)
for _i in range(3):
    _LEDGER.append("train", params={"i": _i, "name": "Zoë"}, privacy_cost={"epsilon": 0.25, "delta": 1e-6})
ORIGINAL = _LEDGER.path.read_bytes()

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def _scene(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ledger-case-") as tmp:
        folder = Path(tmp)
        shutil.copy(_TEMPLATE / "ledger.jsonl.head", folder / "ledger.jsonl.head")
        (folder / "ledger.jsonl").write_bytes(data)
        yield folder / "ledger.jsonl"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(ORIGINAL)
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[at] = draw(st.integers(0, 255).filter(lambda b: b != data[at]))
    elif kind == "insert":
        data.insert(at, draw(st.integers(0, 255)))
    elif kind == "delete":
        del data[at]
    elif kind == "truncate":
        del data[at:]
    else:
        data[at:at + draw(st.integers(0, 40))] = draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


@FUZZ
@given(mutated())
def test_any_change_to_the_bytes_is_reported(data: bytes) -> None:
    with _scene(data) as path:
        result = verify(path, [SIGNER.public_key])
    assert result.ok == (data == ORIGINAL)
    if not result.ok:
        assert result.first_problem is not None and str(result.first_problem)


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    with _scene(data) as path:
        result = verify(path, [SIGNER.public_key], witness=path.parent / "ledger.jsonl.head")
        assert not result.ok
        try:
            read_entries(path)
        except InputError as exc:
            assert "\n" not in str(exc)


def test_the_unchanged_template_verifies() -> None:
    with _scene(ORIGINAL) as path:
        assert verify(path, [SIGNER.public_key]).ok


@pytest.mark.parametrize("signed_by", ["owner", "attacker"])
def test_tofu_is_the_only_way_an_attacker_ledger_passes(tmp_path: Path, signed_by: str) -> None:
    signer = SIGNER if signed_by == "owner" else Signer.generate("bank-a")
    Ledger(tmp_path / "l.jsonl", signer).append("train")
    assert verify(tmp_path / "l.jsonl", tofu=True).ok
    assert verify(tmp_path / "l.jsonl", [SIGNER.public_key]).ok == (signed_by == "owner")
