"""Epsilon figures checked against an independent library (Google's dp-accounting)."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from anonymize.errors import InputError
from privmodel.dp.accounting import epsilon_for, noise_for

CASES = [  # (noise_multiplier, sample_rate, steps, delta): telco-, 45k- and 200k-sized runs
    (3.85, 256 / 5282, 413, 1e-5),
    (2.7, 1024 / 45000, 880, 1e-5),
    (1.2, 0.01, 1000, 1e-5),
    (0.9, 4096 / 200_000, 300, 5e-7),
]


def _event(sigma: float, q: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES)
def test_rdp_matches_dp_accounting_rdp(sigma: float, q: float, steps: int, delta: float) -> None:
    reference = rdp.RdpAccountant()
    reference.compose(_event(sigma, q, steps))
    ours = epsilon_for(sigma, q, steps, delta, accountant="rdp")
    assert ours == pytest.approx(reference.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES)
def test_prv_matches_dp_accounting_pld(sigma: float, q: float, steps: int, delta: float) -> None:
    reference = pld.PLDAccountant()
    reference.compose(_event(sigma, q, steps))
    ours = epsilon_for(sigma, q, steps, delta, accountant="prv")
    assert ours == pytest.approx(reference.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize(("accountant", "target"), [("prv", 1.0), ("rdp", 0.5), ("rdp", 3.0)])
def test_noise_for_inverts_epsilon_for(accountant: str, target: float) -> None:
    q, steps, delta = 512 / 5282, 206, 1e-5
    sigma = noise_for(target, delta, q, steps, accountant)
    eps = epsilon_for(sigma, q, steps, delta, accountant)
    assert 0.98 * target <= eps <= target * 1.0001
    # and it is (nearly) the smallest such noise: 2% less noise overshoots the target
    assert epsilon_for(sigma * 0.98, q, steps, delta, accountant) > eps


def test_more_noise_less_epsilon_and_edge_cases() -> None:
    assert epsilon_for(2.0, 0.01, 100, 1e-5) < epsilon_for(1.0, 0.01, 100, 1e-5)
    assert epsilon_for(1.0, 0.01, 0, 1e-5) == 0.0
    assert math.isinf(epsilon_for(0.0, 0.01, 10, 1e-5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": -1.0},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"accountant": "gdp"},
    ],
)
def test_noise_for_rejects_bad_input(kwargs: dict) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100, "accountant": "rdp", **kwargs}
    with pytest.raises(InputError):
        noise_for(**args)
