"""`privmodel.core.csv_batches`: a CSV read batch by batch gives exactly the whole-file `read_table`
(dtypes and values), with the whole-file read's one-line errors naming the file's own line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from anonymize.errors import InputError
from privmodel.core import csv_batches as module
from privmodel.core.csv_batches import csv_batches, csv_table
from privmodel.core.fileio import read_table

ROWS = 300


def _write(path: Path, first: Callable[[int], object]) -> Path:
    """`ROWS` rows: a column made by `first`, a zip code with leading zeros, booleans, a quoted note
    holding a comma and a line break, a plain integer."""
    lines = ["value,zip,flag,note,n"]
    for i in range(ROWS):
        lines.append(f'{first(i)},{i % 1000:05d},{"True" if i % 3 else "False"},"a, b\n{i}",{i}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CASES: dict[str, Callable[[int], object]] = {
    "integers": lambda i: i,
    "missing only late": lambda i: "" if i == ROWS - 5 else i,
    "integers turn float late": lambda i: 2.5 if i == ROWS - 1 else i,
    "booleans missing late": lambda i: "" if i == ROWS - 2 else bool(i % 2),
    "text only late": lambda i: "x" if i == ROWS - 3 else f"{i:03d}",
    "text then all missing": lambda i: "a" if i < 50 else "",
    "all missing": lambda i: "",
}


@pytest.fixture(autouse=True)
def small_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """First-pass chunks of 16 rows, so a column's type changes between chunks."""
    monkeypatch.setattr(module, "_SCAN_ROWS", 16)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("text", [(), ("zip", "value")])
def test_batches_concatenate_to_the_whole_file(tmp_path: Path, case: str, text: tuple[str, ...]) -> None:
    path = _write(tmp_path / "t.csv", CASES[case])
    whole = read_table(path, text_columns=text)
    for batch_rows in (7, 64, 1000):
        rows, batches = csv_batches(path, text, batch_rows)
        parts = list(batches)
        assert rows == ROWS and max(len(p) for p in parts) == min(batch_rows, ROWS)
        pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), whole)


def test_leading_zeros_and_multiline_fields_survive(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", CASES["integers"])
    frame = pd.concat(list(csv_batches(path, ["zip"], 50)[1]), ignore_index=True)
    assert frame.loc[7, "zip"] == "00007" and frame.loc[7, "note"] == "a, b\n7"
    assert frame["flag"].dtype == bool and frame["n"].dtype == "int64"


def test_row_numbers_and_lines(tmp_path: Path) -> None:
    """Each data row takes two lines here (the note breaks a line): row i starts on line 2i + 2."""
    table = csv_table(_write(tmp_path / "t.csv", CASES["integers"]))
    assert table.lines_of(0, 3) == [2, 4, 6]
    numbers = [rows for _frame, rows in table.batches(128)]
    assert [int(r[0]) for r in numbers] == [1, 129, 257] and int(numbers[-1][-1]) == ROWS


def _same_error(path: Path, text: tuple[str, ...] = ()) -> str:
    """The streamed reader's error, which must be the whole-file read's."""
    with pytest.raises(InputError) as whole:
        read_table(path, text_columns=text)
    with pytest.raises(InputError) as streamed:
        list(csv_batches(path, text, 10)[1])
    assert str(streamed.value) == str(whole.value)
    return str(streamed.value)


def test_ragged_row_late_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(200)) + "1,2,3\n", encoding="utf-8")
    assert _same_error(path) == f"{path}: line 202 has 3 fields, expected 2"


def test_infinite_number_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "inf.csv"
    body = "".join(f'{i},"x\ny"\n' for i in range(100))
    path.write_text("a,b\n" + body + "inf,z\n", encoding="utf-8")
    assert _same_error(path) == f"{path}: line 202: column 'a' holds an infinite number"


def test_bad_bytes_late_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.csv"
    path.write_bytes(b"a,b\n" + b"".join(b"%d,\xc3\xa9\n" % i for i in range(100)) + b"1,\xff\n")
    assert _same_error(path) == f"{path}: not UTF-8 text (invalid byte at line 102)"
    path.write_bytes(b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(100)) + b"1,\x00\n")
    assert _same_error(path) == f"{path}: line 102 holds a NUL byte; not a text table"


def test_header_only_and_duplicate_names(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a,b\n", encoding="utf-8")
    assert _same_error(path) == f"{path}: table has a header but no rows"
    path.write_text("a,a\n1,2\n", encoding="utf-8")
    assert _same_error(path) == f"{path}: header field 2 repeats a column name; names must be unique"


def test_unnamed_and_spaced_header_fields(tmp_path: Path) -> None:
    """pandas names an empty header field 'Unnamed: 1'; the batches carry pandas' names."""
    path = tmp_path / "u.csv"
    path.write_text("a,, c\n" + "".join(f"{i},x{i}, {i:03d}\n" for i in range(40)), encoding="utf-8")
    for text in ((), ("c", "a")):
        whole = read_table(path, text_columns=text)
        pd.testing.assert_frame_equal(pd.concat(list(csv_batches(path, text, 9)[1]), ignore_index=True), whole)


def test_text_check_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A character cut by a block boundary is fine; a bad byte still names its line."""
    from privmodel.core import fileio

    monkeypatch.setattr(fileio, "_TEXT_BLOCK", 3)
    path = tmp_path / "b.csv"
    path.write_bytes(b"a,b\n" + b"".join(b"%d,\xc3\xa9\xe2\x82\xac\n" % i for i in range(20)))
    fileio.check_text(path)
    path.write_bytes(b"a,b\n" + b"".join(b"%d,\xc3\xa9\n" % i for i in range(20)) + b"1,\xc3\n")
    with pytest.raises(InputError, match=r"invalid byte at line 22\)"):
        fileio.check_text(path)
    path.write_bytes(b"a,b\n" + b"".join(b"%d,\xc3\xa9\n" % i for i in range(20)) + b"1,\xc3x\n")
    with pytest.raises(InputError, match=r"invalid byte at line 22\)"):
        fileio.check_text(path)
