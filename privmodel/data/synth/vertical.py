"""Synthetic vertical partners: a bank (label party), a retailer and optionally a telco (feature parties) over one population.

Why: vertical federation is only worth its cost when the label needs both parties' columns. Here the
churn label is drawn from a documented logistic ground truth with a bank part and a retailer part, so
the value of joining is real and known (`VerticalData.bayes_auc` against `bank_only_auc`).

Population and overlap: `generate_data(N)` draws N people; the bank holds nb = N / (2 - overlap) of
them, the retailer as many, and `overlap` is the share of the bank's customers the retailer also
holds (|B n R| = round(overlap * nb)); the union is N. Each party writes its own identifier formats:
the bank keeps e-mail as generated and the national id with dashes ("123-45-6789"); the retailer
upper-cases some e-mails and pads them with spaces, and writes national ids as bare digits. Each
party's policy (written by `party_files`) says how to normalise them (`strip`, `lower`, `digits`).

Ground truth (vertical churn logit, a = (age - 45) / 15, r = log1p(recency_days) - 2.5,
f = log1p(baskets_12m) - 2.5):
    z = -1.7 + 0.7 a^2 + 1.6 exp(-tenure_months / 6) + 1.6 [complaints_12m >= 2] - 0.4 (num_products - 2)
             + (0.5 + 1.2 [channel == app]) r - 0.6 f
The bank alone sees the first line, the retailer the second.

A second feature party (`feature_parties=2`): a telco holding, for the same stated overlap of the bank's
customers (chosen independently of the retailer's, so about overlap^2 of the bank is at all three) and
every non-bank person, tenure with the telco, monthly data usage, support calls and contract type.
Its columns are drawn from their own seeded stream (SeedSequence([seed, 0x7E1C0])), so the default
run draws exactly what it always did. Its identifiers: some e-mails in full-width characters and
upper case (normalise `nfkc`, `strip`, `lower`), national ids with spaces ("123 45 6789", `digits`).
Its ground-truth part is added to the logit above (c = [contract == monthly]):
    z += 0.1 + 1.8 [support_calls_12m >= 3] + (1.0 + 2.0 c) exp(-telco_tenure_months / 12) - 0.4 log1p(data_gb_month)
so then no party alone, and no pair, reaches the ground truth's AUC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anonymize.errors import InputError
from privmodel.data.synth.core import generate_data
from privmodel.data.synth.truth import sigmoid

DEFAULT_OVERLAP = 0.7
BANK, RETAILER = "bank", "retailer"
BANK_FEATURES = ("age", "annual_income", "tenure_months", "num_products", "complaints_12m", "monthly_balance")
RETAILER_FEATURES = ("baskets_12m", "basket_value", "channel", "recency_days")
TELCO = "telco"
TELCO_FEATURES = ("telco_tenure_months", "data_gb_month", "support_calls_12m", "contract")
TELCO_CONTRACTS = ("monthly", "annual", "two_year")
FEATURE_PARTIES = (RETAILER, TELCO)  # in the order --feature-parties adds them
RETAILER_CHANNELS = ("store", "app", "web")  # population channel codes 0 / 1 / 2 (branch -> store)
JOIN_KEYS = ("email", "national_id")
INTERCEPT = -1.7


@dataclass
class VerticalData:
    """The two parties' tables, the true churn probabilities of the bank's rows and the set-up."""

    bank: pa.Table
    retailer: pa.Table
    p_churn: np.ndarray  # aligned with `bank` rows
    p_bank_part: np.ndarray  # sigmoid of the bank-only part of the logit (a reference, not E[y | bank])
    overlap: float
    shared: int
    telco: pa.Table | None = None  # the second feature party (feature_parties=2)
    shared_all: int | None = None  # customers of all three parties (feature_parties=2)
    p_without_telco: np.ndarray | None = None  # sigmoid of the bank and retailer parts (feature_parties=2)

    def summary(self) -> dict[str, Any]:
        """Sizes, overlap and the AUC the ground truth reaches (shared customers, bank rows)."""
        from privmodel.data.synth.truth import bayes_auc

        telco = {} if self.telco is None else {"telco_rows": self.telco.num_rows, "shared_all": self.shared_all}
        return {
            "bank_rows": self.bank.num_rows,
            "retailer_rows": self.retailer.num_rows,
            **telco,
            "shared": self.shared,
            "overlap": self.overlap,
            "churn_rate": float(np.mean(self.bank.column("churn").to_numpy())),
            "bayes_auc": bayes_auc(self.p_churn),
        }

    def tables(self) -> dict[str, pa.Table]:
        """Party name -> table, the label party first."""
        out = {BANK: self.bank, RETAILER: self.retailer}
        if self.telco is not None:
            out[TELCO] = self.telco
        return out


def check_overlap(overlap: float) -> float:
    """Refuse an overlap outside (0, 1] with the CLI option's name."""
    if not (isinstance(overlap, int | float) and 0.0 < float(overlap) <= 1.0):
        raise InputError("--overlap must be in (0, 1]")
    return float(overlap)


