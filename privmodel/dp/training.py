"""`fit`: target (epsilon, delta) -> calibrated noise -> DP-SGD -> model plus an honest privacy record.

DP is a wrapper around one trainer (as Flower wraps strategies): with `epsilon=None` the same
`train_dp` runs with no noise and no clipping, which is the non-private baseline a model card
puts side by side.

Calibration: sample_rate q = batch_size / n (the EXPECTED logical batch), steps = round(epochs / q)
Poisson-sampled steps; the noise multiplier is the smallest the accountant allows for the target;
the reported epsilon is the accountant's figure for what was actually run (at or below the target).

delta: when not given, min(1e-6, 1 / (10 n)) (`privmodel.core.defaults`), well below 1/n (a mechanism that publishes one
random row outright satisfies delta = 1/n). A given delta must be below 1/n.

Randomness: `seed` fixes only the weight initialisation (data-independent, safe to publish). The
Poisson masks and the noise come from `privmodel.dp.secure_noise`, keyed with fresh OS entropy, so a
replay with the card's settings reproduces nothing. `insecure_seed` is the one test-only switch for
reproducible noise; the run is then recorded as `privacy["noise"] = "INSECURE-reproducible"` and is
NOT differentially private (the model card says so in its first line).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from anonymize.errors import InputError
from anonymize.forked import Pending
from privmodel.core.defaults import DEFAULTS
from privmodel.dp import accounting, secure_noise

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch.nn import Module

    from privmodel.data.features import EncodedData

DELTA_RULE = DEFAULTS.delta_rule
# Adam step sizes per model (tail-averaged); chosen in privmodel.core.defaults
DEFAULT_LR = dict(DEFAULTS.lr)


class TrainConfig(BaseModel):
    """Hyper-parameters and the privacy target of one training run (defaults: privmodel.core.defaults).

    `fit` returns the config it ran with the rules resolved (batch_size and lr filled in), so a card
    states what ran, not "auto".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal["logreg", "mlp"] = DEFAULTS.model  # type: ignore[assignment]
    epsilon: float | None = DEFAULTS.epsilon  # None = non-private baseline (no clipping, no noise)
    delta: float | None = None  # None = DEFAULTS.delta_for(n) = min(1e-6, 1/(10 n))
    epochs: int = DEFAULTS.epochs
    batch_size: int | None = DEFAULTS.batch_size  # expected logical batch q n; None = DEFAULTS.batch_size_for(n)
    lr: float | None = None  # None = the model's default (DEFAULTS.lr_for)
    max_grad_norm: float = DEFAULTS.clip
    clipping: Literal["flat", "per_layer"] = DEFAULTS.clipping  # type: ignore[assignment]
    accountant: Literal["prv", "rdp"] = DEFAULTS.accountant  # type: ignore[assignment]
    seed: int = DEFAULTS.seed  # weight initialisation only (data-independent); never the DP noise
    insecure_seed: int | None = None  # TEST ONLY: reproducible masks and noise -> NOT differentially private
    hidden: tuple[int, ...] = DEFAULTS.hidden
    optimizer: Literal["adam", "sgd"] = DEFAULTS.optimizer  # type: ignore[assignment]
    physical_batch_size: int = 8192
    average_from: float | None = DEFAULTS.average_from  # tail-average iterates from this fraction of steps (None = off)

    def resolved(self, n: int) -> TrainConfig:
        """This config with the n-dependent and per-model rules applied (batch_size, lr)."""
        return self.model_copy(update={
            "batch_size": self.batch_size if self.batch_size is not None else DEFAULTS.batch_size_for(n),
            "lr": self.lr if self.lr is not None else DEFAULTS.lr_for(self.model)})

    @property
    def private(self) -> bool:
        return self.epsilon is not None


#: a private model whose ROC-AUC is below 0.5 + this ranks no better than a constant score
CONSTANT_MARGIN = 0.02
#: a private MLP this much ROC-AUC below the DP logistic model at the same epsilon is not worth its noise
LOGISTIC_MARGIN = 0.03


