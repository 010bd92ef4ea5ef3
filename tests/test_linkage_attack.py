"""A linkage attack on a release: join it with the population's raw quasi-identifiers.

The attacker holds every person's raw QIs and the release; a raw record matches each release class
whose released ranges / hierarchy nodes contain its values. The matching here is written from the
hierarchy definitions directly (not through anonymize's own containment code), so it is an
independent check of the release semantics. A k-anonymous release must match no record uniquely,
and guessing the record among the candidates must succeed with probability <= 1/k.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize.generalization.generalize import generalize
from anonymize.policy.spec import PrivacyModel

ROOT = Path(__file__).resolve().parents[1]
ADULT_PATH = ROOT.parent / "shared" / "data" / "adult.csv"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_anonymize", ROOT / "benchmarks" / "bench_anonymize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _covers(label: str, column: str, raw: pd.Series, trees: dict) -> np.ndarray:
    """Does the released `label` contain each raw value? Ranges, node names, sets or '*'."""
    if label == "*":
        return np.ones(len(raw), dtype=bool)
    if column == "age":
        parts = label.strip("[]").split(",")
        lo, hi = float(parts[0]), float(parts[-1])
        return ((raw >= lo) & (raw <= hi)).to_numpy()
    if label.startswith("{"):
        return raw.isin(label[1:-1].split(",")).to_numpy()
    members = {v for v, ancestors in trees[column].items() if v == label or label in ancestors}
    return raw.isin(members).to_numpy()


@pytest.mark.parametrize("k,algorithm", [(5, "mondrian"), (10, "mondrian_relaxed"), (5, "lattice")])
def test_linkage_attack_success_is_at_most_one_over_k(k, algorithm) -> None:
    if not ADULT_PATH.is_file():
        pytest.fail("reference data ../shared/data not present (it must sit beside the project)")
    bench = _bench()
    population = bench.load_adult().sample(2000, random_state=7)
    qis = bench.ADULT_QIS
    g = generalize(population, bench.adult_hierarchies(), PrivacyModel(k=k, algorithm=algorithm, suppression_limit=0.05))
    release = g.data
    classes = release.groupby(qis, sort=False).size()
    released_ids = set(release.index)
    # candidates[i] = number of release records the raw record i could be
    candidates = np.zeros(len(population), dtype=np.int64)
    true_class_matched = np.zeros(len(population), dtype=bool)
    true_key = {idx: tuple(row) for idx, row in zip(release.index, release[qis].itertuples(index=False), strict=True)}
    keys_of_pop = [true_key.get(i) for i in population.index]
    for key, size in classes.items():
        match = np.ones(len(population), dtype=bool)
        for col, label in zip(qis, key, strict=True):
            match &= _covers(label, col, population[col], bench.ADULT_TREES)
        candidates += match * int(size)
        true_class_matched |= match & np.array([kp == key for kp in keys_of_pop])
    in_release = population.index.isin(list(released_ids))
    assert true_class_matched[in_release].all()  # every released record is found by its own raw values
    assert (candidates[in_release] >= k).all()  # nobody is matched uniquely (or by fewer than k)
    success = np.where(in_release, 1.0 / np.maximum(candidates, 1), 0.0)
    assert success.sum() / len(population) <= 1.0 / k
    assert success[in_release].max() <= 1.0 / k
