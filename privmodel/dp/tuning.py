"""Hyper-parameter selection whose privacy cost is counted (basic composition).

Choosing the learning rate or clipping norm by looking at how models trained on the data do is
itself a use of the data: a search that trains T private models and keeps the best one leaks
more than one model (Papernot & Steinke 2022 show the leak is real). We count it plainly:

* the total budget (ε, δ) is split evenly: every trial trains with (ε/T, δ/T) by DP-SGD on the
  training rows;
* every trial is scored on separate validation rows by the SUM of per-row Brier losses (each in
  [0, 1], so adding or removing one row changes the sum by at most 1) plus Laplace noise of scale
  1/(ε/T): an ε/T-DP release of the validation rows (Dwork & Roth 2014, Laplace mechanism);
* training rows and validation rows are disjoint, so one trial is (ε/T, δ/T)-DP for every row
  (parallel composition); T trials are (ε, δ)-DP by basic composition (Dwork & Roth 2014, Thm 3.16);
* keeping the trial with the lowest noisy score is post-processing and costs nothing more.

The whole (ε, δ) is what the budget is charged, and what the model card reports as the selection
cost. Tighter private-selection schemes exist (Liu & Talwar 2019 random stopping, ≈3ε for
pure-DP trials; Papernot & Steinke 2022 for Rényi DP); they are not used here, because DP-SGD
trials are only approximately DP and the simple split is easy to check.

Assumption: the train / validation split is made by a seeded permutation of row positions,
independent of the row contents (the usual convention when accounting for a split).

The Laplace noise on the scores is secret (`privmodel.dp.secure_noise`, fresh OS entropy): the `seed`
of `select` only numbers the trials' weight initialisations. `insecure_seed` makes the score noise
reproducible for tests; the selection is then NOT differentially private and says so
(`card_entry()["noise"]`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from anonymize.errors import InputError
from privmodel.dp import secure_noise

METHOD = "basic_composition"
REFERENCES = [
    "Dwork & Roth 2014, The Algorithmic Foundations of Differential Privacy (Laplace mechanism; Thm 3.16)",
    "Liu & Talwar 2019, Private selection from private candidates",
    "Papernot & Steinke 2022, Hyperparameter tuning with Renyi differential privacy",
]

#: Trainer contract: (hyper-parameters, epsilon, delta, init seed) -> (fit result, predict_proba on rows).
#: The seed is for weight initialisation only; the trainer's DP noise must be its own secret noise.
#: FitT is the trainer's fit (privmodel.dp.training.FitResult in the workflows), RowsT the rows `predict`
#: scores (a DataFrame there); the search itself only reads `fit.privacy["epsilon"]`.
FitT = TypeVar("FitT")
RowsT = TypeVar("RowsT")
Trainer = Callable[[Mapping[str, Any], float, float, int], tuple[FitT, Callable[[RowsT], np.ndarray]]]


@dataclass
class Trial:
    """One candidate: its hyper-parameters, its privacy share and its noisy validation score."""

    params: dict[str, Any]
    epsilon: float
    delta: float
    noisy_brier_sum: float

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "epsilon": self.epsilon, "delta": self.delta,
                "noisy_brier_sum": self.noisy_brier_sum}


@dataclass
class Selection(Generic[FitT, RowsT]):
    """The outcome of a search: the chosen trial's fit and the search's total privacy cost."""

    best_index: int
    best_params: dict[str, Any]
    fit: FitT
    predict: Callable[[RowsT], np.ndarray]
    trials: list[Trial] = field(default_factory=list)
    epsilon: float = 0.0
    delta: float = 0.0
    noise: str = secure_noise.SECURE  # kind of the score noise: "secure" or "INSECURE-reproducible"

    def card_entry(self) -> dict[str, Any]:
        """What the model card records under `hyperparameter_selection`."""
        return {
            "method": METHOD,
            "description": (
                f"{len(self.trials)} candidates, each trained with (ε/{len(self.trials)}, δ/{len(self.trials)}) "
                "and scored on disjoint validation rows by a Laplace-noised Brier sum; the lowest noisy "
                "score wins. Total cost by basic composition = the full (ε, δ)."
            ),
            "trials": len(self.trials),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "selected": self.best_params,
            "candidates": [t.to_dict() for t in self.trials],
            "references": REFERENCES,
            "noise": self.noise,
        }


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of a small grid, in a stable order ({"lr": [...], "clip": [...]})."""
    if not space:
        raise InputError("tuning: the search space is empty")
    names = list(space)
    for name in names:
        if len(space[name]) == 0:
            raise InputError(f"tuning: no values for {name}")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(space[n] for n in names))]


def noisy_brier_sum(y: npt.ArrayLike, p: npt.ArrayLike, epsilon: float, noise: secure_noise.NoiseSource) -> float:
    """Σ (p - y)² over rows plus Laplace(1/ε) from `noise`: ε-DP under adding or removing one row."""
    if not epsilon > 0:
        raise InputError("tuning: each trial needs a positive epsilon")
    y_arr, p_arr = np.asarray(y, float).ravel(), np.asarray(p, float).ravel()
    if y_arr.shape != p_arr.shape:
        raise InputError("tuning: validation labels and scores differ in length")
    loss = np.clip((p_arr - y_arr) ** 2, 0.0, 1.0)  # each row contributes at most 1: sensitivity 1
    return float(loss.sum() + noise.laplace(1.0 / epsilon, 1)[0])


def select(
    candidates: Sequence[Mapping[str, Any]],
    train: Trainer[FitT, RowsT],
    x_val: RowsT,
    y_val: npt.ArrayLike,
    *,
    epsilon: float,
    delta: float,
    seed: int = 0,
    insecure_seed: int | None = None,
) -> Selection[FitT, RowsT]:
    """Train every candidate with (ε/T, δ/T), score it privately, keep the best; cost (ε, δ).

    `train` must train on rows disjoint from (x_val, y_val) and must return a fit whose own
    privacy guarantee is at most the (ε/T, δ/T) it was given. Trial i gets init seed `seed + i`;
    the score noise is secret unless the test-only `insecure_seed` is given.
    """
    if not candidates:
        raise InputError("tuning: no candidates to try")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise InputError("tuning: epsilon must be a positive finite number")
    if not 0.0 < delta < 1.0:
        raise InputError("tuning: delta must be in (0, 1)")
    count = len(candidates)
    eps_each, delta_each = epsilon / count, delta / count
    noise = secure_noise.source(insecure_seed)
    trials: list[Trial] = []
    fits: list[tuple[FitT, Callable[[RowsT], np.ndarray]]] = []
    for index, params in enumerate(candidates):
        fit, predict = train(params, eps_each, delta_each, seed + index)
        spent = _spent_epsilon(fit)
        if spent is not None and spent > eps_each * (1 + 1e-6):
            raise InputError(f"tuning: trial {index + 1} spent ε={spent:.4g} above its share {eps_each:.4g}")
        trials.append(Trial(dict(params), eps_each, delta_each, noisy_brier_sum(y_val, predict(x_val), eps_each, noise)))
        fits.append((fit, predict))
    best = int(np.argmin([t.noisy_brier_sum for t in trials]))
    return Selection(best, dict(candidates[best]), fits[best][0], fits[best][1], trials, epsilon, delta,
                     noise.kind)


def _spent_epsilon(fit: object) -> float | None:
    privacy = getattr(fit, "privacy", None)
    if isinstance(privacy, Mapping) and privacy.get("epsilon") is not None:
        return float(privacy["epsilon"])
    return None
