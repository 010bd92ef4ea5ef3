"""DPPropensityClassifier under the scikit-learn contract, and model save/load round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from anonymize.errors import InputError
from privmodel.artifacts.model_store import load_model, save_model
from privmodel.data.features import TabularEncoder
from privmodel.dp.training import TrainConfig, fit
from privmodel.estimator import DPPropensityClassifier

BOUNDS = {"tenure": (0, 120), "spend": (0, 1000)}
CATS = {"channel": ["app", "web", "branch"]}


def _customers(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "tenure": rng.integers(0, 120, n).astype(float),
        "spend": rng.gamma(2.0, 150.0, n),
        "channel": rng.choice(["app", "web", "branch"], n),
    })
    logit = -0.03 * frame["tenure"] + 0.004 * frame["spend"] + 0.8 * (frame["channel"] == "app") - 0.5
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    return frame, y


FAST = {"epochs": 4, "batch_size": 300, "lr": 0.1, "accountant": "rdp"}


def test_sklearn_contract_pipeline_and_clone() -> None:
    X, y = _customers()
    clf = DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, **FAST)
    assert clf.get_params()["epsilon"] == 1.0 and clf.get_params()["bounds"] is BOUNDS
    pipe = Pipeline([("select", ColumnTransformer([("keep", "passthrough", ["tenure", "spend", "channel"])],
                                                  verbose_feature_names_out=False).set_output(transform="pandas")),
                     ("clf", clf)])
    pipe.fit(X.iloc[:2000], y[:2000])
    fitted = pipe.named_steps["clf"]
    assert list(fitted.classes_) == ["churn", "stay"]
    proba = pipe.predict_proba(X.iloc[2000:])
    assert proba.shape == (1000, 2) and np.allclose(proba.sum(1), 1.0)
    assert set(pipe.predict(X.iloc[2000:])) <= {"churn", "stay"}
    assert pipe.score(X.iloc[2000:], y[2000:]) > 0.7  # ROC-AUC
    assert 0.98 <= fitted.epsilon_spent_ <= 1.0 and fitted.delta_ == pytest.approx(min(1e-6, 1 / 20000))  # privmodel.core.defaults: min(1e-6, 1/(10 n))
    assert fitted.noise_multiplier_ > 0
    twin = clone(pipe)
    assert not hasattr(twin.named_steps["clf"], "model_")
    assert twin.named_steps["clf"].get_params() == clf.get_params()
    twin.set_params(clf__epsilon=2.0)
    assert twin.named_steps["clf"].epsilon == 2.0 and clf.epsilon == 1.0
    scores = cross_val_score(DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, **FAST), X, y, cv=2)
    assert scores.min() > 0.65


def test_same_seed_same_model_only_with_the_insecure_switch() -> None:
    """The seed fixes weight init only; DP noise is secret unless the test-only insecure_seed is set."""
    X, y = _customers(n=1000)
    a = DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, seed=3, insecure_seed=3, **FAST).fit(X, y)
    b = DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, seed=3, insecure_seed=3, **FAST).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.privacy_["noise"] == "INSECURE-reproducible"
    c = DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, seed=3, **FAST).fit(X, y)
    d = DPPropensityClassifier(epsilon=1.0, bounds=BOUNDS, categories=CATS, seed=3, **FAST).fit(X, y)
    assert c.privacy_["noise"] == "secure"
    assert not np.array_equal(c.predict_proba(X), d.predict_proba(X))


def test_ndarray_needs_public_bounds_or_a_dp_share() -> None:
    X, y = _customers(n=2000)
    arr = X[["tenure", "spend"]].to_numpy()
    with pytest.raises(InputError, match="x0"):
        DPPropensityClassifier(**FAST).fit(arr, y)
    clf = DPPropensityClassifier(bounds=[(0, 120), (0, 1000)], **FAST).fit(arr, y)
    assert clf.privacy_["epsilon_preprocessing"] == 0.0
    shared = DPPropensityClassifier(dp_stats_share=0.2, **FAST).fit(arr, y)
    assert shared.privacy_["epsilon_preprocessing"] == pytest.approx(0.2)
    assert shared.epsilon_spent_ <= 1.0 and shared.epsilon_spent_ == pytest.approx(
        shared.privacy_["epsilon"] + 0.2)
    assert {s.source for s in shared.encoder_.numeric} == {"dp"}


@pytest.mark.parametrize(
    ("params", "mutate"),
    [
        ({"epsilon": 0.0}, None),
        ({"epsilon": -2.0}, None),
        ({"delta": 1e-3}, None),  # >= 1/n for n = 1000
        ({}, "single_class"),
        ({}, "three_classes"),
        ({}, "missing_label"),
        ({}, "nan_feature"),
    ],
)
def test_bad_input(params: dict, mutate: str | None) -> None:
    X, y = _customers(n=1000)
    y = y.astype(object)
    if mutate == "single_class":
        y[:] = "stay"
    elif mutate == "three_classes":
        y[3] = "maybe"
    elif mutate == "missing_label":
        y = np.where(y == "churn", 1.0, 0.0)
        y[4] = np.nan
    elif mutate == "nan_feature":
        X.loc[17, "spend"] = np.nan
    clf = DPPropensityClassifier(bounds=BOUNDS, categories=CATS, **{**FAST, **params})
    with pytest.raises(InputError) as err:
        clf.fit(X, y)
    if mutate == "nan_feature":
        assert "column 'spend', row 18" in str(err.value)


def test_transforms_param_reaches_the_encoder() -> None:
    X, y = _customers(n=1500)
    clf = DPPropensityClassifier(bounds=BOUNDS, categories=CATS, transforms={"spend": "log1p"}, **FAST).fit(X, y)
    specs = {s.name: s for s in clf.encoder_.numeric}
    assert specs["spend"].transform == "log1p" and specs["tenure"].transform == "none"
    assert clf.encoder_.transform(X.iloc[:1].assign(spend=[99.0])).x_num[0, 1] == pytest.approx(
        np.log1p(99.0) / np.log1p(1000.0), rel=1e-6)
    assert clone(clf).get_params()["transforms"] == {"spend": "log1p"}
    with pytest.raises(InputError, match="column 'income' has public metadata but is not in X"):
        DPPropensityClassifier(bounds=BOUNDS, categories=CATS, transforms={"income": "log1p"}, **FAST).fit(X, y)


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    X, y = _customers(n=1500)
    enc = TabularEncoder.from_public(BOUNDS, CATS, transforms={"spend": "log1p"})  # saved with the model
    labels = (y == "churn").astype(np.float32)
    for kind in ("logreg", "mlp"):
        result = fit(enc.transform(X), labels, TrainConfig(model=kind, hidden=(8, 4), **FAST))
        target = tmp_path / kind
        save_model(target, result, enc, {"dataset_sha256": "0" * 64})
        loaded = load_model(target)
        np.testing.assert_array_equal(loaded.predict_proba(X), result.predict_proba(enc.transform(X)))
        assert {s.name: s.transform for s in loaded.encoder.numeric}["spend"] == "log1p"
        assert loaded.privacy["epsilon"] == result.privacy["epsilon"]
        assert loaded.extra == {"dataset_sha256": "0" * 64}
        with pytest.raises(InputError, match="already exists"):
            save_model(target, result, enc, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logreg", "mlp"]  # no temp leftovers


def test_load_refuses_altered_weights(tmp_path: Path) -> None:
    X, y = _customers(n=800)
    enc = TabularEncoder.from_public(BOUNDS, CATS)
    result = fit(enc.transform(X), (y == "churn").astype(np.float32), TrainConfig(**FAST))
    save_model(tmp_path / "m", result, enc, {})
    weights = tmp_path / "m" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(InputError, match="altered"):
        load_model(tmp_path / "m")


POLICY_YAML = """
version: 1
name: estimator-test
purpose: {name: churn_modeling, columns: [tenure, spend, channel, churn]}
privacy: {k: 2}
budget: {epsilon: 3.0, delta: 1.0e-6}
columns:
  tenure:  {role: feature, type: float, bounds: [0, 120]}
  spend:   {role: feature, type: float, bounds: [0, 1000], transform: log1p}
  channel: {role: feature, type: categorical, categories: [app, web, branch]}
  churn:   {role: label, type: categorical, categories: [churn, stay]}
