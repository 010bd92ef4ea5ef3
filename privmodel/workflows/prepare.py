"""One prepare / split path for every model workflow: labels, features, the held-out split.

Row numbers in errors are the file's data rows (1 = the first row after a CSV header): `positions`
maps each row the workflow kept (after the consent filter) back to its row in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy
    from privmodel.data.features import TabularEncoder


@dataclass
class Prepared:
    """A labelled table ready to encode: the rows, 0/1 labels and the policy's public encoder."""

    frame: pd.DataFrame
    y: np.ndarray
    encoder: TabularEncoder


def _file_row(positions: np.ndarray | None, i: int) -> int:
    return int(positions[i]) + 1 if positions is not None else i + 1


def labels(frame: pd.DataFrame, label: str, source: str, positions: np.ndarray | None = None,
           both_classes: bool = True) -> np.ndarray:
    """0/1 labels of `label`; one line naming the file and row when missing or single-class
    (`both_classes=False`: a batch of a table, whose classes are checked on the whole)."""
    from privmodel.data.features import encode_labels

    if label not in frame.columns:
        raise InputError(f"{source}: label column {label} is missing")
    missing = frame[label].isna().to_numpy()
    if missing.any():
        row = _file_row(positions, int(np.flatnonzero(missing)[0]))
        raise InputError(f"{source}: label column {label} is empty at data row {row}")
    y = np.asarray(encode_labels(frame[label], label, both_classes=both_classes), dtype=float)
    if both_classes:
        check_both_classes(y, label, source)
    return y


def check_both_classes(y: np.ndarray, label: str, source: str) -> None:
    if y.size == 0 or y.min() == y.max():
        raise InputError(f"{source}: label column {label} has a single class; a propensity model needs both")


def check_features(frame: pd.DataFrame, encoder: TabularEncoder, source: str,
                   positions: np.ndarray | None = None) -> None:
    """Every feature present; numeric features non-empty (no silent imputation hides a data
    problem). A missing categorical value is allowed: the encoder's unknown slot is for it."""
    for column in encoder.columns:
        if column not in frame.columns:
            raise InputError(f"{source}: feature column {column} is missing")
    for spec in encoder.numeric:
        values = frame[spec.name]
        bad = values.isna().to_numpy().copy()
        if values.dtype.kind == "f":
            bad |= ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = _file_row(positions, int(np.flatnonzero(bad)[0]))
            raise InputError(f"{source}: feature column {spec.name} is empty or not finite at data row {row}")


def prepare(frame: pd.DataFrame, policy: Policy, label: str, source: str,
            positions: np.ndarray | None = None) -> Prepared:
    """Labels, the policy's encoder (public bounds and categories only) and the feature checks."""
    from privmodel.data.features import TabularEncoder

    y = labels(frame, label, source, positions)
    encoder = TabularEncoder.from_policy(policy, label)
    check_features(frame, encoder, source, positions)
    return Prepared(frame=frame, y=y, encoder=encoder)


def split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified held-out split by row position; seeded (a data-independent choice)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise InputError("--test-size must be in (0, 1)")
    index = np.arange(len(y))
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    if counts.min() < 2:
        raise InputError("label: each class needs at least 2 rows for a held-out split")
    try:
        train_idx, test_idx = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    except ValueError:
        raise InputError("--test-size leaves too few rows for a stratified split") from None
    return np.sort(train_idx), np.sort(test_idx)


def check_delta(delta: float, n_train: int) -> None:
    """δ must be below 1/n: a mechanism that publishes one random row outright has δ = 1/n."""
    if delta >= 1.0 / n_train:
        raise InputError(f"--delta {delta:g} is not below 1/n = 1/{n_train} (training rows); "
                         "such a δ allows leaking whole records")


def groups(frame: pd.DataFrame, policy: Policy) -> dict[str, np.ndarray] | None:
    """Fairness groups the policy declares, when present in the rows."""
    cols = [c for c in policy.fairness_groups if c in frame.columns]
    return {c: frame[c].to_numpy(dtype=object) for c in cols} or None


def public_categories(policy: Policy) -> dict[str, list[str]]:
    return {name: list(col.categories) for name, col in policy.columns.items() if col.categories}
