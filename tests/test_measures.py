"""privacy_measures / reidentification_risk / utility_loss, each figure recomputed independently."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycanon.anonymity import entropy_l_diversity, k_anonymity, l_diversity, t_closeness

from anonymize.errors import InputError
from anonymize.generalization.generalize import generalize
from anonymize.generalization.hierarchies import build_hierarchy
from anonymize.measures.achieved import privacy_measures, reidentification_risk, utility_loss
from anonymize.policy.spec import IntervalsHierarchy, PrivacyModel, TreeHierarchy

ROOT = Path(__file__).resolve().parents[1]
ADULT_PATH = ROOT.parent / "shared" / "data" / "adult.csv"


def _pc(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.reset_index(drop=True)


def _recursive_c(frame: pd.DataFrame, qis: list[str], sa: str, l_value: int) -> float:
    """Machanavajjhala's r_1 / (r_l + ... + r_m), counts in decreasing order (pycanon sorts ascending)."""
    worst = 0.0
    for _, grp in frame.groupby(qis):
        r = np.sort(grp[sa].value_counts().to_numpy())[::-1]
        tail = r[l_value - 1 :].sum()
        worst = max(worst, np.inf if tail == 0 else r[0] / tail)
    return worst


def _check_against_pycanon(release: pd.DataFrame, qis: list[str], sens: list[str]) -> None:
    m = privacy_measures(release, qis, sens, recursive_l=2)
    pc = _pc(release)
    assert m["k"] == k_anonymity(pc, qis)
    assert m["classes"] == pc.groupby(qis).ngroups
    assert sum(m["class_size_histogram"].values()) == m["classes"]
    for s in sens:
        assert m["l"][s]["distinct"] == l_diversity(pc, qis, [s])
        ent = m["l"][s]["entropy"]
        assert entropy_l_diversity(pc, qis, [s]) in (int(ent - 1e-9), int(ent + 1e-9))  # pycanon floors exp(H)
        if release[s].nunique() > 1:
            assert m["t"][s] == pytest.approx(t_closeness(pc, qis, [s]), abs=1e-9)
        else:  # one value: every class has the table's distribution (pycanon divides by m - 1 = 0 here)
            assert m["t"][s] == 0.0
        assert m["l"][s]["recursive"]["c"] == pytest.approx(_recursive_c(pc, qis, s, 2))


@pytest.fixture(scope="module")
def adult_release():
    if not ADULT_PATH.is_file():
        pytest.fail("reference data ../shared/data not present (it must sit beside the project)")
    spec = importlib.util.spec_from_file_location("bench_anonymize", ROOT / "benchmarks" / "bench_anonymize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    df = bench.load_adult().sample(1500, random_state=1)
    qis = bench.adult_hierarchies()
    g = generalize(df, qis, PrivacyModel(k=10))
    return df, g, qis, bench.ADULT_QIS


def test_adult_measures_agree_with_pycanon(adult_release) -> None:
    _df, g, _qis, names = adult_release
    _check_against_pycanon(g.data, names, ["Salary", "education-num"])


def test_small_synthetic_frame_by_hand() -> None:
    rel = pd.DataFrame({
        "a": ["[1, 5]"] * 4 + ["[6, 9]"] * 3,
        "b": ["x"] * 7,
        "s": ["p", "p", "q", "r", "p", "q", "q"],
        "n": [1, 2, 3, 4, 1, 1, 1],
    })
    m = privacy_measures(rel, ["a", "b"], ["s", "n"])
    assert m["k"] == 3 and m["classes"] == 2 and m["class_size_histogram"]["3-4"] == 2
    assert m["l"]["s"]["distinct"] == 2
    assert m["l"]["s"]["entropy"] == pytest.approx(np.exp(-(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))))
    assert m["t_kind"] == {"s": "equal", "n": "ordered"}
    _check_against_pycanon(rel, ["a", "b"], ["s", "n"])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 40), seed=st.integers(0, 2**16), k=st.integers(2, 4))
def test_hypothesis_releases_agree_with_pycanon(n, seed, k) -> None:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "x": rng.integers(0, 20, n),
        "c": rng.choice(list("abc"), n),
        "s": rng.choice(["u", "v", "w"], n),
        "v": rng.integers(0, 4, n),
    })
    qis = {"x": build_hierarchy(None, "integer"), "c": build_hierarchy(None, "categorical")}
    if k > n:
        return
    g = generalize(df, qis, PrivacyModel(k=k, algorithm="mondrian_relaxed"))
    _check_against_pycanon(g.data, ["x", "c"], ["s", "v"])