def quality_warnings(model: str, roc_auc: float | None, logistic_auc: float | None = None) -> list[str]:
    """Plain-language warnings when a private model is not worth using (the card and `warnings_` show them).

    Why: with default settings on a table nobody tuned for, a DP MLP can collapse (ROC-AUC near 0.5)
    and nothing said so. `roc_auc`: the private model's; `logistic_auc`: a DP logistic model's at the
    same epsilon on the same rows, when known.
    """
    out: list[str] = []
    if roc_auc is None or not math.isfinite(roc_auc):
        return out
    if roc_auc < 0.5 + CONSTANT_MARGIN:
        out.append(f"the private model ranks no better than a constant score (ROC-AUC {roc_auc:.3f} < "
                   f"{0.5 + CONSTANT_MARGIN:.2f}): do not use it; try model='logreg', more rows or a larger epsilon")
    if (model != "logreg" and logistic_auc is not None and math.isfinite(logistic_auc)
            and logistic_auc - roc_auc > LOGISTIC_MARGIN):
        out.append(f"the private {model} is worse than a DP logistic model at the same epsilon by "
                   f"{logistic_auc - roc_auc:.3f} ROC-AUC ({roc_auc:.3f} vs {logistic_auc:.3f}): use model='logreg'")
    return out


@dataclass
class FitResult:
    """The trained model and what its training cost in privacy.

    `warnings`: `quality_warnings` of this model once a caller has measured it (empty until then);
    the model card prints them.
    """

    model: Module
    privacy: dict[str, Any]
    config: TrainConfig
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _history: list[dict[str, float]] | Pending[list[dict[str, float]]] | None = field(default=None, repr=False)

    @property
    def epsilon_history(self) -> list[dict[str, float]]:
        """Epsilon spent after each epoch: [{epoch, steps, epsilon}] (computed once, on first use, or
        during training by `fit(..., history=True)`).

        Lazy because each point is a PRV evaluation (~0.1 s); training never needs it.
        """
        if isinstance(self._history, Pending):
            self._history = self._history.result()
        if self._history is None:
            p = self.privacy
            self._history = (epsilon_history(p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"],
                                             p["accountant"], self.config.epochs) if p.get("private") else [])
        return self._history

    def predict_proba(self, data: EncodedData) -> np.ndarray:
        """P(y = 1) for encoded data."""
        from privmodel.dp.dpsgd import predict_proba

        return predict_proba(self.model, data)


def check_labels(y: npt.ArrayLike, n: int) -> np.ndarray:
    """0/1 float32 labels of length n with both classes; InputError naming the first bad row."""
    arr = np.asarray(y, dtype=np.float64).ravel()
    if arr.shape[0] != n:
        raise InputError(f"train: {n} feature rows but {arr.shape[0]} labels")
    if np.isnan(arr).any():
        raise InputError(f"label, row {int(np.flatnonzero(np.isnan(arr))[0]) + 1}: missing label")
    bad = ~np.isin(arr, (0.0, 1.0))
    if bad.any():
        raise InputError(f"label, row {int(np.flatnonzero(bad)[0]) + 1}: label is not binary 0/1")
    if arr.min() == arr.max():
        raise InputError("label has a single class; a propensity model needs both")
    return arr.astype(np.float32)


_CHECK_ROWS = 1 << 20  # rows checked at a time (the arrays may be memory-mapped over 10M rows)


def _check_features(data: EncodedData) -> None:
    for start in range(0, len(data), _CHECK_ROWS):
        x = np.asarray(data.x_num[start:start + _CHECK_ROWS])
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            name = data.num_names[col] if col < len(data.num_names) else f"#{col}"
            raise InputError(f"column {name!r}, row {start + row + 1}: missing or non-finite numeric value")
        for j, card in enumerate(data.cat_cardinalities):
            codes = np.asarray(data.x_cat[start:start + _CHECK_ROWS, j])
            out = (codes < 0) | (codes >= card)
            if out.any():
                raise InputError(f"column {data.cat_names[j]!r}, row {start + int(np.flatnonzero(out)[0]) + 1}: "
                                 "category code out of range")


def resolve_delta(delta: float | None, n: int) -> float:
    """The delta to use for n rows: the given one (checked < 1/n) or DEFAULTS.delta_for(n) = min(1e-6, 1/(10 n))."""
    if delta is None:
        return DEFAULTS.delta_for(n)
    if not (0.0 < delta < 1.0 / n):
        raise InputError(f"delta must be in (0, 1/n) = (0, {1.0 / n:.3g}) for n = {n} rows")
    return float(delta)


