"""Direct identifiers for millions of rows without calling Faker per row.

Strings are assembled with pyarrow compute from the per-locale Faker pools; digit-shaped values
(phones, national IDs, customer IDs) are written straight into a fixed-width byte matrix, which
pyarrow wraps as a string array without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from privmodel.data.synth.locales import LOCALES, Pools

# Unique parts come from an affine bijection i -> (a * i + b) mod 10**UNIQUE_DIGITS.
UNIQUE_DIGITS = 8
MAX_ROWS = 10**UNIQUE_DIGITS
_CN_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_CN_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)


def fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """A (n, width) uint8 ASCII matrix -> pyarrow string array (no per-row Python work)."""
    n, width = chars.shape
    offsets = (np.arange(n + 1, dtype=np.int64) * width).astype(np.int32 if n * width < 2**31 else np.int64)
    kind = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    data = np.ascontiguousarray(chars, dtype=np.uint8)
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]).cast(pa.string())


@dataclass(frozen=True)
class Bijection:
    """i -> (a * i + b) mod modulus (modulus a power of ten, a coprime to it): distinct i, distinct values."""

    a: int
    b: int
    modulus: int

    @classmethod
    def draw(cls, rng: np.random.Generator, modulus: int) -> Bijection:
        while True:
            a = int(rng.integers(modulus // 3, modulus))
            if a % 2 and a % 5:
                break
        return cls(a, int(rng.integers(modulus)), modulus)

    def scrambled(self, rng: np.random.Generator, start: int, n: int) -> np.ndarray:
        """The images of start .. start + n - 1 in random order."""
        return (self.a * (start + rng.permutation(n).astype(np.int64)) + self.b) % self.modulus


@dataclass
class UniqueParts:
    """Run-wide state that keeps unique columns unique across chunks generated one by one.

    Each named column gets one bijection, drawn by the first chunk at the point a one-chunk run
    draws it (so a run of one chunk keeps its bytes), and each chunk maps the next block of
    integers through it.
    """

    keys: dict[str, Bijection] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, n: int) -> int:
        """First integer of the next block of n for `name`."""
        first = self.used.get(name, 0)
        self.used[name] = first + n
        return first

    def take(self, name: str, rng: np.random.Generator, n: int, modulus: int) -> np.ndarray:
        """n values of [0, modulus), distinct from every value `name` took before."""
        key = self.keys.get(name)
        if key is None:
            key = self.keys[name] = Bijection.draw(rng, modulus)
        return key.scrambled(rng, self.start(name, n), n)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) non-negative ints -> (n, width) uint8 digit matrix, most significant first."""
    v: npt.NDArray[np.unsignedinteger[Any]] = values.astype(np.uint32 if width <= 9 else np.uint64)
    out = np.empty((len(v), width), dtype=np.uint8)
    for j in range(width - 1, -1, -1):  # column by column: 1-D unsigned divisions are cheap
        q = v // 10
        out[:, j] = v - q * 10
        v = q
    return out


def render_template(
    template: str, rng: np.random.Generator, n: int, unique: str = "", parts: UniqueParts | None = None
) -> pa.Array:
    """Fill '#' (digit) and 'N' (digit 2-9); `unique` (a name in `parts`) makes the last 8 digit slots
    distinct per row, across every call with the same `parts`."""
    raw = np.frombuffer(template.encode("ascii"), dtype=np.uint8)
    slots = np.flatnonzero((raw == ord("#")) | (raw == ord("N")))
    chars = np.empty((n, len(raw)), dtype=np.uint8)
    chars[:] = raw
    k = min(UNIQUE_DIGITS, len(slots)) if unique else 0
    for pos in slots[: len(slots) - k]:
        low = ord("2") if raw[pos] == ord("N") else ord("0")
        chars[:, pos] = rng.integers(low, ord("9") + 1, size=n, dtype=np.uint8)
    if k:
        chars[:, slots[len(slots) - k :]] = _digits((parts or UniqueParts()).take(unique, rng, n, 10**k), k) + np.uint8(ord("0"))
    return fixed_width_strings(chars)