def check_feature_parties(n: int) -> int:
    """Refuse a feature-party count this generator does not have (the retailer, then the telco)."""
    if not isinstance(n, int) or not 1 <= n <= len(FEATURE_PARTIES):
        raise InputError(f"--feature-parties must be 1 or {len(FEATURE_PARTIES)}")
    return n


def telco_logit(cols: dict[str, np.ndarray]) -> np.ndarray:
    """The telco's part of the churn logit (module doc); `cols` maps telco column names to arrays."""
    monthly = np.asarray(cols["contract"]) == 0
    return (0.1 + 1.8 * (cols["support_calls_12m"] >= 3)
            + (1.0 + 2.0 * monthly) * np.exp(-cols["telco_tenure_months"].astype(float) / 12.0)
            - 0.4 * np.log1p(cols["data_gb_month"].astype(float)))


def _telco_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The telco's columns for the whole population, from the telco's own stream."""
    return {
        "telco_tenure_months": np.minimum(np.round(rng.gamma(1.5, 20.0, n)), 240).astype(np.int64),
        "data_gb_month": np.round(rng.lognormal(1.3, 0.9, n), 2),
        "support_calls_12m": rng.poisson(1.0, n).astype(np.int64),
        "contract": rng.choice(len(TELCO_CONTRACTS), n, p=[0.5, 0.3, 0.2]),
    }


def vertical_logits(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(bank part, retailer part) of the churn logit; `cols` maps column names to arrays."""
    a = (cols["age"].astype(float) - 45.0) / 15.0
    bank = (0.7 * a**2 + 1.6 * np.exp(-cols["tenure_months"].astype(float) / 6.0)
            + 1.6 * (cols["complaints_12m"] >= 2) - 0.4 * (cols["num_products"].astype(float) - 2.0))
    r = np.log1p(cols["recency_days"].astype(float)) - 2.5
    f = np.log1p(cols["baskets_12m"].astype(float)) - 2.5
    app = np.asarray(cols["channel"]) == 1
    retail = (0.5 + 1.2 * app) * r - 0.6 * f
    return bank, retail


def generate_vertical(n_customers: int, *, overlap: float = DEFAULT_OVERLAP, seed: int = 0,
                      feature_parties: int = 1) -> VerticalData:
    """The population, split into the parties' tables (rows shuffled, identifiers reformatted)."""
    overlap = check_overlap(overlap)
    check_feature_parties(feature_parties)
    if not isinstance(n_customers, int | np.integer) or n_customers < 10:
        raise InputError("--customers must be an integer of at least 10 for --vertical")
    data = generate_data(int(n_customers), 1, seed=seed)
    t = data.table
    n = t.num_rows
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E127]))
    nb = int(round(n / (2.0 - overlap)))
    shared = int(round(overlap * nb))
    perm = rng.permutation(n)
    bank_rows = perm[:nb]
    retail_rows = np.concatenate([perm[nb - shared:nb], perm[nb:nb + (nb - shared)]])
    cols = {name: t.column(name).to_numpy(zero_copy_only=False) for name in
            ("age", "tenure_months", "complaints_12m", "num_products", "recency_days", "frequency")}
    cols["channel"] = pc.index_in(t.column("channel"), pa.array(["branch", "app", "web"])).to_numpy()
    cols["baskets_12m"] = cols["frequency"]
    bank_z, retail_z = vertical_logits(cols)
    telco_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E1C0])) if feature_parties > 1 else None
    telco_cols = _telco_columns(n, telco_rng) if telco_rng is not None else None
    telco_z = telco_logit(telco_cols) if telco_cols is not None else 0.0
    p = sigmoid(INTERCEPT + bank_z + retail_z + telco_z)
    churn = (rng.random(n) < p).astype(np.int64)
    telco_rows = None
    if telco_rng is not None:  # the stated overlap of the bank's customers, drawn apart from the retailer's
        telco_rows = telco_rng.permutation(np.concatenate([telco_rng.choice(perm[:nb], shared, replace=False),
                                                           perm[nb:nb + (nb - shared)]]))
    bank_rows = rng.permutation(bank_rows)
    retail_rows = rng.permutation(retail_rows)
    bank = _bank_table(t, bank_rows, churn, rng)
    retailer = _retailer_table(t, retail_rows, cols["channel"], rng)
    result = VerticalData(bank, retailer, p[bank_rows], sigmoid(INTERCEPT + bank_z[bank_rows]), overlap, shared)
    if telco_rows is not None and telco_cols is not None and telco_rng is not None:
        result.telco = _telco_table(t, telco_rows, telco_cols, telco_rng)
        result.shared_all = len(np.intersect1d(np.intersect1d(bank_rows, retail_rows), telco_rows))
        result.p_without_telco = sigmoid(INTERCEPT + bank_z + retail_z)[bank_rows]
    return result


