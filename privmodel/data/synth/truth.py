"""The documented ground truth behind the labels, and the best AUC any model can reach.

Labels are Bernoulli draws from known logistic models (see docs/synth.md for the formulas):

churn:  logit = CHURN_INTERCEPT (-2.2) + silo churn_offset
          + 0.8 * a^2                            a = (age - 45) / 15   (U-shape: young and old leave)
          + 1.8 * exp(-tenure_months / 6)                              (first-months churn)
          + 2.0 * [complaints_12m >= 2]                                (threshold)
          + (0.3 + 1.3 * [channel == app]) * (log1p(recency_days) - 2.5)   (channel x recency)
          - 0.45 * (num_products - 2)
will_purchase: logit = PURCHASE_INTERCEPT (-1.5) + silo purchase_offset
          + 1.1 * l - 0.4 * a + 0.6 * l * a                 l = log(max(annual_income, 1000) / 50,000)
          + 1.6 * [channel == web] * exp(-recency_days / 10)
          + 0.5 * [num_products == 1] - 0.6 * [complaints_12m >= 1]

A linear model on the raw columns cannot express the square, the exponentials, the threshold or
the products, so it stays measurably below the Bayes AUC while a small MLP or boosted trees get
close. `bayes_auc(p)` is the AUC the true probabilities themselves achieve in expectation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

CHURN_INTERCEPT = -2.2
PURCHASE_INTERCEPT = -1.5
_LOG1P_RECENCY_CENTER = 2.5


class Columns(Protocol):
    """Anything indexed by column name: a dict of arrays or a pandas DataFrame (which is no Mapping)."""

    def __getitem__(self, name: str, /) -> Any: ...


def _col(frame: Columns, name: str) -> np.ndarray:
    return np.asarray(frame[name])


def _channel_is(frame: Columns, value: str, code: int) -> np.ndarray:
    ch = np.asarray(frame["channel"])
    return ch == code if ch.dtype.kind in "iub" else ch == value


def churn_logit(frame: Columns, offsets: Sequence[float] | None = None) -> np.ndarray:
    """Churn log-odds per row; `frame` maps column names to arrays (a DataFrame works)."""
    age = _col(frame, "age").astype(float)
    tenure = _col(frame, "tenure_months").astype(float)
    recency = _col(frame, "recency_days").astype(float)
    complaints = _col(frame, "complaints_12m").astype(float)
    products = _col(frame, "num_products").astype(float)
    a = (age - 45.0) / 15.0
    app = _channel_is(frame, "app", 1)
    z = (
        CHURN_INTERCEPT
        + 0.8 * a**2
        + 1.8 * np.exp(-tenure / 6.0)
        + 2.0 * (complaints >= 2)
        + (0.3 + 1.3 * app) * (np.log1p(recency) - _LOG1P_RECENCY_CENTER)
        - 0.45 * (products - 2.0)
    )
    return z + _silo_offset(frame, offsets)


def purchase_logit(frame: Columns, offsets: Sequence[float] | None = None) -> np.ndarray:
    """will_purchase log-odds per row."""
    age = _col(frame, "age").astype(float)
    income = np.maximum(_col(frame, "annual_income").astype(float), 1000.0)
    recency = _col(frame, "recency_days").astype(float)
    complaints = _col(frame, "complaints_12m").astype(float)
    products = _col(frame, "num_products").astype(float)
    a = (age - 45.0) / 15.0
    li = np.log(income / 50_000.0)
    web = _channel_is(frame, "web", 2)
    z = (
        PURCHASE_INTERCEPT
        + 1.1 * li
        - 0.4 * a
        + 0.6 * li * a
        + 1.6 * web * np.exp(-recency / 10.0)
        + 0.5 * (products == 1)
        - 0.6 * (complaints >= 1)
    )
    return z + _silo_offset(frame, offsets)


def _silo_offset(frame: Columns, offsets: Sequence[float] | None) -> np.ndarray | float:
    if offsets is None:
        return 0.0
    return np.asarray(offsets, dtype=float)[_col(frame, "silo").astype(np.int64)]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def bayes_auc(p: np.ndarray, y: np.ndarray | None = None) -> float:
    """AUC of the true probabilities: expected over label draws (y None) or realised on labels y.

    Expected AUC = E[concordant positive/negative pairs] / E[positive/negative pairs] when each
    label is Bernoulli(p_i); no scorer does better on average, which makes it the ceiling a
    model's test AUC is compared with.
    """
    p = np.asarray(p, dtype=float)
    if y is not None:
        return _auc(p, np.asarray(y).astype(bool))
    order = np.argsort(p, kind="stable")
    ps = p[order]
    neg = 1.0 - ps
    # negatives ranked strictly below each value, ties counted half (exclude the row itself)
    uniq, start, counts = np.unique(ps, return_index=True, return_counts=True)
    neg_cum = np.concatenate([[0.0], np.cumsum(neg)])
    below = neg_cum[start]  # sum of (1 - p_j) over p_j < value
    tie = neg_cum[start + counts] - below
    idx = np.repeat(np.arange(len(uniq)), counts)
    num = np.sum(ps * (below[idx] + 0.5 * (tie[idx] - neg)))
    den = ps.sum() * neg.sum() - np.sum(ps * neg)
    return float(num / den) if den > 0 else float("nan")


class AucBins:
    """`bayes_auc(p)` gathered chunk by chunk in fixed memory: p is binned (2**20 equal bins), pairs
    within a bin count as ties, which moves the result by about 1e-5 at most."""

    BINS = 2**20

    def __init__(self) -> None:
        self.pos = np.zeros(self.BINS)  # sum of p per bin
        self.neg = np.zeros(self.BINS)  # sum of 1 - p per bin
        self.self_pairs = 0.0  # sum of p (1 - p): a row is no pair with itself

    def add(self, p: np.ndarray) -> None:
        p = np.asarray(p, dtype=float)
        idx = np.minimum((p * self.BINS).astype(np.int64), self.BINS - 1)
        self.pos += np.bincount(idx, weights=p, minlength=self.BINS)
        self.neg += np.bincount(idx, weights=1.0 - p, minlength=self.BINS)
        self.self_pairs += float(np.sum(p * (1.0 - p)))

    def value(self) -> float:
        below = np.cumsum(self.neg) - self.neg  # negatives in lower bins
        num = float(np.sum(self.pos * (below + 0.5 * self.neg))) - 0.5 * self.self_pairs
        den = float(self.pos.sum() * self.neg.sum()) - self.self_pairs
        return num / den if den > 0 else float("nan")


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """Rank (Mann-Whitney) AUC with average ranks for ties; numpy only."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    s = score[order]
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    avg_rank = start + (counts + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg_rank, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
