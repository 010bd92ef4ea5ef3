"""Silo profiles, regions, quasi-identifiers and behaviour, all vectorized with numpy.

Heterogeneity h in [0, 1] is the one knob for non-IID silos. Silo s has a home region and three
shifts drawn once per (seed, n_silos): age mean, log-income and label base rates. Its city mix is
(1 - h) * national mix + h * home-region mix, and every shift is multiplied by h, so h = 0 gives
identical silos (same distributions, different draws) and h = 1 silos that differ strongly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from privmodel.data.synth.locales import CITIES_PER_REGION, REGIONS, ZIPS_PER_CITY

AS_OF = dt.date(2025, 1, 1)  # reference date for ages, so output does not depend on today
AGE_MIN, AGE_MAX = 18, 95
GENDERS = ("F", "M", "X")
MARITAL = ("single", "married", "divorced", "widowed")
CHANNELS = ("branch", "app", "web")
OCCUPATIONS: dict[str, tuple[str, float]] = {  # occupation -> (group, log-income offset)
    "Engineer": ("Professional", 0.45),
    "Physician": ("Professional", 0.80),
    "Lawyer": ("Professional", 0.70),
    "Accountant": ("Professional", 0.35),
    "Teacher": ("Professional", 0.10),
    "Nurse": ("Professional", 0.10),
    "Sales associate": ("Services", -0.25),
    "Chef": ("Services", -0.15),
    "Hairdresser": ("Services", -0.30),
    "Driver": ("Services", -0.15),
    "Clerk": ("Services", -0.10),
    "Electrician": ("Trades", 0.05),
    "Plumber": ("Trades", 0.05),
    "Construction worker": ("Trades", -0.10),
    "Farmer": ("Trades", -0.20),
    "Self-employed": ("Other", 0.20),
    "Unemployed": ("Other", -1.20),
    "Student": ("Other", -1.40),
    "Retired": ("Other", -0.50),
}
_WORKING = tuple(o for o in OCCUPATIONS if o not in ("Student", "Retired"))
_WORKING_W = np.array([6, 2, 2, 4, 6, 6, 8, 4, 3, 6, 8, 4, 4, 6, 3, 7, 5], dtype=float)
_MARITAL_BY_AGE = np.array(  # rows: <25, 25-39, 40-64, 65+; columns follow MARITAL
    [[0.86, 0.12, 0.02, 0.00], [0.40, 0.50, 0.09, 0.01], [0.18, 0.61, 0.17, 0.04], [0.08, 0.55, 0.15, 0.22]]
)
BOUNDS = {  # public bounds, also written to the starter policy
    "age": (18, 100),
    "annual_income": (0.0, 500_000.0),
    "tenure_months": (0, 480),
    "recency_days": (0, 365),
    "frequency": (0, 500),
    "monetary": (0.0, 250_000.0),
    "num_products": (1, 8),
    "complaints_12m": (0, 20),
    "monthly_balance": (0.0, 1_000_000.0),
}


@dataclass(frozen=True)
class SiloProfile:
    """What makes one silo different (all shifts already multiplied by heterogeneity)."""

    silo: int
    home_region: int  # index into the global region list (locale-major, REGIONS order)
    age_shift: float  # years added to the mean age
    income_shift: float  # added to log income
    churn_offset: float  # added to the churn logit
    purchase_offset: float  # added to the will_purchase logit


def silo_profiles(n_silos: int, heterogeneity: float, seed: int, n_locales: int = 1) -> list[SiloProfile]:
    """One profile per silo; home regions alternate between countries before repeating."""
    rng = np.random.default_rng([seed, 101])
    n_regions = n_locales * len(REGIONS)
    order = [li * len(REGIONS) + r for r in range(len(REGIONS)) for li in range(n_locales)]
    start = int(rng.integers(n_regions))
    base = np.linspace(-1.0, 1.0, n_silos) if n_silos > 1 else np.zeros(1)
    age, inc, churn, buy = (heterogeneity * rng.permutation(base) for _ in range(4))
    return [
        SiloProfile(
            silo=s,
            home_region=order[(start + s) % n_regions],
            age_shift=float(12.0 * age[s]),
            income_shift=float(0.4 * inc[s]),
            churn_offset=float(0.8 * churn[s]),
            purchase_offset=float(0.6 * buy[s]),
        )
        for s in range(n_silos)
    ]


def silo_sizes(n: int, n_silos: int) -> np.ndarray:
    """Rows per silo: as equal as possible, the first silos take the remainder."""
    sizes = np.full(n_silos, n // n_silos, dtype=np.int64)
    sizes[: n % n_silos] += 1
    return sizes


def city_weights(n_locales: int, seed: int) -> np.ndarray:
    """National city mix: Zipf-like city sizes, each locale equally likely."""
    rng = np.random.default_rng([seed, 102])
    per = len(REGIONS) * CITIES_PER_REGION
    w = []
    for _ in range(n_locales):
        sizes = 1.0 / np.arange(1, per + 1) ** 0.7
        sizes = rng.permutation(sizes)
        w.append(sizes / sizes.sum() / n_locales)
    return np.concatenate(w)


def draw_cities(
    rng: np.random.Generator, sizes: np.ndarray, profiles: list[SiloProfile], weights: np.ndarray, heterogeneity: float
) -> np.ndarray:
    """Global city index per row; silo s mixes the national mix with its home region."""
    region_of_city = np.arange(len(weights)) // CITIES_PER_REGION
    out = []
    for size, prof in zip(sizes, profiles, strict=True):
        home = np.where(region_of_city == prof.home_region, weights, 0.0)
        p = (1.0 - heterogeneity) * weights + heterogeneity * home / home.sum()
        out.append(rng.choice(len(weights), size=int(size), p=p / p.sum()))
    return np.concatenate(out)


def zip_table(n_locales: int, zip_lens: list[int], seed: int) -> list[str]:
    """ZIPS_PER_CITY postcodes per city: region digit, 2 city digits, then distinct zip digits."""
    rng = np.random.default_rng([seed, 103])
    zips: list[str] = []
    for li in range(n_locales):
        length = zip_lens[li]
        region_digit = rng.permutation(np.arange(1, 10))[: len(REGIONS)]
        for r in range(len(REGIONS)):
            city_codes = rng.choice(100, size=CITIES_PER_REGION, replace=False)
            for c in range(CITIES_PER_REGION):
                tails = rng.choice(10 ** (length - 3), size=ZIPS_PER_CITY, replace=False)
                tails.sort()
                zips += [f"{region_digit[r]}{city_codes[c]:02d}{t:0{length - 3}d}" for t in tails]
    return zips


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row from per-row probability vectors (rows of `probs`, k small)."""
    u = rng.random(len(probs)) * probs.sum(axis=1)
    out = np.zeros(len(probs), dtype=np.int8)
    edge = np.zeros(len(probs))
    for j in range(probs.shape[1] - 1):  # column loop beats a strided cumsum over (n, k)
        edge += probs[:, j]
        out += u > edge
    return out


