"""Data-quality problems injected at a stated rate, for testing validation and cleaning.

With rate r and n clean rows, m = round(r * n) rows get each problem, on disjoint rows:
  missing      one null in one of MISSING_COLUMNS
  bad_phone    phone without the "+<country code> " form (digits only, or "00" for "+", or " ext" tail)
  bad_birth_date  birth_date not ISO (DD/MM/YYYY, YYYYMMDD or MM-DD-YY); the column becomes text
  bad_age      age outside [18, 100] (negative, single digits or > 100)
  duplicates   m extra rows that copy clean rows (same customer_id), placed inside the same silo
so the table has n + m rows. The true probabilities are copied with the duplicated rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from privmodel.data.synth.core import SynthData

MISSING_COLUMNS = ("email", "zip_code", "occupation", "annual_income", "monthly_balance")
BAD_AGES = np.array([-5, -1, 0, 3, 7, 101, 120, 150, 999])
KINDS = ("missing", "bad_phone", "bad_birth_date", "bad_age", "duplicates")


def add_mess(data: SynthData, rate: float, rng: np.random.Generator) -> None:
    """Corrupt `data` in place and record the counts in `data.mess`."""
    table = data.table
    n = table.num_rows
    m = int(round(rate * n))
    picks = rng.permutation(n)
    missing, bad_phone, bad_date, bad_age = (np.sort(picks[i * m : (i + 1) * m]) for i in range(4))
    clean = picks[4 * m :]

    cols = {name: table.column(name) for name in table.column_names}
    which = rng.integers(0, len(MISSING_COLUMNS), size=m)
    for k, name in enumerate(MISSING_COLUMNS):
        cols[name] = _set_null(cols[name], missing[which == k], n)

    phone = cols["phone"].to_numpy().astype(object)
    for j, row in enumerate(bad_phone):
        text = str(phone[row])
        phone[row] = ("".join(ch for ch in text if ch.isdigit()), "00" + text[1:], text + " ext")[j % 3]
    cols["phone"] = pa.array(phone, type=pa.string())

    dates = cols["birth_date"].to_numpy().astype("datetime64[D]")
    text = np.datetime_as_string(dates, unit="D").astype(object)
    for j, row in enumerate(bad_date):
        y, mo, d = str(text[row]).split("-")
        text[row] = (f"{d}/{mo}/{y}", f"{y}{mo}{d}", f"{mo}-{d}-{y[2:]}")[j % 3]
    cols["birth_date"] = pa.array(text, type=pa.string())

    age = cols["age"].to_numpy().copy()
    age[bad_age] = rng.choice(BAD_AGES, size=m)
    cols["age"] = pa.array(age)

    # duplicates: copy clean rows, each slotted at a random place inside its own silo block
    source = np.sort(rng.choice(clean, size=m, replace=False)) if m else np.zeros(0, dtype=np.int64)
    silo = cols["silo"].to_numpy()
    starts = np.searchsorted(silo, silo[source], side="left")
    ends = np.searchsorted(silo, silo[source], side="right")
    key = np.concatenate([np.arange(n, dtype=float), rng.uniform(starts, ends) if m else np.zeros(0)])
    order = np.concatenate([np.arange(n), source])[np.argsort(key, kind="stable")]
    data.table = pa.table(cols).take(pa.array(order))
    data.p_churn = data.p_churn[order]
    data.p_will_purchase = data.p_will_purchase[order]
    data.mess = {"rate": rate, **dict.fromkeys(KINDS, m)}


def _set_null(column: pa.ChunkedArray, rows: np.ndarray, n: int) -> pa.ChunkedArray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, type=column.type), column)
