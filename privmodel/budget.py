"""Per-dataset privacy budget, kept in the signed audit ledger and keyed by the dataset's SHA-256.

Why the ledger and not a separate counter file: the budget is only as trustworthy as its record.
The ledger is hash-chained and signed, and `charge` verifies it before trusting what it says was
spent, so deleting or editing a past charge (to free up budget) is detected, not silently honoured.

Composition: BASIC composition across training runs -- the epsilons add and the deltas add. This
is loose (advanced composition or a shared accountant would be tighter) but valid for any
mix of mechanisms and accountants, which is what separate runs with different settings are.

Keying by content hash means the same table copied or renamed shares one budget; a different
table (even a subset of the same people) has its own, which the compliance team should know:
the card and ledger say which hash was charged.

Only entries with action "budget.charge" and outcome "ok" count. A refused charge is recorded as a
failed entry with no privacy_cost. The read-check-append sequence is serialized with an exclusive
lock on a sidecar file so that two concurrent trainings cannot both fit under the cap.

This module imports no torch (numbers only).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymize.errors import InputError
from privmodel.audit import Ledger, read_entries, verify

ACTION = "budget.charge"
COMPOSITION = "basic (epsilons add, deltas add)"
_TOLERANCE = 1e-12  # float slack when a charge exactly fills the cap
_COST_FIELDS = ("accountant", "noise_multiplier", "sample_rate", "steps", "clipping", "max_grad_norm",
                "target_epsilon", "epsilon_preprocessing", "delta_preprocessing")


@dataclass(frozen=True)
class Spent:
    """Budget spent so far on one dataset."""

    epsilon: float
    delta: float
    charges: int


def _check_hash(dataset_sha256: str) -> str:
    text = str(dataset_sha256).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InputError("dataset hash must be a 64-character hex SHA-256")
    return text


def _spent_in(entries: list[dict[str, Any]], dataset_sha256: str) -> Spent:
    eps = delta = 0.0
    count = 0
    for entry in entries:
        if entry.get("action") != ACTION or entry.get("outcome") != "ok":
            continue
        if (entry.get("params") or {}).get("dataset_sha256") != dataset_sha256:
            continue
        cost = entry.get("privacy_cost") or {}
        eps += float(cost.get("epsilon", 0.0))
        delta += float(cost.get("delta", 0.0))
        count += 1
    return Spent(eps, delta, count)


def spent(ledger_path: str | os.PathLike[str], dataset_sha256: str) -> Spent:
    """Epsilon and delta charged so far to `dataset_sha256` (0 when the ledger does not exist yet)."""
    digest = _check_hash(dataset_sha256)
    path = Path(ledger_path)
    if not path.exists():
        return Spent(0.0, 0.0, 0)
    return _spent_in(read_entries(path), digest)


@contextlib.contextmanager
def _budget_lock(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".budget.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v >= 0.0 if allow_zero else v > 0.0)
    if not ok:
        raise InputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite number")
    return v


def charge(
    ledger: Ledger,
    dataset_sha256: str,
    epsilon: float,
    delta: float,
    cap_epsilon: float,
    cap_delta: float,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Charge (epsilon, delta) to a dataset's budget, or refuse (InputError) past the cap.

    `params` (e.g. the fit's privacy record plus the command) are stored with the entry; the
    accountant / noise figures among them are copied into privacy_cost. Returns the ledger entry.
    """
    digest = _check_hash(dataset_sha256)
    epsilon = _positive("epsilon", epsilon)
    delta = _positive("delta", delta, allow_zero=True)
    cap_epsilon = _positive("budget epsilon cap", cap_epsilon)
    cap_delta = _positive("budget delta cap", cap_delta, allow_zero=True)
    extra = dict(params or {})
    with _budget_lock(ledger.path):
        if ledger.path.exists():
            check = verify(ledger.path)
            if not check.ok:
                raise InputError(
                    f"{ledger.path}: ledger fails verification ({check.first_problem}); budget cannot be trusted"
                )
            so_far = _spent_in(read_entries(ledger.path), digest)
        else:
            so_far = Spent(0.0, 0.0, 0)
        entry_params = {**extra, "dataset_sha256": digest, "composition": COMPOSITION,
                        "cap": {"epsilon": cap_epsilon, "delta": cap_delta}}
        over_eps = so_far.epsilon + epsilon > cap_epsilon + _TOLERANCE
        over_delta = so_far.delta + delta > cap_delta + _TOLERANCE
        if over_eps or over_delta:
            if over_eps:
                what = f"spent {so_far.epsilon:.4g} + asked {epsilon:.4g} > cap {cap_epsilon:.4g} (epsilon)"
            else:
                what = f"spent {so_far.delta:.3g} + asked {delta:.3g} > cap {cap_delta:.3g} (delta)"
            reason = f"privacy budget exceeded for dataset {digest[:8]}: {what}"
            ledger.append(ACTION, params={**entry_params, "asked": {"epsilon": epsilon, "delta": delta},
                                          "spent_before": {"epsilon": so_far.epsilon, "delta": so_far.delta}},
                          outcome="failed", reason=reason)
            raise InputError(reason)
        cost = {"epsilon": epsilon, "delta": delta,
                **{k: extra[k] for k in _COST_FIELDS if k in extra and extra[k] is not None},
                "spent_after": {"epsilon": so_far.epsilon + epsilon, "delta": so_far.delta + delta}}
        return ledger.append(ACTION, params=entry_params, privacy_cost=cost)