def draw_people(rng: np.random.Generator, silo: np.ndarray, profiles: list[SiloProfile]) -> dict[str, np.ndarray]:
    """Quasi-identifiers and behaviour; categorical columns are returned as small int codes."""
    n = len(silo)
    age_shift = np.array([p.age_shift for p in profiles])[silo]
    inc_shift = np.array([p.income_shift for p in profiles])[silo]

    # age: normal around 45 (+ silo shift), out-of-range draws redrawn, then birth date & exact age
    age_f = rng.normal(45.0 + age_shift, 15.0)
    for _ in range(6):
        bad = (age_f < AGE_MIN) | (age_f >= AGE_MAX + 1)
        if not bad.any():
            break
        age_f[bad] = rng.normal(45.0 + age_shift[bad], 15.0)
    age_f = np.clip(age_f, AGE_MIN, AGE_MAX + 0.999)
    as_of = np.datetime64(AS_OF, "D")
    # ceil: a birth date at least age_f years back, so the exact age never drops below AGE_MIN
    birth = as_of - np.ceil(age_f * 365.2425).astype(np.int64).astype("timedelta64[D]")
    by = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    # minus one where the birthday has not come yet in the AS_OF year
    md_birth = _month_day(birth)
    md_asof = _month_day(np.array([as_of]))[0]
    age = (AS_OF.year - by - (md_birth > md_asof)).astype(np.int64)

    gender = rng.choice(3, size=n, p=[0.49, 0.49, 0.02]).astype(np.int8)
    band = np.digitize(age, [25, 40, 65])
    marital = _categorical(rng, _MARITAL_BY_AGE[band])

    occ = rng.choice(len(_WORKING), size=n, p=_WORKING_W / _WORKING_W.sum()).astype(np.int8)
    names = list(OCCUPATIONS)
    student = rng.random(n) < np.where(age < 23, 0.7, np.where(age < 27, 0.15, 0.0))
    retired = rng.random(n) < np.where(age >= 67, 0.85, np.where(age >= 60, 0.25, 0.0))
    occ_idx = np.array([names.index(o) for o in _WORKING], dtype=np.int8)[occ]
    occ_idx[student] = names.index("Student")
    occ_idx[retired] = names.index("Retired")
    occ_income = np.array([v[1] for v in OCCUPATIONS.values()])[occ_idx]

    a = (age - 45.0) / 15.0
    log_inc = 10.85 + occ_income - 0.3 * ((age - 50.0) / 20.0) ** 2 + inc_shift + rng.normal(0.0, 0.45, n)
    income = np.clip(np.round(np.exp(log_inc), -2), *BOUNDS["annual_income"])

    score = np.stack([-0.3 + 0.9 * a, 0.9 - 1.1 * a, 0.3 + 0.0 * a], axis=1)  # branch, app, web
    prob = np.exp(score)
    channel = _categorical(rng, prob / prob.sum(axis=1, keepdims=True))

    tenure = np.minimum(rng.exponential(70.0, n), (age - AGE_MIN) * 12.0 + rng.random(n) * 12.0)
    tenure = np.clip(np.floor(tenure), *BOUNDS["tenure_months"]).astype(np.int64)
    lam = np.exp(-0.3 + 0.35 * np.log(income / 50_000.0) + 0.25 * np.log1p(tenure / 24.0))
    num_products = np.clip(1 + rng.poisson(lam), *BOUNDS["num_products"]).astype(np.int64)

    mean_recency = np.array([40.0, 12.0, 22.0])[channel]
    recency = np.clip(np.floor(rng.exponential(mean_recency)), *BOUNDS["recency_days"]).astype(np.int64)
    rate = np.array([18.0, 70.0, 35.0])[channel] * np.exp(rng.normal(0.0, 0.35, n) - 0.15 * np.log1p(recency))
    frequency = np.clip(rng.poisson(rate), *BOUNDS["frequency"]).astype(np.int64)
    ticket = np.exp(np.log(income / 1000.0) + rng.normal(-0.4, 0.5, n))
    monetary = np.clip(np.round(frequency * ticket, 2), *BOUNDS["monetary"])
    complaints = np.clip(
        rng.poisson(np.array([0.55, 0.30, 0.40])[channel] * (0.8 + 0.1 * num_products)), *BOUNDS["complaints_12m"]
    ).astype(np.int64)
    balance = np.exp(np.log(income / 12.0) + 0.15 * num_products + rng.normal(-0.3, 0.8, n))
    balance = np.clip(np.round(balance, 2), *BOUNDS["monthly_balance"])

    consent_marketing = rng.random(n) < np.array([0.50, 0.65, 0.58])[channel]
    consent_analytics = rng.random(n) < 0.85
    return {
        "birth_date": birth,
        "age": age,
        "gender": gender,
        "occupation": occ_idx,
        "marital_status": marital,
        "annual_income": income,
        "tenure_months": tenure,
        "recency_days": recency,
        "frequency": frequency,
        "monetary": monetary,
        "num_products": num_products,
        "channel": channel,
        "complaints_12m": complaints,
        "monthly_balance": balance,
        "consent_marketing": consent_marketing,
        "consent_analytics": consent_analytics,
    }


def _month_day(days: np.ndarray) -> np.ndarray:
    """month * 100 + day for datetime64[D] values."""
    months = days.astype("datetime64[M]")
    m = months.astype(np.int64) % 12 + 1
    d = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    return m * 100 + d
