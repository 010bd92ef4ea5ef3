"""Leak-free tabular encoding for DP training: public bounds and categories, never data statistics.

Why this module exists: DP-SGD protects the gradient steps only. A scaler fitted on the data (raw
min/max, mean/std, the list of observed categories) is itself a release about individuals (the
maximum income *is* one person's income) and would void the guarantee. So the encoder is built
from PUBLIC metadata only:

* numeric column: public bounds [lo, hi] -> clip to the bounds, min-max scale to [0, 1];
  an optional public transform (`log1p`, declared in the policy) is applied after clipping, to the
  value and to both bounds alike, so a skewed non-negative column (tenure in months, spend) is
  spread over [0, 1] instead of squeezed into a sliver of it that DP noise drowns;
  released ranges from anonymization ("[30, 39]") are encoded by their midpoint, a fully
  suppressed "*" by the midpoint of the public bounds;
* categorical column: public category list -> index 1..K; index 0 is the "unknown" slot for any
  value outside the list (generalized values such as "{a,b}", new categories, missing values);
* boolean column: 0 / 1 (true/false/yes/no/1/0).

Missing values: a missing NUMERIC value is an InputError naming the column and the first bad row
(1-based data row) -- we never impute silently; a missing CATEGORICAL value goes to the unknown
slot, which is what that slot is for. Both rules are written into `to_dict()` so the model card
can state them.

Where no public metadata exists, `TabularEncoder.fit_dp` spends a stated epsilon (and, for
categories, delta) on differentially private statistics instead:
* numeric bounds: a Laplace histogram over power-of-two magnitude bins, keeping the outermost
  bins whose noisy count clears a threshold (the "approximate bounds" construction of Google's DP
  library); bounds are coarse (a power of two) but the data only ever leaks through the noise;
* categories: Laplace partition selection (noisy count > 1 + ln(1/(2 delta))/epsilon), which is
  (epsilon, delta)-DP when each row holds one value.
They are hand-written in numpy (about forty lines) because neither Opacus nor dp-accounting ships
DP statistics, and OpenDP / PyDP would be a heavy dependency for two textbook mechanisms.
Their Laplace noise comes from `privmodel.dp.secure_noise` (fresh OS entropy, a sampler hardened
against floating-point attacks): a seeded generator would let anyone replay the noise and read the
exact counts. `fit_dp(insecure_seed=...)` is the test-only reproducible switch (recorded in
`dp_stats["noise"]`; such statistics are NOT differentially private).

This module imports numpy and pandas only (no torch): the CLI and Flower clients import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from anonymize.errors import InputError
from privmodel.dp import secure_noise

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import ColumnPolicy, Policy

# a row selection for `EncodedData.take`: positions or a boolean mask
Rows = npt.NDArray[np.intp] | npt.NDArray[np.int64] | npt.NDArray[np.bool_] | list[int]

ENCODER_FORMAT = 1
UNKNOWN = "<unknown>"  # name of the categorical slot 0 in feature names
NUMERIC_TYPES = ("integer", "float")
CATEGORICAL_TYPES = ("categorical", "string")
TRANSFORMS = ("none", "log1p")
FEATURE_ROLES = ("feature", "quasi_identifier", "sensitive")
MISSING_RULES = {
    "numeric": "error: a missing numeric value is rejected (InputError naming column and row)",
    "categorical": "unknown: a missing or undeclared categorical value maps to the unknown slot",
    "released_range": "midpoint: a released range '[lo, hi]' is encoded by (lo + hi) / 2",
    "suppressed": "midpoint of the public bounds: a fully suppressed '*' carries no information",
}
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}

# DP approximate bounds: magnitude bins [2^k, 2^(k+1)) for k in [_K_MIN, _K_MAX), both signs, plus
# one bin around zero; failure probability of a spurious bin across all bins.
_K_MIN, _K_MAX = -10, 48
_BOUNDS_BETA = 1e-3


@dataclass(frozen=True)
class NumericSpec:
    """A numeric (or boolean) input column and its public bounds."""

    name: str
    lo: float
    hi: float
    source: str = "public"  # "policy" | "public" | "dp"
    boolean: bool = False
    transform: str = "none"  # one of TRANSFORMS, applied to values and bounds before scaling

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Clip to [lo, hi], apply the transform, map the transformed bounds to 0 and 1."""
        clipped = np.clip(values, self.lo, self.hi)
        if self.transform == "log1p":
            lo, hi = math.log1p(self.lo), math.log1p(self.hi)
            return (np.log1p(clipped) - lo) / (hi - lo)
        return (clipped - self.lo) / (self.hi - self.lo)


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical input column and its public category list (slot 0 = unknown)."""

    name: str
    categories: tuple[str, ...]
    source: str = "public"

    @property
    def cardinality(self) -> int:
        return len(self.categories) + 1


@dataclass
class EncodedData:
    """Model-ready arrays: x_num float32 [n, d] in [0, 1], x_cat int64 [n, c] (0 = unknown)."""

    x_num: np.ndarray
    x_cat: np.ndarray
    cat_cardinalities: list[int]
    num_names: list[str]
    cat_names: list[str]

    def __post_init__(self) -> None:
        if self.x_num.shape[0] != self.x_cat.shape[0]:
            raise InputError("encoded data: numeric and categorical parts have different row counts")

    def __len__(self) -> int:
        return int(self.x_num.shape[0])

    @property
    def names(self) -> list[str]:
        """Input column names, numeric first, in the order of the arrays' columns."""
        return [*self.num_names, *self.cat_names]

    def take(self, rows: Rows) -> EncodedData:
        """Row subset (index array or boolean mask), for train/test splits and audits."""
        return EncodedData(self.x_num[rows], self.x_cat[rows], list(self.cat_cardinalities),
                           list(self.num_names), list(self.cat_names))


