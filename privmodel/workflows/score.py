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



def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def score_to_file(model_dir: Path, data: Path, out: Path, keys: Path | None, policy_path: Path | None = None,
                  ledger: Path | None = None) -> Scores:
    """`privmodel score`: the scores table written atomically to `out`, one signed `model.score` entry."""
    from privmodel.artifacts.ledger import artifact
    from privmodel.core.fileio import outputs
    from privmodel.workflows.run_ledger import ledger_path, open_ledger, recorded_failure

    inputs = [data, model_dir, policy_path]
    book = ledger_path(ledger, _parent(out))
    with recorded_failure("model.score", ledger, _parent(out), keys, inputs), \
            outputs([out], inputs=inputs, ledger=book, action="model.score") as stage:
        result = score(model_dir, data, keys, policy_path)
        stage.write_table(out, result.table)
        open_ledger(book, _parent(out), keys).append(
            "model.score", inputs=[artifact(data), artifact(model_dir / "model_card.json",
                                                             f"{model_dir.name}/model_card.json")],
            outputs=stage.artifacts(), params={"rows": int(len(result.table)), "tier_rule": TIER_RULE,
                                               "id_column": result.id_column, "rows_removed": result.rows.removed})
        stage.publish()
    return result


def evaluate_to_file(model_dir: Path, data: Path, out: Path | None, keys: Path | None,
                     policy_path: Path | None = None, ledger: Path | None = None) -> EvaluationOnRows:
    """`privmodel evaluate`: the metrics (also as JSON in `out` when given), one signed `model.evaluate` entry."""
    import json

    from anonymize.json_values import json_ready
    from privmodel.artifacts import model_card as card
    from privmodel.artifacts.ledger import artifact
    from privmodel.core.fileio import outputs
    from privmodel.workflows.run_ledger import ledger_path, open_ledger, recorded_failure

    book = ledger_path(ledger, _parent(model_dir))
    inputs = [data, model_dir, policy_path]
    with recorded_failure("model.evaluate", ledger, _parent(model_dir), keys, inputs), \
            outputs([out] if out is not None else [], inputs=inputs, ledger=book, action="model.evaluate") as stage:
        result = evaluate(model_dir, data, keys, policy_path)
        if out is not None:
            stage.write_text(out, json.dumps(json_ready(result), indent=2, allow_nan=False) + "\n")
        open_ledger(book, _parent(model_dir), keys).append(
            "model.evaluate", inputs=[artifact(data), artifact(model_dir / card.CARD_JSON,
                                                                f"{model_dir.name}/{card.CARD_JSON}")],
            outputs=stage.artifacts(), params={"rows": result["n"], "roc_auc": result["roc_auc"],
                                               "brier": result["brier"], "rows_removed": result["rows"]["removed"]})
        stage.publish()
    return result
