"""Generalization hierarchies: what a quasi-identifier value may become, and how much that costs.

A `Hierarchy` is built once from the policy (`build_hierarchy`), then `encode`d against a column,
which validates the values and returns a `Domain`: integer codes per row plus the lookup tables the
algorithms need. Two shapes cover every spec:

- `NumericDomain` (integer, float, date-as-ordinal-days): codes index the sorted distinct values;
  Mondrian releases data-driven ranges, the lattice uses the spec's fixed levels (interval widths,
  month / quarter / year / decade).
- `TreeDomain` (tree, csv, prefix, flat): leaves are numbered in depth-first order, so that every
  node of the tree covers a contiguous run of leaf codes. Mondrian then finds the covering node of
  a partition from its smallest and largest code alone, and splits along the node's children.

Both render released strings per docs/architecture.md and price them with the normalized certainty
penalty (NCP): numeric ranges by (hi - lo) / domain range, categorical nodes by leaves / all leaves
(0 for a single value), as in Xu et al. 2006 and the Basic Mondrian reference implementation.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from anonymize.errors import InputError
from anonymize.policy.spec import (
    CsvHierarchy,
    DateHierarchy,
    HierarchySpec,
    IntervalsHierarchy,
    PrefixHierarchy,
    TreeHierarchy,
)

COLUMN_TYPES = ("integer", "float", "date", "string", "categorical")
SUPPRESSED = "*"
_EPOCH = dt.date(1970, 1, 1).toordinal()
_RANGE = re.compile(r"^\[\s*([^,\]]+?)\s*,\s*([^,\]]+?)\s*\]$")
_QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
_DECADE = re.compile(r"^(\d{3}0)s$")


def _row_label(index: pd.Index, position: int) -> str:
    return str(index[position])


# --------------------------------------------------------------------------------------------
# number / date formatting shared by the renderers and parse_range


def format_number(value: float, integer: bool) -> str:
    """Integers print without a decimal point; floats print their shortest round-trip form."""
    if integer:
        return str(int(round(value)))
    return repr(float(value))


def day_to_iso(day: int) -> str:
    return dt.date.fromordinal(int(day) + _EPOCH).isoformat()


def iso_to_day(text: str) -> int:
    return dt.date.fromisoformat(text).toordinal() - _EPOCH


def _month_bounds(year: int, month: int) -> tuple[int, int]:
    last = calendar.monthrange(year, month)[1]
    return iso_to_day(f"{year:04d}-{month:02d}-01"), iso_to_day(f"{year:04d}-{month:02d}-{last:02d}")


def date_label_bounds(label: str) -> tuple[int, int] | None:
    """Day range (inclusive, days since 1970-01-01) a released date label stands for, else None."""
    text = label.strip()
    try:
        if len(text) == 10:
            d = iso_to_day(text)
            return d, d
        if len(text) == 7 and text[4] == "-":
            return _month_bounds(int(text[:4]), int(text[5:]))
        if (m := _QUARTER.match(text)) is not None:
            year, q = int(m.group(1)), int(m.group(2))
            return _month_bounds(year, 3 * q - 2)[0], _month_bounds(year, 3 * q)[1]
        if len(text) == 4 and text.isdigit():
            return iso_to_day(f"{text}-01-01"), iso_to_day(f"{text}-12-31")
        if (m := _DECADE.match(text)) is not None:
            y = int(m.group(1))
            return iso_to_day(f"{y:04d}-01-01"), iso_to_day(f"{y + 9:04d}-12-31")
        if (m := _RANGE.match(text)) is not None:
            return iso_to_day(m.group(1)), iso_to_day(m.group(2))
    except ValueError:
        return None
    return None


def _date_bucket(day: np.ndarray, level: str) -> tuple[np.ndarray, list[str] | None]:
    """Bucket key per day for one date level; labels are made later from the keys."""
    d = day.astype("datetime64[D]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month0 = d.astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    if level == "month":
        return month0, None
    if level == "quarter":
        return month0 // 3, None
    if level == "year":
        return year, None
    return year // 10, None  # decade


def _date_bucket_label(key: int, level: str) -> str:
    if level == "month":
        y, m = divmod(int(key), 12)
        return f"{1970 + y:04d}-{m + 1:02d}"
    if level == "quarter":
        y, q = divmod(int(key), 4)
        return f"{1970 + y:04d}-Q{q + 1}"
    if level == "year":
        return f"{int(key):04d}"
    return f"{int(key) * 10:04d}s"


# --------------------------------------------------------------------------------------------
# domains: a hierarchy encoded against one column


@dataclass
class LevelTable:
    """Full-domain generalization of one column to one level (used by the lattice search)."""

    gen: np.ndarray  # generalized code per leaf code
    labels: list[str]  # release string per generalized code
    ncp: np.ndarray  # NCP per generalized code


@dataclass
class NumericDomain:
    """A numeric or date column: codes index `values` (sorted distinct values, float64)."""

    column: str
    codes: np.ndarray
    values: np.ndarray
    integer: bool
    is_date: bool
    spec: HierarchySpec | None
    kind: str = field(default="numeric", init=False)

    @property
    def span(self) -> float:
        return float(self.values[-1] - self.values[0]) if len(self.values) else 0.0

    @property
    def height(self) -> int:
        """Number of generalization levels above the raw value (the last one is '*')."""
        return len(self._level_defs()) + 1

    def _level_defs(self) -> list[float | str]:
        """Interval widths (numbers) or date level names, finest first."""
        if isinstance(self.spec, IntervalsHierarchy | DateHierarchy):
            return list(self.spec.widths if isinstance(self.spec, IntervalsHierarchy) else self.spec.levels)
        return []

    def render(self, lo: float, hi: float) -> str:
        """Release string of the inclusive range [lo, hi] of actual values."""
        if self.is_date:
            if lo == hi:
                return day_to_iso(int(lo))
            levels = self.spec.levels if isinstance(self.spec, DateHierarchy) else ()
            for level in levels:  # finest configured date level whose one bucket holds the range
                a, _ = _date_bucket(np.array([lo, hi], dtype=np.int64), level)
                if a[0] == a[1]:
                    return _date_bucket_label(int(a[0]), level)
            return f"[{day_to_iso(int(lo))}, {day_to_iso(int(hi))}]"
        if lo == hi:
            return format_number(lo, self.integer)
        return f"[{format_number(lo, self.integer)}, {format_number(hi, self.integer)}]"

    def level_table(self, level: int) -> LevelTable:
        defs = self._level_defs()
        n = len(self.values)
        span = self.span
        if level == 0:
            labels = [self.render(v, v) for v in self.values]
            return LevelTable(np.arange(n, dtype=np.int64), labels, np.zeros(n))
        if level > len(defs):
            return LevelTable(np.zeros(n, dtype=np.int64), [SUPPRESSED], np.ones(1))
        d = defs[level - 1]
        if self.is_date:
            return self._date_level(str(d), span)
        return self._interval_level(float(d), span)

    def _date_level(self, level_name: str, span: float) -> LevelTable:
        """Calendar buckets (month, quarter, year, decade) of the day numbers."""
        keys, _ = _date_bucket(self.values.astype(np.int64), level_name)
        uniq, gen = np.unique(keys, return_inverse=True)
        labels = [_date_bucket_label(int(u), level_name) for u in uniq]
        # labels built by _date_bucket_label always parse back into bounds
        bounds = [cast("tuple[int, int]", date_label_bounds(s)) for s in labels]
        ncp = np.array([min(b[1] - b[0], span) / span if span > 0 else 0.0 for b in bounds])
        return LevelTable(gen.astype(np.int64), labels, ncp)

    def _interval_level(self, d: float, span: float) -> LevelTable:
        """Fixed-width bins from the hierarchy's origin."""
        origin = cast(IntervalsHierarchy, self.spec).origin  # widths come only from an intervals spec
        bins = np.floor((self.values - origin) / d).astype(np.int64)
        uniq, gen = np.unique(bins, return_inverse=True)
        labels: list[str] = []
        ncp: list[float] = []
        integer_bins = self.integer and float(d).is_integer() and float(origin).is_integer()
        for b in uniq:
            lo = origin + b * d
            hi = lo + d - 1 if integer_bins else lo + d  # integer bins are inclusive ranges
            labels.append(f"[{format_number(lo, self.integer)}, {format_number(hi, self.integer)}]")
            ncp.append(min(hi - lo, span) / span if span > 0 else 0.0)
        return LevelTable(gen.astype(np.int64), labels, np.asarray(ncp))

    def label_ncp(self, labels: Sequence[str]) -> np.ndarray:
        """NCP of released strings: width of the range they stand for over the domain span."""
        span = self.span
        out = np.empty(len(labels))
        for i, label in enumerate(labels):
            if label == SUPPRESSED:
                out[i] = 1.0
                continue
            lo: float
            hi: float
            if self.is_date:
                b = date_label_bounds(label)
                if b is None:
                    raise InputError(f"column {self.column!r}: released value is not a date or date range")
                lo, hi = b
            else:
                lo, hi = parse_range(label)
            out[i] = 0.0 if span <= 0 else min(1.0, (hi - lo) / span)
        return out

    def contains(self, label: str, raw: np.ndarray) -> np.ndarray:
        """Which raw values (float, or ordinal days for dates) a released label covers."""
        if label == SUPPRESSED:
            return np.ones(len(raw), dtype=bool)
        if self.is_date:
            b = date_label_bounds(label)
            lo, hi = b if b is not None else (math.inf, -math.inf)
        else:
            lo, hi = parse_range(label)
        return (raw >= lo) & (raw <= hi)


