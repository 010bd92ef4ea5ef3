"""Privacy accounting for Poisson-subsampled Gaussian DP-SGD, through Opacus' accountants.

Why Opacus' accountants and not our own: they are the reference implementations the DP training
community audits (RDP of Mironov et al.; PRV of Gopi et al.), and tests check them against a
second, independent library (Google's dp-accounting). Our only job is to feed them exactly what
`privmodel.dp.dpsgd.train_dp` executes: one (noise_multiplier, sample_rate, steps) triple, where
`steps` counts every Poisson-sampled step including empty ones.

`epsilon_for` is monotone decreasing in the noise multiplier, so `noise_for` inverts it by the
bisection in `opacus.accountants.utils.get_noise_multiplier`; the returned noise always gives an
epsilon at or below the target (never above).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from anonymize.errors import InputError

ACCOUNTANTS = ("prv", "rdp")
# PRV reports an upper bound within eps_error of the true epsilon. Reported figures use 3e-3 (0.3%
# slack at epsilon ~ 1, ~0.1 s); the noise search uses Opacus' default 1e-2, whose bound is never
# below the true epsilon, so calibrating on it errs on the side of more noise.
PRV_EPS_ERROR = 3e-3
PRV_SEARCH_EPS_ERROR = 1e-2
# RDP orders: Opacus' defaults stop at 63, which is too small for small sampling rates over many
# steps (Opacus warns "optimal order is the largest alpha"); these are dp-accounting's defaults.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
# noise_for stops when epsilon is within this fraction below the target.
NOISE_TOLERANCE = 5e-3
MAX_NOISE = 1e4


def _check(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise InputError(f"accountant {accountant!r} is not one of {', '.join(ACCOUNTANTS)}")
    if not 0.0 < sample_rate <= 1.0:
        raise InputError("sample_rate must be in (0, 1]")
    if steps < 0 or int(steps) != steps:
        raise InputError("steps must be a non-negative integer")
    if not 0.0 < delta < 1.0:
        raise InputError("delta must be in (0, 1)")


def _epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str, eps_error: float
) -> float:
    import warnings

    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with warnings.catch_warnings():
        # PRV sizes its domain with an RDP bound that may warn about its order range; harmless.
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "prv":
            return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
        return float(acc.get_epsilon(delta=delta, alphas=RDP_ORDERS))


def epsilon_for(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon spent by `steps` Poisson-sampled Gaussian steps at rate `sample_rate`, for `delta`.

    Zero steps cost nothing; zero noise is not private (infinite epsilon).
    """
    _check(sample_rate, steps, delta, accountant)
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0.0:
        return math.inf
    return _epsilon(noise_multiplier, sample_rate, steps, delta, accountant, PRV_EPS_ERROR)


def noise_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest noise multiplier (to bisection tolerance) whose epsilon_for is <= target_epsilon."""
    _check(sample_rate, steps, delta, accountant)
    if not target_epsilon > 0.0 or not math.isfinite(target_epsilon):
        raise InputError("epsilon must be a positive finite number")
    if steps == 0:
        raise InputError("steps must be at least 1 to calibrate noise")
    steps = int(steps)

    def eps_rdp(sigma: float) -> float:
        return _epsilon(sigma, sample_rate, steps, delta, "rdp", 0.0)

    # Start from the moments-accountant asymptote sigma ~ q sqrt(2 T ln(1/delta)) / epsilon.
    guess = max(0.3, sample_rate * math.sqrt(2.0 * steps * math.log(1.0 / delta)) / target_epsilon)
    sigma = _search(eps_rdp, target_epsilon, guess)
    if accountant == "rdp":
        return sigma

    # PRV is tighter than RDP, so its sigma lies a little below; searched with the conservative bound.
    def eps_prv(sigma: float) -> float:
        return _epsilon(sigma, sample_rate, steps, delta, "prv", PRV_SEARCH_EPS_ERROR)

    # PRV needs ~6-7% less noise than RDP across the regimes we train in; start there, step 4%.
    return _search(eps_prv, target_epsilon, sigma * 0.935, factor=1.04)


def _search(eps_of: Callable[[float], float], target: float, guess: float, factor: float = 1.5) -> float:
    """Smallest sigma with target (1 - NOISE_TOLERANCE) <= eps_of(sigma) <= target.

    Bracket by `factor` steps around the guess, then regula falsi on log(epsilon) against
    log(sigma) (nearly linear there), guarded to stay strictly inside the bracket. Each evaluation
    of an accountant costs 10-300 ms, so this takes ~5 instead of bisection's ~15.
    """
    hi, e_hi = guess, eps_of(guess)
    lo, e_lo = guess, e_hi
    while e_hi > target:
        lo, e_lo = hi, e_hi
        hi *= factor
        if hi > MAX_NOISE:
            raise InputError(f"epsilon {target:g} needs a noise multiplier above {MAX_NOISE:g}; use more epsilon or fewer steps")
        e_hi = eps_of(hi)
    while e_lo <= target:
        hi, e_hi = lo, e_lo
        lo /= factor
        e_lo = eps_of(lo)
    log_t = math.log(target)
    for _ in range(60):
        if e_hi >= target * (1.0 - NOISE_TOLERANCE) or hi - lo < 1e-6 * hi:
            break
        a, b = math.log(lo), math.log(hi)
        fa, fb = math.log(e_lo), math.log(e_hi)
        mid = math.exp(a + (log_t - fa) * (b - a) / (fb - fa)) if fa != fb and math.isfinite(fa) else (lo + hi) / 2
        width = hi - lo
        mid = min(max(mid, lo + 0.1 * width), hi - 0.1 * width)
        e_mid = eps_of(mid)
        if e_mid <= target:
            hi, e_hi = mid, e_mid
        else:
            lo, e_lo = mid, e_mid
    return float(hi)
