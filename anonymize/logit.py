"""The release utility check's model: L2 logistic regression on standardized numbers and one-hot
categories, by NumPy, SciPy's sparse matrices and its L-BFGS - no scikit-learn in `anonymize`.

Why not scikit-learn: importing it costs `privmodel anonymize` more than the fits themselves
(issue 13). The model is the one scikit-learn's `LogisticRegression()` fits (C = 1, an unpenalized
intercept, the mean log-loss plus ||w||^2 / (2 C n); Newton's method, or L-BFGS for wide designs), on the features its
`StandardScaler` and `OneHotEncoder(handle_unknown="ignore")` give, fitted on the training rows; the
optimum is unique, so the AUC agrees with scikit-learn's to its solver tolerance (tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_ITER = 500  # L-BFGS iterations at most: scikit-learn's max_iter in the check before this module
NEWTON_WIDTH = 2_000  # up to this many model columns the dense Hessian (and Newton's method) is cheap
NEWTON_ITER = 50


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test positions (sorted), each class split in the same proportion by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    test_parts, train_parts = [], []
    for value in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == value))
        cut = int(round(test_size * len(members)))
        test_parts.append(members[:cut])
        train_parts.append(members[cut:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


@dataclass
class _Design:
    """How a frame becomes the model's columns: numbers standardized by the training rows' mean and
    standard deviation (1 where it is 0), other columns one-hot over the training rows' categories."""

    numeric: list[str]
    means: np.ndarray
    scales: np.ndarray
    categories: dict[str, pd.Index]

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> _Design:
        numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
        values = frame[numeric].to_numpy(dtype=np.float64)
        scales = values.std(axis=0) if numeric else np.empty(0)
        scales[scales == 0] = 1.0
        categories = {c: pd.Index(pd.unique(frame[c])) for c in frame.columns if c not in numeric}
        return cls(numeric, values.mean(axis=0) if numeric else np.empty(0), scales, categories)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    def matrix(self, frame: pd.DataFrame) -> object:
        """CSR matrix of the frame's rows; a category unseen in training gives a row of zeros."""
        from scipy import sparse

        n = len(frame)
        dense = (frame[self.numeric].to_numpy(dtype=np.float64) - self.means) / self.scales
        rows, cols = [np.repeat(np.arange(n), len(self.numeric))], [np.tile(np.arange(len(self.numeric)), n)]
        data, offset = [dense.ravel()], len(self.numeric)
        for name, known in self.categories.items():
            codes = known.get_indexer(pd.Index(frame[name]))
            seen = codes >= 0
            rows.append(np.flatnonzero(seen))
            cols.append(codes[seen] + offset)
            data.append(np.ones(int(seen.sum())))
            offset += len(known)
        return sparse.csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(n, self.width))


def _loss_and_gradient(params: np.ndarray, x: object, y: np.ndarray, strength: float) -> tuple[float, np.ndarray]:
    """Mean log-loss + strength/2 ||w||^2 (intercept, the last parameter, unpenalized) and its gradient."""
    weights, intercept = params[:-1], params[-1]
    z = x @ weights + intercept
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * strength * float(weights @ weights)
    residual = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
    gradient = np.append(x.T @ residual + strength * weights, residual.sum())  # type: ignore[attr-defined]
    return loss, gradient


def _newton(x: object, y: np.ndarray, strength: float) -> np.ndarray:
    """The optimum by Newton's method (dense Hessian, halving steps until the loss falls): a few
    iterations where L-BFGS needs hundreds on many rare one-hot columns."""
    from scipy import sparse

    n = len(y)
    full = sparse.hstack([x, np.ones((n, 1))], format="csr")
    penalty = np.full(full.shape[1], strength)
    penalty[-1] = 0.0  # the intercept is not penalized
    params = np.zeros(full.shape[1])
    loss, gradient = _loss_and_gradient(params, x, y, strength)
    for _ in range(NEWTON_ITER):
        p = 1.0 / (1.0 + np.exp(-(full @ params)))
        hessian = (full.T @ full.multiply((p * (1.0 - p) / n)[:, None])).toarray() + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)  # numpy's: scipy.linalg costs more to import than to run
        size = 1.0
        while True:
            trial = params - size * step
            trial_loss, trial_gradient = _loss_and_gradient(trial, x, y, strength)
            if trial_loss <= loss or size < 1e-6:
                break
            size /= 2
        done = loss - trial_loss <= 1e-14 * max(1.0, abs(loss)) or np.max(np.abs(trial_gradient)) < 1e-10
        params, loss, gradient = trial, trial_loss, trial_gradient
        if done:
            break
    return params


def fit_predict(train: pd.DataFrame, y: np.ndarray, test: pd.DataFrame, c: float = 1.0) -> np.ndarray:
    """P(y = 1) on `test` of the L2 logistic regression (inverse strength `c`) fitted on `train`:
    by Newton's method up to NEWTON_WIDTH columns, by L-BFGS (as scikit-learn) beyond."""
    design = _Design.fit(train)
    x = design.matrix(train)
    target = y.astype(np.float64)
    strength = 1.0 / (c * len(y))
    if design.width <= NEWTON_WIDTH:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # one small factorisation: BLAS threads only wait on a busy machine
            params = _newton(x, target, strength)
    else:
        from scipy.optimize import minimize

        params = minimize(_loss_and_gradient, np.zeros(design.width + 1), args=(x, target, strength), jac=True,
                          method="L-BFGS-B", options={"maxiter": MAX_ITER, "gtol": 1e-7, "ftol": 1e-12}).x
    z = design.matrix(test) @ params[:-1] + params[-1]
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (tied scores count one half), labels 0/1."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # mean 1-based rank of each tie group
    positives = int(np.sum(y == 1))
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
