"""`privmodel train | score | evaluate | curve`: DP propensity models from the command line.

train     DATA -> model directory (weights, model_card.json/.md, metrics.json); charges the
          dataset's privacy budget and writes signed ledger entries. The directory is built in a
          temp directory beside the target and renamed into place, so a failure leaves nothing.
score     MODEL DATA -> per-customer propensity, decile (1 = highest) and tier, written atomically.
evaluate  MODEL DATA -> the metrics of a trained model on labelled data (table + optional JSON).
curve     DATA -> privacy-utility curve over an ε grid (JSON, CSV, PNG).

Nothing heavy is imported at module level (the CLI's --help must answer at once): pandas, numpy,
torch and scikit-learn are imported inside the functions that use them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from anonymize.errors import InputError
from privmodel.commands.common import KEYS_OPTION, LEDGER_OPTION

# Tiers of the score output (churn reading): the top decile is acted on now, deciles 2-3 watched.
TIERS = ((1, 1, "high-risk"), (2, 3, "watch"), (4, 10, "stable"))
TIER_RULE = "high-risk = decile 1 (top 10% of propensities), watch = deciles 2-3, stable = deciles 4-10"


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("score")(score)
    app.command("evaluate")(evaluate)
    app.command("curve")(curve)


# --- shared helpers ------------------------------------------------------------------------------


def _check_privacy_args(epsilon: float, delta: float) -> None:
    if not (epsilon > 0) or math.isnan(epsilon) or math.isinf(epsilon):
        raise InputError("--epsilon must be a positive finite number")
    if not 0.0 < delta < 1.0:
        raise InputError("--delta must be in (0, 1)")


def _load_policy(path: Path) -> Any:
    from anonymize.policy import load_policy

    return load_policy(path)


def _prepare(data: Path, policy: Any, label: str) -> tuple[Any, Any, Any]:
    """Read the table, check the label and features; returns (frame, labels 0/1, encoder)."""
    import numpy as np

    from privmodel.features import TabularEncoder, encode_labels
    from privmodel.fileio import read_table

    frame = read_table(data)
    if label not in frame.columns:
        raise InputError(f"{data}: label column {label} is missing")
    missing = frame[label].isna().to_numpy()
    if missing.any():
        raise InputError(f"{data}: label column {label} is empty at row {int(np.flatnonzero(missing)[0]) + 1}")
    y = np.asarray(encode_labels(frame[label], label), dtype=float)
    if y.min() == y.max():
        raise InputError(f"{data}: label column {label} has a single class; a propensity model needs both")
    encoder = TabularEncoder.from_policy(policy, label)
    _check_features(frame, encoder, data)
    return frame, y, encoder


def _feature_columns(encoder: Any) -> list[str]:
    """Input columns the encoder reads (its public contract: `columns`)."""
    return list(encoder.columns)


def _check_features(frame: Any, encoder: Any, source: Path | str) -> None:
    """Every feature present; numeric features non-empty (no silent imputation hides a data
    problem). A missing categorical value is allowed: the encoder's unknown slot is for it."""
    import numpy as np

    for column in _feature_columns(encoder):
        if column not in frame.columns:
            raise InputError(f"{source}: feature column {column} is missing")
    for spec in encoder.numeric:
        nan = frame[spec.name].isna().to_numpy()
        if nan.any():
            raise InputError(f"{source}: feature column {spec.name} is empty (NaN) at row {int(np.flatnonzero(nan)[0]) + 1}")


def _split(y: Any, test_size: float, seed: int) -> tuple[Any, Any]:
    """Stratified, seeded held-out split (row positions)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise InputError("--test-size must be in (0, 1)")
    index = np.arange(len(y))
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    if counts.min() < 2:
        raise InputError("label: each class needs at least 2 rows for a held-out split")
    try:
        train_idx, test_idx = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:
        raise InputError("--test-size leaves too few rows for a stratified split") from None
    return np.sort(train_idx), np.sort(test_idx)


def _groups(frame: Any, policy: Any) -> dict[str, Any] | None:
    cols = [c for c in (policy.fairness_groups if policy is not None else []) if c in frame.columns]
    return {c: frame[c].to_numpy(dtype=object) for c in cols} or None


def _public_categories(policy: Any) -> dict[str, list[str]]:
    return {name: list(col.categories) for name, col in policy.columns.items() if col.categories}


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr that appears only once the work has taken more than 1 s.

    The yielded advance(done, description=None) takes fractional `done` (phase 1.5 of 3) and an
    optional new description (which phase, which step).
    """
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    start = time.monotonic()
    state: dict[str, Any] = {"bar": None, "task": None}

    def advance(done: float, description: str | None = None) -> None:
        if state["bar"] is None and time.monotonic() - start > 1.0:
            bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True), transient=True)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(label, total=total)
        if state["bar"] is not None:
            state["bar"].update(state["task"], completed=done, description=description or label)

    try:
        yield advance
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


