"""Model card: every privacy field equals the FitResult's, Markdown renders, never a raw value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize.errors import InputError
from anonymize.policy.schema import Policy
from privmodel.artifacts import model_card as card
from privmodel.dp import tuning
from privmodel.evaluation import metrics, mia

POLICY = """\
version: 1
name: card-test
purpose: {name: churn_modeling}
privacy: {k: 5}
budget: {epsilon: 3.0, delta: 1.0e-4}
fairness_groups: [gender, region]
columns:
  customer_id: {role: identifier, type: string, method: token}
  tenure_months: {role: feature, type: integer, bounds: [0, 480]}
  gender: {role: quasi_identifier, type: categorical, categories: [F, M]}
  region: {role: feature, type: string}
  active: {role: feature, type: boolean}
  churn: {role: label, type: boolean}
"""


@pytest.fixture(scope="module")
def fitted() -> dict:
    from privmodel.data.features import EncodedData
    from privmodel.dp.training import TrainConfig, fit

    rng = np.random.default_rng(4)
    n = 400
    x = rng.uniform(size=(n, 3)).astype(np.float32)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(3 * x[:, 0] - 1.5)))).astype(np.float32)
    data = EncodedData(x, np.zeros((n, 0), dtype=np.int64), [], ["tenure_months", "active", "x3"], [])
    tr, te = np.arange(300), np.arange(300, 400)
    result = fit(data.take(tr), y[tr], TrainConfig(model="logreg", epsilon=2.0, delta=1e-4, epochs=3,
                                                   batch_size=60, lr=0.3, accountant="rdp"))
    p_test, p_train = result.predict_proba(data.take(te)), result.predict_proba(data.take(tr))
    groups = {"gender": np.array(["F", "M"] * 50, dtype=object),
              "region": np.array(["Northvale-Secret"] * 60 + ["Southmoor-Secret"] * 40, dtype=object)}
    private = metrics.evaluate(y[te], p_test, groups)
    baseline = metrics.evaluate(y[te], np.clip(p_test * 0.9 + 0.05, 0, 1), groups)
    audit = mia.audit(y[tr], p_train, y[te], p_test, delta=1e-4, epsilon_guarantee=result.privacy["epsilon"])
    return {"fit": result, "private": private, "baseline": baseline, "audit": audit}


def _card(fitted: dict, **extra) -> dict:
    policy = Policy.from_yaml_text(POLICY)
    fit = fitted["fit"]
    return card.build_card(
        model_type="logreg", label="churn",
        features=card.feature_statements(policy, ["tenure_months", "gender", "active"]),
        data={"file": "customers.csv", "sha256": "ab" * 32, "rows": 400},
        privacy=fit.privacy, training={"epochs": 3}, metrics=fitted["private"], baseline_metrics=fitted["baseline"],
        comparison=metrics.compare(fitted["private"], fitted["baseline"]), mia=fitted["audit"],
        public_categories={"gender": ["F", "M"]}, epsilon_history=fit.epsilon_history, **extra,
    )


def test_card_privacy_fields_equal_the_fit_result(fitted: dict) -> None:
    the_card = _card(fitted)
    fit = fitted["fit"]
    for key in card.PRIVACY_FIELDS:
        assert the_card["privacy"][key] == fit.privacy[key], key
    assert the_card["privacy"]["private"] is True
    assert the_card["total_privacy_cost"] == {"epsilon": fit.privacy["epsilon"], "delta": fit.privacy["delta"]}
    assert the_card["hyperparameter_selection"]["method"] == "fixed"
    assert the_card["hyperparameter_selection"]["epsilon"] == 0.0
    assert the_card["epsilon_history"][-1]["epsilon"] == pytest.approx(fit.privacy["epsilon"])
    assert the_card["metrics"]["comparison"]["roc_auc"]["private"] == fitted["private"]["roc_auc"]
    assert the_card["metrics"]["comparison"]["roc_auc"]["baseline"] == fitted["baseline"]["roc_auc"]
    assert the_card["membership_inference"]["epsilon_lower_bound"] == fitted["audit"]["epsilon_lower_bound"]
    assert the_card["membership_inference"]["epsilon_lower_bound"] <= fit.privacy["epsilon"]
    tenure = next(f for f in the_card["features"] if f["name"] == "tenure_months")
    assert tenure["bounds"] == [0, 480] and "public bounds [0, 480]" in tenure["preprocessing"]
    gender = next(f for f in the_card["features"] if f["name"] == "gender")
    assert gender["categories"] == 2
    json.dumps(the_card, allow_nan=False)  # strict JSON


def test_group_names_only_when_public(fitted: dict) -> None:
    the_card = _card(fitted)
    fair = the_card["fairness"]["columns"]
    assert set(fair["gender"]["groups"]) == {"F", "M"}
    assert set(fair["region"]["groups"]) == {"group 1", "group 2"}  # undeclared values never named
    text = json.dumps(the_card) + card.render_markdown(the_card)
    assert "Secret" not in text
    # the gaps survive the renaming unchanged
    original = fitted["private"]["fairness"]["columns"]["region"]
    assert fair["region"]["demographic_parity_difference"] == original["demographic_parity_difference"]


def test_markdown_and_files(fitted: dict, tmp_path: Path) -> None:
    selection = tuning.Selection(0, {"lr": 0.3}, None, lambda x: x, [tuning.Trial({"lr": 0.3}, 1.0, 5e-5, 3.0),
                                                                     tuning.Trial({"lr": 0.1}, 1.0, 5e-5, 4.0)],
                                 2.0, 1e-4).card_entry()
    the_card = _card(fitted, selection=selection, budget={"cap": {"epsilon": 3.0, "delta": 1e-4},
                                                           "spent_after": {"epsilon": 2.0, "delta": 1e-4}})
    assert the_card["total_privacy_cost"] == {"epsilon": 2.0, "delta": 1e-4}  # the whole search is charged
    json_path, md_path = card.write_card(tmp_path, the_card)
    assert card.read_card(tmp_path) == json.loads(json_path.read_text())
    md = md_path.read_text()
    eps = fitted["fit"].privacy["epsilon"]
    assert f"**({eps:.4f}, 0.0001)-differentially private**" in md
    assert "basic_composition" in md and "2 trial(s)" in md
    assert "| roc_auc |" in md and "Lift by decile" in md and "**gender**" in md
    assert "Empirical ε lower bound" in md and "consistent" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_card.json", "model_card.md"]


def test_non_private_card_says_so(fitted: dict) -> None:
    privacy = dict(fitted["fit"].privacy, epsilon=None, accountant=None, noise_multiplier=0.0, private=False)
    the_card = card.build_card(model_type="logreg", label="churn", features=[], data={}, privacy=privacy,
                               training={}, metrics=fitted["private"], baseline_metrics=None,
                               comparison=metrics.compare(fitted["private"], None), mia=None)
    assert the_card["privacy"]["private"] is False
    assert "not differentially private" in card.render_markdown(the_card)


def test_raw_value_guard_and_missing_fields() -> None:
    frame = pd.DataFrame({"customer_id": ["CUST-998877", "CUST-112233"], "gender": ["F", "M"]})
    card.check_no_raw_values("model for churn; F and M groups", frame, ["customer_id", "gender"])
    with pytest.raises(InputError, match="raw value of column customer_id") as exc:
        card.check_no_raw_values("leaked CUST-112233 here", frame, ["customer_id"])
    assert "CUST" not in str(exc.value)
    with pytest.raises(InputError, match="lacks noise_multiplier"):
        card.build_card(model_type="logreg", label="y", features=[], data={}, training={}, comparison={},
                        privacy={"epsilon": 1.0, "delta": 1e-5, "accountant": "prv", "max_grad_norm": 1.0,
                                 "clipping": "flat", "sample_rate": 0.1, "steps": 10},
                        metrics={}, baseline_metrics=None, mia=None)
    with pytest.raises(InputError, match="no model card"):
        card.read_card(Path("/nonexistent-dir"))