def _bank_table(t: pa.Table, rows: np.ndarray, churn: np.ndarray, rng: np.random.Generator) -> pa.Table:
    idx = pa.array(rows)
    out = {
        "account_id": pa.array([f"A{v:09d}" for v in rng.permutation(len(rows)) + 10**8]),
        "email": t.column("email").take(idx),
        "national_id": t.column("national_id").take(idx),
    }
    for name in BANK_FEATURES:
        out[name] = t.column(name).take(idx)
    out["consent_analytics"] = t.column("consent_analytics").take(idx)
    out["churn"] = pa.array(churn[rows])
    return pa.table(out)


def _retailer_table(t: pa.Table, rows: np.ndarray, channel: np.ndarray, rng: np.random.Generator) -> pa.Table:
    idx = pa.array(rows)
    email = t.column("email").take(idx)
    shout = rng.random(len(rows)) < 0.3  # upper-cased at the till
    pad = rng.random(len(rows)) < 0.2  # typed with spaces around
    email = pc.if_else(pa.array(shout), pc.utf8_upper(email), email)
    email = pc.if_else(pa.array(pad), pc.binary_join_element_wise("  ", email, " ", ""), email)
    national = pc.replace_substring(t.column("national_id").take(idx), "-", "")
    frequency = t.column("frequency").take(idx)
    monetary = t.column("monetary").take(idx).to_numpy()
    baskets = np.maximum(frequency.to_numpy(), 0)
    value = np.round(monetary / np.maximum(baskets, 1) * 0.8 + rng.gamma(2.0, 5.0, len(rows)), 2)
    return pa.table({
        "loyalty_id": pa.array([f"L{v:010d}" for v in rng.permutation(len(rows)) + 10**9]),
        "email": email,
        "national_id": national,
        "baskets_12m": pa.array(baskets),
        "basket_value": pa.array(value),
        "channel": pa.array(list(RETAILER_CHANNELS), type=pa.string()).take(pa.array(channel[rows])),
        "recency_days": t.column("recency_days").take(idx),
        "consent_analytics": t.column("consent_analytics").take(idx),
    })