@dataclass
class TreeDomain:
    """A categorical column: leaves in depth-first order; `anc[h, leaf]` = its node id at level h."""

    column: str
    codes: np.ndarray
    leaves: list[str]
    anc: np.ndarray  # (height + 1, n_leaves); anc[0] = leaf code, anc[height] = 0 ('*')
    names: list[list[str]]  # names[h][node id]
    kind: str = field(default="tree", init=False)

    def __post_init__(self) -> None:
        n = len(self.leaves)
        self.leafcount = [np.bincount(row, minlength=len(self.names[h])) for h, row in enumerate(self.anc)]
        self._anc_lists = [row.tolist() for row in self.anc]
        self._label_leaves: dict[str, int] = {}
        for h in range(len(self.names) - 1, -1, -1):  # finer levels win a name clash
            for node, name in enumerate(self.names[h]):
                self._label_leaves[name] = int(self.leafcount[h][node])
        self._label_leaves[SUPPRESSED] = n
        self._leaf_index = {leaf: i for i, leaf in enumerate(self.leaves)}

    @property
    def height(self) -> int:
        return len(self.names) - 1

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    def lca_level(self, a: int, b: int) -> int:
        """Lowest level whose node covers both leaf codes (and, by DFS order, all between)."""
        for h, row in enumerate(self._anc_lists):
            if row[a] == row[b]:
                return h
        return self.height

    def node_ncp(self, leafcount: int) -> float:
        n = self.n_leaves
        return 0.0 if leafcount <= 1 or n <= 1 else leafcount / n

    def render_node(self, a: int, b: int) -> str:
        h = self.lca_level(a, b)
        return self.names[h][self._anc_lists[h][a]]

    def render_set(self, present: Sequence[int]) -> str:
        if len(present) == 1:
            return self.leaves[present[0]]
        return "{" + ",".join(self.leaves[i] for i in present) + "}"

    def level_table(self, level: int) -> LevelTable:
        gen = self.anc[level].astype(np.int64)
        ncp = np.array([self.node_ncp(int(c)) for c in self.leafcount[level]])
        return LevelTable(gen, list(self.names[level]), ncp)

    def _label_leafset(self, label: str) -> list[int] | None:
        if label.startswith("{") and label.endswith("}") and label not in self._label_leaves:
            parts = label[1:-1].split(",")
            if all(p in self._leaf_index for p in parts):
                return [self._leaf_index[p] for p in parts]
        return None

    def label_ncp(self, labels: Sequence[str]) -> np.ndarray:
        out = np.empty(len(labels))
        for i, label in enumerate(labels):
            if label in self._label_leaves:
                out[i] = self.node_ncp(self._label_leaves[label])
            elif (leafset := self._label_leafset(label)) is not None:
                out[i] = self.node_ncp(len(leafset))
            else:
                raise InputError(f"column {self.column!r}: released value is not a node of its hierarchy")
        return out

    def contains(self, label: str, raw_codes: np.ndarray) -> np.ndarray:
        """Which raw leaf codes a released label covers (node name, '{a,b}' set or '*')."""
        if label == SUPPRESSED:
            return np.ones(len(raw_codes), dtype=bool)
        leafset = self._label_leafset(label)
        if leafset is not None:
            return np.isin(raw_codes, leafset)
        covered = np.zeros(self.n_leaves, dtype=bool)
        for h, names in enumerate(self.names):
            for node, name in enumerate(names):
                if name == label:
                    covered |= self.anc[h] == node
        return covered[raw_codes]