def test_risk_prosecutor_marketer_and_journalist() -> None:
    rel = pd.DataFrame({"a": ["[1, 5]"] * 2 + ["[6, 9]"] * 4, "b": ["x"] * 6})
    r = reidentification_risk(rel, ["a", "b"], threshold=0.3)
    assert r["prosecutor_max"] == 0.5 and r["prosecutor_avg"] == pytest.approx((2 * 0.5 + 4 * 0.25) / 6)
    assert r["marketer"] == pytest.approx(2 / 6) and r["records_at_risk"] == 2 and r["journalist_max"] is None
    # population in release representation: 4 and 8 matching records
    pop = pd.DataFrame({"a": ["[1, 5]"] * 4 + ["[6, 9]"] * 8, "b": ["x"] * 12})
    r = reidentification_risk(rel, ["a", "b"], population=pop)
    assert r["journalist_max"] == 0.25 and r["journalist_avg"] == pytest.approx((2 / 4 + 4 / 8) / 6)
    # raw population matched by containment through the hierarchies
    raw = pd.DataFrame({"a": [1, 2, 5, 6, 7, 9, 9, 10], "b": ["x"] * 8})
    hs = {"a": build_hierarchy(None, "integer"), "b": build_hierarchy(None, "categorical")}
    r = reidentification_risk(rel, ["a", "b"], population=raw, hierarchies=hs)
    assert r["journalist_max"] == pytest.approx(1 / 3) and r["journalist_avg"] == pytest.approx((2 / 3 + 4 / 4) / 6)
    with pytest.raises(InputError, match="'zz'"):
        reidentification_risk(rel, ["zz"])


def test_utility_ncp_discernibility_and_cavg_by_hand() -> None:
    orig = pd.DataFrame({"age": [20, 25, 30, 40, 60], "edu": ["BA", "MA", "BA", "HS", "HS"]})
    tree = TreeHierarchy(type="tree", levels={"BA": ["Higher"], "MA": ["Higher"], "HS": ["School"], "9th": ["School"]})
    qis = {"age": build_hierarchy(IntervalsHierarchy(type="intervals", widths=[10]), "integer"),
           "edu": build_hierarchy(tree, "categorical")}
    rel = pd.DataFrame({"age": ["[20, 30]", "[20, 30]", "[20, 30]", "[40, 60]"], "edu": ["Higher", "Higher", "Higher", "HS"]},
                       index=[0, 1, 2, 3])
    u = utility_loss(orig, rel, qis, suppressed=1, k=2)
    age = (3 * 10 / 40 + 20 / 40 + 1) / 5
    edu = (3 * 2 / 4 + 0 + 1) / 5
    assert u["per_column_ncp"]["age"] == pytest.approx(age) and u["per_column_ncp"]["edu"] == pytest.approx(edu)
    assert u["ncp"] == pytest.approx((age + edu) / 2)
    assert u["discernibility"] == 9 + 1 + 1 * 5 and u["classes"] == 2
    assert u["avg_class_size"] == pytest.approx((4 / 2) / 2)


def test_utility_on_adult_matches_class_structure(adult_release) -> None:
    df, g, qis, names = adult_release
    u = utility_loss(df, g.data, qis, g.suppressed)
    sizes = g.data.groupby(names).size().to_numpy()
    assert u["discernibility"] == int((sizes**2).sum())
    assert 0 < u["ncp"] < 0.5 and u["avg_class_size"] == pytest.approx(len(df) / len(sizes) / sizes.min())


def test_risk_histogram_counts_records_per_band() -> None:
    import numpy as np

    from anonymize.measures.risk import risk_histogram

    sizes = np.array([1] * 1 + [2] * 2 + [10] * 10 + [200] * 200)
    hist = risk_histogram(1.0 / sizes)
    assert hist == {"(0, 0.01]": 200, "(0.01, 0.05]": 0, "(0.05, 0.1]": 10, "(0.1, 0.2]": 0,
                    "(0.2, 0.5]": 2, "(0.5, 1]": 1}
