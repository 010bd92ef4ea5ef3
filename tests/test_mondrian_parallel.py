"""Mondrian shared with a forked child (large tables, `PARALLEL_MIN_ROWS`) makes exactly the partitions
of one process: the same classes and release strings, strict and relaxed, with l-diversity."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import pytest

from anonymize.generalization import mondrian
from anonymize.generalization.generalize import generalize
from anonymize.generalization.hierarchies import Hierarchy, build_hierarchy
from anonymize.policy.spec import IntervalsHierarchy, LDiversity, PrefixHierarchy, PrivacyModel, TreeHierarchy


def _table(n: int = 6000) -> tuple[pd.DataFrame, dict[str, Hierarchy]]:
    rng = np.random.default_rng(3)
    df = pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "zip": [f"{z:05d}" for z in rng.integers(10000, 10600, n)],
        "job": rng.choice(["nurse", "clerk", "chef", "pilot"], n),
        "disease": rng.choice(["flu", "cold", "asthma", "none"], n),
    })
    qis = {
        "age": build_hierarchy(IntervalsHierarchy(type="intervals", widths=[5, 10]), "integer", column="age"),
        "zip": build_hierarchy(PrefixHierarchy(type="prefix", keep=[4, 3, 1]), "string", column="zip"),
        "job": build_hierarchy(TreeHierarchy(type="tree", levels={"nurse": ["care"], "clerk": ["office"],
                                                                  "chef": ["care"], "pilot": ["office"]}),
                               "categorical", column="job"),
    }
    return df, qis


@pytest.mark.parametrize("algorithm", ["mondrian", "mondrian_relaxed"])
def test_shared_splitting_equals_one_process(monkeypatch: pytest.MonkeyPatch,
                                             algorithm: Literal["mondrian", "mondrian_relaxed"]) -> None:
    df, qis = _table()
    privacy = PrivacyModel(k=5, l=LDiversity(value=2, variant="distinct"), algorithm=algorithm)
    one = generalize(df, qis, privacy, ["disease"])
    monkeypatch.setattr(mondrian, "PARALLEL_MIN_ROWS", 100)
    shared = generalize(df, qis, privacy, ["disease"])
    assert shared.classes == one.classes > 100
    pd.testing.assert_frame_equal(shared.data, one.data)