def _fullwidth(value: str) -> str:
    """ASCII printable characters as their full-width forms (U+FF01..U+FF5E): what NFKC folds back."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in value)


def _telco_table(t: pa.Table, rows: np.ndarray, cols: dict[str, np.ndarray], rng: np.random.Generator) -> pa.Table:
    idx = pa.array(rows)
    wide = rng.random(len(rows)) < 0.15  # keyed in on a full-width keyboard
    shout = rng.random(len(rows)) < 0.3
    email = [(_fullwidth(e) if w else e).upper() if s else (_fullwidth(e) if w else e)
             for e, w, s in zip(t.column("email").take(idx).to_pylist(), wide, shout, strict=True)]
    national = pc.replace_substring(t.column("national_id").take(idx), "-", " ")
    return pa.table({
        "subscriber_id": pa.array([f"T{v:010d}" for v in rng.permutation(len(rows)) + 10**9]),
        "msisdn": t.column("phone").take(idx),
        "email": pa.array(email, type=pa.string()),
        "national_id": national,
        "telco_tenure_months": pa.array(cols["telco_tenure_months"][rows]),
        "data_gb_month": pa.array(cols["data_gb_month"][rows]),
        "support_calls_12m": pa.array(cols["support_calls_12m"][rows]),
        "contract": pa.array(list(TELCO_CONTRACTS), type=pa.string()).take(pa.array(cols["contract"][rows])),
        "consent_analytics": t.column("consent_analytics").take(idx),
    })


def _feature(kind: str, bounds: tuple[float, float], transform: str = "none") -> dict[str, Any]:
    return {"role": "feature", "type": kind, "bounds": list(bounds), "transform": transform}


def party_policies(min_overlap: int, feature_parties: int = 1) -> dict[str, dict[str, Any]]:
    """File name -> YAML document: each party's release/model policy and its vertical party file.

    The policy is the project's ordinary policy (consent, purpose, budget, dataset identity: read by
    `anonymize.pipeline.minimise` and `privmodel.dp.budget`); the party file names that policy, the
    party's role, its join keys with their normalisation, and the smallest overlap it accepts.
    """
    ident = {"role": "identifier", "type": "string", "method": "drop"}
    consent = {"role": "consent", "type": "boolean"}
    bank_cols: dict[str, Any] = {
        "account_id": dict(ident), "email": dict(ident), "national_id": dict(ident),
        "age": _feature("integer", (18, 100)),
        "annual_income": _feature("float", (0.0, 500_000.0), "log1p"),
        "tenure_months": _feature("integer", (0, 480), "log1p"),
        "num_products": _feature("integer", (1, 8)),
        "complaints_12m": _feature("integer", (0, 20)),
        "monthly_balance": _feature("float", (0.0, 1_000_000.0), "log1p"),
        "consent_analytics": dict(consent),
        "churn": {"role": "label", "type": "boolean"},
    }
    retail_cols: dict[str, Any] = {
        "loyalty_id": dict(ident), "email": dict(ident), "national_id": dict(ident),
        "baskets_12m": _feature("integer", (0, 500), "log1p"),
        "basket_value": _feature("float", (0.0, 5_000.0), "log1p"),
        "channel": {"role": "feature", "type": "categorical", "categories": list(RETAILER_CHANNELS)},
        "recency_days": _feature("integer", (0, 365), "log1p"),
        "consent_analytics": dict(consent),
    }
    telco_cols: dict[str, Any] = {
        "subscriber_id": dict(ident), "msisdn": dict(ident), "email": dict(ident), "national_id": dict(ident),
        "telco_tenure_months": _feature("integer", (0, 240), "log1p"),
        "data_gb_month": _feature("float", (0.0, 500.0), "log1p"),
        "support_calls_12m": _feature("integer", (0, 30)),
        "contract": {"role": "feature", "type": "categorical", "categories": list(TELCO_CONTRACTS)},
        "consent_analytics": dict(consent),
    }
    parties = [(BANK, bank_cols, "label"), (RETAILER, retail_cols, "feature")]
    if check_feature_parties(feature_parties) > 1:
        parties.append((TELCO, telco_cols, "feature"))
    docs: dict[str, dict[str, Any]] = {}
    for party, cols, role in parties:
        features = [c for c, spec in cols.items() if spec["role"] in ("feature", "label")]
        docs[f"{party}_policy.yaml"] = {
            "version": 1, "name": f"{party}-vertical-churn", "dataset": f"{party}-customers",
            "purpose": {"name": "vertical_churn", "consent": "consent_analytics", "columns": features},
            "privacy": {"k": 10, "suppression_limit": 0.02, "algorithm": "mondrian"},
            "budget": {"epsilon": 3.0, "delta": 1.0e-5},
            "columns": cols,
        }
        join = {"email": ["nfkc", "strip", "lower"] if party == TELCO else ["strip", "lower"],
                "national_id": ["digits"]}  # fresh lists: no YAML anchors
        docs[f"{party}.party.yaml"] = {
            "version": 1, "party": party, "role": role, "policy": f"{party}_policy.yaml",
            "join": join, "min_overlap": int(min_overlap),
        }
    return docs
