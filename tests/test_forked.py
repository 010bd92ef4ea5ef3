"""`anonymize.forked.Pending`: the job's result from a forked child, its exception, and no fork."""

from __future__ import annotations

import multiprocessing
import os

import pandas as pd
import pytest

from anonymize import forked
from anonymize.errors import InputError
from privmodel.dp import budget


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
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    pid, total = forked.Pending(_pid_and_sum, pd.DataFrame({"x": [1, 2]})).result()
    assert pid == os.getpid() and total == 3


def test_the_epsilon_history_computed_during_training_is_the_lazy_one() -> None:
    import numpy as np

    from privmodel.data.features import EncodedData
    from privmodel.dp.training import TrainConfig, fit

    rng = np.random.default_rng(0)
    n = 2_000
    data = EncodedData(rng.random((n, 2), dtype=np.float32), rng.integers(1, 3, (n, 1)), [3], ["a", "b"], ["c"])
    y = (rng.random(n) < 0.3).astype(np.float32)
    config = TrainConfig(epsilon=1.0, epochs=3, batch_size=256, insecure_seed=1)
    eager = fit(data, y, config, history=True)
    assert isinstance(eager._history, forked.Pending)
    lazy = fit(data, y, config)
    assert lazy._history is None
    assert eager.epsilon_history == lazy.epsilon_history and len(lazy.epsilon_history) == 3
    assert eager.epsilon_history[-1]["epsilon"] == eager.privacy["epsilon"]
