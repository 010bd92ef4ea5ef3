"""`generate`: N customers over S silos with identifiers, quasi-identifiers, behaviour and labels.

Random streams are split per concern (`SeedSequence(seed).spawn`), so one seed gives the same
table bit for bit, and the Faker pools are seeded from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import pyarrow as pa

from anonymize.errors import InputError
from privmodel.data.synth import identity, population, truth
from privmodel.data.synth.locales import (
    CITIES_PER_REGION,
    LOCALES,
    REGIONS,
    ZIPS_PER_CITY,
    Pools,
    build_pools,
    check_locales,
)
from privmodel.data.synth.population import CHANNELS, GENDERS, MARITAL, OCCUPATIONS, SiloProfile

if TYPE_CHECKING:
    import pandas as pd

    from privmodel.data.synth.truth import Columns

IDENTIFIERS = ("customer_id", "full_name", "email", "phone", "national_id", "street_address")
QUASI_IDENTIFIERS = ("birth_date", "age", "gender", "zip_code", "city", "occupation", "marital_status")
BEHAVIOUR = (
    "annual_income",
    "tenure_months",
    "recency_days",
    "frequency",
    "monetary",
    "num_products",
    "channel",
    "complaints_12m",
    "monthly_balance",
)
CONSENT = ("consent_marketing", "consent_analytics")
LABELS = ("churn", "will_purchase")
COLUMNS = IDENTIFIERS + QUASI_IDENTIFIERS + BEHAVIOUR + CONSENT + LABELS + ("silo",)


@dataclass
class SynthData:
    """A generated population: the table (with `silo`), true label probabilities and the set-up."""

    table: pa.Table
    p_churn: np.ndarray
    p_will_purchase: np.ndarray
    profiles: list[SiloProfile]
    locales: tuple[str, ...]
    regions: list[str]  # global region names, e.g. "US North"
    city_region: dict[str, str] = field(default_factory=dict)  # city -> region name
    mess: dict[str, float] = field(default_factory=dict)  # "rate", then row counts per kind of mess

    def to_pandas(self) -> pd.DataFrame:
        """DataFrame view (dates as datetime.date, like pandas.read_parquet gives them)."""
        return self.table.to_pandas()

    def truth_frame(self) -> pd.DataFrame:
        """True label probabilities with the silo, row-aligned with `to_pandas()`."""
        import pandas as pd

        return pd.DataFrame(
            {
                "p_churn": self.p_churn,
                "p_will_purchase": self.p_will_purchase,
                "silo": self.table.column("silo").to_numpy(),
            }
        )


def check_params(n_customers: int, n_silos: int, heterogeneity: float, mess_rate: float) -> None:
    """Refuse impossible settings with the CLI option's name in the message."""
    if not isinstance(n_customers, int | np.integer) or n_customers <= 0:
        raise InputError("--customers must be a positive integer")
    if n_customers > identity.MAX_ROWS:
        raise InputError(f"--customers must be at most {identity.MAX_ROWS:,}")
    if not isinstance(n_silos, int | np.integer) or n_silos <= 0:
        raise InputError("--silos must be a positive integer")
    if n_silos > n_customers:
        raise InputError("--silos must not exceed --customers (every silo needs a customer)")
    if not (isinstance(heterogeneity, int | float) and 0.0 <= heterogeneity <= 1.0):
        raise InputError("--heterogeneity must be between 0 and 1")
    if not (isinstance(mess_rate, int | float) and 0.0 <= mess_rate <= 0.2) or math.isnan(mess_rate):
        raise InputError("--mess-rate must be between 0 and 0.2")


CHUNK_ROWS = 1_000_000  # rows generated (and written) at a time: peak memory follows this, not N


def generate_data(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
) -> SynthData:
    """The full generator in memory (the chunks of `generate_chunks` put together, so it gives the
    same rows as `privmodel synth`); `generate` wraps it for pandas users."""
    parts = list(generate_chunks(n_customers, n_silos, seed=seed, heterogeneity=heterogeneity, locales=locales,
                                 mess_rate=mess_rate, chunk_rows=chunk_rows))
    if len(parts) == 1:
        return parts[0]
    return replace(
        parts[0],
        table=pa.concat_tables([p.table for p in parts]),
        p_churn=np.concatenate([p.p_churn for p in parts]),
        p_will_purchase=np.concatenate([p.p_will_purchase for p in parts]),
        mess=merge_mess([p.mess for p in parts]),
    )