def customer_ids(rng: np.random.Generator, n: int, parts: UniqueParts | None = None) -> pa.Array:
    """'C' + 9 digits, unique per row (and across chunks sharing `parts`), unrelated to row order."""
    chars = np.full((n, 10), ord("C"), dtype=np.uint8)
    chars[:, 1:] = _digits((parts or UniqueParts()).take("customer_id", rng, n, 10**9), 9) + np.uint8(ord("0"))
    return fixed_width_strings(chars)


def cn_resident_ids(rng: np.random.Generator, region6: np.ndarray, birth: np.ndarray, female: np.ndarray) -> pa.Array:
    """18-character PRC resident IDs: region, birth date, sequence (odd = male), ISO 7064 check."""
    n = len(birth)
    chars = np.zeros((n, 18), dtype=np.uint8)
    chars[:, :6] = _digits(region6, 6)
    years = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    months = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = (birth - birth.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    chars[:, 6:14] = _digits(years * 10000 + months * 100 + days, 8)
    seq = rng.integers(0, 500, size=n) * 2 + np.where(female, 0, 1)
    chars[:, 14:17] = _digits(seq, 3)
    check = _CN_CHECK[(chars[:, :17].astype(np.int64) @ _CN_WEIGHTS) % 11]
    out = chars + np.uint8(ord("0"))
    out[:, 17] = check
    return fixed_width_strings(out)


def _template_parts(template: str, fields: dict[str, pa.Array]) -> list[str | pa.Array]:
    """Split "{n} {s}" into [number, " ", street] for an element-wise join."""
    parts: list[str | pa.Array] = []
    rest = template
    while rest:
        hits = [(rest.find(k), k) for k in fields if rest.find(k) >= 0]
        if not hits:
            parts.append(rest)
            break
        at, key = min(hits)
        if at:
            parts.append(rest[:at])
        parts.append(fields[key])
        rest = rest[at + len(key) :]
    return parts


def _join(parts: list[str | pa.Array], sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep)


def _take(values: list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.string()).take(pa.array(idx))


def identity_block(
    rng: np.random.Generator, pools: Pools, gender: np.ndarray, email_no: np.ndarray
) -> dict[str, pa.Array]:
    """full_name, email, phone and street_address for rows of one locale (gender codes F=0, M=1, X=2)."""
    fmt = LOCALES[pools.locale]
    n = len(gender)
    first = pools.female + pools.male
    first_ascii = pools.female_ascii + pools.male_ascii
    nf, nm = len(pools.female), len(pools.male)
    pick_f = rng.integers(0, nf, size=n)
    pick_m = nf + rng.integers(0, nm, size=n)
    pick_x = rng.integers(0, nf + nm, size=n)
    fi = np.where(gender == 0, pick_f, np.where(gender == 1, pick_m, pick_x))
    li = rng.integers(0, len(pools.last), size=n)
    first_s, last_s = _take(first, fi), _take(pools.last, li)
    full = _join([last_s, first_s]) if fmt.family_first else _join([first_s, last_s], " ")
    domain = _take(pools.domains, rng.integers(0, len(pools.domains), size=n))
    email = _join(
        [_take(first_ascii, fi), ".", _take(pools.last_ascii, li), pa.array(email_no).cast(pa.string()), "@", domain]
    )
    phone = render_template(fmt.phone, rng, n)
    street = _take(pools.streets, rng.integers(0, len(pools.streets), size=n))
    number = pa.array(rng.integers(1, 300, size=n)).cast(pa.string())
    address = _join(_template_parts(fmt.address, {"{n}": number, "{s}": street}))
    return {"full_name": full, "email": email, "phone": phone, "street_address": address}