def _steps(advance: Callable[..., None], phase: int, label: str) -> Callable[[int, int], None]:
    """on_step for training.fit: moves the bar through `phase` and names the step."""
    return lambda done, total: advance(phase + done / total, f"{label}: step {done}/{total}")


def _config(model: str, epsilon: float | None, delta: float, epochs: int, batch_size: int, lr: float, clip: float,
            clipping: str, accountant: str, seed: int) -> Any:
    """A TrainConfig; epsilon None = the non-private baseline (no clipping, no noise)."""
    from pydantic import ValidationError

    from privmodel.training import TrainConfig

    fields: dict[str, Any] = {
        "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "max_grad_norm": clip,
        "clipping": clipping, "accountant": accountant, "seed": seed, "delta": delta,
        "epsilon": epsilon, "private": epsilon is not None,
    }
    known = TrainConfig.model_fields
    try:
        return TrainConfig(**{k: v for k, v in fields.items() if k in known})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise InputError(f"--{where.replace('_', '-')}: {err['msg']}") from None


def _fit(encoder: Any, frame: Any, y: Any, config: Any, on_step: Callable[[int, int], None] | None = None) -> Any:
    from privmodel.training import fit

    return fit(encoder.transform(frame), y, config, on_step=on_step)


def _predictor(fit_result: Any, encoder: Any) -> Callable[[Any], Any]:
    """predict_proba on a DataFrame for a FitResult that is not saved yet."""
    return lambda df: fit_result.predict_proba(encoder.transform(df))


def _ledger_fail(ledger: Any, action: str, inputs: list, params: dict, exc: Exception) -> None:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(exc, InputError):
        reason = f"internal error ({type(exc).__name__})"
    ledger.append(action, inputs=inputs, params=params, outcome="failed", reason=reason)


def _artifacts(directory: Path) -> list[dict[str, str]]:
    from privmodel.audit import artifact

    return [artifact(p, f"{directory.name}/{p.name}") for p in sorted(directory.iterdir()) if p.is_file()]


# --- train -----------------------------------------------------------------------------------------


