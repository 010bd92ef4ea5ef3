"""Privacy criteria behind one interface (`Criterion`), one short module each, and a registry.

`criteria_for(privacy, sensitive)` turns the policy's `PrivacyModel` into the list of criteria an
algorithm must satisfy for every equivalence class it releases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from anonymize.criteria.base import Criterion, SensitiveColumn
from anonymize.criteria.k_anonymity import KAnonymity
from anonymize.criteria.l_diversity import LDiversityCriterion
from anonymize.criteria.t_closeness import TCloseness
from anonymize.errors import InputError
from anonymize.policy.spec import PrivacyModel

REGISTRY: dict[str, Callable[[PrivacyModel, Sequence[SensitiveColumn]], Criterion | None]] = {
    "k": lambda p, s: KAnonymity(p.k),
    "l": lambda p, s: LDiversityCriterion(p.l.value, p.l.variant, p.l.c) if p.l is not None else None,
    "t": lambda p, s: TCloseness(p.t, s) if p.t is not None else None,
}


def criteria_for(privacy: PrivacyModel, sensitive: Sequence[SensitiveColumn]) -> list[Criterion]:
    """The criteria `privacy` asks for; l and t need at least one sensitive column."""
    out = [c for make in REGISTRY.values() if (c := make(privacy, sensitive)) is not None]
    if any(c.needs_sensitive for c in out) and not sensitive:
        raise InputError("l-diversity / t-closeness need at least one sensitive column")
    return out


def all_satisfied(criteria: Sequence[Criterion], sizes: np.ndarray, hists: Sequence[np.ndarray]) -> np.ndarray:
    ok = np.ones(len(sizes), dtype=bool)
    for c in criteria:
        ok &= c.satisfied(sizes, hists)
    return ok


__all__ = [
    "REGISTRY",
    "Criterion",
    "KAnonymity",
    "LDiversityCriterion",
    "SensitiveColumn",
    "TCloseness",
    "all_satisfied",
    "criteria_for",
]
