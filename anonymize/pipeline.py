"""`anonymize.run`: the seven steps from a raw table to a release and its report, in order.

1. validate   - declared columns present, values of the declared type and domain
2. quality    - exact duplicates removed, duplicate identifiers and missing values counted
3. purpose    - rows without consent for the purpose removed; columns it does not need dropped
4. pseudonymize identifiers (HMAC tokens / AES-SIV / drop), keys derived per purpose and partner
5. generalize quasi-identifiers (k / l / t), then measure privacy, risk and utility on the output
6. gate       - every criterion of the policy (k, l, t, suppression limit, token uniqueness)
                re-checked on the final table (`anonymize.criteria.gate`); a failure raises, nothing is released
7. report     - JSON-ready dict of every count and figure; never a raw value or key

Steps 1-4 are `minimise`, which every model path calls too (train, curve, score, estimator,
federated partners): one consent filter, one way identifiers leave, for the whole project.

Each step hands its table to the next and records what it removed, by reason, so the rows of the
input always add up to the rows of the release plus the counted removals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anonymize.criteria.gate import Check, enforce, privacy_checks, suppression_check, token_check
from anonymize.errors import InputError
from anonymize.forked import Pending
from anonymize.generalization.generalize import Generalized, generalize
from anonymize.measures.achieved import equivalence_classes, privacy_measures, reidentification_risk, utility_loss
from anonymize.policy.schema import Policy
from anonymize.pseudonymize import DEFAULT_PARTNER, ColumnSummary, Keys, Pseudonymized, as_keys, pseudonymize
from anonymize.quality import StepResult, consent_and_purpose, hierarchy_of, quality, validate
from anonymize.report import REPORT_FORMAT, UTILITY_SAMPLE_ROWS, label_auc

RISK_THRESHOLD = 0.2  # a record is "at risk" when its prosecutor risk (1 / class size) exceeds this


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall seconds of the block to `timings[stage]` (the report's per-stage times)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class Release:
    """The released table, its report, and the token escrow (None unless a column keeps one)."""

    data: pd.DataFrame
    report: dict[str, Any]
    escrow: pd.DataFrame | None = None
    # `content_hash(data)` when `run` was given one: started in a forked child as soon as the
    # released rows were known, so it is (nearly) done when the release has been written
    content: Pending[str] | None = None
    rows: np.ndarray | None = None  # the input's row numbers of the released rows, in release order


def _generalization_input(data: pd.DataFrame, policy: Policy, qis: list[str]) -> pd.DataFrame:
    """Boolean QIs become the categories 'true'/'false' (hierarchies know no booleans)."""
    frame = data.copy(deep=False)  # copy-on-write: replaced columns never reach `data`
    for name in qis:
        if policy.columns[name].type == "boolean":
            frame[name] = frame[name].map(lambda v: "true" if v else "false", na_action="ignore").astype(object)
    return frame


def _pseudonymize_step(data: pd.DataFrame, policy: Policy, key_set: Keys) -> tuple[Pseudonymized, dict[str, Any]]:
    """Step 4 and its record; the record says "not applicable" when the policy names no identifier."""
    pseudo = pseudonymize(data, policy, key_set)
    dropped_ids = [n for n, info in pseudo.summary.items() if info["method"] == "drop"]
    record: dict[str, Any] = {
        "step": "pseudonymize",
        "rows_in": len(data),
        "rows_out": len(pseudo.data),
        "removed": {},
        "applicable": bool(pseudo.summary),
        "columns": pseudo.summary,
        "dropped_columns": dropped_ids,
        "decisions": [
            "tokens are HMAC-SHA256 under a key derived (HKDF) from the master secret, the purpose, "
            "the partner and the column; encrypt columns use deterministic AES-SIV under a key derived "
            "the same way; missing identifiers stay missing"
            if pseudo.summary
            else "not applicable: the policy declares no identifier column present in the data",
        ],
    }
    return pseudo, record


@dataclass
class Minimised:
    """Customer rows as a model may see them: validated, quality-checked, consent-filtered,
    identifiers dropped or keyed exactly as a release keys them, with no data-dependent
    generalization. `data.index` holds the input's 1-based data row numbers (for messages).

    `removed` counts removed rows by reason ({"no_consent": 3007, ...}); `rows_in` is the input's
    row count, so `rows_in == len(data) + sum(removed.values())` always holds.
    """

    data: pd.DataFrame
    steps: list[dict[str, Any]]
    removed: dict[str, int]
    rows_in: int
    pseudonymization: dict[str, ColumnSummary] = field(default_factory=dict)
    escrow: pd.DataFrame | None = None
    partner: str = DEFAULT_PARTNER
    colliding: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)  # token column -> shared tokens
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per step (validate ... pseudonymize)

    @property
    def positions(self) -> np.ndarray:
        """0-based positions in the input table of the rows kept (the index minus one)."""
        return self.data.index.to_numpy(dtype=np.int64) - 1


def minimise(
    df: pd.DataFrame,
    policy: Policy,
    keys: Keys | bytes,
    *,
    source: str = "input",
    partner: str | None = None,
    progress: Callable[[str], None] | None = None,
    fixed_recoding: bool = True,
    empty_ok: bool = False,
) -> Minimised:
    """Steps 1-4 of a release, shared by the release path and every model path (train, curve,
    score, estimator, federated partners): the one consent filter of the project.

    validate -> quality -> consent & purpose (rows without consent removed, columns the purpose
    does not need dropped) -> identifiers dropped / tokenized / encrypted as the policy says.
    Nothing here depends on other customers' values (no Mondrian, no lattice): one customer's row
    comes out the same whoever else is in the table, so DP on these rows is per customer.
    Then, with `fixed_recoding`, each quasi-identifier that declares `recode: N` is replaced by its
    interval at level N of its intervals hierarchy (fixed bins, the same for any table). `run`
    passes False: a release generalizes from the exact values under k / l / t instead.
    Bad input raises a one-line InputError naming `source`, the column and the row.
    `empty_ok`: `df` is one batch of a larger table, in which no row may consent while others do (the
    caller refuses a table left empty).
    """
    key_set = as_keys(keys, partner)
    say = progress or (lambda _step: None)
    steps: list[dict[str, Any]] = []
    timings: dict[str, float] = {}

    def record(name: str, result: StepResult) -> pd.DataFrame:
        steps.append({"step": name, **result.info})
        return result.data

    say("validate")
    with _timed(timings, "validate"):
        data = record("validate", validate(df, policy, source))
    undeclared = steps[0]["undeclared_columns"]
    say("quality")
    with _timed(timings, "quality"):
        data = record("quality", quality(data, policy))
    say("consent and purpose")
    with _timed(timings, "purpose"):
        data = record("purpose", consent_and_purpose(data, policy, undeclared, whole_table=not empty_ok))
    say("pseudonymize")
    with _timed(timings, "pseudonymize"):
        pseudo, pseudo_record = _pseudonymize_step(data, policy, key_set)
    steps.append(pseudo_record)
    data = pseudo.data
    recode = {
        n: level
        for n in policy.quasi_identifiers
        if n in data.columns and (level := policy.columns[n].recode) is not None
    }
    if fixed_recoding and recode:
        say("fixed recoding")
        with _timed(timings, "recode"):
            data = _fixed_recoding(data, policy, recode)
        steps.append(
            {
                "step": "recode",
                "rows_in": len(data),
                "rows_out": len(data),
                "removed": {},
                "columns": recode,
                "decisions": [
                    "quasi-identifiers with `recode` are replaced by their interval at that level of their "
                    "hierarchy: fixed bins, data-independent (no Mondrian, no lattice)",
                ],
            }
        )
    return Minimised(
        data=data,
        steps=steps,
        removed=_removed(steps),
        rows_in=int(len(df)),
        pseudonymization=pseudo.summary,
        escrow=pseudo.escrow,
        partner=key_set.partner,
        colliding=pseudo.colliding,
        timings=timings,
    )


def _fixed_recoding(data: pd.DataFrame, policy: Policy, levels: dict[str, int]) -> pd.DataFrame:
    """Each value replaced by its release label at `levels[column]` of the column's hierarchy.

    A value's label depends on the value and the policy alone (bins of fixed width from a fixed
    origin), never on other rows; missing values stay missing.
    """
    out = data.copy()
    for name, level in levels.items():
        present = out[name].notna().to_numpy()
        labels = pd.Series(None, index=out.index, dtype=object)
        if present.any():
            domain = hierarchy_of(policy, name).encode(out.loc[present, name], name)
            table = domain.level_table(level)
            labels[present] = np.asarray(table.labels, dtype=object)[table.gen[domain.codes]]
        out[name] = labels
    return out


def _removed(steps: list[dict[str, Any]]) -> dict[str, int]:
    """Rows removed by reason over `steps` (a reason met in two steps is summed)."""
    removed: dict[str, int] = {}
    for s in steps:
        for reason, n in (s.get("removed") or {}).items():
            removed[reason] = removed.get(reason, 0) + int(n)
    return removed


def run(
    df: pd.DataFrame,
    policy: Policy,
    keys: Keys | bytes,
    *,
    population: pd.DataFrame | None = None,
    partner: str | None = None,
    source: str = "input",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    minimised: Minimised | None = None,
    generalizer: Callable[..., Generalized] | None = None,
    content_hash: Callable[[pd.DataFrame], str] | None = None,
    rows_of: Callable[[np.ndarray], pd.DataFrame] | None = None,
    columns: list[str] | None = None,
    compact: bool = False,
) -> Release:
    """Run the release pipeline on `df` as `policy` says; bad input raises one-line InputError.

    Another engine (`anonymize.engines`) hands in its `minimised` steps 1-4 of `df` and its
    `generalizer` (the signature of `generalize`, the default); the measures, gate and report stay these.
    `content_hash`: a function of the released table (the caller's budget identity of the release
    file), computed in a forked child from when the released rows are known (`Release.content`).
    A streamed engine (`anonymize.engines.stream`) hands in `minimised` with only the columns every row
    needs here (quasi-identifiers, sensitive, token columns); `rows_of(row numbers)` gives whole minimised
    rows (for the utility check's sample) and `columns` the release's columns, which `data` then holds
    only in part; `compact` keeps the released quasi-identifiers as categoricals (`generalize`)."""
    say = progress or (lambda _step: None)
    if minimised is None:
        minimised = minimise(df, policy, keys, source=source, partner=partner, progress=say, fixed_recoding=False)
    steps = minimised.steps
    data = minimised.data
    pseudo_summary = minimised.pseudonymization
    timings = minimised.timings

    say("generalize")
    generalize_started = time.perf_counter()
    qis = [n for n in policy.quasi_identifiers if n in data.columns]
    sensitive = [n for n in policy.sensitive if n in data.columns]
    privacy = policy.privacy
    report_privacy: dict[str, Any]
    risk: dict[str, Any] = {}
    utility: dict[str, Any] = {}
    emd_kinds: dict[str, str] = {}
    classes: tuple[np.ndarray, int] | None = None
    offered = 0
    utility_job: Pending[dict[str, Any]] | None = None
    content: Pending[str] | None = None
    if qis:
        before = len(data)
        missing_qi = data[qis].isna().any(axis=1).to_numpy()
        needs_sensitive = privacy.l is not None or privacy.t is not None
        missing_sens = (
            data[sensitive].isna().any(axis=1).to_numpy() & ~missing_qi if needs_sensitive and sensitive else None
        )
        incomplete = missing_qi if missing_sens is None else (missing_qi | missing_sens)
        if incomplete.any():  # a boolean filter copies every column: only when a row goes
            data = data[~incomplete]
        if len(data) < privacy.k:
            raise InputError(
                f"{policy.source}: privacy.k = {privacy.k} is larger than the {len(data)} rows left "
                "after validation and filtering"
            )
        hierarchies = {n: hierarchy_of(policy, n) for n in qis}
        # only what generalization reads: the quasi-identifiers and the sensitive columns
        original = _generalization_input(data[[*qis, *sensitive]], policy, qis)
        # t-closeness distance: ordered EMD for numeric sensitive columns, equal distance otherwise
        emd_kinds = {n: ("ordered" if policy.columns[n].numeric else "equal") for n in sensitive}
        extra = {"categorical": True} if compact else {}
        result = (generalizer or generalize)(original, hierarchies, privacy, sensitive, emd_kinds, **extra)
        offered = len(original)  # rows handed to the algorithm; what it did not release was suppressed
        kept_all = len(result.data) == len(data) and result.data.index.equals(data.index)
        release = data.copy(deep=False) if kept_all else data.loc[result.data.index]
        for name in qis:  # release strings as generalize made them (pandas' string dtype, one buffer)
            release[name] = result.data[name]
        steps.append(
            {
                "step": "generalize",
                "rows_in": before,
                "rows_out": len(release),
                "removed": {
                    k: v
                    for k, v in {
                        "missing_quasi_identifier": int(missing_qi.sum()),
                        "missing_sensitive": int(missing_sens.sum()) if missing_sens is not None else 0,
                        "suppressed": int(result.suppressed),
                    }.items()
                    if v
                },
                "algorithm": result.algorithm,
                "decisions": [
                    "rows missing a quasi-identifier are removed (a missing value cannot be generalized); "
                    "with l-diversity or t-closeness, so are rows missing a sensitive value",
                    f"quasi-identifiers are generalized with {result.algorithm}; suppressed rows are removed "
                    f"(limit {privacy.suppression_limit:.1%} of rows)",
                ],
            }
        )
        timings["generalize"] = time.perf_counter() - generalize_started
        # the raw-vs-release AUC needs only the release: a forked child fits it while the measures and
        # the gate run here (the second core); its result is collected for the report below
        chosen = release[[c for c in policy.released_columns() if c in release.columns]]
        utility_job = Pending(_model_utility, data, chosen.reset_index(drop=True), chosen.index, policy, seed,
                              rows_of, columns)
        content = Pending(content_hash, chosen) if content_hash is not None else None
        say("measure")
        measures_started = time.perf_counter()
        pop = None
        if population is not None:  # raw QI values, matched to release classes by containment
            pop = _generalization_input(population, policy, [q for q in qis if q in population.columns])
        # the classes of the released strings, found once for the risk, the utility and the gate's figures
        classes = equivalence_classes(release, qis)
        risk = dict(
            reidentification_risk(
                release, qis, pop, threshold=RISK_THRESHOLD, hierarchies=hierarchies if pop is not None else None,
                classes=classes,
            )
        )
        utility = dict(utility_loss(original, release, hierarchies, int(result.suppressed), classes=classes))
        utility.setdefault("suppressed", int(result.suppressed))
        if result.levels is not None:
            utility.setdefault("levels", result.levels)
        timings["measures"] = time.perf_counter() - measures_started
        report_privacy = {
            "applicable": True,
            "algorithm": result.algorithm,
            "quasi_identifiers": qis,
            "sensitive": sensitive,
            "required": privacy.model_dump(),
        }
    else:
        release = data
        report_privacy = {
            "applicable": False,
            "note": "no quasi-identifier is released: k-anonymity, l-diversity and t-closeness do not apply",
            "required": privacy.model_dump(),
        }
    release = release[[c for c in policy.released_columns() if c in release.columns]]
    source_rows = release.index  # input row numbers of the released rows, for the raw-vs-release AUC
    release = release.reset_index(drop=True)

    say("release gate")
    gate_started = time.perf_counter()
    checks = _gate_checks(release, policy, qis, sensitive, emd_kinds, offered, minimised, pseudo_summary,
                          report_privacy, classes)
    gate = enforce(checks)

    escrow = minimised.escrow
    if escrow is not None:  # escrow only for people who are in the release
        present = pd.concat(
            [pd.DataFrame({"column": n, "token": release[n]}) for n in escrow["column"].unique()], ignore_index=True
        ).dropna()
        escrow = escrow.merge(present.drop_duplicates(), on=["column", "token"], how="inner")
    timings["gate"] = time.perf_counter() - gate_started

    say("report")
    with _timed(timings, "utility"):  # the wait for the child's fits, where one was started
        model_utility = (utility_job.result() if utility_job is not None
                         else _model_utility(data, release, source_rows, policy, seed, rows_of, columns))

    counts = _counts(steps, int(len(df)), int(len(release)))
    report = {
        "format": REPORT_FORMAT,
        "policy": {"name": policy.name, "purpose": policy.purpose.name, "version": policy.version},
        "partner": minimised.partner,
        "rows": {"input": int(len(df)), "released": int(len(release))},
        "columns": list(release.columns) if columns is None else columns,
        "steps": steps,
        "counts": counts,
        "pseudonymization": pseudo_summary,
        "privacy": report_privacy,
        "gate": gate,
        "risk": risk,
        "utility": utility,
        "model_utility": model_utility,
        "budget": policy.budget.model_dump() if policy.budget is not None else None,
        "fairness_groups": policy.fairness_groups,
        "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
    }
    if content is None and content_hash is not None:
        content = Pending(content_hash, release)
    return Release(release, report, escrow, content, rows=source_rows.to_numpy(dtype=np.int64))


def _utility_sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Positions of the rows the model-utility check reads: all `n`, or `limit` of them drawn uniformly
    without replacement by a generator seeded with `seed`, in table order."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _counts(steps: list[dict[str, Any]], rows_in: int, rows_out: int) -> dict[str, Any]:
    by = {s["step"]: s for s in steps}
    removed = _removed(steps)
    dropped = [c for group in by["purpose"]["dropped_columns"].values() for c in group]
    dropped += by["pseudonymize"]["dropped_columns"]
    return {
        "validated_rows": by["validate"]["rows_out"],
        "invalid_rows_removed": sum(n for r, n in removed.items() if r.startswith("invalid:")),
        "exact_duplicates": by["quality"]["exact_duplicates"],
        "duplicate_identifiers": by["quality"]["duplicate_identifiers"],
        # tokens shared by different identifier values (truncated HMAC); the gate refuses any released
        "token_collisions": {n: int(i["collisions"]) for n, i in by["pseudonymize"]["columns"].items() if "collisions" in i},
        "missing_values": by["quality"]["missing_values"],
        "consent_filtered": sum((by["purpose"].get("removed") or {}).values()),
        "consent_applicable": bool(by["purpose"].get("consent_applicable", True)),
        "dropped_columns": dropped,
        "suppressed": removed.get("suppressed", 0),
        "removed_by_reason": removed,
        "rows_accounted": rows_in == rows_out + sum(removed.values()),
    }


def _gate_checks(release: pd.DataFrame, policy: Policy, qis: list[str], sensitive: list[str],
                 emd_kinds: dict[str, str], offered: int, minimised: Minimised,
                 pseudo_summary: dict[str, Any], report_privacy: dict[str, Any],
                 classes: tuple[np.ndarray, int] | None = None) -> list[Check]:
    """Every criterion of the policy, measured on the very table that is written (k / l / t by the code
    the report prints); the achieved figures go into `report_privacy`. `classes`: the equivalence classes
    of these rows' released strings, when the measures found them already (same rows, same order)."""
    privacy = policy.privacy
    checks: list[Check] = []
    if qis:
        recursive_l = privacy.l.value if privacy.l is not None and privacy.l.variant == "recursive" else None
        achieved = privacy_measures(release, qis, sensitive, emd_kinds, recursive_l=recursive_l, classes=classes)
        report_privacy["achieved"] = achieved
        checks += privacy_checks(privacy, achieved, sensitive)
        checks.append(suppression_check(privacy, offered - len(release), offered))
    for name, shared in minimised.colliding.items():
        if name in release.columns:
            released_shared = int(release[name].dropna().drop_duplicates().isin(shared).sum()) if shared else 0
            checks.append(token_check(name, released_shared, int(pseudo_summary[name]["bits"])))
    return checks


def _model_utility(data: pd.DataFrame, release: pd.DataFrame, source_rows: pd.Index, policy: Policy,
                   seed: int, rows_of: Callable[[np.ndarray], pd.DataFrame] | None = None,
                   columns: list[str] | None = None) -> dict[str, Any]:
    """Raw-vs-release AUC per label on a uniform random sample of the released rows (seeded by `seed`, a
    data-independent choice) when there are more than UTILITY_SAMPLE_ROWS; the report states the sample
    and each AUC's standard error. With `rows_of` (a streamed table) the sampled rows are fetched whole
    and `release` holds only some of the release's `columns`: the others are the minimised rows' own."""
    model_utility: dict[str, Any] = {}
    if not policy.labels or not len(release):
        return model_utility
    positions = _utility_sample(len(release), UTILITY_SAMPLE_ROWS, seed)
    if rows_of is None:
        raw_rows = data.loc[source_rows[positions]]
        released_rows = release.iloc[positions].set_index(source_rows[positions])
    else:
        raw_rows = rows_of(source_rows[positions].to_numpy(dtype=np.int64))
        released_rows = raw_rows.copy(deep=False)
        for name in release.columns:
            values = release[name].iloc[positions].set_axis(raw_rows.index)
            released_rows[name] = values.astype(str) if isinstance(values.dtype, pd.CategoricalDtype) else values
        released_rows = released_rows[columns if columns is not None else list(released_rows.columns)]
    features = [c for c in released_rows.columns
                if c not in policy.labels and policy.columns[c].role != "identifier"]
    for label in (lbl for lbl in policy.labels if lbl in released_rows.columns):
        model_utility[label] = label_auc(raw_rows, released_rows, label, features, seed=seed,
                                         sampled_from=len(release))
    return model_utility
