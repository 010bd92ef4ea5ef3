"""Step 5 of a release on Ray Data: the lattice search and Mondrian over a table of QI codes in blocks.

`RayGeneralizer` has the signature of `anonymize.generalization.generalize.generalize` and returns
the same `Generalized`, so `anonymize.pipeline.run` measures, gates and reports it exactly as it
does the single-machine result. The columns are encoded with the same `Hierarchy.encode` (so codes,
labels and NCP are the single-machine ones); what runs on Ray is the work over rows:

- lattice: the bottom equivalence classes (distinct QI and sensitive codes, with their counts) are a
  distributed group-by; the search rolls up from that class table (`lattice_search`, the
  single-machine code, fed the class table's rows), so the chosen node and the suppressed classes
  are the single-machine ones and the release is identical.
- Mondrian: top cuts are made from per-block histograms of the QI codes (summed by partition), by the
  strict Mondrian rule (widest normalized dimension; numeric at the median, hierarchy at the child
  boundary nearest the median; a cut is kept only when both sides pass every criterion), until each
  partition fits one worker (`partition_rows`). Each partition is then finished in parallel by the
  single-machine `mondrian` (a group-by over partitions). Every final class passes k / l / t because
  every cut does; the release gate re-checks the final table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from anonymize.criteria import Criterion, SensitiveColumn, all_satisfied, criteria_for
from anonymize.errors import InputError
from anonymize.generalization.generalize import Generalized, _check_inputs, _unsatisfiable, encode_sensitive
from anonymize.generalization.hierarchies import Domain, Hierarchy, NumericDomain, TreeDomain
from anonymize.generalization.lattice import lattice_search
from anonymize.generalization.mondrian import _k_of, mondrian
from anonymize.policy.spec import PrivacyModel

if TYPE_CHECKING:
    import ray.data

PART = "__part"  # partition id of a row (Mondrian)
POS = "__pos"  # 0-based position of a row in the table handed to generalization

PARTITION_FLOOR = 20_000  # rows a worker finishes in well under a second: no top cuts below this
Cut = tuple[int, int]  # (QI, threshold code): rows whose code is >= threshold go right


@dataclass
class _Codes:
    """The encoded table: one code column per QI (`q0..`) and per sensitive column (`s0..`)."""

    domains: list[Domain]
    sens_codes: list[np.ndarray]
    sens_sizes: list[int]
    criteria: list[Criterion]

    @property
    def columns(self) -> list[str]:
        return [f"q{j}" for j in range(len(self.domains))] + [f"s{i}" for i in range(len(self.sens_codes))]

    def frame(self) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {f"q{j}": dom.codes for j, dom in enumerate(self.domains)}
        cols.update({f"s{i}": s for i, s in enumerate(self.sens_codes)})
        return pd.DataFrame(cols)

    @property
    def need_hist(self) -> bool:
        return any(c.needs_sensitive for c in self.criteria)


def _dataset(frame: pd.DataFrame, blocks: int) -> ray.data.Dataset:
    """`frame` as a Ray dataset of `blocks` contiguous blocks."""
    import ray.data

    n = len(frame)
    bounds = np.linspace(0, n, max(1, min(blocks, n)) + 1).astype(int)
    return ray.data.from_pandas([frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


@dataclass
class RayGeneralizer:
    """`generalize` with the work over rows on Ray (see the module docstring).

    `blocks`: how many blocks the code table is split into; `partition_rows`: the largest Mondrian
    partition one worker finishes (None: the table over 2 x `blocks`, at least PARTITION_FLOOR and 4 k rows).
    """

    blocks: int = 4
    partition_rows: int | None = None

    def __call__(
        self,
        df: pd.DataFrame,
        qis: Mapping[str, Hierarchy],
        privacy: PrivacyModel,
        sensitive: Sequence[str] = (),
        t_kinds: Mapping[str, str] | None = None,
        categorical: bool = False,
    ) -> Generalized:
        """`categorical`: Mondrian's release strings as pandas categoricals, as `generalize` gives them."""
        sensitive = list(sensitive)
        _check_inputs(df, qis, privacy, sensitive)
        codes = _encode(df, qis, privacy, sensitive, t_kinds)
        if privacy.algorithm == "lattice":
            return self._lattice(df, list(qis), codes, privacy)
        return self._mondrian(df, list(qis), codes, privacy, categorical)

    def _lattice(self, df: pd.DataFrame, names: list[str], codes: _Codes, privacy: PrivacyModel) -> Generalized:
        cols = codes.columns
        frame = codes.frame()
        counted = _class_table(_dataset(frame, self.blocks), cols)  # the bottom class table
        counts = counted["count()"].to_numpy(dtype=np.int64)
        keys = counted[cols].to_numpy(dtype=np.int64)
        rows = np.repeat(keys, counts, axis=0)  # the class table as rows: the search needs no other column
        d = len(codes.domains)
        domains = [dataclasses.replace(dom, codes=rows[:, j].astype(np.int32)) for j, dom in enumerate(codes.domains)]
        sens = [rows[:, d + i] for i in range(len(codes.sens_codes))]
        res = lattice_search(domains, sens, codes.sens_sizes, codes.criteria, privacy.suppression_limit)
        if res is None:
            raise InputError(_unsatisfiable(privacy))
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        failing = counted.loc[~res.kept[starts], cols].assign(__failing=True)
        suppressed = frame.merge(failing, how="left", on=cols)["__failing"].notna().to_numpy()
        kept = ~suppressed
        data = df.loc[kept].copy()
        for j, (col, level) in enumerate(zip(names, res.levels, strict=True)):
            table = codes.domains[j].level_table(level)
            labels = np.asarray(table.labels, dtype=object)[table.gen[codes.domains[j].codes[kept]]]
            data[col] = pd.Series(labels, index=data.index, dtype=object).astype(str)
        return Generalized(data=data, suppressed=int(suppressed.sum()), algorithm="lattice",
                           levels=dict(zip(names, res.levels, strict=True)), classes=res.n_classes)

    def _mondrian(self, df: pd.DataFrame, names: list[str], codes: _Codes, privacy: PrivacyModel,
                  categorical: bool = False) -> Generalized:
        n = len(df)
        k = _k_of(codes.criteria)
        root_h = [np.bincount(s, minlength=m)[None, :] for s, m in zip(codes.sens_codes, codes.sens_sizes, strict=True)]
        if not all_satisfied(codes.criteria, np.array([n]), root_h if codes.need_hist else [])[0]:
            raise InputError(_unsatisfiable(privacy))
        limit = self.partition_rows or max(4 * k, math.ceil(n / (2 * self.blocks)), PARTITION_FLOOR)
        frame = codes.frame()
        frame[POS] = np.arange(n, dtype=np.int64)
        frame[PART] = np.zeros(n, dtype=np.int64)
        ds = _dataset(frame, self.blocks).materialize()
        ds = _top_cuts(ds, codes, limit)
        finished = _finish_partitions(ds, codes, privacy.algorithm == "mondrian_relaxed")
        data = df.copy(deep=False)  # copy-on-write: only the replaced QI columns are new
        for j, col in enumerate(names):
            labels = finished[f"l{j}"].to_numpy(dtype=object)
            if categorical:  # one string per distinct label, a code per row
                class_codes, distinct = pd.factorize(labels)
                data[col] = pd.Series(pd.Categorical.from_codes(class_codes, pd.Index(distinct, dtype=object).astype(str)),
                                      index=data.index)
            else:
                data[col] = pd.Series(labels, index=data.index, dtype=object).astype(str)
        n_classes = int(finished[[PART, "__class"]].drop_duplicates().shape[0])
        return Generalized(data=data, suppressed=0, algorithm=privacy.algorithm, levels=None, classes=n_classes)