def train(
    data: Path = typer.Argument(..., help="Customer table (CSV / Parquet): raw, or an anonymize release."),
    label: str = typer.Option(..., "--label", help="0/1 label column (e.g. churn)."),
    policy_path: Path = typer.Option(..., "--policy", help="Policy YAML: public bounds, categories, budget cap, fairness groups."),
    out: Path = typer.Option(..., "--out", help="Model directory to create (must not exist)."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Target ε of the training run."),
    delta: float = typer.Option(1e-5, "--delta", help="Target δ (must be below 1/n)."),
    model: str = typer.Option("logreg", "--model", help="logreg | mlp"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Expected batch size (Poisson sampling)."),
    lr: float = typer.Option(0.1, "--lr"),
    clip: float = typer.Option(1.0, "--clip", help="Per-example gradient norm bound."),
    clipping: str = typer.Option("flat", "--clipping", help="flat | per_layer"),
    accountant: str = typer.Option("prv", "--accountant", help="prv | rdp"),
    seed: int = typer.Option(0, "--seed"),
    test_size: float = typer.Option(0.25, "--test-size", help="Held-out share for metrics and the MIA audit."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also train the non-private baseline."),
    mia: bool = typer.Option(True, "--mia/--no-mia", help="Run the membership-inference audit."),
    tune_lr: str | None = typer.Option(None, "--tune-lr", help="Search these learning rates (comma-separated); "
                                       "the search's privacy cost is counted (basic composition)."),
    tune_clip: str | None = typer.Option(None, "--tune-clip", help="Search these clipping norms (comma-separated)."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Train a DP propensity model, charge the dataset's budget and write the model card."""
    from privmodel.audit import artifact
    from privmodel.commands.common import open_ledger

    _check_privacy_args(epsilon, delta)
    space = {k: _float_list(v, f"--tune-{k}") for k, v in (("lr", tune_lr), ("clip", tune_clip)) if v}
    if model not in ("logreg", "mlp"):
        raise InputError("--model must be logreg or mlp")
    if out.exists():
        raise InputError(f"{out}: model directory already exists; refusing to overwrite")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output directory does not exist")
    if not data.is_file():
        raise InputError(f"{data}: no such file")
    policy = _load_policy(policy_path)
    book = open_ledger(ledger if ledger is not None else parent / "ledger.jsonl", parent, keys)
    inputs = [artifact(data), artifact(policy_path)]
    params = {"label": label, "model": model, "epsilon": epsilon, "delta": delta, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "max_grad_norm": clip, "clipping": clipping,
              "accountant": accountant, "seed": seed, "test_size": test_size, "out": out.name}
    try:
        summary = _train(data, policy_path, policy, label, out, epsilon, delta, model, epochs, batch_size, lr, clip,
                         clipping, accountant, seed, test_size, baseline, mia, book, inputs, space)
    except Exception as exc:
        _ledger_fail(book, "model.train", inputs, params, exc)
        raise
    from rich.console import Console

    Console().print(
        f"[green]trained[/green] {out}: ε = {summary['epsilon']:.3f}, δ = {delta:g} ({accountant}); "
        f"held-out ROC-AUC {summary['auc']}; budget spent {summary['spent']}",
        soft_wrap=True,
    )


def _train(data: Path, policy_path: Path, policy: Any, label: str, out: Path, epsilon: float, delta: float,
           model: str, epochs: int, batch_size: int, lr: float, clip: float, clipping: str, accountant: str,
           seed: int, test_size: float, baseline: bool, mia: bool, book: Any, inputs: list,
           space: Mapping[str, list[float]]) -> dict[str, Any]:
    import json

    import numpy as np

    from privmodel import budget, card, metrics
    from privmodel.fileio import atomic_write_text, sha256_file
    from privmodel.persist import save_model

    frame, y, encoder = _prepare(data, policy, label)
    train_idx, test_idx = _split(y, test_size, seed)
    if delta >= 1.0 / train_idx.size:
        raise InputError(f"--delta {delta:g} is not below 1/n = 1/{train_idx.size} (training rows); "
                         "such a δ allows leaking whole records")
    data_hash = sha256_file(data)
    df_train, df_test = frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)
    y_train, y_test = y[train_idx], y[test_idx]
    config = _config(model, epsilon, delta, epochs, batch_size, lr, clip, clipping, accountant, seed)

    # Budget: refuse before any compute when the target would not fit (budget.charge records the
    # refusal as a failed entry); after training, charge what the accountant says was spent (at or
    # below the target), so the ledger and the card carry the same figure.
    cap = policy.budget
    if cap is None:
        raise InputError(f"{policy_path}: the policy declares no budget cap (budget: {{epsilon, delta}}); "
                         "DP training needs one")
    so_far = budget.spent(book.path, data_hash)
    if so_far.epsilon + epsilon > cap.epsilon + 1e-12 or so_far.delta + delta > cap.delta + 1e-12:
        budget.charge(book, data_hash, epsilon, delta, cap.epsilon, cap.delta,
                      params={"command": "train", "target_epsilon": epsilon, "out": out.name})

    phases = 1 + int(baseline) + int(mia)
    with _progress("training", phases) as advance:
        selection = None
        members, y_members = df_train, y_train  # the rows the released model was trained on
        if space:
            selection, fit_pos = _tune(encoder, df_train, y_train, space, model, epsilon, delta, epochs, batch_size, lr, clip,
                              clipping, accountant, seed)
            fit_result = selection.fit
            members, y_members = df_train.iloc[fit_pos].reset_index(drop=True), y_train[fit_pos]
            lr, clip = selection.best_params.get("lr", lr), selection.best_params.get("clip", clip)
        else:
            fit_result = _fit(encoder, df_train, y_train, config, on_step=_steps(advance, 0, "private model"))
        advance(1, "private model trained")
        # what the released model is guaranteed, and what the budget is charged: the run, or the search
        total_eps = selection.epsilon if selection else float(fit_result.privacy["epsilon"])
        total_delta = selection.delta if selection else float(fit_result.privacy["delta"])
        predict = _predictor(fit_result, encoder)
        p_test = np.asarray(predict(df_test), dtype=float)
        groups = _groups(df_test, policy)
        private_metrics = metrics.evaluate(y_test, p_test, groups)

        baseline_metrics = None
        baseline_config = _config(model, None, delta, epochs, batch_size, lr, clip, clipping, accountant, seed)
        if baseline:
            base_fit = _fit(encoder, df_train, y_train, baseline_config, on_step=_steps(advance, 1, "non-private baseline"))
            baseline_metrics = metrics.evaluate(y_test, np.asarray(_predictor(base_fit, encoder)(df_test)), groups)
            advance(2, "baseline trained")
        comparison = metrics.compare(private_metrics, baseline_metrics)

        audit = None
        if mia:
            audit = _membership_audit(encoder, predict, members, y_members, df_test, y_test, baseline_config, delta,
                                      total_eps, seed)
            advance(phases, "membership audit done")

    public_cats = _public_categories(policy)
    features = card.feature_statements(policy, _feature_columns(encoder))
    the_card = card.build_card(
        model_type=model, label=label, features=features,
        data={"file": data.name, "sha256": data_hash, "policy": policy_path.name,
              "policy_sha256": sha256_file(policy_path), "policy_name": policy.name, "purpose": policy.purpose.name,
              "rows": int(len(frame)), "training_rows": int(train_idx.size), "held_out_rows": int(test_idx.size),
              "positive_rate_training": float(y_train.mean())},
        privacy=fit_result.privacy,
        training={"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "test_size": test_size,
                  "split": "stratified, seeded"},
        metrics=private_metrics, baseline_metrics=baseline_metrics, comparison=comparison, mia=audit,
        public_categories=public_cats,
        epsilon_history=getattr(fit_result, "epsilon_history", None),
        selection=selection.card_entry() if selection else None,
    )
    identifier_cols = [c for c in policy.with_role("identifier", "sensitive", "drop") if c in frame.columns]
    card.check_no_raw_values(card.render_markdown(the_card) + json.dumps(the_card), frame, identifier_cols)

    charge = budget.charge(
        book, data_hash, total_eps, total_delta, cap.epsilon, cap.delta,
        params={**_privacy_params(fit_result.privacy), "command": "train", "out": out.name,
                "selection": selection.card_entry()["method"] if selection else "fixed"},
    )
    the_card["budget"] = _budget_summary(charge, cap)
    meta = {"label": label, "identifiers": {n: {"method": c.method, "length": c.length}
                                            for n, c in policy.columns.items() if c.role == "identifier"},
            "fairness_groups": list(policy.fairness_groups), "public_categories": public_cats,
            "purpose": policy.purpose.name, "policy_sha256": sha256_file(policy_path), "dataset_sha256": data_hash}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else "."))
    try:
        model_path = staging / out.name
        save_model(model_path, fit_result, encoder, {"card": card.CARD_JSON, **meta})
        card.write_card(model_path, the_card)
        atomic_write_text(model_path / "metrics.json", json.dumps(
            card._clean({"private": private_metrics, "baseline": baseline_metrics, "comparison": comparison,
                         "membership_inference": audit}), indent=2, allow_nan=False) + "\n")
        try:
            os.rename(model_path, out)  # atomic; refuses if a directory appeared meanwhile
        except OSError:
            raise InputError(f"{out}: model directory appeared while training; refusing to overwrite") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    book.append(
        "model.train", inputs=inputs, outputs=_artifacts(out),
        params={"label": label, "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "max_grad_norm": clip, "clipping": clipping, "accountant": accountant, "seed": seed,
                "noise_multiplier": fit_result.privacy["noise_multiplier"], "steps": fit_result.privacy["steps"],
                "sample_rate": fit_result.privacy["sample_rate"], "out": out.name},
        privacy_cost={"epsilon": total_eps, "delta": total_delta, "accountant": accountant,
                      "selection": selection.card_entry()["method"] if selection else "fixed"},
    )
    auc = private_metrics["roc_auc"]
    return {"epsilon": total_eps, "auc": "n/a" if auc is None else f"{auc:.3f}",
            "spent": _spent_text(charge)}


def _float_list(text: str, option: str) -> list[float]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"{option}: {part!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise InputError(f"{option}: values must be positive")
        values.append(value)
    if not values:
        raise InputError(f"{option}: no values")
    return values


def _tune(encoder: Any, df_train: Any, y_train: Any, space: Mapping[str, list[float]], model: str, epsilon: float,
          delta: float, epochs: int, batch_size: int, lr: float, clip: float, clipping: str, accountant: str,
          seed: int) -> tuple[Any, Any]:
    """Private hyper-parameter search (privmodel.tuning): trials train on 80 % of the training rows
    and are scored privately on the other 20 % (a seeded permutation of positions)."""
    import numpy as np

    from privmodel import tuning

    rng = np.random.default_rng(seed + 31)
    perm = rng.permutation(len(y_train))
    n_val = max(2, len(perm) // 5)
    val_pos, fit_pos = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    df_fit, y_fit = df_train.iloc[fit_pos].reset_index(drop=True), y_train[fit_pos]
    df_val, y_val = df_train.iloc[val_pos].reset_index(drop=True), y_train[val_pos]
    if np.unique(y_fit).size < 2:
        raise InputError("--tune: the tuning split leaves a single class; use more rows")

    def trainer(params: Mapping[str, Any], eps: float, dlt: float, trial_seed: int) -> tuple[Any, Any]:
        config = _config(model, eps, dlt, epochs, batch_size, params.get("lr", lr), params.get("clip", clip),
                         clipping, accountant, trial_seed)
        result = _fit(encoder, df_fit, y_fit, config)
        return result, _predictor(result, encoder)

    selection = tuning.select(tuning.grid(space), trainer, df_val, y_val, epsilon=epsilon, delta=delta, seed=seed)
    return selection, fit_pos


def _privacy_params(privacy: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("accountant", "noise_multiplier", "sample_rate", "steps", "clipping", "max_grad_norm", "target_epsilon")
    return {k: privacy[k] for k in keys if privacy.get(k) is not None}


def _budget_summary(charge: Mapping[str, Any], cap: Any) -> dict[str, Any]:
    """Cap, spent before and after this charge (from the signed budget.charge entry)."""
    cost = charge.get("privacy_cost") or {}
    after = cost.get("spent_after") or {}
    return {
        "cap": {"epsilon": cap.epsilon, "delta": cap.delta},
        "spent_before": {"epsilon": after.get("epsilon", 0.0) - cost.get("epsilon", 0.0),
                         "delta": after.get("delta", 0.0) - cost.get("delta", 0.0)},
        "spent_after": dict(after),
        "composition": (charge.get("params") or {}).get("composition"),
        "ledger_seq": charge.get("seq"),
    }


def _spent_text(charge: Mapping[str, Any]) -> str:
    after = (charge.get("privacy_cost") or {}).get("spent_after") or {}
    return f"ε = {after.get('epsilon', 0.0):.3f}, δ = {after.get('delta', 0.0):g}"


def _membership_audit(encoder: Any, predict: Callable[[Any], Any], df_train: Any, y_train: Any, df_test: Any,
                      y_test: Any, baseline_config: Any, delta: float, epsilon: float, seed: int) -> dict[str, Any]:
    """Members = training rows; non-members = half the held-out rows; the other half trains the
    non-private reference models of the calibrated attack (disjoint from every audited row)."""
    import numpy as np

    from privmodel import mia

    rng = np.random.default_rng(seed + 17)
    order = rng.permutation(len(y_test))
    audit_idx, pool_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    nonmembers, y_non = df_test.iloc[audit_idx].reset_index(drop=True), y_test[audit_idx]
    pool = (df_test.iloc[pool_idx].reset_index(drop=True), y_test[pool_idx])

    def reference_fit(rows: Any, labels: Any, ref_seed: int) -> Callable[[Any], Any]:
        config = baseline_config.model_copy(update={"seed": ref_seed})
        return _predictor(_fit(encoder, rows, labels, config), encoder)

    can_calibrate = len(pool_idx) >= 8 and np.unique(pool[1]).size == 2
    return mia.audit_model(
        predict, df_train, y_train, nonmembers, y_non, delta=delta,
        reference_fit=reference_fit if can_calibrate else None, reference_pool=pool if can_calibrate else None,
        n_reference=2, seed=seed, epsilon_guarantee=epsilon,
    )


# --- score -----------------------------------------------------------------------------------------

_HEX = re.compile(r"^[0-9a-f]+$")


def _id_column(frame: Any, meta: Mapping[str, Any], keys: Path | None) -> tuple[str, Any] | None:
    """The pseudonymous id to carry into the score file, never a raw identifier.

    The first `token` identifier of the policy that is present: if every value already looks like a
    token (lowercase hex of the declared length) it is a release's pseudonym and is carried as is;
    otherwise the column holds raw identifiers and is tokenized here with the organisation's
    pseudonymization secret (the same keyed HMAC as `anonymize`, default partner), so the score
    file joins with the release but never shows a raw identifier. `encrypt` / `drop` identifiers
    are never carried.
    """
    for name, spec in (meta.get("identifiers") or {}).items():
        if spec.get("method") != "token" or name not in frame.columns:
            continue
        values = frame[name].dropna().astype(str)
        length = int(spec.get("length") or 16)
        if len(values) == len(frame) and values.str.len().eq(length).all() and values.str.match(_HEX).all():
            return name, frame[name].astype(str).to_numpy()
        from anonymize.pseudonymize import as_keys, tokenize_series
        from privmodel.keys import ensure_keys, load_pseudonym_secret

        secret = load_pseudonym_secret(ensure_keys(keys))
        key = as_keys(secret).column_key(meta.get("purpose", ""), name)
        return f"{name}_token", tokenize_series(frame[name], key, length).to_numpy()
    return None


def deciles(p: Any) -> Any:
    """Decile of each row by propensity, 1 = the highest 10 % (stable on ties, sizes differ by <= 1)."""
    import numpy as np

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


def _load(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The scoring model and what `train` stored beside it (label, identifiers, groups)."""
    from privmodel.persist import load_model

    scorer = load_model(model_dir)
    meta = scorer.extra
    if "label" not in meta:
        raise InputError(f"{model_dir}: not a model directory from `privmodel train` (no label recorded)")
    return scorer, meta


def score(
    model_dir: Path = typer.Argument(..., help="Model directory from `privmodel train`."),
    data: Path = typer.Argument(..., help="Customers to score (CSV / Parquet)."),
    out: Path = typer.Option(..., "--out", help="Output table (.csv / .parquet), written atomically."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Per-customer propensity, its decile (1 = highest) and a tier (high-risk / watch / stable)."""
    import numpy as np
    import pandas as pd

    from privmodel.audit import artifact
    from privmodel.commands.common import open_ledger
    from privmodel.fileio import read_table, write_table

    scorer, meta = _load(model_dir)
    frame = read_table(data)
    p = np.asarray(scorer.predict_proba(frame), dtype=float)
    d = deciles(p)
    table = pd.DataFrame({"row": np.arange(1, len(frame) + 1)})
    ident = _id_column(frame, meta, keys)
    if ident is not None:
        table[ident[0]] = ident[1]
    table["propensity"] = p
    table["decile"] = d
    table["tier"] = [tier_of(int(x)) for x in d]
    write_table(table, out)
    parent = out.parent if str(out.parent) else Path(".")
    book = open_ledger(ledger, parent, keys)
    book.append("model.score", inputs=[artifact(data), artifact(model_dir / "model_card.json", f"{model_dir.name}/model_card.json")],
                outputs=[artifact(out)], params={"rows": int(len(frame)), "tier_rule": TIER_RULE,
                                                 "id_column": ident[0] if ident else None})
    counts = table["tier"].value_counts()
    typer.echo(f"scored {len(frame)} rows -> {out} ({TIER_RULE}; "
               + ", ".join(f"{name}: {int(counts.get(name, 0))}" for _, _, name in TIERS) + ")")


# --- evaluate --------------------------------------------------------------------------------------


def evaluate(
    model_dir: Path = typer.Argument(..., help="Model directory from `privmodel train`."),
    data: Path = typer.Argument(..., help="Labelled customers (CSV / Parquet)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the metrics as JSON."),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Metrics of a trained model on labelled data: AUCs, Brier, ECE, lift, fairness gaps."""
    import json

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from privmodel import card, metrics
    from privmodel.features import encode_labels
    from privmodel.fileio import atomic_write_text, read_table

    scorer, meta = _load(model_dir)
    label = meta["label"]
    frame = read_table(data)
    if label not in frame.columns:
        raise InputError(f"{data}: label column {label} is missing")
    y = np.asarray(encode_labels(frame[label], label), dtype=float)
    p = np.asarray(scorer.predict_proba(frame), dtype=float)
    groups = {c: frame[c].to_numpy(dtype=object) for c in meta.get("fairness_groups", []) if c in frame.columns}
    result = metrics.evaluate(y, p, groups or None)
    result["fairness"] = card.public_fairness(result["fairness"], meta.get("public_categories", {}))
    table = Table(title=f"{model_dir.name} on {data.name} ({result['n']} rows, base rate {result['base_rate']:.3f})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "top_decile_gain"):
        value = result[key]
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    for column, stats in ((result["fairness"] or {}).get("columns") or {}).items():
        for gap in ("demographic_parity_difference", "equal_opportunity_difference"):
            value = stats[gap]
            table.add_row(f"{gap} [{column}]", "n/a" if value is None else f"{value:.4f}")
    Console().print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(card._clean(result), indent=2, allow_nan=False) + "\n")
    from privmodel.audit import artifact
    from privmodel.commands.common import open_ledger

    book = open_ledger(ledger, model_dir.parent if str(model_dir.parent) else Path("."), keys)
    book.append("model.evaluate", inputs=[artifact(data), artifact(model_dir / card.CARD_JSON,
                                                                   f"{model_dir.name}/{card.CARD_JSON}")],
                outputs=[artifact(out)] if out is not None else [],
                params={"rows": result["n"], "roc_auc": result["roc_auc"], "brier": result["brier"]})


# --- curve -----------------------------------------------------------------------------------------


def curve(
    data: Path = typer.Argument(..., help="Customer table (CSV / Parquet)."),
    label: str = typer.Option(..., "--label"),
    policy_path: Path = typer.Option(..., "--policy"),
    out: Path = typer.Option(..., "--out", help="Directory for curve.json, curve.csv, curve.png."),
    grid: str = typer.Option("0.25,0.5,1,2,4,8,inf", "--grid", help="ε values; inf = non-private baseline."),
    delta: float = typer.Option(1e-5, "--delta"),
    model: str = typer.Option("logreg", "--model"),
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    lr: float = typer.Option(0.1, "--lr"),
    clip: float = typer.Option(1.0, "--clip"),
    clipping: str = typer.Option("flat", "--clipping"),
    accountant: str = typer.Option("prv", "--accountant"),
    seed: int = typer.Option(0, "--seed"),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Seeded runs per ε (mean and spread)."),
    test_size: float = typer.Option(0.25, "--test-size"),
    ledger: Path | None = LEDGER_OPTION,
    keys: Path | None = KEYS_OPTION,
) -> None:
    """Privacy-utility curve: held-out metrics of the same model at each ε of a grid."""
    from privmodel import utility_curve
    from privmodel.audit import artifact
    from privmodel.commands.common import open_ledger
    from privmodel.fileio import ensure_output_dir

    eps_grid = utility_curve.parse_grid(grid)
    _check_privacy_args(1.0, delta)
    policy = _load_policy(policy_path)
    frame, y, encoder = _prepare(data, policy, label)
    train_idx, test_idx = _split(y, test_size, seed)
    if delta >= 1.0 / train_idx.size:
        raise InputError(f"--delta {delta:g} is not below 1/n = 1/{train_idx.size} (training rows)")
    df_train, df_test = frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)

    def train_at(eps: float, run_seed: int) -> tuple[Any, Callable[[Any], Any]]:
        config = _config(model, None if math.isinf(eps) else eps, delta, epochs, batch_size, lr, clip, clipping,
                         accountant, run_seed)
        result = _fit(encoder, df_train, y[train_idx], config)
        return result, _predictor(result, encoder)

    with _progress("privacy-utility curve", len(eps_grid)) as advance:
        done = {"n": 0}

        def tick(_eps: float) -> None:
            done["n"] += 1
            advance(done["n"])

        rows = utility_curve.compute_curve(train_at, df_test, y[test_idx], eps_grid, repeats, seed, tick)
    ensure_output_dir(out)
    paths = utility_curve.write_curve(rows, out, title=f"{model} for {label}")
    book = open_ledger(ledger, out, keys)
    book.append("model.curve", inputs=[artifact(data), artifact(policy_path)],
                outputs=[artifact(p) for p in paths.values()],
                params={"label": label, "model": model, "grid": [str(e) for e in eps_grid], "delta": delta,
                        "epochs": epochs, "repeats": repeats, "seed": seed,
                        "note": "internal analysis: models discarded, budget not charged"})
    typer.echo(f"curve over {len(eps_grid)} ε values -> {paths['json']}, {paths['csv']}, {paths['png']}")