"""


def test_policy_param_encodes_like_the_same_metadata_given_by_hand(tmp_path: Path, isolated_budget: Path) -> None:
    X, y = _customers(n=1500)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    # the same test-only reproducible noise for both, so only the encoding could differ
    # a DP fit with a policy charges the policy's budget (a fresh organisation's store here)
    by_policy = DPPropensityClassifier(policy=str(path), insecure_seed=1, **FAST).fit(X, y)
    by_hand = DPPropensityClassifier(bounds=BOUNDS, categories=CATS, transforms={"spend": "log1p"}, insecure_seed=1,
                                     **FAST).fit(X, y)
    np.testing.assert_array_equal(by_policy.predict_proba(X), by_hand.predict_proba(X))
    assert clone(by_policy).get_params()["policy"] == str(path)
    with pytest.raises(InputError, match="give either policy= or bounds="):
        DPPropensityClassifier(policy=str(path), bounds=BOUNDS, **FAST).fit(X, y)
    with pytest.raises(InputError, match="'region' is not declared in the policy"):
        DPPropensityClassifier(policy=str(path), **FAST).fit(X.assign(region="north"), y)


CONSENT_POLICY_YAML = """
version: 1
name: estimator-consent
purpose: {name: churn_modeling, consent: consent_analytics, columns: [tenure, spend, channel, churn]}
privacy: {k: 2}
budget: {epsilon: 1.5, delta: 1.0e-4}
columns:
  tenure:  {role: feature, type: float, bounds: [0, 120]}
  spend:   {role: feature, type: float, bounds: [0, 1000], transform: log1p}
  channel: {role: feature, type: categorical, categories: [app, web, branch]}
  churn:   {role: label, type: categorical, categories: [churn, stay]}
  consent_analytics: {role: consent, type: boolean}