def _class_table(ds: ray.data.Dataset, cols: list[str]) -> pd.DataFrame:
    """Distinct rows of `cols` with their counts ("count()"): counted per block, the block counts summed
    (a group-by with a map-side combine; the class table is small beside the rows)."""
    per_block = ds.map_batches(lambda b: b.groupby(cols).size().reset_index(name="count()"), batch_format="pandas",
                               batch_size=None).to_pandas()
    return per_block.groupby(cols, as_index=False, sort=True)["count()"].sum()


def _finish_partitions(ds: ray.data.Dataset, codes: _Codes, relaxed: bool) -> pd.DataFrame:
    """Each partition finished by the single-machine Mondrian, one Ray task per partition, in parallel:
    its rows' positions, class and release labels."""
    import ray

    table = ds.to_pandas()
    templates = [dataclasses.replace(dom, codes=np.zeros(1, dtype=np.int32)) for dom in codes.domains]
    finish = ray.remote(_finish_partition)
    domains_ref, criteria_ref = ray.put(templates), ray.put(codes.criteria)
    pending = [finish.remote(group, domains_ref, codes.sens_sizes, criteria_ref, relaxed)
               for _p, group in table.groupby(PART, sort=True)]
    return pd.concat(ray.get(pending), ignore_index=True).sort_values(POS)