def merge_mess(counts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mess counts of a run from those of its chunks (the rate once, the row counts added)."""
    merged: dict[str, float] = {}
    for one in counts:
        for kind, value in one.items():
            merged[kind] = value if kind == "rate" else merged.get(kind, 0) + value
    return merged


def generate_chunks(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[SynthData]:
    """The population as consecutive blocks of at most `chunk_rows` rows (plus their duplicates
    with mess), in silo order, so a caller can write N rows holding one block at a time.

    Silo profiles, city mix, postcodes and the Faker pools are set up once; chunk c draws from its
    own streams (stream k of chunk 0 is child k of `SeedSequence(seed)`, as in a one-chunk run;
    of chunk c > 0 that child's child c), and unique columns continue from the previous chunk
    (`identity.UniqueParts`). The same seed and chunk size give the same rows. Mess is injected
    per chunk at the same rate, duplicates inside their own chunk and silo.
    """
    check_params(n_customers, n_silos, heterogeneity, mess_rate)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError("--seed must be a non-negative integer")
    if not isinstance(chunk_rows, int | np.integer) or chunk_rows <= 0:
        raise InputError("chunk_rows must be a positive integer")
    locs = check_locales(locales if isinstance(locales, str) else list(locales))
    return _chunks(_setup(int(n_customers), int(n_silos), int(seed), heterogeneity, locs), mess_rate, int(chunk_rows))


@dataclass(frozen=True)
class _Setup:
    """What every chunk of one run shares (small: no per-row arrays)."""

    n: int
    seed: int
    heterogeneity: float
    locs: tuple[str, ...]
    pools: list[Pools]
    profiles: list[SiloProfile]
    sizes: np.ndarray  # rows per silo
    weights: np.ndarray
    zips: list[str]
    cities: list[str]
    regions: list[str]


def _setup(n: int, n_silos: int, seed: int, heterogeneity: float, locs: tuple[str, ...]) -> _Setup:
    pools = [build_pools(loc, seed) for loc in locs]
    n_loc = len(locs)
    return _Setup(
        n=n,
        seed=seed,
        heterogeneity=heterogeneity,
        locs=locs,
        pools=pools,
        profiles=population.silo_profiles(n_silos, heterogeneity, seed, n_loc),
        sizes=population.silo_sizes(n, n_silos),
        weights=population.city_weights(n_loc, seed),
        zips=population.zip_table(n_loc, [LOCALES[loc].zip_len for loc in locs], seed),
        cities=_distinct_cities(pools),
        regions=[f"{LOCALES[loc].country} {r}" for loc in locs for r in REGIONS],
    )


def _chunks(setup: _Setup, mess_rate: float, chunk_rows: int) -> Iterator[SynthData]:
    parts = identity.UniqueParts()
    ends = np.cumsum(setup.sizes)
    for index, first in enumerate(range(0, setup.n, chunk_rows)):
        rows = np.arange(first, min(first + chunk_rows, setup.n), dtype=np.int64)
        silo = np.searchsorted(ends, rows, side="right").astype(np.int64)
        streams = [
            np.random.default_rng(np.random.SeedSequence(setup.seed, spawn_key=(k, index) if index else (k,)))
            for k in range(8)
        ]
        data = _chunk(setup, silo, streams, parts)
        if mess_rate > 0:
            from privmodel.data.synth.mess import add_mess

            add_mess(data, mess_rate, streams[5])
        yield data
        del data  # not kept alive while the next chunk is generated


def _chunk(
    setup: _Setup, silo: np.ndarray, streams: list[np.random.Generator], parts: identity.UniqueParts
) -> SynthData:
    """The rows of one chunk (`silo`: the silo of each row, sorted)."""
    n, profiles = len(silo), setup.profiles
    counts = np.bincount(silo, minlength=len(profiles))
    present = np.flatnonzero(counts)
    sizes = counts[present]
    city = population.draw_cities(
        streams[0], sizes, [profiles[s] for s in present], setup.weights, setup.heterogeneity
    )
    per_locale = len(REGIONS) * CITIES_PER_REGION
    loc_idx = city // per_locale
    zip_idx = city * ZIPS_PER_CITY + streams[0].integers(0, ZIPS_PER_CITY, size=n)
    people = population.draw_people(streams[1], silo, profiles)

    cols: dict[str, pa.Array | np.ndarray] = {}
    cols["customer_id"] = identity.customer_ids(streams[2], n, parts)
    zip_codes = np.array(setup.zips, dtype=np.int64)[zip_idx]
    cols.update(_identity_columns(streams[3], setup.pools, loc_idx, people, zip_codes, parts))
    cols["birth_date"] = pa.array(people["birth_date"], type=pa.date32())
    cols["age"] = people["age"]
    cols["gender"] = _labels(GENDERS, people["gender"])
    cols["zip_code"] = pa.array(setup.zips, type=pa.string()).take(pa.array(zip_idx))
    cols["city"] = pa.array(setup.cities, type=pa.string()).take(pa.array(city))
    cols["occupation"] = _labels(tuple(OCCUPATIONS), people["occupation"])
    cols["marital_status"] = _labels(MARITAL, people["marital_status"])
    for name in BEHAVIOUR:
        cols[name] = _labels(CHANNELS, people[name]) if name == "channel" else people[name]
    for name in CONSENT:
        cols[name] = people[name]

    frame = {**people, "silo": silo}
    p_churn = truth.sigmoid(truth.churn_logit(frame, [p.churn_offset for p in profiles]))
    p_buy = truth.sigmoid(truth.purchase_logit(frame, [p.purchase_offset for p in profiles]))
    u = streams[4].random((2, n))
    cols["churn"] = (u[0] < p_churn).astype(np.int64)
    cols["will_purchase"] = (u[1] < p_buy).astype(np.int64)
    cols["silo"] = silo
    return SynthData(
        pa.table({name: cols[name] for name in COLUMNS}),
        p_churn,
        p_buy,
        profiles,
        setup.locs,
        setup.regions,
        {c: setup.regions[i // CITIES_PER_REGION] for i, c in enumerate(setup.cities)},
    )


@overload
def generate(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    return_truth: Literal[False] = False,
) -> pd.DataFrame: ...


@overload
def generate(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    return_truth: Literal[True],
) -> tuple[pd.DataFrame, pd.DataFrame]: ...


@overload
def generate(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    return_truth: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]: ...


def generate(
    n_customers: int,
    n_silos: int = 1,
    *,
    seed: int = 0,
    heterogeneity: float = 0.5,
    locales: str | Sequence[str] = "en_US",
    mess_rate: float = 0.0,
    return_truth: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic customers as a DataFrame (with a `silo` column); with `return_truth` also the
    true label probabilities (columns p_churn, p_will_purchase, silo) aligned row by row."""
    data = generate_data(
        n_customers, n_silos, seed=seed, heterogeneity=heterogeneity, locales=locales, mess_rate=mess_rate
    )
    frame = data.to_pandas()
    return (frame, data.truth_frame()) if return_truth else frame


def true_probabilities(frame: Columns, profiles: Sequence[SiloProfile] | None = None) -> pd.DataFrame:
    """Recompute p_churn / p_will_purchase from clean columns (the silo offsets come from
    `profiles`, e.g. `population.silo_profiles(n_silos, heterogeneity, seed, n_locales)`)."""
    import pandas as pd

    churn_off = [p.churn_offset for p in profiles] if profiles else None
    buy_off = [p.purchase_offset for p in profiles] if profiles else None
    return pd.DataFrame(
        {
            "p_churn": truth.sigmoid(truth.churn_logit(frame, churn_off)),
            "p_will_purchase": truth.sigmoid(truth.purchase_logit(frame, buy_off)),
        },
        index=getattr(frame, "index", None),
    )


def _distinct_cities(pools: list[Pools]) -> list[str]:
    """All locales' cities; a name another locale already uses gets its country appended, so the
    city -> region tree of the policy stays a function."""
    seen: set[str] = set()
    out = []
    for pool in pools:
        for city in pool.cities:
            name = city if city not in seen else f"{city} ({LOCALES[pool.locale].country})"
            seen.add(name)
            out.append(name)
    return out


def _labels(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pa.array(list(names), type=pa.string()).take(pa.array(codes.astype(np.int64)))


def _identity_columns(
    rng: np.random.Generator,
    pools: list[Pools],
    loc_idx: np.ndarray,
    people: dict[str, np.ndarray],
    zip_codes: np.ndarray,
    parts: identity.UniqueParts,
) -> dict[str, pa.Array]:
    """Identifier columns per locale block, then put back in row order."""
    n = len(loc_idx)
    # distinct suffix per row (continuing the earlier chunks' numbers) keeps every e-mail unique
    email_no = parts.start("email", n) + rng.permutation(n) + 1
    blocks: dict[str, list[pa.Array]] = {
        k: [] for k in ("full_name", "email", "phone", "national_id", "street_address")
    }
    order = []
    for li, pool in enumerate(pools):
        rows = np.flatnonzero(loc_idx == li) if len(pools) > 1 else np.arange(n)
        if not len(rows):
            continue
        order.append(rows)
        block = identity.identity_block(rng, pool, people["gender"][rows], email_no[rows])
        fmt = LOCALES[pool.locale]
        if fmt.national_id == "cn18":
            block["national_id"] = identity.cn_resident_ids(
                rng, zip_codes[rows], people["birth_date"][rows], people["gender"][rows] == 0
            )
        else:
            block["national_id"] = identity.render_template(
                fmt.national_id, rng, len(rows), unique=f"national_id {pool.locale}", parts=parts
            )
        for key in blocks:
            blocks[key].append(block[key])
    if len(order) == 1:
        return {k: v[0] for k, v in blocks.items()}
    inverse = pa.array(np.argsort(np.concatenate(order), kind="stable"))
    return {k: pa.concat_arrays(v).take(inverse) for k, v in blocks.items()}