"""


def _with_consent(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    X, y = _customers(n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    X["consent_analytics"] = pd.array(rng.choice(np.array([True, False, None], dtype=object), size=n,
                                                 p=[0.75, 0.2, 0.05]), dtype="boolean")
    return X, y


def test_policy_fit_filters_consent_and_charges_the_budget_before_training(tmp_path: Path,
                                                                            isolated_budget: Path) -> None:
    from anonymize.policy.schema import load_policy
    from privmodel.dp import budget

    path = tmp_path / "policy.yaml"
    path.write_text(CONSENT_POLICY_YAML)
    X, y = _with_consent(1500, seed=1)
    kept = X["consent_analytics"].fillna(False).to_numpy(dtype=bool)  # independent count: only an explicit True stays
    clf = DPPropensityClassifier(policy=str(path), insecure_seed=4, **FAST).fit(X, y)
    assert clf.consent_removed_ == int((~kept).sum()) > 0
    assert clf.privacy_["n"] == int(kept.sum())
    # X and y were filtered alike: the same fit on the consenting rows by hand gives the same model
    by_hand = DPPropensityClassifier(policy=str(path), insecure_seed=4, **FAST).fit(
        X[kept].assign(consent_analytics=True).reset_index(drop=True), y[kept])
    np.testing.assert_array_equal(clf.predict_proba(X), by_hand.predict_proba(X))

    dataset = budget.dataset_of_frame(load_policy(path), X, None)
    spent = budget.spent(dataset, None)
    assert clf.budget_charge_["dataset"] == dataset
    assert (spent.epsilon, spent.charges) == (1.0, 1)  # the whole target epsilon, charged once
    assert spent.delta == pytest.approx(min(1e-6, 1 / (10 * int(kept.sum()))))
    assert clf.get_params()["keys"] is None

    again = clone(clf)
    with pytest.raises(budget.BudgetExceeded, match=r"spent 1 \+ asked 1 > cap 1\.5 \(epsilon\)"):
        again.fit(X, y)
    assert not hasattr(again, "model_")  # refused before training
    assert budget.spent(dataset, None).epsilon == 1.0  # a refusal spends nothing


def test_without_a_policy_nothing_is_charged(isolated_budget: Path) -> None:
    from privmodel.dp import budget

    X, y = _customers(n=800)
    clf = DPPropensityClassifier(bounds=BOUNDS, categories=CATS, **FAST).fit(X, y)
    assert clf.budget_charge_ is None and clf.consent_removed_ == 0
    assert budget.read_store(None) is None or budget.read_store(None).datasets() == []


def test_quality_warnings_name_a_collapsed_or_outclassed_model() -> None:
    from privmodel.dp.training import quality_warnings

    assert quality_warnings("logreg", 0.84) == []
    collapsed = quality_warnings("mlp", 0.505, 0.76)
    assert len(collapsed) == 2
    assert "no better than a constant score (ROC-AUC 0.505 < 0.52)" in collapsed[0]
    assert "worse than a DP logistic model at the same epsilon by 0.255 ROC-AUC" in collapsed[1]
    assert quality_warnings("mlp", 0.75, 0.76) == []  # within the margin
    # the estimator puts them on warnings_: labels independent of X -> no better than a constant
    X, _ = _customers(n=10_000)  # training-rows AUC of a model of pure noise: 0.5 +- 0.006
    noise_labels = np.random.default_rng(9).choice(["churn", "stay"], size=len(X))
    clf = DPPropensityClassifier(bounds=BOUNDS, categories=CATS, epsilon=0.05, **FAST).fit(X, noise_labels)
    assert any("no better than a constant" in w for w in clf.warnings_)
    assert clf.fit_result_.warnings == clf.warnings_