Domain = NumericDomain | TreeDomain


# --------------------------------------------------------------------------------------------
# hierarchies: the policy's spec, not yet bound to data


@dataclass(frozen=True)
class Hierarchy:
    """A quasi-identifier's generalization hierarchy, as the policy declared it."""

    spec: HierarchySpec | None
    column_type: str
    tree: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # value -> ancestors, fixed leaves
    categories: tuple[str, ...] | None = None

    @property
    def numeric(self) -> bool:
        return self.column_type in ("integer", "float", "date") and not isinstance(
            self.spec, TreeHierarchy | CsvHierarchy | PrefixHierarchy
        )

    def encode(self, values: pd.Series, column: str) -> Domain:
        """Validate `values` and bind the hierarchy to them (codes per row + lookup tables)."""
        if len(values) == 0:
            raise InputError(f"column {column!r}: no rows to generalize")
        missing = values.isna().to_numpy()
        if missing.all():
            raise InputError(f"column {column!r}: every value is missing")
        if missing.any():
            row = _row_label(values.index, int(np.argmax(missing)))
            raise InputError(f"column {column!r} row {row}: missing value in a quasi-identifier")
        if self.numeric:
            return self._encode_numeric(values, column)
        return self._encode_tree(values, column)

    def _encode_numeric(self, values: pd.Series, column: str) -> NumericDomain:
        if self.column_type == "date":
            parsed = pd.to_datetime(values, errors="coerce")
            bad = parsed.isna().to_numpy()
            if bad.any():
                row = _row_label(values.index, int(np.argmax(bad)))
                raise InputError(f"column {column!r} row {row}: not a date")
            raw = parsed.to_numpy().astype("datetime64[D]").astype(np.int64).astype(np.float64)
        else:
            num = pd.to_numeric(values, errors="coerce")
            bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
            if bad.any():
                row = _row_label(values.index, int(np.argmax(bad)))
                raise InputError(f"column {column!r} row {row}: not a finite number")
            raw = num.to_numpy(dtype=np.float64)
            if self.column_type == "integer" and not np.all(raw == np.round(raw)):
                row = _row_label(values.index, int(np.argmax(raw != np.round(raw))))
                raise InputError(f"column {column!r} row {row}: not an integer")
        uniq, codes = np.unique(raw, return_inverse=True)
        return NumericDomain(
            column=column,
            codes=codes.astype(np.int32),
            values=uniq,
            integer=self.column_type in ("integer", "date"),
            is_date=self.column_type == "date",
            spec=self.spec,
        )

    def _encode_tree(self, values: pd.Series, column: str) -> TreeDomain:
        if isinstance(values.dtype, pd.CategoricalDtype):  # a streamed table's text: already one code per row
            text = values
        else:
            text = values.astype(str) if values.dtype != object else values.map(str)
        # each distinct text once: the column's codes come from its few distinct values (factorize is
        # Arrow's hash kernel on pandas' string dtype; no Python string per row)
        row_codes, distinct = pd.factorize(text)
        distinct_text = [str(u) for u in distinct]
        if isinstance(self.spec, PrefixHierarchy):
            leaves = sorted(set(distinct_text))
            paths = []
            for leaf in leaves:
                paths.append(tuple(leaf[:keep] + "*" * max(len(leaf) - keep, 0) for keep in self.spec.keep))
            tree = tuple(zip(leaves, paths, strict=True))
        elif self.tree is not None:
            tree = self.tree
        else:  # flat: value -> '*'; leaves are the declared categories or the observed values
            leaves = list(self.categories) if self.categories is not None else sorted(set(distinct_text))
            tree = tuple((leaf, ()) for leaf in leaves)
        leaves_ordered, anc, names = _layout_tree(tree, column)
        index = pd.Index(leaves_ordered)
        codes = index.get_indexer(pd.Index(distinct_text, dtype=object))[row_codes]
        bad = codes < 0
        if bad.any():
            row = _row_label(values.index, int(np.argmax(bad)))
            raise InputError(f"column {column!r} row {row}: value is not in the column's hierarchy")
        return TreeDomain(column=column, codes=codes.astype(np.int32), leaves=leaves_ordered, anc=anc, names=names)