def _encode(df: pd.DataFrame, qis: Mapping[str, Hierarchy], privacy: PrivacyModel, sensitive: list[str],
            t_kinds: Mapping[str, str] | None) -> _Codes:
    """QI domains, sensitive codes and the criteria, as `generalize` makes them."""
    domains = [h.encode(df[col], col) for col, h in qis.items()]
    sens_codes: list[np.ndarray] = []
    sens_sizes: list[int] = []
    sens_cols: list[SensitiveColumn] = []
    for col in sensitive if (privacy.l is not None or privacy.t is not None) else []:
        c, m, counts, kind = encode_sensitive(df[col], col, (t_kinds or {}).get(col))
        sens_codes.append(c)
        sens_sizes.append(m)
        sens_cols.append(SensitiveColumn(name=col, counts=counts, kind=kind))
    return _Codes(domains, sens_codes, sens_sizes, criteria_for(privacy, sens_cols))


# --- Mondrian top cuts from per-block histograms ---------------------------------------------------


def _block_histograms(batch: pd.DataFrame, open_parts: list[int], d: int, n_sens: int) -> pd.DataFrame:
    """Rows per (partition, QI, code), and per sensitive code when l / t need it, of one block.

    Long format (part, dim, code, sens, scode, n); `sens` = -1 for the plain row counts."""
    sel = batch[batch[PART].isin(open_parts)]
    parts: list[pd.DataFrame] = []
    for j in range(d):
        keys = [PART, f"q{j}"]
        plain = sel.groupby(keys).size().reset_index(name="n").rename(columns={f"q{j}": "code"})
        parts.append(plain.assign(dim=j, sens=-1, scode=0))
        for i in range(n_sens):
            joint = sel.groupby([*keys, f"s{i}"]).size().reset_index(name="n")
            parts.append(joint.rename(columns={f"q{j}": "code", f"s{i}": "scode"}).assign(dim=j, sens=i))
    columns = [PART, "dim", "code", "sens", "scode", "n"]
    if not parts:
        return pd.DataFrame({c: np.zeros(0, dtype=np.int64) for c in columns})
    return pd.concat(parts, ignore_index=True)[columns].astype(np.int64)


def _apply_cuts(batch: pd.DataFrame, cuts: dict[int, tuple[int, int, int]]) -> pd.DataFrame:
    """Rows right of their partition's cut (code >= threshold) move to the partition's new id."""
    part = batch[PART].to_numpy().copy()
    for p, (j, threshold, new) in cuts.items():
        part[(part == p) & (batch[f"q{j}"].to_numpy() >= threshold)] = new
    out = batch.copy(deep=False)
    out[PART] = part
    return out


def _top_cuts(ds: ray.data.Dataset, codes: _Codes, limit: int) -> ray.data.Dataset:
    """Cut every partition larger than `limit` once per round, until none is (or none can be cut)."""
    d, n_sens = len(codes.domains), len(codes.sens_codes) if codes.need_hist else 0
    open_parts = [0]
    next_id = 1
    while open_parts:
        hist = (
            ds.map_batches(functools.partial(_block_histograms, open_parts=open_parts, d=d, n_sens=n_sens),
                           batch_format="pandas", batch_size=None)
            .to_pandas()
            .groupby([PART, "dim", "code", "sens", "scode"], as_index=False)["n"].sum()
        )
        cuts: dict[int, tuple[int, int, int]] = {}
        children: list[int] = []
        for p, part_hist in hist.groupby(PART):
            cut = _choose_cut(part_hist, codes, d)
            if cut is None:
                continue
            j, threshold, nl, size = cut
            cuts[int(p)] = (j, threshold, next_id)
            children += [q for q, rows in ((int(p), nl), (next_id, size - nl)) if rows > limit]
            next_id += 1
        if not cuts:
            break
        ds = ds.map_batches(functools.partial(_apply_cuts, cuts=cuts), batch_format="pandas",
                            batch_size=None).materialize()
        open_parts = children
    return ds


