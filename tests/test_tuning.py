"""Hyper-parameter selection: every trial's share is counted and the total is the whole budget."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from anonymize.errors import InputError
from privmodel.dp import secure_noise, tuning


def _fake_trainer(log: list[tuple[dict, float, float, int]]) -> tuning.Trainer:
    """A 'model' whose validation predictions are y blurred by the candidate's 'error' parameter."""

    def train(params: Mapping[str, Any], eps: float, delta: float, seed: int):
        log.append((dict(params), eps, delta, seed))
        fit = SimpleNamespace(privacy={"epsilon": eps * 0.99, "delta": delta})
        err = params["error"]
        return fit, lambda x: np.clip(np.asarray(x, float) * (1 - err) + err / 2, 0, 1)

    return train


def test_grid_is_stable_product() -> None:
    assert tuning.grid({"lr": [0.1, 0.3], "clip": [1.0]}) == [{"lr": 0.1, "clip": 1.0}, {"lr": 0.3, "clip": 1.0}]
    with pytest.raises(InputError, match="no values for clip"):
        tuning.grid({"lr": [0.1], "clip": []})


def test_every_trial_gets_an_equal_share_and_total_is_the_budget() -> None:
    log: list = []
    y = np.random.default_rng(0).integers(0, 2, 400).astype(float)
    candidates = tuning.grid({"error": [0.9, 0.1, 0.5, 0.7]})
    result = tuning.select(candidates, _fake_trainer(log), y, y, epsilon=8.0, delta=1e-5, seed=3)
    assert [entry[1] for entry in log] == [2.0] * 4
    assert [entry[2] for entry in log] == pytest.approx([2.5e-6] * 4)
    assert [entry[3] for entry in log] == [3, 4, 5, 6]  # distinct seeds per trial
    assert result.epsilon == 8.0 and result.delta == 1e-5
    # at ε = 2 per trial the noise (scale 0.5) is tiny next to the loss gaps (tens): the best wins
    assert result.best_params == {"error": 0.1} and result.best_index == 1
    entry = result.card_entry()
    assert entry["method"] == "basic_composition" and entry["trials"] == 4
    assert entry["epsilon"] == 8.0 and len(entry["candidates"]) == 4
    assert all(c["epsilon"] == 2.0 for c in entry["candidates"])
    assert entry["noise"] == "secure"


def test_score_noise_is_secret_unless_the_insecure_switch_is_used() -> None:
    """Same seed, same candidates, same data: the noisy scores differ run to run (the seed numbers
    only the trials' weight initialisations); insecure_seed reproduces them and is labelled so."""
    y = np.random.default_rng(0).integers(0, 2, 200).astype(float)
    candidates = tuning.grid({"error": [0.3, 0.5]})

    def scores(**kw: Any) -> tuple[list[float], str]:
        sel = tuning.select(candidates, _fake_trainer([]), y, y, epsilon=1.0, delta=1e-5, seed=3, **kw)
        return [t.noisy_brier_sum for t in sel.trials], sel.card_entry()["noise"]

    first, second = scores(), scores()
    assert first[1] == second[1] == "secure"
    assert first[0][0] != second[0][0] and first[0][1] != second[0][1]
    a, b = scores(insecure_seed=9), scores(insecure_seed=9)
    assert a == b and a[1] == "INSECURE-reproducible"


def test_laplace_noise_has_the_calibrated_scale() -> None:
    # sensitivity 1, ε = 0.5 -> Laplace scale 2: E|noise| = 2, Var = 8
    source = secure_noise.NoiseSource.secure()
    y, p = np.array([0.0, 1.0, 1.0]), np.array([0.2, 0.7, 1.0])
    true_sum = 0.04 + 0.09 + 0.0
    noise = np.array([tuning.noisy_brier_sum(y, p, 0.5, source) - true_sum for _ in range(20000)])
    assert abs(noise.mean()) < 0.1
    assert np.abs(noise).mean() == pytest.approx(2.0, rel=0.05)
    assert noise.var() == pytest.approx(8.0, rel=0.08)


def test_a_trial_that_overspends_is_refused() -> None:
    def greedy(params: Mapping[str, Any], eps: float, delta: float, seed: int):
        return SimpleNamespace(privacy={"epsilon": eps * 2, "delta": delta}), lambda x: np.full(len(x), 0.5)

    with pytest.raises(InputError, match="trial 1 spent"):
        tuning.select([{"a": 1}], greedy, np.zeros(4), np.zeros(4), epsilon=1.0, delta=1e-5)


@pytest.mark.parametrize(("eps", "delta", "message"), [(0.0, 1e-5, "epsilon"), (float("inf"), 1e-5, "epsilon"),
                                                       (1.0, 1.0, "delta")])
def test_bad_budget(eps: float, delta: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tuning.select([{"a": 1}], _fake_trainer([]), np.zeros(4), np.zeros(4), epsilon=eps, delta=delta)
