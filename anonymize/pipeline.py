"""`anonymize.run`: the six steps from a raw table to a release and its report, in order.

1. validate   - declared columns present, values of the declared type and domain
2. quality    - exact duplicates removed, duplicate identifiers and missing values counted
3. purpose    - rows without consent for the purpose removed; columns it does not need dropped
4. pseudonymize identifiers (HMAC tokens / AES-SIV / drop), keys derived per purpose and partner
5. generalize quasi-identifiers (k / l / t), then measure privacy, risk and utility on the output
6. report     - JSON-ready dict of every count and figure; never a raw value or key

Each step hands its table to the next and records what it removed, by reason, so the rows of the
input always add up to the rows of the release plus the counted removals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from anonymize.errors import InputError
from anonymize.generalize import generalize
from anonymize.measures import privacy_measures, reidentification_risk, utility_loss
from anonymize.policy import Policy
from anonymize.pseudonymize import Keys, as_keys, pseudonymize
from anonymize.quality import StepResult, consent_and_purpose, hierarchy_of, quality, validate
from anonymize.report import REPORT_FORMAT, label_auc

RISK_THRESHOLD = 0.2  # a record is "at risk" when its prosecutor risk (1 / class size) exceeds this


@dataclass
class Release:
    """The released table, its report, and the token escrow (None unless a column keeps one)."""

    data: pd.DataFrame
    report: dict[str, Any]
    escrow: pd.DataFrame | None = None


def _generalization_input(data: pd.DataFrame, policy: Policy, qis: list[str]) -> pd.DataFrame:
    """Boolean QIs become the categories 'true'/'false' (hierarchies know no booleans)."""
    frame = data.copy()
    for name in qis:
        if policy.columns[name].type == "boolean":
            frame[name] = frame[name].map(lambda v: "true" if v else "false", na_action="ignore").astype(object)
    return frame


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
) -> Release:
    """Run the release pipeline on `df` as `policy` says; bad input raises one-line InputError."""
    key_set = as_keys(keys, partner)
    say = progress or (lambda _step: None)
    steps: list[dict[str, Any]] = []

    def record(name: str, result: StepResult) -> pd.DataFrame:
        steps.append({"step": name, **result.info})
        return result.data

    say("validate")
    data = record("validate", validate(df, policy, source))
    undeclared = steps[0]["undeclared_columns"]
    say("quality")
    data = record("quality", quality(data, policy))
    say("consent and purpose")
    data = record("purpose", consent_and_purpose(data, policy, undeclared))

    say("pseudonymize")
    pseudo = pseudonymize(data, policy, key_set)
    data = pseudo.data
    dropped_ids = [n for n, info in pseudo.summary.items() if info["method"] == "drop"]
    steps.append(
        {
            "step": "pseudonymize",
            "rows_in": len(data),
            "rows_out": len(data),
            "removed": {},
            "columns": pseudo.summary,
            "dropped_columns": dropped_ids,
            "decisions": [
                "tokens are HMAC-SHA256 under a key derived (HKDF) from the master secret, the purpose, "
                "the partner and the column; encrypt columns use deterministic AES-SIV under a key derived "
                "the same way; missing identifiers stay missing",
            ],
        }
    )

    say("generalize")
    qis = [n for n in policy.quasi_identifiers if n in data.columns]
    sensitive = [n for n in policy.sensitive if n in data.columns]
    privacy = policy.privacy
    report_privacy: dict[str, Any]
    risk: dict[str, Any] = {}
    utility: dict[str, Any] = {}
    if qis:
        before = len(data)
        missing_qi = data[qis].isna().any(axis=1).to_numpy()
        needs_sensitive = privacy.l is not None or privacy.t is not None
        missing_sens = (
            data[sensitive].isna().any(axis=1).to_numpy() & ~missing_qi if needs_sensitive and sensitive else None
        )
        data = data[~missing_qi if missing_sens is None else ~(missing_qi | missing_sens)]
        if len(data) < privacy.k:
            raise InputError(
                f"{policy.source}: privacy.k = {privacy.k} is larger than the {len(data)} rows left "
                "after validation and filtering"
            )
        hierarchies = {n: hierarchy_of(policy, n) for n in qis}
        original = _generalization_input(data, policy, qis)
        # t-closeness distance: ordered EMD for numeric sensitive columns, equal distance otherwise
        emd_kinds = {n: ("ordered" if policy.columns[n].numeric else "equal") for n in sensitive}
        result = generalize(original, hierarchies, privacy, sensitive, emd_kinds)
        release = data.loc[result.data.index].copy()
        for name in qis:
            release[name] = result.data[name].astype(object)
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
        say("measure")
        achieved = privacy_measures(release, qis, sensitive, emd_kinds)
        pop = None
        if population is not None:  # raw QI values, matched to release classes by containment
            pop = _generalization_input(population, policy, [q for q in qis if q in population.columns])
        risk = dict(
            reidentification_risk(
                release, qis, pop, threshold=RISK_THRESHOLD, hierarchies=hierarchies if pop is not None else None
            )
        )
        utility = dict(utility_loss(original, release, hierarchies, int(result.suppressed)))
        utility.setdefault("suppressed", int(result.suppressed))
        if result.levels is not None:
            utility.setdefault("levels", result.levels)
        report_privacy = {
            "applicable": True,
            "algorithm": result.algorithm,
            "quasi_identifiers": qis,
            "sensitive": sensitive,
            "required": privacy.model_dump(),
            "achieved": achieved,
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

    escrow = pseudo.escrow
    if escrow is not None:  # escrow only for people who are in the release
        present = pd.concat(
            [pd.DataFrame({"column": n, "token": release[n]}) for n in escrow["column"].unique()], ignore_index=True
        ).dropna()
        escrow = escrow.merge(present.drop_duplicates(), on=["column", "token"], how="inner")

    say("report")
    model_utility: dict[str, Any] = {}
    if policy.labels and len(release):
        raw_rows = data.loc[source_rows]
        released_rows = release.set_index(source_rows)
        features = [
            c for c in release.columns if c not in policy.labels and policy.columns[c].role != "identifier"
        ]
        for label in (lbl for lbl in policy.labels if lbl in release.columns):
            model_utility[label] = label_auc(raw_rows, released_rows, label, features, seed=seed)

    counts = _counts(steps, int(len(df)), int(len(release)))
    report = {
        "format": REPORT_FORMAT,
        "policy": {"name": policy.name, "purpose": policy.purpose.name, "version": policy.version},
        "partner": key_set.partner,
        "rows": {"input": int(len(df)), "released": int(len(release))},
        "columns": list(release.columns),
        "steps": steps,
        "counts": counts,
        "pseudonymization": pseudo.summary,
        "privacy": report_privacy,
        "risk": risk,
        "utility": utility,
        "model_utility": model_utility,
        "budget": policy.budget.model_dump() if policy.budget is not None else None,
        "fairness_groups": policy.fairness_groups,
    }
    return Release(release, report, escrow)


def _counts(steps: list[dict[str, Any]], rows_in: int, rows_out: int) -> dict[str, Any]:
    by = {s["step"]: s for s in steps}
    removed: dict[str, int] = {}
    for s in steps:
        for reason, n in (s.get("removed") or {}).items():
            removed[reason] = removed.get(reason, 0) + int(n)
    dropped = [c for group in by["purpose"]["dropped_columns"].values() for c in group]
    dropped += by["pseudonymize"]["dropped_columns"]
    return {
        "validated_rows": by["validate"]["rows_out"],
        "invalid_rows_removed": sum(n for r, n in removed.items() if r.startswith("invalid:")),
        "exact_duplicates": by["quality"]["exact_duplicates"],
        "duplicate_identifiers": by["quality"]["duplicate_identifiers"],
        "missing_values": by["quality"]["missing_values"],
        "consent_filtered": sum((by["purpose"].get("removed") or {}).values()),
        "dropped_columns": dropped,
        "suppressed": removed.get("suppressed", 0),
        "removed_by_reason": removed,
        "rows_accounted": rows_in == rows_out + sum(removed.values()),
    }