def plan(n: int, config: TrainConfig) -> dict[str, Any]:
    """Sampling rate, steps, delta and noise multiplier for n rows; validates the config."""
    if n < 2:
        raise InputError("train: need at least two rows")
    if config.epochs < 1:
        raise InputError("epochs must be at least 1")
    config = config.resolved(n)
    assert config.batch_size is not None
    if config.batch_size < 1:
        raise InputError("batch_size must be at least 1")
    if config.lr is not None and not (config.lr > 0 and math.isfinite(config.lr)):
        raise InputError("lr must be positive")
    if not (config.max_grad_norm > 0 and math.isfinite(config.max_grad_norm)):
        raise InputError("max_grad_norm must be positive")
    q = min(1.0, config.batch_size / n)
    steps = max(1, round(config.epochs / q))
    if config.epsilon is None:
        return {"private": False, "sample_rate": q, "steps": steps, "noise_multiplier": 0.0, "delta": None,
                "epsilon": None}
    if not (config.epsilon > 0 and math.isfinite(config.epsilon)):
        raise InputError("epsilon must be a positive finite number (or None for the non-private baseline)")
    delta = resolve_delta(config.delta, n)
    sigma = accounting.noise_for(config.epsilon, delta, q, steps, config.accountant)
    return {"private": True, "sample_rate": q, "steps": steps, "noise_multiplier": sigma, "delta": delta,
            "epsilon": config.epsilon}


def epsilon_history(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str,
                    epochs: int) -> list[dict[str, float]]:
    """The accountant's epsilon after each epoch of a run: [{epoch, steps, epsilon}]."""
    history = []
    for e in range(1, epochs + 1):
        s = round(steps * e / epochs)
        history.append({"epoch": e, "steps": s,
                        "epsilon": accounting.epsilon_for(noise_multiplier, sample_rate, s, delta, accountant)})
    return history


def fit(data: EncodedData, y: npt.ArrayLike, config: TrainConfig | None = None,
        on_step: Callable[[int, int], None] | None = None, history: bool = False,
        rows: npt.NDArray[np.int64] | None = None) -> FitResult:
    """Train a propensity model on encoded data at the config's (epsilon, delta).

    on_step(done, total) is called after every DP-SGD step (for progress displays).
    history: compute the epsilon history (one accountant evaluation per epoch) in a forked child
    while training runs here on one core, for a caller that will publish it (the model card).
    rows: train on these sorted positions of `data` / `y` only (None = all): n is their number, and
    the arrays (memory-mapped over a whole table, say) are read only where a step samples them.
    """
    import torch

    from privmodel.dp.dpsgd import train_dp
    from privmodel.dp.networks import build_model

    n = len(data) if rows is None else len(rows)
    config = (config or TrainConfig()).resolved(n)
    if rows is None:
        labels = check_labels(y, n)
    else:
        labels = np.asarray(y, dtype=np.float32).ravel()
        if labels.shape[0] != len(data) or (n and not (int(rows.min()) >= 0 and int(rows.max()) < len(data))):
            raise InputError(f"train: {len(data)} feature rows, {labels.shape[0]} labels and row positions "
                             "outside them")
        check_labels(labels[rows], n)  # the training rows: binary, both classes
    _check_features(data)
    p = plan(n, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.x_num.shape[1], data.cat_cardinalities, config.hidden)
    noise = secure_noise.source(config.insecure_seed)
    # the history depends only on (sigma, q, steps, delta): known before training starts
    pending = (Pending(epsilon_history, p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"],
                       config.accountant, config.epochs) if history and p["private"] else None)
    stats = train_dp(
        model, data, labels,
        noise_multiplier=p["noise_multiplier"],
        sample_rate=p["sample_rate"],
        steps=p["steps"],
        max_grad_norm=config.max_grad_norm if p["private"] else None,
        clipping=config.clipping,
        lr=DEFAULTS.lr_for(config.model) if config.lr is None else config.lr,  # resolved above
        noise=noise,
        optimizer=config.optimizer,
        physical_batch_size=config.physical_batch_size,
        average_from=config.average_from,
        on_step=None if on_step is None else lambda step, _model: on_step(step + 1, int(p["steps"])),
        rows=rows,
    )
    privacy: dict[str, Any] = {
        "private": p["private"],
        "epsilon": None,
        "target_epsilon": config.epsilon,
        "delta": p["delta"],
        "delta_rule": None,
        "noise_multiplier": p["noise_multiplier"],
        "sample_rate": p["sample_rate"],
        "expected_batch_size": p["sample_rate"] * n,
        "steps": p["steps"],
        "empty_steps": stats.empty_steps,
        "epochs": config.epochs,
        "n": n,
        "accountant": config.accountant if p["private"] else None,
        "clipping": config.clipping if p["private"] else "none",
        "max_grad_norm": config.max_grad_norm if p["private"] else None,
        "sampling": "Poisson (Bernoulli mask per step)",
        "composition": "accountant over all Poisson-sampled steps, empty steps included",
        "noise": noise.kind,
    }
    if p["private"]:
        privacy["epsilon"] = accounting.epsilon_for(
            p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"], config.accountant
        )
        privacy["delta_rule"] = "given" if config.delta is not None else DELTA_RULE
    return FitResult(model=model, privacy=privacy, config=config, stats=stats.as_dict(), _history=pending)


