"""Per-locale formats and the Faker value pools the generator samples from.

Faker is slow row by row (~2,000 rows/s), so it only fills small pools (first/last names, streets,
cities, e-mail domains) once per locale; numpy and pyarrow combine them for millions of rows.
Phone numbers, national IDs and postcodes come from digit templates, so they need no Faker call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from anonymize.errors import InputError


@dataclass(frozen=True)
class LocaleFormat:
    """How identifiers look in one locale (templates: '#' any digit, 'N' a digit 2-9)."""

    country: str
    phone: str
    national_id: str  # "cn18" = 18-digit PRC resident ID (region, birth date, check digit)
    zip_len: int
    family_first: bool  # full name "<last><first>" without a space
    address: str  # "{n}" house number, "{s}" street


LOCALES: dict[str, LocaleFormat] = {
    "en_US": LocaleFormat("US", "+1 N##-N##-####", "###-##-####", 5, False, "{n} {s}"),
    "en_GB": LocaleFormat("GB", "+44 7### ######", "## ## ## ###", 5, False, "{n} {s}"),
    "en_IN": LocaleFormat("IN", "+91 N#### #####", "#### #### ####", 6, False, "{n}, {s}"),
    "hi_IN": LocaleFormat("IN", "+91 N#### #####", "#### #### ####", 6, False, "{n}, {s}"),
    "de_DE": LocaleFormat("DE", "+49 15# ########", "###########", 5, False, "{s} {n}"),
    "fr_FR": LocaleFormat("FR", "+33 6 ## ## ## ##", "# ## ## ## ### ###", 5, False, "{n}, {s}"),
    "es_ES": LocaleFormat("ES", "+34 6## ### ###", "########", 5, False, "{s}, {n}"),
    "it_IT": LocaleFormat("IT", "+39 3## ### ####", "###########", 5, False, "{s} {n}"),
    "nl_NL": LocaleFormat("NL", "+31 6 ########", "#########", 6, False, "{s} {n}"),
    "pt_BR": LocaleFormat("BR", "+55 ## 9####-####", "###.###.###-##", 5, False, "{s}, {n}"),
    "pl_PL": LocaleFormat("PL", "+48 N## ### ###", "###########", 5, False, "{s} {n}"),
    "ja_JP": LocaleFormat("JP", "+81 90-####-####", "#### #### ####", 7, True, "{s}{n}番"),
    "zh_CN": LocaleFormat("CN", "+86 1N# #### ####", "cn18", 6, True, "{s}{n}号"),
    "zh_TW": LocaleFormat("TW", "+886 9##-###-###", "#########", 5, True, "{s}{n}號"),
    "ko_KR": LocaleFormat("KR", "+82 10-####-####", "######-#######", 5, True, "{s} {n}"),
}
SUPPORTED_LOCALES: tuple[str, ...] = tuple(LOCALES)

# A well-formed phone: "+<country code> " then digits with spaces/dashes, ending in a digit.
PHONE_PATTERN = r"^\+\d{1,4} [0-9][0-9 -]*[0-9]$"
REGIONS = ("North", "South", "East", "West")
CITIES_PER_REGION = 10
ZIPS_PER_CITY = 8
NAME_POOL = 1500
STREET_POOL = 1500


def check_locales(locales: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Normalise the locale option; an unknown or repeated locale is an InputError naming it."""
    items = (locales,) if isinstance(locales, str) else tuple(locales)
    if not items:
        raise InputError("--locale: at least one locale is needed")
    for loc in items:
        if loc not in LOCALES:
            raise InputError(f"--locale: unknown locale {loc!r} (supported: {', '.join(SUPPORTED_LOCALES)})")
    if len(set(items)) != len(items):
        raise InputError("--locale: a locale is listed twice")
    return items


@dataclass(frozen=True)
class Pools:
    """Unique values drawn once per locale; `*_ascii` are e-mail-safe transliterations."""

    locale: str
    female: list[str]
    female_ascii: list[str]
    male: list[str]
    male_ascii: list[str]
    last: list[str]
    last_ascii: list[str]
    streets: list[str]
    cities: list[str]  # len(REGIONS) * CITIES_PER_REGION, region r = cities[r*C:(r+1)*C]
    domains: list[str]


def _ascii(text: str) -> str:
    from faker.decode import unidecode

    return "".join(ch for ch in unidecode(text).lower() if "a" <= ch <= "z") or "user"


def _unique(draw: Callable[[], str], size: int, patience: int = 150) -> list[str]:
    """Up to `size` distinct values from a Faker method (first-seen order, so seed-stable); stops
    early once `patience` draws in a row found nothing new (the provider's list is exhausted)."""
    seen: dict[str, None] = {}
    misses = 0
    while len(seen) < size and misses < patience:
        before = len(seen)
        seen.setdefault(draw(), None)
        misses = misses + 1 if len(seen) == before else 0
    return list(seen)


def build_pools(locale: str, seed: int) -> Pools:
    """Faker pools for one locale, seeded so that the same seed gives the same pools."""
    from faker import Faker

    fake = Faker(locale, use_weighting=False)
    fake.seed_instance(seed)
    if locale == "ja_JP":  # Faker ships kanji names with their romanization: keep them paired
        from faker.providers.person.ja_JP import Provider as JaPerson

        def pairs(items: Iterable[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
            return [p[0] for p in items], [p[2].lower() for p in items]

        female, female_ascii = pairs(JaPerson.first_name_female_pairs)
        male, male_ascii = pairs(JaPerson.first_name_male_pairs)
        last, last_ascii = pairs(JaPerson.last_name_pairs)
        streets = _unique(fake.town, STREET_POOL)
    else:
        female = _unique(fake.first_name_female, NAME_POOL)
        male = _unique(fake.first_name_male, NAME_POOL)
        last = _unique(fake.last_name, NAME_POOL)
        female_ascii = [_ascii(v) for v in female]
        male_ascii = [_ascii(v) for v in male]
        last_ascii = [_ascii(v) for v in last]
        streets = _unique(fake.street_name, STREET_POOL)
    need = len(REGIONS) * CITIES_PER_REGION
    cities = _unique(fake.city, need, patience=400)
    k = 2
    while len(cities) < need:  # small locales run out of city names: number the repeats
        cities += [f"{c} {k}" for c in cities[: need - len(cities)]]
        k += 1
    domains = sorted(_unique(fake.free_email_domain, 20, patience=40))
    return Pools(locale, female, female_ascii, male, male_ascii, last, last_ascii, streets, cities[:need], domains)