def _dense(part_hist: pd.DataFrame, j: int, size: int, sens: int = -1, m: int = 1) -> np.ndarray:
    """Histogram of QI j over its codes (sens = -1), or the (codes x sensitive codes) joint one."""
    rows = part_hist[(part_hist["dim"] == j) & (part_hist["sens"] == sens)]
    out = np.zeros((size, m), dtype=np.int64)
    np.add.at(out, (rows["code"].to_numpy(), rows["scode"].to_numpy()), rows["n"].to_numpy())
    return out[:, 0] if sens < 0 else out


def _width(dom: Domain, a: int, b: int) -> float:
    """Normalized extent of codes a..b (as the single-machine Mondrian ranks dimensions)."""
    if isinstance(dom, NumericDomain):
        return float((dom.values[b] - dom.values[a]) / dom.span)
    assert isinstance(dom, TreeDomain)
    level = dom.lca_level(a, b)
    return float(dom.leafcount[level][dom.anc[level][a]] / dom.n_leaves)


def _thresholds(dom: Domain, counts: np.ndarray, a: int, b: int) -> list[int]:
    """Cut points to try, the most balanced first. Numeric: below / up to the median (strict
    Mondrian). Hierarchy: boundaries between the children of the node covering a..b (leaves are in
    depth-first order, so each child is a code range), nearest the median first."""
    size = int(counts.sum())
    cum = np.cumsum(counts)
    if isinstance(dom, NumericDomain):
        med = int(np.searchsorted(cum, size // 2, side="right"))
        options = [(int(cum[med - 1]) if med > 0 else 0, med), (int(cum[med]), med + 1)]
        options.sort(key=lambda o: -min(o[0], size - o[0]))
        return [t for nl, t in options if 0 < nl < size]
    assert isinstance(dom, TreeDomain)
    level = dom.lca_level(a, b)
    child = dom.anc[level - 1]
    bounds = [c for c in range(a + 1, b + 1) if child[c] != child[c - 1]]
    return sorted(bounds, key=lambda t: abs(int(cum[t - 1]) - size / 2))


def _choose_cut(part_hist: pd.DataFrame, codes: _Codes, d: int) -> tuple[int, int, int, int] | None:
    """(QI, threshold, rows left, rows) of the first cut, widest dimension first, that keeps both
    sides passing every criterion; None when no cut does."""
    k = _k_of(codes.criteria)
    dense = [_dense(part_hist, j, len(dom.values) if isinstance(dom, NumericDomain) else dom.n_leaves)
             for j, dom in enumerate(codes.domains)]
    size = int(dense[0].sum())
    ranked: list[tuple[float, int, int, int]] = []
    for j, counts in enumerate(dense):
        present = np.flatnonzero(counts)
        a, b = int(present[0]), int(present[-1])
        if a != b:
            ranked.append((_width(codes.domains[j], a, b), j, a, b))
    for _w, j, a, b in sorted(ranked, key=lambda c: -c[0]):
        joint = [_dense(part_hist, j, len(dense[j]), i, m) for i, m in enumerate(codes.sens_sizes)] if codes.need_hist else []
        for t in _thresholds(codes.domains[j], dense[j], a, b):
            nl = int(dense[j][:t].sum())
            if nl < k or size - nl < k:
                continue
            hists = [np.stack([h[:t].sum(axis=0), h[t:].sum(axis=0)]) for h in joint]
            if all_satisfied(codes.criteria, np.array([nl, size - nl]), hists).all():
                return j, t, nl, size
    return None


def _finish_partition(batch: pd.DataFrame, domains: list[Domain], sens_sizes: list[int],
                      criteria: list[Criterion], relaxed: bool) -> pd.DataFrame:
    """One partition finished by the single-machine Mondrian: its class and release labels per row."""
    sub = [dataclasses.replace(dom, codes=batch[f"q{j}"].to_numpy(dtype=np.int32)) for j, dom in enumerate(domains)]
    sens = [batch[f"s{i}"].to_numpy(dtype=np.int64, copy=True) for i in range(len(sens_sizes))]  # Mondrian reorders them
    part = mondrian(sub, sens, sens_sizes, criteria, relaxed=relaxed)
    if part is None:  # every top cut checked both sides: a partition always passes
        raise InputError("internal: a Mondrian partition fails the criteria it was cut to pass")
    out: dict[str, Any] = {POS: batch[POS].to_numpy(), PART: batch[PART].to_numpy(), "__class": part.classes}
    for j, labels in enumerate(part.labels):
        out[f"l{j}"] = np.asarray(labels, dtype=object)[part.classes]
    return pd.DataFrame(out)
