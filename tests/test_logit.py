"""`anonymize.logit` fits the model scikit-learn's LogisticRegression fits, without scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from anonymize.logit import fit_predict, roc_auc, stratified_split


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "income": rng.lognormal(10, 1, n),
        "tenure": rng.integers(0, 480, n).astype(float),
        "flat": np.full(n, 3.0),  # zero variance: scaled by 1, as StandardScaler does
        "zip": rng.choice([f"{z:03d}**" for z in range(120)], n),
        "gender": rng.choice(["F", "M", "X"], n, p=[0.49, 0.49, 0.02]),
    })
    z = 0.8 * (np.log(frame["income"]) - 10) - 0.004 * frame["tenure"] + (frame["gender"] == "F") * 0.5
    z += frame["zip"].str[:3].astype(int) % 7 * 0.2 - 0.5
    return frame, (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)


def test_probabilities_and_auc_agree_with_scikit_learn() -> None:
    frame, y = _data(6_000, 1)
    train, test = stratified_split(y, 0.3, 0)
    ours = fit_predict(frame.iloc[train], y[train], frame.iloc[test])
    prep = ColumnTransformer([("num", StandardScaler(), ["income", "tenure", "flat"]),
                              ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=1), ["zip", "gender"])])
    model = make_pipeline(prep, LogisticRegression(max_iter=500, tol=1e-8)).fit(frame.iloc[train], y[train])
    theirs = model.predict_proba(frame.iloc[test])[:, 1]
    assert np.max(np.abs(ours - theirs)) < 1e-4
    assert abs(roc_auc(y[test], ours) - roc_auc_score(y[test], theirs)) < 1e-5
    assert 0.6 < roc_auc(y[test], ours) < 0.9


def test_unseen_category_scores_like_an_all_zero_one_hot_row() -> None:
    frame, y = _data(2_000, 2)
    test = frame.iloc[:5].copy()
    test["zip"] = "never-seen"
    other = test.copy()
    other["zip"] = "also-unseen"
    assert np.allclose(fit_predict(frame, y, test), fit_predict(frame, y, other))


def test_auc_counts_ties_as_half_like_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    score = rng.integers(0, 5, 500).astype(float)  # many ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0


def test_stratified_split_keeps_each_class_share_and_is_seeded() -> None:
    y = np.array([1] * 100 + [0] * 900)
    train, test = stratified_split(y, 0.3, 7)
    assert len(test) == 300 and y[test].sum() == 30 and len(np.intersect1d(train, test)) == 0
    assert np.array_equal(stratified_split(y, 0.3, 7)[1], test)
    assert not np.array_equal(stratified_split(y, 0.3, 8)[1], test)


def test_a_release_with_its_utility_check_imports_neither_scikit_learn_nor_torch() -> None:
    code = ("import sys; from anonymize.pipeline import run; from anonymize.policy.schema import load_policy; "
            "from tests.test_anonymize_pipeline import crafted; from tests.test_cli_anonymize import POLICY; "
            "release = run(crafted(), load_policy(POLICY), bytes(32)); assert release.report['model_utility']; "
            "print(sorted(m for m in ('sklearn', 'torch', 'opacus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
