"""`DPPropensityClassifier`: the scikit-learn face of DP training.

Contract (scikit-learn's, checked by its own `check_estimator` in tests/test_estimator_contract.py):
`__init__` stores its arguments unchanged; `fit` validates them and sets the learned attributes, all
ending in `_`; NotFittedError before fit; NaN / inf / sparse / complex / multiclass input refused with
a ValueError (InputError is one); `__sklearn_tags__` says binary-only, no NaN, no sparse, and -- in DP
mode -- non-deterministic (the DP noise is secret, so two fits never agree); `get_params` /
`set_params` / `clone` come from BaseEstimator; it works as the last step of a `Pipeline`.

Defaults (epochs, batch size rule, lr per model, clip, delta rule, accountant): privmodel.core.defaults,
the same ones the CLI, the workflows and federated partners use.

Preprocessing in DP mode never looks at the data unless told to spend privacy on it:
* `bounds` (public): {column: (lo, hi)} for a DataFrame, or a list of (lo, hi) per column, or one
  (lo, hi) for every column of an ndarray; `categories` (public): {column: [values]};
  `transforms` (public): {column: "log1p"} for skewed non-negative numeric columns, applied to the
  values and the bounds before scaling (spreads them over [0, 1] so DP noise drowns less).
* `dp_stats_share` in (0, 1): that share of epsilon (and of delta, for categories) buys DP
  statistics for the columns without public metadata (`TabularEncoder.fit_dp`); the rest trains.
  The total reported in `epsilon_spent_` / `delta_` is the sum (basic composition).
* `policy` (a loaded policy or the path of a policy file) instead of the three above: the public
  bounds, categories, booleans and transforms the policy declares for X's columns, exactly as
  `privmodel train` encodes them.
Without any of these, a column with no public metadata is an InputError naming it. In the
non-private mode (`epsilon=None`) there is no guarantee to protect, so columns without metadata get
their range / categories from the data.

Consent and budget (issue 10): with `policy=`, X (a DataFrame) goes through the policy's consent rule
(`privmodel.workflows.rows.consenting`, the rule every path uses) and y is filtered the same way;
`consent_removed_` counts the rows removed. A DP fit with a policy that declares a budget cap charges
(epsilon, delta) to the dataset's budget in the organisation's store (`keys`, None = the default
keys dir) BEFORE touching the rows, and is refused with BudgetExceeded past the cap. Without a
policy nothing is charged: the caller owns the accounting.

`score` is ROC-AUC (not accuracy as in ClassifierMixin): a propensity model ranks customers, and
accuracy at 0.5 says little when churners are 10-30 % of rows.

`warnings_`: `privmodel.dp.training.quality_warnings` measured on the rows given to fit: the private model
ranks no better than a constant, or (MLP) is much worse than a DP logistic model trained at the same
epsilon on the same rows (a reference fit whose model is discarded). They are computed WITHOUT DP, for
the caller who holds X: they are not part of the model's guarantee; do not publish them with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from anonymize.errors import InputError
from privmodel.core.defaults import DEFAULTS
from privmodel.data.features import TabularEncoder

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy


class EstimatorInputError(InputError):
    """Bad input to the estimator. InputError is already a ValueError (what scikit-learn expects);
    this names the estimator as the source."""


class DPPropensityClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """Binary propensity classifier trained with DP-SGD at (epsilon, delta); epsilon=None = non-private."""

    def __init__(
        self,
        model: str = DEFAULTS.model,
        epsilon: float | None = DEFAULTS.epsilon,
        delta: float | None = None,
        epochs: int = DEFAULTS.epochs,
        batch_size: int | None = DEFAULTS.batch_size,
        lr: float | None = None,
        max_grad_norm: float = DEFAULTS.clip,
        clipping: str = DEFAULTS.clipping,
        accountant: str = DEFAULTS.accountant,
        hidden: Sequence[int] = DEFAULTS.hidden,
        seed: int = DEFAULTS.seed,
        bounds: Any = None,
        categories: Mapping[str, Sequence[Any]] | None = None,
        booleans: Sequence[str] = (),
        dp_stats_share: float = 0.0,
        transforms: Mapping[str, str] | None = None,
        policy: Any = None,
        keys: str | os.PathLike[str] | None = None,
        insecure_seed: int | None = None,
    ) -> None:
        self.model = model
        self.epsilon = epsilon
        self.delta = delta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.clipping = clipping
        self.accountant = accountant
        self.hidden = hidden
        self.seed = seed
        self.bounds = bounds
        self.categories = categories
        self.booleans = booleans
        self.dp_stats_share = dp_stats_share
        self.transforms = transforms
        self.policy = policy
        self.keys = keys  # the organisation's keys dir (its budget store); None = the default
        self.insecure_seed = insecure_seed  # TEST ONLY: reproducible DP noise -> NOT differentially private

    # ------------------------------------------------------------------ tags
    def __sklearn_tags__(self) -> Any:
        """Binary only; dense, finite input; in DP mode non-deterministic (the noise is secret by design)."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        tags.non_deterministic = self.epsilon is not None
        return tags

    # ------------------------------------------------------------------ input
    def _frame(self, X: Any, fitting: bool) -> pd.DataFrame:
        """X as a DataFrame with str column names, validated the scikit-learn way (feature count and
        names; for arrays also dtype, finiteness, no sparse input)."""
        import pandas as pd
        from sklearn.utils.validation import validate_data

        if isinstance(X, pd.DataFrame):
            validate_data(self, X, reset=fitting, skip_check_array=True)
            frame = X.copy()
        else:
            arr = validate_data(self, X, reset=fitting, accept_sparse=False, dtype="numeric",
                                ensure_all_finite=True)
            names = self._array_names(arr.shape[1])
            frame = pd.DataFrame(arr, columns=names)
        frame.columns = [str(c) for c in frame.columns]
        return frame

    def _array_names(self, width: int) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        if names is not None and len(names) == width:
            return [str(c) for c in names]
        return [f"x{j}" for j in range(width)]

    def _labels(self, y: Any, n: int) -> np.ndarray:
        """y as a 1-D array of exactly two classes, sets classes_; ValueError naming what is wrong."""
        from sklearn.utils.multiclass import type_of_target
        from sklearn.utils.validation import column_or_1d

        if y is None:
            raise EstimatorInputError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y_arr = column_or_1d(y, warn=True)
        if y_arr.shape[0] != n:
            raise EstimatorInputError(f"X has {n} rows but y has {y_arr.shape[0]}")
        if y_arr.dtype.kind == "f" and np.isnan(y_arr).any():
            raise EstimatorInputError(f"label, row {int(np.flatnonzero(np.isnan(y_arr))[0]) + 1}: missing label")
        if y_arr.dtype.kind == "O" and any(v is None or (isinstance(v, float) and v != v) for v in y_arr):
            raise EstimatorInputError("label: missing label")
        kind = type_of_target(y_arr, input_name="y")
        if kind in ("continuous", "continuous-multioutput", "multilabel-indicator", "multiclass-multioutput",
                    "unknown"):
            raise EstimatorInputError(f"Unknown label type: {kind}; a propensity model needs two classes")
        if kind == "multiclass":
            raise EstimatorInputError("Only binary classification is supported. The type of the target is multiclass.")
        classes = np.unique(y_arr)
        if classes.size != 2:
            raise EstimatorInputError(f"label has {classes.size} class and {n} sample(s); "
                                      "a propensity model needs two classes")
        self.classes_ = classes
        return y_arr

    def _loaded_policy(self) -> Policy | None:
        from anonymize.policy.schema import load_policy

        if self.policy is None:
            return None
        return self.policy if hasattr(self.policy, "columns") else load_policy(self.policy)

    def _consenting(self, X: Any, y_arr: np.ndarray, policy: Policy | None) -> tuple[Any, np.ndarray]:
        """With a policy: only the rows the policy's consent rule keeps (the one rule of every path)."""
        import pandas as pd

        from privmodel.workflows.rows import consenting

        self.consent_removed_ = 0
        if policy is None or policy.purpose.consent is None:
            return X, y_arr
        if not isinstance(X, pd.DataFrame):
            raise EstimatorInputError(f"X must be a DataFrame with the consent column {policy.purpose.consent} "
                                      "when the policy requires consent")
        kept, positions, removed = consenting(X, policy, "X")
        self.consent_removed_ = int(sum(removed.values()))
        return kept, y_arr[positions]

    def _public_bounds(self, columns: list[str]) -> dict[str, tuple[float, float]]:
        b = self.bounds
        if b is None:
            return {}
        if isinstance(b, Mapping):
            return {str(k): (float(v[0]), float(v[1])) for k, v in b.items()}
        arr = np.asarray(b, dtype=np.float64)
        if arr.shape == (2,):
            return {c: (float(arr[0]), float(arr[1])) for c in columns}
        if arr.shape == (len(columns), 2):
            return {c: (float(lo), float(hi)) for c, (lo, hi) in zip(columns, arr, strict=True)}
        raise EstimatorInputError("bounds must be a mapping, one (lo, hi) pair, or one pair per column")

    def _policy_encoder(self, policy: Policy, columns: list[str]) -> TabularEncoder:
        """The encoder `privmodel train` builds from the policy, for exactly X's columns."""
        if self.bounds is not None or self.categories or self.transforms or self.booleans or self.dp_stats_share:
            raise EstimatorInputError(
                "give either policy= or bounds= / categories= / booleans= / transforms= / dp_stats_share=")
        labels = [n for n, c in policy.columns.items() if getattr(c, "role", None) == "label"]
        return TabularEncoder.from_policy(policy, label=labels[0] if len(labels) == 1 else "", columns=columns)

    def _encoder(self, frame: pd.DataFrame, policy: Policy | None, eps_stats: float,
                 delta_stats: float) -> TabularEncoder:
        import pandas as pd

        columns = list(frame.columns)
        if policy is not None:
            return self._policy_encoder(policy, columns)
        bounds = self._public_bounds(columns)
        categories = {str(k): list(v) for k, v in (self.categories or {}).items()}
        booleans = [str(c) for c in self.booleans]
        transforms = {str(k): str(v) for k, v in (self.transforms or {}).items()}
        unknown = [c for c in (*bounds, *categories, *booleans, *transforms) if c not in columns]
        if unknown:
            raise EstimatorInputError(f"column {unknown[0]!r} has public metadata but is not in X")
        numeric, categorical = [], []
        for c in columns:
            if c in booleans:
                continue
            if c in categories:
                categorical.append(c)
            elif c in bounds or pd.api.types.is_numeric_dtype(frame[c].dtype):
                numeric.append(c)
            else:
                categorical.append(c)
        missing = [c for c in numeric if c not in bounds] + [c for c in categorical if c not in categories]
        if missing and self.epsilon is None:
            # non-private: no guarantee to protect, so the data's own range and values are harmless
            bounds, categories = _learned(frame, numeric, categorical, bounds, categories)
        elif missing and eps_stats <= 0:
            raise EstimatorInputError(
                f"column {missing[0]!r}: no public bounds/categories; pass bounds=/categories= "
                "or a dp_stats_share of epsilon for DP statistics"
            )
        if missing and self.epsilon is not None:
            enc = TabularEncoder.fit_dp(frame, numeric, categorical, epsilon=eps_stats, delta=delta_stats,
                                        bounds=bounds, categories=categories, insecure_seed=self.insecure_seed,
                                        transforms=transforms)
        else:
            enc = TabularEncoder.from_public(bounds={c: bounds[c] for c in numeric},
                                             categories={c: categories[c] for c in categorical},
                                             transforms=transforms)
        if booleans:
            enc = TabularEncoder([*enc.numeric, *TabularEncoder.from_public(booleans=booleans).numeric],
                                 enc.categorical, None, enc.skipped, enc.dp_stats)
        return enc

    def _check_params(self, n: int) -> tuple[bool, float | None]:
        """(private, total delta) after validating the privacy parameters."""
        from privmodel.dp.training import resolve_delta

        share = float(self.dp_stats_share)
        if not 0.0 <= share < 1.0:
            raise EstimatorInputError("dp_stats_share must be in [0, 1)")
        private = self.epsilon is not None
        if self.epsilon is not None and not (float(self.epsilon) > 0 and np.isfinite(float(self.epsilon))):
            raise EstimatorInputError(
                "epsilon must be a positive finite number (or None for the non-private baseline)")
        return private, resolve_delta(self.delta, n) if private else None

    def _charge(self, policy: Policy | None, X: pd.DataFrame, total_delta: float) -> dict[str, Any] | None:
        """Charge the whole (epsilon, delta) of this fit to the dataset's budget before any row is used."""
        from privmodel.dp import budget

        if policy is None or policy.budget is None or self.epsilon is None:
            return None
        keys = self.keys
        dataset = budget.dataset_of_frame(policy, X, keys)
        record = budget.charge(dataset, float(self.epsilon), total_delta, budget.Cap.of(policy.budget), keys=keys,
                               ledger=None, params={"command": "estimator.fit", "target_epsilon": float(self.epsilon),
                                                    "model": str(self.model)})
        return record.as_dict()

    # ------------------------------------------------------------------ sklearn API
    def fit(self, X: Any, y: Any) -> DPPropensityClassifier:
        """Train at (epsilon, delta). With a policy: consent filter, then (DP, budget cap) the budget charge."""
        from privmodel.dp.training import TrainConfig, fit

        frame = self._frame(X, fitting=True)
        y_arr = self._labels(y, len(frame))
        policy = self._loaded_policy()
        given = frame  # the dataset as handed over: its identity for the budget
        frame, y_arr = self._consenting(frame, y_arr, policy)
        if np.unique(y_arr).size != 2:
            raise EstimatorInputError("label has 1 class after the consent filter; a propensity model needs two classes")
        y01 = (y_arr == self.classes_[1]).astype(np.float32)
        n = len(frame)
        private, total_delta = self._check_params(n)
        share = float(self.dp_stats_share)
        epsilon = None if self.epsilon is None else float(self.epsilon)
        eps_stats = share * epsilon if epsilon is not None else 0.0
        delta_stats = share * total_delta if private and total_delta is not None else 0.0
        # with a policy the encoder is public metadata only (never DP statistics): built before the
        # charge so that a wrong column refuses without spending; DP statistics need no policy (no charge)
        self.encoder_ = self._encoder(frame, policy, eps_stats, delta_stats)
        self.budget_charge_ = self._charge(policy, given, total_delta) if private and total_delta is not None else None
        stats = self.encoder_.dp_stats or {}
        used_eps, used_delta = float(stats.get("epsilon", 0.0)), float(stats.get("delta", 0.0))
        config = TrainConfig(
            model=self.model,  # type: ignore[arg-type]
            epsilon=None if epsilon is None else epsilon - used_eps,
            delta=None if total_delta is None else total_delta - used_delta,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_grad_norm=self.max_grad_norm,
            clipping=self.clipping, accountant=self.accountant, seed=self.seed,  # type: ignore[arg-type]
            hidden=tuple(self.hidden),
            # non-private: nothing to protect, so the sampling is reproducible from seed (fit idempotent)
            insecure_seed=self.insecure_seed if private or self.insecure_seed is not None else self.seed,
        )
        encoded = self.encoder_.transform(frame)
        result = fit(encoded, y01, config)
        self.model_ = result.model
        self.fit_result_ = result
        privacy = dict(result.privacy)
        privacy["epsilon_preprocessing"] = used_eps
        privacy["delta_preprocessing"] = used_delta
        self.privacy_ = privacy
        self.noise_multiplier_ = float(privacy["noise_multiplier"])
        if private:
            self.epsilon_spent_ = float(privacy["epsilon"]) + used_eps
            self.delta_ = float(privacy["delta"]) + used_delta
        else:
            self.epsilon_spent_ = float("inf")
            self.delta_ = 1.0
        result.warnings = self._quality(result, encoded, y01, config)
        self.warnings_ = list(result.warnings)
        return self

    def _quality(self, result: Any, encoded: Any, y01: np.ndarray, config: Any) -> list[str]:
        """quality_warnings on the fit rows; an MLP is compared with a DP logistic model at the same epsilon."""
        from sklearn.metrics import roc_auc_score

        from privmodel.dp.training import fit, quality_warnings

        if not result.privacy["private"]:
            return []
        auc = float(roc_auc_score(y01, result.predict_proba(encoded)))
        logistic = None
        if self.model != "logreg":
            reference = fit(encoded, y01, config.model_copy(update={"model": "logreg", "lr": None}))
            logistic = float(roc_auc_score(y01, reference.predict_proba(encoded)))
        return quality_warnings(str(self.model), auc, logistic)

    def _check_fitted(self) -> None:
        from sklearn.exceptions import NotFittedError

        if not hasattr(self, "model_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet; call fit first")

    def _encoded(self, X: Any) -> Any:
        self._check_fitted()
        return self.encoder_.transform(self._frame(X, fitting=False))

    def predict_proba(self, X: Any) -> np.ndarray:
        """[n, 2] probabilities for classes_[0], classes_[1]."""
        from privmodel.dp.dpsgd import predict_logits

        encoded = self._encoded(X)  # NotFittedError first
        logits = predict_logits(self.model_, encoded).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X: Any) -> np.ndarray:
        """Logit of P(classes_[1]) (positive = classes_[1])."""
        from privmodel.dp.dpsgd import predict_logits

        encoded = self._encoded(X)  # NotFittedError first
        return predict_logits(self.model_, encoded).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        decision = self.decision_function(X)  # NotFittedError first
        return self.classes_[(decision > 0).astype(int)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """ROC-AUC of P(classes_[1]) against y (see the module docstring for why not accuracy)."""
        from sklearn.metrics import roc_auc_score

        y_arr = np.asarray(y).ravel()
        return float(roc_auc_score(y_arr == self.classes_[1], self.predict_proba(X)[:, 1], sample_weight=sample_weight))


def _learned(frame: pd.DataFrame, numeric: list[str], categorical: list[str], bounds: dict[str, tuple[float, float]],
             categories: dict[str, list[Any]]) -> tuple[dict[str, tuple[float, float]], dict[str, list[Any]]]:
    """Non-private mode only: the data's own min/max and values for columns without public metadata."""
    bounds, categories = dict(bounds), dict(categories)
    for c in numeric:
        if c not in bounds:
            values = frame[c].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            bounds[c] = (lo, hi if hi > lo else lo + 1.0)
    for c in categorical:
        if c not in categories:
            categories[c] = sorted({str(v) for v in frame[c].dropna()})
    return bounds, categories
