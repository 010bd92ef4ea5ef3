"""`DPPropensityClassifier`: the scikit-learn face of DP training.

Contract (scikit-learn's): `__init__` stores its arguments unchanged; `fit` validates them and
sets the learned attributes, all ending in `_`; `get_params` / `set_params` / `clone` come from
BaseEstimator; it works as the last step of a `Pipeline`.

Preprocessing never looks at the data unless told to spend privacy on it:
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
Without any of these, a column with no public metadata is an InputError naming it.

`score` is ROC-AUC (not accuracy as in ClassifierMixin): a propensity model ranks customers, and
accuracy at 0.5 says little when churners are 10-30 % of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from anonymize.errors import InputError
from privmodel.features import TabularEncoder


class DPPropensityClassifier(ClassifierMixin, BaseEstimator):
    """Binary propensity classifier trained with DP-SGD at (epsilon, delta); epsilon=None = non-private."""

    def __init__(
        self,
        model: str = "logreg",
        epsilon: float | None = 1.0,
        delta: float | None = None,
        epochs: int = 20,
        batch_size: int = 1024,
        lr: float | None = None,
        max_grad_norm: float = 1.0,
        clipping: str = "flat",
        accountant: str = "prv",
        hidden: Sequence[int] = (64, 32),
        seed: int = 0,
        bounds: Any = None,
        categories: Mapping[str, Sequence[Any]] | None = None,
        booleans: Sequence[str] = (),
        dp_stats_share: float = 0.0,
        transforms: Mapping[str, str] | None = None,
        policy: Any = None,
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
        self.insecure_seed = insecure_seed  # TEST ONLY: reproducible DP noise -> NOT differentially private

    # ------------------------------------------------------------------ helpers
    def _frame(self, X: Any, fitting: bool) -> Any:
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            frame = X
        else:
            arr = np.asarray(X)
            if arr.ndim != 2:
                raise InputError("X must be a 2-D array or a DataFrame")
            frame = pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])])
        if fitting:
            self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
            self.n_features_in_ = frame.shape[1]
        elif frame.shape[1] != self.n_features_in_:
            raise InputError(f"X has {frame.shape[1]} columns; the model was fitted on {self.n_features_in_}")
        frame = frame.copy()
        frame.columns = [str(c) for c in frame.columns]
        return frame

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
        raise InputError("bounds must be a mapping, one (lo, hi) pair, or one pair per column")

    def _policy_encoder(self, columns: list[str]) -> TabularEncoder:
        """The encoder `privmodel train` builds from the policy, for exactly X's columns."""
        from anonymize.policy import load_policy

        if self.bounds is not None or self.categories or self.transforms or self.booleans or self.dp_stats_share:
            raise InputError("give either policy= or bounds= / categories= / booleans= / transforms= / dp_stats_share=")
        policy = self.policy
        if not hasattr(policy, "columns"):
            policy = load_policy(policy)
        labels = [n for n, c in policy.columns.items() if getattr(c, "role", None) == "label"]
        return TabularEncoder.from_policy(policy, label=labels[0] if len(labels) == 1 else "", columns=columns)

    def _encoder(self, frame: Any, eps_stats: float, delta_stats: float) -> TabularEncoder:
        import pandas as pd

        columns = list(frame.columns)
        if self.policy is not None:
            return self._policy_encoder(columns)
        bounds = self._public_bounds(columns)
        categories = {str(k): list(v) for k, v in (self.categories or {}).items()}
        booleans = [str(c) for c in self.booleans]
        transforms = {str(k): str(v) for k, v in (self.transforms or {}).items()}
        unknown = [c for c in (*bounds, *categories, *booleans, *transforms) if c not in columns]
        if unknown:
            raise InputError(f"column {unknown[0]!r} has public metadata but is not in X")
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
        if missing and eps_stats <= 0:
            raise InputError(
                f"column {missing[0]!r}: no public bounds/categories; pass bounds=/categories= "
                "or a dp_stats_share of epsilon for DP statistics"
            )
        if missing:
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

    # ------------------------------------------------------------------ sklearn API
    def fit(self, X: Any, y: Any) -> DPPropensityClassifier:
        from privmodel.training import TrainConfig, fit, resolve_delta

        frame = self._frame(X, fitting=True)
        y_arr = np.asarray(y).ravel()
        if y_arr.shape[0] != len(frame):
            raise InputError(f"X has {len(frame)} rows but y has {y_arr.shape[0]}")
        if y_arr.dtype.kind == "f" and np.isnan(y_arr).any():
            raise InputError(f"label, row {int(np.flatnonzero(np.isnan(y_arr))[0]) + 1}: missing label")
        if y_arr.dtype.kind == "O" and any(v is None for v in y_arr):
            raise InputError("label: missing label")
        classes = np.unique(y_arr)
        if classes.size != 2:
            raise InputError(f"label must have exactly two classes (found {classes.size})")
        self.classes_ = classes
        y01 = (y_arr == classes[1]).astype(np.float32)

        share = float(self.dp_stats_share)
        if not 0.0 <= share < 1.0:
            raise InputError("dp_stats_share must be in [0, 1)")
        n = len(frame)
        private = self.epsilon is not None
        if private and not (float(self.epsilon) > 0 and np.isfinite(float(self.epsilon))):
            raise InputError("epsilon must be a positive finite number (or None for the non-private baseline)")
        total_delta = resolve_delta(self.delta, n) if private else None
        if private:
            eps_stats, delta_stats = share * float(self.epsilon), share * total_delta
        else:
            # a non-private baseline still must not peek at raw min/max: spend a nominal epsilon of 1
            eps_stats, delta_stats = (1.0, 1.0 / (10.0 * n)) if share > 0 else (0.0, 0.0)
        self.encoder_ = self._encoder(frame, eps_stats, delta_stats)
        stats = self.encoder_.dp_stats or {}
        used_eps, used_delta = float(stats.get("epsilon", 0.0)), float(stats.get("delta", 0.0))
        config = TrainConfig(
            model=self.model,
            epsilon=None if not private else float(self.epsilon) - used_eps,
            delta=None if not private else total_delta - used_delta,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_grad_norm=self.max_grad_norm,
            clipping=self.clipping, accountant=self.accountant, seed=self.seed, hidden=tuple(self.hidden),
            insecure_seed=self.insecure_seed,
        )
        result = fit(self.encoder_.transform(frame), y01, config)
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
        return self

    def _check_fitted(self) -> None:
        from sklearn.exceptions import NotFittedError

        if not hasattr(self, "model_"):
            raise NotFittedError("DPPropensityClassifier is not fitted yet; call fit first")

    def predict_proba(self, X: Any) -> np.ndarray:
        """[n, 2] probabilities for classes_[0], classes_[1]."""
        from privmodel.dpsgd import predict_proba

        self._check_fitted()
        p = predict_proba(self.model_, self.encoder_.transform(self._frame(X, fitting=False)))
        return np.column_stack([1.0 - p, p])

    def decision_function(self, X: Any) -> np.ndarray:
        from privmodel.dpsgd import predict_logits

        self._check_fitted()
        return predict_logits(self.model_, self.encoder_.transform(self._frame(X, fitting=False))).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """ROC-AUC of P(classes_[1]) against y (see the module docstring for why not accuracy)."""
        from sklearn.metrics import roc_auc_score

        y_arr = np.asarray(y).ravel()
        return float(roc_auc_score(y_arr == self.classes_[1], self.predict_proba(X)[:, 1], sample_weight=sample_weight))