def _layout_tree(
    tree: tuple[tuple[str, tuple[str, ...]], ...], column: str
) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Number leaves depth-first and nodes per level; reject a node with two parents."""
    depth = len(tree[0][1]) if tree else 0
    parent: list[dict[str, str]] = [{} for _ in range(depth)]
    for leaf, path in tree:
        if len(path) != depth:
            raise InputError(f"column {column!r}: every hierarchy value needs the same number of levels")
        chain = (leaf, *path)
        for h in range(1, depth):
            node, up = chain[h], chain[h + 1]
            if parent[h].setdefault(node, up) != up:
                raise InputError(f"column {column!r}: hierarchy node at level {h} has two parents")
    first_seen: list[dict[str, int]] = [{} for _ in range(depth + 1)]
    for leaf, path in tree:
        for h, name in enumerate((leaf, *path)):
            first_seen[h].setdefault(name, len(first_seen[h]))
    if len(first_seen[0]) != len(tree):
        raise InputError(f"column {column!r}: a value appears twice in the hierarchy")
    # depth-first order: sort by first appearance of the ancestors from the top down, then the leaf
    order = sorted(
        range(len(tree)),
        key=lambda i: tuple(first_seen[h][n] for h, n in reversed(list(enumerate((tree[i][0], *tree[i][1]))))),
    )
    leaves = [tree[i][0] for i in order]
    height = depth + 1
    anc = np.zeros((height + 1, len(leaves)), dtype=np.int64)
    names: list[list[str]] = []
    for h in range(height):
        ids: dict[str, int] = {}
        for pos, i in enumerate(order):
            name = (tree[i][0], *tree[i][1])[h]
            anc[h, pos] = ids.setdefault(name, len(ids))
        names.append(list(ids))
    names.append([SUPPRESSED])
    return leaves, anc, names


def _read_csv_tree(path: Path, column: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not path.is_file():
        raise InputError(f"column {column!r}: hierarchy file {path.name} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"column {column!r}: hierarchy file {path.name} is not readable UTF-8 text") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"column {column!r}: hierarchy file {path.name} is empty")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delimiter)]
    if any(len(r) != len(rows[0]) for r in rows):
        raise InputError(f"column {column!r}: hierarchy file {path.name} has rows of different lengths")
    if len(rows[0]) > 1 and all(r[-1] == SUPPRESSED for r in rows):
        rows = [r[:-1] for r in rows]  # the top level '*' is implied
    return tuple((r[0], tuple(r[1:])) for r in rows)


def build_hierarchy(
    spec: HierarchySpec | None,
    column_type: str,
    base_dir: Path | None = None,
    categories: list[str] | None = None,
    column: str = "column",
) -> Hierarchy:
    """Turn a policy hierarchy spec into a `Hierarchy`; None -> flat ('value -> *')."""
    if column_type not in COLUMN_TYPES:
        raise InputError(f"column {column!r}: unsupported quasi-identifier type {column_type}")
    if isinstance(spec, IntervalsHierarchy) and column_type not in ("integer", "float"):
        raise InputError(f"column {column!r}: interval hierarchies need an integer or float column")
    if isinstance(spec, DateHierarchy) and column_type != "date":
        raise InputError(f"column {column!r}: date hierarchies need a date column")
    tree = None
    if isinstance(spec, TreeHierarchy):
        tree = tuple((str(v), tuple(str(a) for a in anc)) for v, anc in spec.levels.items())
    elif isinstance(spec, CsvHierarchy):
        path = Path(spec.path)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        tree = _read_csv_tree(path, column)
    if tree is not None and categories is not None:
        missing = [c for c in categories if c not in {v for v, _ in tree}]
        if missing:
            raise InputError(f"column {column!r}: {len(missing)} declared categories are not in the hierarchy")
    return Hierarchy(
        spec=spec,
        column_type=column_type,
        tree=tree,
        categories=tuple(str(c) for c in categories) if categories is not None else None,
    )


def parse_range(value: str, default: tuple[float, float] | None = None) -> tuple[float, float]:
    """Released numeric value -> inclusive (lo, hi): '[20, 29]' -> (20.0, 29.0), '35' -> (35.0, 35.0).

    '*' (fully suppressed) has no range of its own: `default` (e.g. the column's public bounds) is
    returned when given, else InputError.
    """
    text = str(value).strip()
    if text == SUPPRESSED:
        if default is not None:
            return float(default[0]), float(default[1])
        raise InputError("released value '*' is fully suppressed and has no numeric range")
    m = _RANGE.match(text)
    try:
        if m is not None:
            lo, hi = float(m.group(1)), float(m.group(2))
        else:
            lo = hi = float(text)
    except ValueError as exc:
        raise InputError("released value is not a number or a '[lo, hi]' range") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise InputError("released range is not finite or has lo > hi")
    return lo, hi
