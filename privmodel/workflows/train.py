"""Train and release a DP propensity model: the one owner of "train", called by the CLI and the demo.

Order of a run (each rule in one place):
1. rows     - `encoded.encode_file`: batch by batch, the consent and purpose filter and minimisation
              (`rows.minimised_rows`), labels, feature checks and the policy's encoder, into
              memory-mapped arrays; the unit of privacy; then the split and `run_delta`
2. budget   - `budget.charge` of the TARGET ε (or the whole search) before any training: a run that
              would pass the organisation's cap for this dataset never touches the data
3. training - `privmodel.dp.training.fit` (secret DP noise), optional private hyper-parameter search
4. evidence - held-out metrics; the non-private baseline and the membership-inference audit only
              when asked (`baseline=True`, `mia=True`); every figure not covered by ε is listed
              on the card under "released without differential privacy"
5. publish  - the model directory is staged, the ledger entry written, then the directory renamed
              into place: a failure leaves nothing behind and nothing unrecorded
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from privmodel.core.defaults import DEFAULTS
from privmodel.workflows import prepare as prep
from privmodel.workflows.rows import ModelRows, model_rows

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.artifacts.ledger import Artifact, Ledger
    from privmodel.data.features import EncodedData, TabularEncoder
    from privmodel.dp.budget import Cap
    from privmodel.dp.training import FitResult, TrainConfig
    from privmodel.dp.tuning import Selection
    from privmodel.evaluation.metrics import Evaluation
    from privmodel.evaluation.mia import MembershipAudit
    from privmodel.workflows.encoded import EncodedRows

#: advance(done, description): progress through the phases of a run (fractional `done` allowed)
Progress = Callable[[float, str], None]

#: figures not covered by ε whose precision a sample of this many rows keeps (issue 13): the
#: non-private baseline trains on at most BASELINE_ROWS training rows (a logistic model of a few
#: hundred weights is estimated to well below the held-out AUC's standard error by then), and the
#: membership audit scores at most MIA_MEMBER_ROWS members and as many non-members (about the
#: non-member count at 1M rows), and its reference models train on at most BASELINE_ROWS held-out rows.
#: Each sample is seeded and uniform (data-independent); the card says when one was taken.
BASELINE_ROWS = 200_000
MIA_MEMBER_ROWS = 100_000


@dataclass(frozen=True)
class TrainRequest:
    """Everything a training run is asked to do. Defaults: privmodel.core.defaults (THE defaults of every door).
    batch_size / lr None = the rules `DEFAULTS.batch_size_for(n)` / `DEFAULTS.lr_for(model)`;
    delta None = `DEFAULTS.delta_for(n)` for the n training rows (`run_delta`, the one place it is decided)."""

    data: Path
    label: str
    policy: Path
    out: Path
    epsilon: float = DEFAULTS.epsilon
    delta: float | None = None
    model: str = DEFAULTS.model
    epochs: int = DEFAULTS.epochs
    batch_size: int | None = DEFAULTS.batch_size
    lr: float | None = None
    clip: float = DEFAULTS.clip
    clipping: str = DEFAULTS.clipping
    accountant: str = DEFAULTS.accountant
    seed: int = DEFAULTS.seed
    test_size: float = DEFAULTS.test_size
    baseline: bool = False
    mia: bool = False
    tune: Mapping[str, list[float]] = field(default_factory=dict)
    engine: str = "local"  # data preparation: "local" (this process) or "ray" (Ray Data, `encoded_ray`)
    ray_address: str | None = None  # a Ray cluster for engine "ray"; None: Ray in local mode


@dataclass
class TrainOutcome:
    """What the CLI prints."""

    epsilon: float
    delta: float  # the delta used (`run_delta`)
    roc_auc: float | None
    spent_epsilon: float
    spent_delta: float
    rows: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def check_request(req: TrainRequest) -> None:
    """Arguments alone: refuse before reading anything."""
    check_privacy_args(req.epsilon, req.delta)
    if req.model not in ("logreg", "mlp"):
        raise InputError("--model must be logreg or mlp")
    if req.out.exists():
        raise InputError(f"{req.out}: model directory already exists; refusing to overwrite")
    if not _parent(req.out).is_dir():
        raise InputError(f"{_parent(req.out)}: output directory does not exist")
    if not os.access(_parent(req.out), os.W_OK | os.X_OK):
        raise InputError(f"{_parent(req.out)}: output directory is not writable")
    for option, value in (("--lr", req.lr), ("--clip", req.clip), ("--test-size", req.test_size)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise InputError(f"{option} must be a positive finite number")
    from anonymize.engines import ENGINES

    if req.engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}")
    if req.ray_address and req.engine != "ray":
        raise InputError("--ray-address needs --engine ray")
    if not req.data.is_file():
        raise InputError(f"{req.data}: no such file")


def check_privacy_args(epsilon: float, delta: float | None) -> None:
    if not (epsilon > 0) or not np.isfinite(epsilon):
        raise InputError("--epsilon must be a positive finite number")
    if delta is not None and not 0.0 < delta < 1.0:
        raise InputError("--delta must be in (0, 1)")


def run_delta(delta: float | None, n_train: int) -> float:
    """THE delta of a run on n_train training rows: the one given (checked below 1/n), else the rule
    `DEFAULTS.delta_for(n)` = min(1e-6, 1/(10 n)), so a table past 1M rows is not refused for want of
    a --delta nobody asked for. The card, the ledger and the budget charge record the value returned."""
    if delta is None:
        return DEFAULTS.delta_for(n_train)
    prep.check_delta(delta, n_train)
    return float(delta)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def config_for(req: TrainRequest, epsilon: float | None, *, seed: int | None = None, lr: float | None = None,
               clip: float | None = None) -> TrainConfig:
    """A TrainConfig for this request; epsilon None = the non-private baseline (no clipping, no noise)."""
    from pydantic import ValidationError

    from privmodel.dp.training import TrainConfig

    fields = {"model": req.model, "epochs": req.epochs, "batch_size": req.batch_size,
              "lr": req.lr if lr is None else lr, "max_grad_norm": req.clip if clip is None else clip,
              "clipping": req.clipping, "accountant": req.accountant, "seed": req.seed if seed is None else seed,
              "delta": req.delta, "epsilon": epsilon}
    try:
        return TrainConfig.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise InputError(f"--{where.replace('_', '-')}: {err['msg']}") from None


def fit_rows(encoder: TabularEncoder, frame: pd.DataFrame, y: np.ndarray, config: TrainConfig,
             on_step: Callable[[int, int], None] | None = None, history: bool = False) -> FitResult:
    from privmodel.dp.training import fit

    return fit(encoder.transform(frame), y, config, on_step=on_step, history=history)


def predictor(result: FitResult, encoder: TabularEncoder) -> Callable[[pd.DataFrame], np.ndarray]:
    """predict_proba on a DataFrame for a FitResult that is not saved yet."""
    return lambda df: np.asarray(result.predict_proba(encoder.transform(df)), dtype=float)


def train(req: TrainRequest, book: Ledger, keys: Path | None, advance: Progress | None = None) -> TrainOutcome:
    """Run the whole training workflow; records a failed `model.train` entry when it fails."""
    from privmodel.artifacts.ledger import artifact

    check_request(req)
    inputs = [artifact(req.data), artifact(req.policy)]
    try:
        return _train(req, book, keys, advance or (lambda _d, _s: None), inputs)
    except Exception as exc:
        book.record_failure("model.train", inputs=inputs, params=_params(req), exc=exc)
        raise


def _params(req: TrainRequest) -> dict[str, Any]:
    return {"label": req.label, "model": req.model, "epsilon": req.epsilon, "delta": req.delta,
            "epochs": req.epochs, "batch_size": req.batch_size, "lr": req.lr, "max_grad_norm": req.clip,
            "clipping": req.clipping, "accountant": req.accountant, "seed": req.seed, "test_size": req.test_size,
            "baseline": req.baseline, "mia": req.mia, "out": req.out.name, "engine": req.engine}


def load_policy_with_cap(path: Path) -> Policy:
    from anonymize.policy.schema import load_policy

    policy = load_policy(path)
    if policy.budget is None:
        raise InputError(f"{path}: the policy declares no budget cap (budget: {{epsilon, delta}}); DP training needs one")
    return policy


@dataclass
class SplitRows:
    """The policy (with its cap), the rows a model may use, and the seeded held-out split."""

    policy: Policy
    cap: Cap
    rows: ModelRows
    ready: prep.Prepared
    train_idx: np.ndarray
    test_idx: np.ndarray
    delta: float  # `run_delta` for the training rows


def split_rows(req: TrainRequest, keys: Path | None) -> SplitRows:
    """Policy -> consent-filtered rows -> labels and encoder -> split -> δ < 1/n: shared by train and curve."""
    from privmodel.dp.budget import Cap

    policy = load_policy_with_cap(req.policy)
    assert policy.budget is not None  # load_policy_with_cap refuses a policy without one
    rows = model_rows(req.data, policy, keys, content_hash=True)
    ready = prep.prepare(rows.frame, policy, req.label, str(req.data), rows.positions)
    train_idx, test_idx = prep.split(ready.y, req.test_size, req.seed)
    delta = run_delta(req.delta, int(train_idx.size))
    return SplitRows(policy, Cap(policy.budget.epsilon, policy.budget.delta), rows, ready, train_idx, test_idx, delta)


def _train(req: TrainRequest, book: Ledger, keys: Path | None, advance: Progress,
           inputs: list[Artifact]) -> TrainOutcome:
    """Encode the table once (memory-mapped, `encoded.encode_file`), split, charge, fit, measure, publish."""
    import tempfile

    from privmodel.dp import budget
    from privmodel.dp.budget import Cap

    started = time.perf_counter()
    policy = load_policy_with_cap(req.policy)
    assert policy.budget is not None  # load_policy_with_cap refuses a policy without one
    # the encoded arrays live beside the model directory (on disk, not in memory), removed afterwards
    with tempfile.TemporaryDirectory(prefix=f".{req.out.name}.encoded-", dir=_parent(req.out)) as tmp:
        enc = encode_rows(req, policy, keys, Path(tmp))
        train_idx, test_idx = prep.split(enc.y, req.test_size, req.seed)
        req = replace(req, delta=run_delta(req.delta, int(train_idx.size)))  # every record states the delta used
        assert req.delta is not None
        timings = {"encode": time.perf_counter() - started}
        started = time.perf_counter()
        dataset = budget.dataset_of(policy, req.data, keys, content=enc.content)
        charge = budget.charge(dataset, req.epsilon, req.delta, Cap(policy.budget.epsilon, policy.budget.delta),
                               keys=keys, ledger=book,
                               params={"command": "train", "target_epsilon": req.epsilon, "out": req.out.name,
                                       "unit": enc.rows.unit})
        timings["budget"] = time.perf_counter() - started
        evidence = _fit_and_measure(req, enc, train_idx, test_idx, advance)
        evidence.timings = {**timings, **evidence.timings}
        started = time.perf_counter()
        the_card = _card(req, policy, enc, train_idx, test_idx, evidence, charge.as_dict(), dataset)
        evidence.timings["card"] = time.perf_counter() - started
        # per-stage wall seconds (writing the model directory, after the card, is not in them)
        the_card["timings"] = {stage: round(seconds, 3) for stage, seconds in evidence.timings.items()}
        the_card["engine"] = req.engine  # where the data preparation ran
        _publish(req, book, inputs, enc.encoder, evidence, the_card, policy, dataset, enc.rows)
    auc = evidence.private_metrics["roc_auc"]
    return TrainOutcome(epsilon=req.epsilon, delta=req.delta, roc_auc=auc, spent_epsilon=charge.spent_after.epsilon,
                        spent_delta=charge.spent_after.delta, rows=enc.rows.as_record(),
                        warnings=list(evidence.fit.warnings))


def encode_rows(req: TrainRequest, policy: Policy, keys: Path | None, directory: Path) -> EncodedRows:
    """The table's model rows, encoded into memory-mapped arrays in `directory`, on the request's engine."""
    if req.engine == "ray":
        from privmodel.workflows.encoded_ray import encode_file_on_ray

        return encode_file_on_ray(req.data, policy, req.label, keys, directory, address=req.ray_address)
    from privmodel.workflows.encoded import encode_file

    return encode_file(req.data, policy, req.label, keys, directory)


@dataclass
class Evidence:
    """What training produced: the model, the held-out figures, and the opt-in non-DP figures."""

    fit: FitResult
    private_metrics: Evaluation
    baseline_metrics: Evaluation | None
    comparison: dict[str, Any]
    mia: MembershipAudit | None
    selection: Selection[FitResult, np.ndarray] | None
    lr: float | None  # None = the rule DEFAULTS.lr_for(model)
    clip: float
    baseline_rows: int | None = None  # rows the baseline trained on when a sample (BASELINE_ROWS)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage of the run


def encoded_predictor(result: FitResult, data: EncodedData) -> Callable[[np.ndarray], np.ndarray]:
    """predict_proba on rows of `data` given by position (the rows are read from the arrays then)."""
    return lambda rows: np.asarray(result.predict_proba(data.take(rows)), dtype=float)


def _fit_and_measure(req: TrainRequest, enc: EncodedRows, train_idx: np.ndarray, test_idx: np.ndarray,
                     advance: Progress) -> Evidence:
    """Rows are positions in the encoded arrays throughout: nothing but the sampled rows is read."""
    from privmodel.dp.training import fit, quality_warnings
    from privmodel.evaluation import metrics

    assert req.delta is not None  # run_delta resolved it
    started = time.perf_counter()
    data, y = enc.data, enc.y
    selection, lr, clip = None, req.lr, req.clip
    members = train_idx  # the rows the released model was trained on
    if req.tune:
        selection, members = tune(req, data, y, train_idx)
        result = selection.fit
        lr, clip = selection.best_params.get("lr", lr), selection.best_params.get("clip", clip)
    else:
        result = fit(data, y, config_for(req, req.epsilon), on_step=_steps(advance, 0, "private model"),
                     history=True, rows=train_idx)  # the card's epsilon history, computed on the second core meanwhile
    advance(1, "private model trained")
    timings = {"private_model": time.perf_counter() - started}
    started = time.perf_counter()
    groups = enc.groups(test_idx)
    private_metrics = metrics.evaluate(y[test_idx], encoded_predictor(result, data)(test_idx), groups)
    # a model that ranks no better than a constant is said so on the card, never released silently
    result.warnings = quality_warnings(req.model, private_metrics["roc_auc"])
    timings["private_metrics"] = time.perf_counter() - started
    baseline_metrics, baseline_rows = None, None
    baseline_config = config_for(req, None, lr=lr, clip=clip)
    if req.baseline:
        started = time.perf_counter()
        pick = _sample(len(train_idx), BASELINE_ROWS, req.seed + 29)
        baseline_rows = None if pick is None else int(pick.size)
        base = fit(data, y, baseline_config, on_step=_steps(advance, 1, "non-private baseline"),
                   rows=train_idx if pick is None else train_idx[pick])
        baseline_metrics = metrics.evaluate(y[test_idx], encoded_predictor(base, data)(test_idx), groups)
        advance(2, "baseline trained")
        timings["baseline"] = time.perf_counter() - started
    audit = None
    if req.mia:
        started = time.perf_counter()
        audit = membership_audit(data, y, encoded_predictor(result, data), members, test_idx,
                                 baseline_config, req.delta, req.epsilon, req.seed)
        advance(1 + int(req.baseline) + 1, "membership audit done")
        timings["membership_audit"] = time.perf_counter() - started
    return Evidence(fit=result, private_metrics=private_metrics, baseline_metrics=baseline_metrics,
                    comparison=metrics.compare(private_metrics, baseline_metrics), mia=audit, selection=selection,
                    lr=lr, clip=clip, baseline_rows=baseline_rows, timings=timings)


def _sample(n: int, limit: int, seed: int) -> np.ndarray | None:
    """Sorted positions of a seeded uniform sample of `limit` of `n` rows, or None when n <= limit."""
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _steps(advance: Progress, phase: int, label: str) -> Callable[[int, int], None]:
    """on_step for training.fit: moves the bar through `phase` and names the step."""
    return lambda done, total: advance(phase + done / total, f"{label}: step {done}/{total}")


def not_dp_figures(rows: ModelRows, evidence: Evidence) -> list[dict[str, str]]:
    """Every figure on the card computed from private rows without DP, named (the card lists them)."""
    source_rows = "the customers' rows" if rows.release is None else f"the release {rows.release.name}"
    items = [
        {"figure": "row counts (rows read, rows removed by the consent filter, training and held-out rows)",
         "source": source_rows},
        {"figure": "held-out metrics of the private model (ROC-AUC, PR-AUC, Brier, log-loss, ECE, lift, ROC and "
                   "reliability curves, fairness rates and gaps)",
         "source": "the held-out split (rows not trained on, but private)"},
    ]
    if evidence.baseline_metrics is not None:
        trained_on = ("the training rows" if evidence.baseline_rows is None else
                      f"a seeded uniform sample of {evidence.baseline_rows:,} training rows (a sample keeps the "
                      "figure's precision at this size and saves the time)")
        items.append({"figure": "non-private baseline metrics and fairness (opt-in: --baseline)",
                      "source": f"a model trained WITHOUT DP on {trained_on}, measured on the held-out split"})
    if evidence.mia is not None:
        items.append({"figure": "membership-inference audit statistics (opt-in: --mia)",
                      "source": "the training rows and half of the held-out split (seeded uniform samples of "
                                f"at most {MIA_MEMBER_ROWS:,} members and non-members on large tables)"})
    return items


def _card(req: TrainRequest, policy: Policy, enc: EncodedRows, train_idx: np.ndarray,
          test_idx: np.ndarray, ev: Evidence, charge: dict[str, Any], dataset: str) -> dict[str, Any]:
    from privmodel.artifacts import model_card as card
    from privmodel.core.fileio import sha256_file

    rows = enc.rows
    features = card.feature_statements(policy, list(enc.encoder.columns))
    the_card = card.build_card(
        model_type=req.model, label=req.label, features=features,
        data={"file": req.data.name, "sha256": sha256_file(req.data), "dataset": dataset, "policy": req.policy.name,
              "policy_sha256": sha256_file(req.policy), "policy_name": policy.name, "purpose": policy.purpose.name,
              "unit_of_privacy": rows.unit, "rows_read": rows.rows_in,
              "rows_removed_consent": int(sum(rows.removed.values())), "rows": int(len(enc.y)),
              "training_rows": int(train_idx.size), "held_out_rows": int(test_idx.size),
              **({"release": rows.release.name, "release_k": rows.release.k} if rows.release else {})},
        privacy=ev.fit.privacy,
        training={"epochs": req.epochs, "batch_size": ev.fit.config.batch_size,
                  "lr": ev.lr if ev.lr is not None else ev.fit.config.lr, "seed": req.seed,
                  "test_size": req.test_size, "split": "stratified, seeded (the seed governs only the split and "
                                                        "weight initialisation, never DP noise)"},
        metrics=ev.private_metrics, baseline_metrics=ev.baseline_metrics, comparison=ev.comparison, mia=ev.mia,
        public_categories=prep.public_categories(policy), epsilon_history=ev.fit.epsilon_history,
        selection=ev.selection.card_entry() if ev.selection else None,
        budget=charge, guarantee=rows.guarantee, released_without_dp=not_dp_figures(rows, ev),
    )
    the_card["warnings"] = list(ev.fit.warnings)
    # what the budget was charged before training: the target (the accountant's figure for the run is in privacy)
    the_card["total_privacy_cost"] = {"epsilon": req.epsilon, "delta": req.delta}
    enc.check_card(card.render_markdown(the_card) + json.dumps(the_card))
    return the_card


def _publish(req: TrainRequest, book: Ledger, inputs: list[Artifact], encoder: TabularEncoder, ev: Evidence,
             the_card: dict[str, Any], policy: Policy, dataset: str, rows: ModelRows) -> None:
    """Stage the model directory, write the ledger entry, then publish it (all or nothing)."""
    from anonymize.json_values import json_ready
    from privmodel.artifacts import model_card as card
    from privmodel.artifacts.model_store import write_model
    from privmodel.core.fileio import outputs, sha256_file
    from privmodel.workflows.score import POLICY_COPY

    meta = {"label": req.label, "identifiers": {n: {"method": c.method, "length": c.length}
                                                for n, c in policy.columns.items() if c.role == "identifier"},
            "fairness_groups": list(policy.fairness_groups), "public_categories": prep.public_categories(policy),
            "purpose": policy.purpose.name, "consent_column": policy.purpose.consent,
            "policy_sha256": sha256_file(req.policy), "dataset": dataset}
    with outputs([req.out], dirs=[req.out], inputs=[req.data, req.policy], ledger=book.path) as stage:
        model_path = stage.dir(req.out)
        write_model(model_path, ev.fit, encoder, {"card": card.CARD_JSON, **meta})
        card.write_card(model_path, the_card)
        (model_path / "metrics.json").write_text(json.dumps(json_ready(
            {"private": ev.private_metrics, "baseline": ev.baseline_metrics, "comparison": ev.comparison,
             "membership_inference": ev.mia, "timings": the_card.get("timings")}), indent=2, allow_nan=False) + "\n")
        (model_path / POLICY_COPY).write_bytes(req.policy.read_bytes())  # what `score` filters consent by
        privacy = ev.fit.privacy
        book.append(
            "model.train", inputs=inputs, outputs=stage.artifacts(),
            params={**_params(req), "lr": ev.lr, "max_grad_norm": ev.clip,
                    "noise_multiplier": privacy["noise_multiplier"], "steps": privacy["steps"],
                    "sample_rate": privacy["sample_rate"], "rows": rows.as_record(), "dataset": dataset},
            privacy_cost={"epsilon": req.epsilon, "delta": req.delta, "accountant": req.accountant,
                          "accountant_epsilon": privacy["epsilon"], "unit": rows.unit,
                          "selection": ev.selection.card_entry()["method"] if ev.selection else "fixed"},
        )
        stage.publish()


def tune(req: TrainRequest, data: EncodedData, y: np.ndarray,
         train_idx: np.ndarray) -> tuple[Selection[FitResult, np.ndarray], np.ndarray]:
    """Private hyper-parameter search (privmodel.dp.tuning): trials train on 80 % of the training rows and
    are scored privately on the other 20 % (a seeded permutation of positions: data-independent).
    Returns the selection and the rows (positions) its model trained on."""
    from privmodel.dp import tuning
    from privmodel.dp.training import fit

    assert req.delta is not None  # run_delta resolved it
    rng = np.random.default_rng(req.seed + 31)
    perm = rng.permutation(len(train_idx))
    n_val = max(2, len(perm) // 5)
    val_rows, fit_rows_ = train_idx[np.sort(perm[:n_val])], train_idx[np.sort(perm[n_val:])]
    if np.unique(y[fit_rows_]).size < 2:
        raise InputError("--tune: the tuning split leaves a single class; use more rows")

    def trainer(params: Mapping[str, Any], eps: float, dlt: float,
                trial_seed: int) -> tuple[FitResult, Callable[[np.ndarray], np.ndarray]]:
        config = config_for(req, eps, seed=trial_seed, lr=params.get("lr"), clip=params.get("clip"))
        config = config.model_copy(update={"delta": dlt})
        result = fit(data, y, config, rows=fit_rows_)
        return result, encoded_predictor(result, data)

    selection = tuning.select(tuning.grid(dict(req.tune)), trainer, val_rows, y[val_rows], epsilon=req.epsilon,
                              delta=req.delta, seed=req.seed)
    return selection, fit_rows_


def membership_audit(data: EncodedData, y: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                     members: np.ndarray, test_idx: np.ndarray, baseline_config: TrainConfig,
                     delta: float, epsilon: float, seed: int) -> MembershipAudit:
    """Members = training rows; non-members = half the held-out rows; the other half trains the
    non-private reference models of the calibrated attack (disjoint from every audited row).
    Rows are positions in the encoded arrays (`members`, `test_idx`)."""
    from privmodel.dp.training import fit
    from privmodel.evaluation import mia

    rng = np.random.default_rng(seed + 17)
    trained_on = len(members)
    pick = _sample(trained_on, MIA_MEMBER_ROWS, seed + 23)
    if pick is not None:
        members = members[pick]
    order = rng.permutation(len(test_idx))
    audit_idx, pool_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    held_out = len(audit_idx)
    # past ~1M rows the halves are sampled too (10M rows: 1M each), seeded and uniform
    audit_pick, pool_pick = _sample(len(audit_idx), MIA_MEMBER_ROWS, seed + 37), _sample(len(pool_idx), BASELINE_ROWS,
                                                                                          seed + 41)
    audit_idx = audit_idx if audit_pick is None else audit_idx[audit_pick]
    pool_idx = pool_idx if pool_pick is None else pool_idx[pool_pick]
    nonmembers = test_idx[audit_idx]
    pool = (test_idx[pool_idx], y[test_idx[pool_idx]])

    def reference_fit(rows: np.ndarray, _labels: np.ndarray, ref_seed: int) -> Callable[[np.ndarray], np.ndarray]:
        config = baseline_config.model_copy(update={"seed": ref_seed})
        return encoded_predictor(fit(data, y, config, rows=np.asarray(rows, dtype=np.int64)), data)

    can_calibrate = len(pool_idx) >= 8 and np.unique(pool[1]).size == 2
    audit = mia.audit_model(
        predict, members, y[members], nonmembers, y[nonmembers], delta=delta,
        reference_fit=reference_fit if can_calibrate else None, reference_pool=pool if can_calibrate else None,
        n_reference=2, seed=seed, epsilon_guarantee=epsilon,
    )
    if pick is not None:
        audit["method"] += (f"; members: a seeded uniform sample of {pick.size:,} of the {trained_on:,} training rows "
                            "(the statistics' precision is set by the sample sizes shown)")
    if audit_pick is not None or pool_pick is not None:
        audit["method"] += (f"; non-members: {len(audit_idx):,} of {held_out:,} held-out rows, reference models "
                            f"trained on {len(pool_idx):,} of the other {len(order) - held_out:,} (seeded uniform samples)")
    return audit
