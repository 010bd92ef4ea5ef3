"""Score and evaluate with a trained model: the rows go through the same consent filter as training.

A customer without consent for the policy's purpose gets no score: `score` reads the data through
`rows.model_rows` under the policy the model was trained with (the copy `train` stores in the model
directory, or `--policy` when given, which must be that same policy), so consent, purpose and
pseudonymization are applied exactly as for training. Identifiers come out keyed (the release's
tokens), never raw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from anonymize.errors import InputError
from privmodel.workflows.rows import ModelRows, model_rows

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.artifacts.model_store import ScoringModel
    from privmodel.evaluation.metrics import Evaluation

    class EvaluationOnRows(Evaluation):
        """`evaluate`'s result: the metrics and the counts of the rows they were measured on."""

        rows: dict[str, object]

POLICY_COPY = "policy.yaml"
# Tiers of the score output (churn reading): the top decile is acted on now, deciles 2-3 watched.
TIERS = ((1, 1, "high-risk"), (2, 3, "watch"), (4, 10, "stable"))
TIER_RULE = "high-risk = decile 1 (top 10% of propensities), watch = deciles 2-3, stable = deciles 4-10"


def deciles(p: npt.ArrayLike) -> npt.NDArray[np.int_]:
    """Decile of each row by propensity, 1 = the highest 10 % (stable on ties, sizes differ by <= 1)."""
    p_arr = np.asarray(p, dtype=float)
    order = np.argsort(-p_arr, kind="stable")
    out = np.empty(p_arr.size, dtype=int)
    for number, idx in enumerate(np.array_split(order, min(10, max(1, p_arr.size))), start=1):
        out[idx] = number
    return out


def tier_of(decile: int) -> str:
    for low, high, name in TIERS:
        if low <= decile <= high:
            return name
    raise ValueError(f"decile {decile} out of range")


def load(model_dir: Path) -> tuple[ScoringModel, dict[str, Any]]:
    """The scoring model and what `train` stored beside it (label, identifiers, groups, policy)."""
    from privmodel.artifacts.model_store import load_model

    scorer = load_model(model_dir)
    meta = scorer.extra
    if "label" not in meta:
        raise InputError(f"{model_dir}: not a model directory from `privmodel train` (no label recorded)")
    return scorer, meta


def model_policy(model_dir: Path, meta: dict[str, Any], policy_path: Path | None) -> Policy:
    """The policy the model was trained under: `--policy` (checked against the model) or its stored copy."""
    from anonymize.policy.schema import load_policy
    from privmodel.core.fileio import sha256_file

    path = policy_path if policy_path is not None else model_dir / POLICY_COPY
    if not path.is_file():
        raise InputError(f"{model_dir}: the model directory holds no copy of its policy; give --policy")
    if meta.get("policy_sha256") and sha256_file(path) != meta["policy_sha256"]:
        raise InputError(f"{path}: not the policy this model was trained under (its SHA-256 differs)")
    return load_policy(path)


def id_column(rows: ModelRows, meta: dict[str, Any]) -> str | None:
    """The first keyed `token` identifier present in the rows (never raw: the rows are minimised)."""
    for name, spec in (meta.get("identifiers") or {}).items():
        if spec.get("method") == "token" and name in rows.frame.columns:
            return name
    return None


@dataclass
class Scores:
    """The score table and what it left out."""

    table: pd.DataFrame
    rows: ModelRows
    id_column: str | None


def score(model_dir: Path, data: Path, keys: Path | None, policy_path: Path | None = None) -> Scores:
    """Propensity, decile and tier for every customer who consented to the model's purpose."""
    import pandas as pd

    scorer, meta = load(model_dir)
    policy = model_policy(model_dir, meta, policy_path)
    rows = model_rows(data, policy, keys)
    p = np.asarray(scorer.predict_proba(rows.frame), dtype=float)
    d = deciles(p)
    table = pd.DataFrame({"row": rows.positions + 1})
    ident = id_column(rows, meta)
    if ident is not None:
        table[ident] = rows.frame[ident].astype(str).to_numpy()
    table["propensity"] = p
    table["decile"] = d
    table["tier"] = [tier_of(int(x)) for x in d]
    return Scores(table=table, rows=rows, id_column=ident)


def evaluate(model_dir: Path, data: Path, keys: Path | None, policy_path: Path | None = None) -> EvaluationOnRows:
    """Metrics of a trained model on labelled rows (consent-filtered like training)."""
    from privmodel.artifacts import model_card as card
    from privmodel.evaluation import metrics
    from privmodel.workflows.prepare import labels

    scorer, meta = load(model_dir)
    policy = model_policy(model_dir, meta, policy_path)
    rows = model_rows(data, policy, keys)
    y = labels(rows.frame, meta["label"], str(data))
    p = np.asarray(scorer.predict_proba(rows.frame), dtype=float)
    groups = {c: rows.frame[c].to_numpy(dtype=object) for c in meta.get("fairness_groups", []) if c in rows.frame.columns}
    result = metrics.evaluate(y, p, groups or None)
    result["fairness"] = card.public_fairness(result["fairness"], meta.get("public_categories", {}))
    return {**result, "rows": rows.as_record()}