def _as_str_list(values: Iterable[object]) -> tuple[str, ...]:
    out = tuple(str(v) for v in values)
    if len(set(out)) != len(out):
        raise InputError("categories must not repeat")
    return out


def _bool_values(series: pd.Series, name: str) -> np.ndarray:
    import pandas as pd

    s = series
    if pd.api.types.is_bool_dtype(s.dtype) and not s.isna().any():
        return s.to_numpy(dtype=np.float64)
    text = s.astype("string").str.strip().str.lower()
    out = np.full(len(s), np.nan)
    out[text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)] = 1.0
    out[text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)] = 0.0
    bad = np.isnan(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        what = "missing value" if s.isna().iloc[row - 1] else "value is not a boolean"
        raise InputError(f"column {name!r}, row {row}: {what}")
    return out


def _numeric_values(series: pd.Series, name: str, bounds: tuple[float, float] | None) -> np.ndarray:
    """Numbers from a numeric column or from released strings ('[30, 39]' -> 34.5, '*' -> midpoint)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        unparsed = np.isnan(values) & series.notna().to_numpy()
        if unparsed.any():
            from anonymize.generalization.hierarchies import parse_range

            texts = series.to_numpy(dtype=object)
            for i in np.flatnonzero(unparsed):
                text = str(texts[i]).strip()
                if text == "":
                    continue  # blank cell = missing, reported below
                try:
                    lo, hi = parse_range(text, default=bounds)
                except InputError:
                    raise InputError(
                        f"column {name!r}, row {i + 1}: value is not a number or a released range"
                    ) from None
                values[i] = (lo + hi) / 2.0
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise InputError(f"column {name!r}, row {row}: missing or non-finite numeric value")
    return values


def _check_transforms(transforms: Mapping[str, str] | None, numeric: Mapping[str, object]) -> dict[str, str]:
    """Given transforms as {column: name}; each must name a numeric column and a known transform."""
    out = {str(k): str(v) for k, v in (transforms or {}).items()}
    for name, transform in out.items():
        if name not in {str(n) for n in numeric}:
            raise InputError(f"column {name!r}: a transform applies to declared numeric columns only")
        if transform not in TRANSFORMS:
            raise InputError(f"column {name!r}: transform must be one of {', '.join(TRANSFORMS)}")
    return out


def _require_columns(df: pd.DataFrame, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise InputError(f"column {missing[0]!r} is missing from the table")


def _policy_label(policy: Policy) -> str:
    """The one column the policy declares with role "label"; several or none need `--label`."""
    labels = [n for n, c in policy.columns.items() if getattr(c, "role", None) == "label"]
    if len(labels) != 1:
        raise InputError(f"{getattr(policy, 'source', 'policy')}: name the label column (policy declares {len(labels)})")
    return labels[0]


def _policy_feature_columns(policy: Policy) -> list[str]:
    """The purpose's columns whose role may make them a model feature, in policy order."""
    cols = policy.columns
    allowed = policy.purpose_columns() if hasattr(policy, "purpose_columns") else list(cols)
    return [n for n in allowed if n in cols and getattr(cols[n], "role", None) in FEATURE_ROLES]


def _policy_spec(name: str, col: ColumnPolicy) -> NumericSpec | CategoricalSpec | str:
    """The encoding a policy column's public metadata allows, or why it has none (a reason string)."""
    ctype = getattr(col, "type", None)
    bounds = getattr(col, "bounds", None)
    categories = getattr(col, "categories", None)
    if getattr(col, "role", None) in ("identifier", "drop", "consent", "label"):
        return f"role {col.role} is never a model feature"
    if ctype == "boolean":
        return NumericSpec(name, 0.0, 1.0, "policy", boolean=True)
    if categories is not None:
        return CategoricalSpec(name, _as_str_list(categories), "policy")
    if ctype in NUMERIC_TYPES and bounds is not None:
        return NumericSpec(name, float(bounds[0]), float(bounds[1]), "policy",
                           transform=getattr(col, "transform", "none"))
    if ctype in NUMERIC_TYPES:
        return "numeric column without public bounds"
    return f"{ctype} column without public categories"


class TabularEncoder:
    """Column specs built from public metadata (or stated DP statistics); `transform` applies them."""

    def __init__(
        self,
        numeric: Sequence[NumericSpec] = (),
        categorical: Sequence[CategoricalSpec] = (),
        label: str | None = None,
        skipped: Sequence[Mapping[str, str]] = (),
        dp_stats: Mapping[str, Any] | None = None,
    ) -> None:
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.label = label
        self.skipped = [dict(s) for s in skipped]
        self.dp_stats = dict(dp_stats) if dp_stats else None
        names = [s.name for s in self.numeric] + [s.name for s in self.categorical]
        if not names:
            raise InputError("encoder: no feature columns (give public bounds or categories for at least one)")
        if len(set(names)) != len(names):
            raise InputError("encoder: a column is declared twice")
        if label is not None and label in names:
            raise InputError(f"column {label!r}: the label cannot also be a feature")
        for spec in self.numeric:
            if not (math.isfinite(spec.lo) and math.isfinite(spec.hi) and spec.lo < spec.hi):
                raise InputError(f"column {spec.name!r}: bounds must be finite with low < high")
            if spec.transform not in TRANSFORMS:
                raise InputError(f"column {spec.name!r}: transform must be one of {', '.join(TRANSFORMS)}")
            if spec.transform != "none" and spec.boolean:
                raise InputError(f"column {spec.name!r}: a boolean column takes no transform")
            if spec.transform == "log1p" and spec.lo < 0:
                raise InputError(f"column {spec.name!r}: transform log1p needs non-negative bounds (low >= 0)")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_public(
        cls,
        bounds: Mapping[str, Sequence[float]] | None = None,
        categories: Mapping[str, Iterable[object]] | None = None,
        label: str | None = None,
        booleans: Iterable[str] = (),
        transforms: Mapping[str, str] | None = None,
    ) -> TabularEncoder:
        """Encoder from explicitly given public metadata (domain knowledge, a data dictionary).

        `transforms` maps numeric columns (keys of `bounds`) to a public transform ("log1p").
        """
        transforms = _check_transforms(transforms, bounds or {})
        numeric = []
        for name, b in (bounds or {}).items():
            if len(b) != 2:
                raise InputError(f"column {name!r}: bounds must be [low, high]")
            numeric.append(NumericSpec(str(name), float(b[0]), float(b[1]), "public",
                                       transform=transforms.get(str(name), "none")))
        numeric += [NumericSpec(str(n), 0.0, 1.0, "public", boolean=True) for n in booleans]
        cats = [CategoricalSpec(str(n), _as_str_list(c), "public") for n, c in (categories or {}).items()]
        return cls(numeric, cats, label)

    @classmethod
    def from_policy(cls, policy: Policy, label: str | None = None, columns: Sequence[str] | None = None) -> TabularEncoder:
        """Encoder from a policy's public `bounds` / `categories`.

        `columns=None` takes the purpose's feature, quasi-identifier and sensitive columns; those
        without public metadata (no bounds, no categories, dates, free strings) are left out and
        listed in `skipped` with the reason, for the model card. Explicitly named `columns` must
        all be encodable (InputError otherwise).
        """
        cols = policy.columns
        label = label if label is not None else _policy_label(policy)
        explicit = columns is not None
        if columns is None:
            columns = _policy_feature_columns(policy)
        numeric: list[NumericSpec] = []
        categorical: list[CategoricalSpec] = []
        skipped: list[dict[str, str]] = []
        for name in columns:
            if name == label:
                continue
            if name not in cols:
                raise InputError(f"column {name!r} is not declared in the policy")
            spec = _policy_spec(name, cols[name])
            if isinstance(spec, NumericSpec):
                numeric.append(spec)
            elif isinstance(spec, CategoricalSpec):
                categorical.append(spec)
            elif explicit:
                raise InputError(f"column {name!r}: {spec} (declare them in the policy or use DP statistics)")
            else:
                skipped.append({"name": name, "reason": spec})
        return cls(numeric, categorical, label, skipped)

    @classmethod
    def fit_dp(
        cls,
        df: pd.DataFrame,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        *,
        epsilon: float,
        delta: float = 0.0,
        bounds: Mapping[str, Sequence[float]] | None = None,
        categories: Mapping[str, Iterable[object]] | None = None,
        label: str | None = None,
        insecure_seed: int | None = None,
        transforms: Mapping[str, str] | None = None,
    ) -> TabularEncoder:
        """Encoder whose missing metadata is estimated with DP statistics, spending (epsilon, delta).

        Columns with public `bounds` / `categories` use them and cost nothing. The budget is split
        evenly (basic composition) over the columns that need statistics: epsilon over all of them,
        delta over the categorical ones (numeric bounds are pure epsilon-DP). The total spent is
        recorded in `dp_stats` and must be added to the training cost. A column declared `log1p`
        in `transforms` is non-negative by that declaration, so its DP lower bound (which may reach
        just below zero, the bin around zero) is raised to 0. The noise is secret; `insecure_seed`
        (tests only) makes it reproducible and the statistics NOT differentially private.
        """
        transforms = _check_transforms(transforms, {n: None for n in numeric})
        bounds = dict(bounds or {})
        categories = dict(categories or {})
        need_num = [n for n in numeric if n not in bounds]
        need_cat = [n for n in categorical if n not in categories]
        _require_columns(df, [*numeric, *categorical])
        n_need = len(need_num) + len(need_cat)
        if n_need and not (epsilon > 0 and math.isfinite(epsilon)):
            raise InputError("DP statistics need a positive epsilon share (or give public bounds/categories)")
        if need_cat and not 0.0 < delta < 1.0:
            raise InputError("DP category selection needs a delta share in (0, 1) (or give public categories)")
        noise = secure_noise.source(insecure_seed)
        eps_col = epsilon / n_need if n_need else 0.0
        delta_col = delta / len(need_cat) if need_cat else 0.0
        num_specs = []
        for name in numeric:
            transform = transforms.get(name, "none")
            if name in bounds:
                num_specs.append(NumericSpec(name, float(bounds[name][0]), float(bounds[name][1]), "public",
                                             transform=transform))
            else:
                lo, hi = dp_bounds(_numeric_values(df[name], name, None), eps_col, noise, name)
                if transform == "log1p":
                    lo = max(lo, 0.0)
                    if hi <= lo:
                        raise InputError(f"column {name!r}: transform log1p but the DP bounds are all negative")
                num_specs.append(NumericSpec(name, lo, hi, "dp", transform=transform))
        cat_specs = []
        for name in categorical:
            if name in categories:
                cat_specs.append(CategoricalSpec(name, _as_str_list(categories[name]), "public"))
            else:
                kept = dp_categories(df[name], eps_col, delta_col, noise, name)
                cat_specs.append(CategoricalSpec(name, kept, "dp"))
        stats = None
        if n_need:
            stats = {
                "epsilon": float(epsilon), "delta": float(delta if need_cat else 0.0),
                "composition": "basic (sum over columns)", "columns": [*need_num, *need_cat],
                "numeric_mechanism": "Laplace histogram over power-of-two bins (approximate bounds)",
                "categorical_mechanism": "Laplace partition selection with threshold",
                "noise": noise.kind,
            }
        return cls(num_specs, cat_specs, label, dp_stats=stats)

    # ------------------------------------------------------------------ use
    @property
    def cat_cardinalities(self) -> list[int]:
        return [s.cardinality for s in self.categorical]

    @property
    def n_num(self) -> int:
        return len(self.numeric)

    @property
    def columns(self) -> list[str]:
        return [s.name for s in self.numeric] + [s.name for s in self.categorical]

    def transform(self, df: pd.DataFrame) -> EncodedData:
        """Encode a DataFrame (extra columns are ignored; missing feature columns are an InputError)."""
        _require_columns(df, self.columns)
        n = len(df)
        x_num = np.empty((n, len(self.numeric)), dtype=np.float32)
        for j, spec in enumerate(self.numeric):
            if spec.boolean:
                x_num[:, j] = _bool_values(df[spec.name], spec.name)
                continue
            values = _numeric_values(df[spec.name], spec.name, (spec.lo, spec.hi))
            x_num[:, j] = spec.scale(values)
        x_cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, cat in enumerate(self.categorical):
            x_cat[:, j] = _category_codes(df[cat.name], {c: i + 1 for i, c in enumerate(cat.categories)})
        return EncodedData(x_num, x_cat, self.cat_cardinalities, [s.name for s in self.numeric],
                           [s.name for s in self.categorical])

    def feature_names(self) -> list[str]:
        """One name per model input unit: numeric columns, then `column=category` per slot."""
        out = [s.name for s in self.numeric]
        for s in self.categorical:
            out += [f"{s.name}={UNKNOWN}"] + [f"{s.name}={c}" for c in s.categories]
        return out

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENCODER_FORMAT,
            "label": self.label,
            "numeric": [
                {"name": s.name, "lo": s.lo, "hi": s.hi, "source": s.source, "boolean": s.boolean,
                 "transform": s.transform}
                for s in self.numeric
            ],
            "categorical": [{"name": s.name, "categories": list(s.categories), "source": s.source}
                            for s in self.categorical],
            "skipped": self.skipped,
            "dp_stats": self.dp_stats,
            "missing_values": MISSING_RULES,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularEncoder:
        if data.get("format") != ENCODER_FORMAT:
            raise InputError("encoder.json: unknown encoder format")
        try:
            numeric = [NumericSpec(d["name"], float(d["lo"]), float(d["hi"]), d.get("source", "public"),
                                   bool(d.get("boolean", False)), str(d.get("transform", "none")))
                       for d in data["numeric"]]
            categorical = [CategoricalSpec(d["name"], tuple(d["categories"]), d.get("source", "public"))
                           for d in data["categorical"]]
        except (KeyError, TypeError, ValueError):
            raise InputError("encoder.json: malformed column specification") from None
        return cls(numeric, categorical, data.get("label"), data.get("skipped", ()), data.get("dp_stats"))


# ---------------------------------------------------------------------- labels
def encode_labels(series: pd.Series, column: str = "label", positive: object = None,
                  both_classes: bool = True) -> np.ndarray:
    """Binary label -> float32 0/1. InputError when missing, not binary or a single class
    (`both_classes=False`: one batch of a table, whose classes the caller checks on the whole).

    Recognized without help: booleans, 0/1, yes/no, true/false (any case). Other two-valued labels
    need `positive` (which value is the 1), since guessing the direction would flip the model.
    """
    import pandas as pd

    s = pd.Series(series).reset_index(drop=True)
    if len(s) == 0:
        raise InputError(f"column {column!r}: no labels")
    if s.isna().any():
        raise InputError(f"column {column!r}, row {int(np.flatnonzero(s.isna().to_numpy())[0]) + 1}: missing label")
    if positive is not None:
        key = str(positive).strip()
        text = s.astype(str).str.strip()
        values = sorted(set(text))
        if key not in values or len(values) != 2:
            raise InputError(f"column {column!r}: label must take exactly two values, one of them the positive class")
        y = (text == key).to_numpy(dtype=np.float32)
    else:
        text = s.astype(str).str.strip().str.lower()
        if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
            num = s.to_numpy(dtype=np.float64)
            bad = ~np.isin(num, (0.0, 1.0))
            y = num.astype(np.float32)
        else:
            is_true, is_false = text.isin(_TRUE).to_numpy(), text.isin(_FALSE).to_numpy()
            bad = ~(is_true | is_false)
            y = is_true.astype(np.float32)
        if bad.any():
            raise InputError(
                f"column {column!r}, row {int(np.flatnonzero(bad)[0]) + 1}: label is not binary "
                "(use 0/1, true/false, yes/no, or name the positive class)"
            )
    if both_classes and y.min() == y.max():
        raise InputError(f"column {column!r}: label has a single class; a propensity model needs both")
    return y


# ---------------------------------------------------------------------- DP statistics
def _magnitude_bins(values: np.ndarray) -> np.ndarray:
    """Bin index: 0 = |v| < 2^_K_MIN; +/-(1 + k - _K_MIN) for 2^k <= |v| < 2^(k+1), k clipped."""
    mag = np.abs(values)
    k = np.floor(np.log2(np.maximum(mag, 2.0**_K_MIN)))
    k = np.clip(k, _K_MIN, _K_MAX - 1)
    idx = (k - _K_MIN + 1).astype(np.int64)
    idx[mag < 2.0**_K_MIN] = 0
    return np.where(values < 0, -idx, idx)


def dp_bounds(values: np.ndarray, epsilon: float, noise: secure_noise.NoiseSource, name: str = "column") -> tuple[float, float]:
    """epsilon-DP (lo, hi) covering the bulk of `values`: noisy power-of-two histogram + threshold.

    Sensitivity 1 (adding or removing one row moves one count by one) -> Laplace(1/epsilon). Bins
    whose noisy count exceeds ln(bins / (2 beta)) / epsilon are kept (a bin with no data passes
    with total probability <= beta); the bounds are the outer edges of the outermost kept bins.
    """
    n_side = _K_MAX - _K_MIN + 1
    bins = _magnitude_bins(values) + n_side  # shift to 0 .. 2 n_side
    counts = np.bincount(bins, minlength=2 * n_side + 1).astype(np.float64)
    noisy = counts + noise.laplace(1.0 / epsilon, counts.size)
    threshold = math.log(counts.size / (2 * _BOUNDS_BETA)) / epsilon
    kept = np.flatnonzero(noisy > threshold)
    if kept.size == 0:
        raise InputError(
            f"column {name!r}: too few rows to estimate bounds with DP at epsilon {epsilon:.3g}; give public bounds"
        )

    def edges(b: int) -> tuple[float, float]:
        signed = b - n_side
        if signed == 0:
            return -(2.0**_K_MIN), 2.0**_K_MIN
        k = abs(signed) - 1 + _K_MIN
        lo, hi = 2.0**k, 2.0 ** (k + 1)
        return (-hi, -lo) if signed < 0 else (lo, hi)

    return float(edges(int(kept[0]))[0]), float(edges(int(kept[-1]))[1])


def dp_categories(series: pd.Series, epsilon: float, delta: float, noise: secure_noise.NoiseSource,
                  name: str = "column") -> tuple[str, ...]:
    """(epsilon, delta)-DP category list: Laplace partition selection, one value per row.

    A category is kept when count + Laplace(1/epsilon) > 1 + ln(1/(2 delta)) / epsilon. A category
    held by a single row passes with probability <= delta, which is where delta is spent.
    """
    text = series.dropna().astype(str).str.strip()
    counts = text.value_counts(sort=False)
    names = sorted(counts.index)
    raw = counts.reindex(names).to_numpy(dtype=np.float64)
    noisy = raw + noise.laplace(1.0 / epsilon, raw.size)
    threshold = 1.0 + math.log(1.0 / (2.0 * delta)) / epsilon
    kept = tuple(n for n, v in zip(names, noisy, strict=True) if v > threshold)
    if not kept:
        raise InputError(f"column {name!r}: no category is frequent enough for DP selection; give public categories")
    return kept


def _category_codes(series: pd.Series, lookup: Mapping[str, int]) -> np.ndarray:
    """Slot of each value: exact match of `str(value).strip()` on the declared categories (bools and
    ints compare by their str()), 0 for missing or unknown. A column of one kind of value is encoded
    once per distinct value (factorize, then take); a mixed object column (1, 1.0 and True hash alike,
    but their texts differ) value by value."""
    import pandas as pd

    if series.dtype != object and not isinstance(series.dtype, pd.CategoricalDtype) or (
            series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")):
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        slots = np.array([lookup.get(str(v).strip(), 0) for v in uniques] + [0], dtype=np.int64)
        return slots[codes]  # the sentinel -1 takes the trailing 0: missing
    text = series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else str(v).strip())
    return text.map(lookup).fillna(0).to_numpy(dtype=np.int64)

