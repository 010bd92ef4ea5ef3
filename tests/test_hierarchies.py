"""Hierarchies: spec -> domain codes, level tables, release strings, NCP, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anonymize.errors import InputError
from anonymize.generalization.hierarchies import build_hierarchy, parse_range
from anonymize.policy.spec import CsvHierarchy, DateHierarchy, IntervalsHierarchy, PrefixHierarchy, TreeHierarchy

EDU = TreeHierarchy(
    type="tree",
    levels={
        "Bachelors": ["Undergrad", "Higher"],
        "Masters": ["Graduate", "Higher"],
        "HS-grad": ["School", "Basic"],
        "Doctorate": ["Graduate", "Higher"],
        "9th": ["School", "Basic"],
    },
)


def test_tree_leaves_are_depth_first_so_nodes_are_contiguous() -> None:
    dom = build_hierarchy(EDU, "categorical").encode(pd.Series(["Masters", "9th", "Doctorate"]), "edu")
    # every node at every level covers one contiguous run of leaf codes
    for row in dom.anc:
        assert all(np.all(np.diff(np.flatnonzero(row == node)) == 1) for node in np.unique(row))
    assert dom.render_node(dom.leaves.index("Masters"), dom.leaves.index("Doctorate")) == "Graduate"
    assert dom.render_node(dom.leaves.index("Masters"), dom.leaves.index("Bachelors")) == "Higher"
    assert dom.render_node(dom.leaves.index("9th"), dom.leaves.index("Masters")) == "*"
    assert dom.label_ncp(["Masters", "Graduate", "Higher", "*", "{Masters,9th}"]).tolist() == [0.0, 0.4, 0.6, 1.0, 0.4]


def test_unknown_category_names_column_and_first_bad_row_not_the_value() -> None:
    h = build_hierarchy(EDU, "categorical")
    with pytest.raises(InputError) as err:
        h.encode(pd.Series(["Masters", "Secretvalue", "Other"], index=[10, 11, 12]), "edu")
    msg = str(err.value)
    assert "'edu'" in msg and "row 11" in msg and "Secretvalue" not in msg and "\n" not in msg


def test_all_missing_and_some_missing_are_input_errors() -> None:
    h = build_hierarchy(None, "integer")
    with pytest.raises(InputError, match="every value is missing"):
        h.encode(pd.Series([np.nan, np.nan]), "age")
    with pytest.raises(InputError, match="row 1"):
        h.encode(pd.Series([3.0, np.nan]), "age")
    with pytest.raises(InputError, match="row 0"):
        build_hierarchy(None, "integer").encode(pd.Series(["x", "4"]), "age")


def test_intervals_levels_and_ncp() -> None:
    h = build_hierarchy(IntervalsHierarchy(type="intervals", widths=[5, 10]), "integer")
    dom = h.encode(pd.Series([17, 20, 23, 41, 57]), "age")
    assert dom.height == 3
    lvl1 = dom.level_table(1)
    assert [lvl1.labels[g] for g in lvl1.gen] == ["[15, 19]", "[20, 24]", "[20, 24]", "[40, 44]", "[55, 59]"]
    lvl2 = dom.level_table(2)
    assert [lvl2.labels[g] for g in lvl2.gen][:2] == ["[10, 19]", "[20, 29]"]
    assert dom.level_table(3).labels == ["*"]
    assert np.allclose(dom.label_ncp(["[20, 29]", "23", "*"]), [9 / 40, 0.0, 1.0])
    assert dom.render(20.0, 29.0) == "[20, 29]" and dom.render(23.0, 23.0) == "23"


def test_date_hierarchy_renders_finest_fitting_level() -> None:
    h = build_hierarchy(DateHierarchy(type="date", levels=["month", "quarter", "year"]), "date")
    dom = h.encode(pd.Series(["1990-05-17", "1990-05-02", "1990-06-30", "1991-02-01"]), "birth")
    d = {iso: dom.values.tolist().index(float(pd.Timestamp(iso).toordinal() - 719163)) for iso in
         ["1990-05-17", "1990-05-02", "1990-06-30", "1991-02-01"]}
    v = dom.values
    assert dom.render(v[d["1990-05-02"]], v[d["1990-05-17"]]) == "1990-05"
    assert dom.render(v[d["1990-05-02"]], v[d["1990-06-30"]]) == "1990-Q2"
    assert dom.render(v[d["1990-05-02"]], v[d["1991-02-01"]]) == "[1990-05-02, 1991-02-01]"
    assert dom.render(v[d["1990-05-17"]], v[d["1990-05-17"]]) == "1990-05-17"
    year = dom.level_table(3)
    assert sorted(set(year.labels)) == ["1990", "1991"]
    assert dom.label_ncp(["1990-05-17"])[0] == 0.0 and 0 < dom.label_ncp(["1990-05"])[0] < dom.label_ncp(["1990"])[0]


def test_prefix_hierarchy_on_zip_codes() -> None:
    h = build_hierarchy(PrefixHierarchy(type="prefix", keep=[4, 3, 1]), "string")
    dom = h.encode(pd.Series(["02139", "02138", "02215", "10001"]), "zip")
    a, b, c = (dom.leaves.index(z) for z in ["02138", "02139", "02215"])
    assert dom.render_node(a, b) == "0213*"
    assert dom.render_node(a, c) == "0****"
    assert dom.render_node(a, dom.leaves.index("10001")) == "*"
    assert dom.level_table(2).labels == ["021**", "022**", "100**"]


def test_csv_hierarchy_relative_to_base_dir(tmp_path) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "work.csv").write_text("Private;Non-Gov;*\nState-gov;Gov;*\nLocal-gov;Gov;*\n")
    h = build_hierarchy(CsvHierarchy(type="csv", path="h/work.csv"), "categorical", base_dir=tmp_path)
    dom = h.encode(pd.Series(["Private", "Local-gov"]), "workclass")
    assert dom.height == 2 and dom.level_table(1).labels == ["Non-Gov", "Gov"]
    with pytest.raises(InputError, match="not found"):
        build_hierarchy(CsvHierarchy(type="csv", path="missing.csv"), "categorical", base_dir=tmp_path)


def test_default_flat_and_declared_categories() -> None:
    dom = build_hierarchy(None, "categorical", categories=["F", "M", "X"]).encode(pd.Series(["F", "M"]), "g")
    assert dom.leaves == ["F", "M", "X"] and dom.height == 1 and dom.label_ncp(["*", "{F,M}"]).tolist() == [1.0, 2 / 3]
    with pytest.raises(InputError, match="row 1"):
        build_hierarchy(None, "categorical", categories=["F", "M"]).encode(pd.Series(["F", "Q"]), "g")


def test_tree_node_with_two_parents_is_rejected() -> None:
    bad = TreeHierarchy(type="tree", levels={"a": ["X", "P"], "b": ["X", "Q"]})
    with pytest.raises(InputError, match="two parents"):
        build_hierarchy(bad, "categorical").encode(pd.Series(["a"]), "c")


def test_parse_range() -> None:
    assert parse_range("[20, 29]") == (20.0, 29.0)
    assert parse_range("35") == (35.0, 35.0)
    assert parse_range("[1.5, 2.25]") == (1.5, 2.25)
    assert parse_range("*", default=(0, 100)) == (0.0, 100.0)
    for bad in ["*", "[3, 1]", "abc", "[1, x]"]:
        with pytest.raises(InputError):
            parse_range(bad)
