"""The rows a model path may read, and what one of its privacy units is.

Every path that trains, curves or scores on customer rows (CLI, demo, estimator, federated partner)
calls `model_rows`: it is the one place where the policy's consent and purpose rules apply to the
MODEL path. Two kinds of input are accepted:

- raw customer rows: run through `anonymize.pipeline.minimise` (validate, quality, consent and
  purpose filter, identifiers dropped or keyed, fixed recodings only). The customer is the unit of
  privacy: DP-SGD on these rows gives ε per customer.
- an anonymize release (recognised by the `report.json` the release path writes beside it, for the
  same policy and row count): consent was applied when the release was made, but the release's
  generalization was chosen from the data (Mondrian / lattice search), so removing one customer can
  change other released rows. DP-SGD on it protects release rows, not customers, and the card says so.

A raw table without the consent column a policy requires is refused: consent cannot be checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from anonymize.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from anonymize.forked import Pending
    from anonymize.policy.schema import Policy

UNIT_CUSTOMER = "customer"
UNIT_RELEASE_ROW = "release row"


@dataclass(frozen=True)
class ReleaseSource:
    """An anonymize release a model was trained on (named on the card)."""

    name: str
    k: int | None
    algorithm: str | None


@dataclass
class ModelRows:
    """Rows a model path may use, the unit of privacy they give, and what was removed (by reason)."""

    frame: pd.DataFrame
    unit: str
    rows_in: int
    positions: np.ndarray  # 0-based row of the input file each kept row came from
    removed: dict[str, int] = field(default_factory=dict)
    release: ReleaseSource | None = None
    # the input file's table content hash (its budget identity), computed in a forked child from the
    # table already read (`model_rows(..., content_hash=True)`), so the budget does not read it again
    content_hash: Pending[str] | None = field(default=None, repr=False)
    # rows kept when `frame` holds none of them (`encoded.encode_file`: they went to memory-mapped arrays)
    used: int | None = None

    @property
    def guarantee(self) -> str:
        """One sentence for the first lines of a card: what ε is per."""
        if self.release is None:
            return ("ε is per customer: the model was trained on the customers' own rows after the policy's "
                    "consent filter and data minimisation, with no data-dependent generalization.")
        k = "unknown" if self.release.k is None else str(self.release.k)
        return (f"ε is per RELEASE ROW, not per customer: the model was trained on the anonymize release "
                f"{self.release.name} (k = {k}, {self.release.algorithm or 'unknown algorithm'}), whose "
                "generalization was chosen from the data; this is not a per-customer guarantee.")

    def as_record(self) -> dict[str, object]:
        """JSON-ready counts for the card and the ledger (numbers and names only)."""
        return {"unit": self.unit, "rows_in": self.rows_in, "rows_used": int(len(self.frame)) if self.used is None else self.used,
                "removed": dict(self.removed),
                "release": None if self.release is None else {"name": self.release.name, "k": self.release.k,
                                                              "algorithm": self.release.algorithm}}


def text_columns(policy: Policy) -> list[str]:
    """Columns read as text from CSV (zip codes and ids keep their leading zeros)."""
    return [name for name, col in policy.columns.items() if col.type in ("string", "categorical")]


def release_beside(path: Path, rows: int, policy: Policy) -> ReleaseSource | None:
    """The release that `path` is, when the release path's report.json beside it says so."""
    from anonymize.report import REPORT_FORMAT

    report_path = path.parent / "report.json"
    if not report_path.is_file():
        return None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        return None
    released = (report.get("rows") or {}).get("released")
    if released != rows or (report.get("policy") or {}).get("name") != policy.name:
        return None
    privacy = report.get("privacy") or {}
    k = (privacy.get("achieved") or {}).get("k")
    return ReleaseSource(name=path.name, k=k if isinstance(k, int) else None,
                         algorithm=privacy.get("algorithm") if isinstance(privacy.get("algorithm"), str) else None)


def model_rows(path: Path, policy: Policy, keys: Path | None, content_hash: bool = False) -> ModelRows:
    """Read `path` and return the rows a model may use under `policy` (see the module docstring).
    `content_hash`: also start hashing the table as `budget.content_id` would (see ModelRows)."""
    from privmodel.core.fileio import read_table

    text = text_columns(policy)
    frame = read_table(path, text_columns=text)
    pending = None
    # a CSV read with text columns is not the table `content_id` reads: that one is re-read there
    if content_hash and (path.suffix.lower() == ".parquet" or not text) and not getattr(policy, "dataset", None):
        from anonymize.forked import Pending
        from privmodel.dp.budget import frame_id

        pending = Pending(frame_id, frame)
    release = release_beside(path, len(frame), policy)
    if release is not None:
        import numpy as np

        return ModelRows(frame=frame, unit=UNIT_RELEASE_ROW, rows_in=int(len(frame)),
                         positions=np.arange(len(frame)), release=release, content_hash=pending)
    rows = minimised_rows(frame, policy, keys, source=str(path))
    rows.content_hash = pending
    return rows


def minimised_rows(frame: pd.DataFrame, policy: Policy, keys: Path | None, *, source: str,
                   partner: str | None = None, empty_ok: bool = False, secret: bytes | None = None) -> ModelRows:
    """Raw customer rows through the policy's consent filter and minimisation (one function for all paths);
    `empty_ok` for one batch of a larger table (see `minimise`); `secret`: the pseudonymization secret
    of `keys`, loaded once by the caller (a batched or Ray run: a worker node has no key directory)."""
    from anonymize.pipeline import minimise
    from privmodel.core.keys import ensure_keys, load_pseudonym_secret

    consent = policy.purpose.consent
    if consent is not None and consent not in frame.columns:
        raise InputError(f"{source}: consent column {consent} is missing; purpose {policy.purpose.name!r} needs it "
                         "to remove customers without consent (or train on an anonymize release)")
    if secret is None:
        secret = load_pseudonym_secret(ensure_keys(keys))
    result = minimise(frame, policy, secret, source=source, partner=partner, empty_ok=empty_ok)
    return ModelRows(frame=result.data.reset_index(drop=True), unit=UNIT_CUSTOMER, rows_in=int(result.rows_in),
                     positions=result.positions, removed={k: int(v) for k, v in result.removed.items()})


def consenting(frame: pd.DataFrame, policy: Policy, source: str) -> tuple[pd.DataFrame, np.ndarray, dict[str, int]]:
    """A feature table (e.g. an estimator's X) through the policy's consent rule, without minimisation:
    (kept rows with the consent column dropped, their 0-based positions, removed by reason).

    The same rule as `minimise` (`anonymize.quality.consent_rule`); a table without the consent column a
    policy requires is refused.
    """
    import numpy as np

    from anonymize.quality import consent_flags, consent_rule

    consent = policy.purpose.consent
    if consent is None:
        return frame, np.arange(len(frame)), {}
    if consent not in frame.columns:
        raise InputError(f"{source}: consent column {consent} is missing; purpose {policy.purpose.name!r} needs it "
                         "to remove customers without consent")
    keep, removed = consent_rule(consent_flags(frame[consent], policy, source))
    if not keep.any():
        raise InputError(f"{source}: no rows left after the consent filter for purpose {policy.purpose.name!r}")
    return frame.loc[keep].drop(columns=[consent]).reset_index(drop=True), np.flatnonzero(keep), removed
