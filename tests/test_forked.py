"""`anonymize.forked.Pending`: the job's result from a forked child, its exception, and no fork."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from anonymize import forked
from anonymize.errors import InputError
from privmodel import budget


def _pid_and_sum(frame: pd.DataFrame) -> tuple[int, int]:
    return os.getpid(), int(frame["x"].sum())


def test_the_job_runs_in_a_child_and_returns_its_result() -> None:
    frame = pd.DataFrame({"x": range(1000)})
    pending = forked.Pending(_pid_and_sum, frame)
    pid, total = pending.result()
    assert total == 499500 and pid != os.getpid()
    assert forked.Pending(budget.frame_id, frame).result() == budget.frame_id(frame)


def test_the_childs_exception_is_raised_by_result() -> None:
    with pytest.raises(InputError, match="at least one column"):
        forked.Pending(budget.frame_id, pd.DataFrame(index=range(3))).result()


def test_without_fork_the_job_runs_in_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    pid, total = forked.Pending(_pid_and_sum, pd.DataFrame({"x": [1, 2]})).result()
    assert pid == os.getpid() and total == 3