def fit_round(model: Module, data: EncodedData, y: npt.ArrayLike, config: TrainConfig, *, steps: int, run_steps: int, done_steps: int = 0,
              noise_multiplier: float | None = None, before_training: Callable[[dict[str, Any]], None] | None = None,
              on_step: Callable[[int, Any], None] | None = None) -> FitResult:
    """One round of a multi-round DP-SGD run, on `model` in place (a federated partner's local round).

    Why a round and not `fit`: a partner trains the global model it received for `steps` steps, and
    its run's noise multiplier is calibrated once for all `run_steps` of the run (pass it back as
    `noise_multiplier` on later rounds). privacy["epsilon"] is the accountant's figure for the run's
    first done_steps + steps steps. `before_training(privacy)` runs before any row is touched: the
    partner charges its budget there and refuses the round by raising.
    """
    from privmodel.dp.dpsgd import train_dp

    n = len(data)
    config = config.resolved(n)  # batch_size / lr None = the privmodel.core.defaults rules
    assert config.batch_size is not None
    labels = check_labels(y, n)
    _check_features(data)
    q = min(1.0, config.batch_size / n)
    sigma, delta, epsilon = 0.0, None, None
    if config.epsilon is not None:  # config.private
        if not (config.epsilon > 0 and math.isfinite(config.epsilon)):
            raise InputError("epsilon must be a positive finite number (or None for the non-private baseline)")
        delta = resolve_delta(config.delta, n)
        sigma = noise_multiplier or accounting.noise_for(config.epsilon, delta, q, run_steps, config.accountant)
        epsilon = accounting.epsilon_for(sigma, q, done_steps + steps, delta, config.accountant)
    privacy: dict[str, Any] = {
        "private": config.private, "epsilon": epsilon, "target_epsilon": config.epsilon, "delta": delta,
        "noise_multiplier": sigma, "sample_rate": q, "steps": steps, "run_steps": run_steps,
        "steps_done": done_steps + steps, "n": n, "accountant": config.accountant if config.private else None,
        "max_grad_norm": config.max_grad_norm if config.private else None,
        "noise": secure_noise.INSECURE if config.insecure_seed is not None else secure_noise.SECURE,
    }
    if before_training is not None:
        before_training(privacy)
    stats = train_dp(
        model, data, labels, noise_multiplier=sigma, sample_rate=q, steps=steps,
        noise=secure_noise.source(config.insecure_seed),
        max_grad_norm=config.max_grad_norm if config.private else None, clipping=config.clipping,
        lr=config.lr if config.lr is not None else DEFAULT_LR[config.model], optimizer=config.optimizer,
        physical_batch_size=config.physical_batch_size, average_from=config.average_from, on_step=on_step,
    )
    return FitResult(model=model, privacy=privacy, config=config, stats=stats.as_dict())
