"""The release gate: every criterion of the policy re-checked on the final table before it is written.

Algorithms keep their own bookkeeping (Mondrian's partitions, the lattice's class tables); the gate
trusts none of it. It measures the table that is about to leave, with the same code the report
prints (`anonymize.measures.achieved.privacy_measures`), and compares each figure with the policy:

- k-anonymity: smallest equivalence class >= k;
- l-diversity (distinct / entropy / recursive (c, l)) per sensitive column;
- t-closeness per sensitive column, against the released table's own distribution;
- suppression: rows suppressed <= floor(limit x rows offered to generalization);
- token uniqueness: no released token stands for two different identifier values (a truncated
  HMAC can collide; a collision makes two customers one and re-identification return the wrong
  person).

A failed check raises one `InputError` line naming the criterion, the required and the achieved
figure, so the caller writes nothing and records the failure. The passing checks go into the
report (`report["gate"]`), so a reader sees what was verified, not just that something ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from anonymize.errors import InputError
from anonymize.policy.spec import PrivacyModel

if TYPE_CHECKING:
    from anonymize.measures.achieved import PrivacyMeasures

_EPS = 1e-12  # the same tolerance the criteria use (models/*)


class CheckRecord(TypedDict):
    criterion: str
    required: str
    achieved: str
    passed: bool


class GateRecord(TypedDict):
    """The gate's part of the release report: every check, all passed (else nothing is written)."""

    passed: bool
    checks: list[CheckRecord]


@dataclass(frozen=True)
class Check:
    """One criterion checked on the final table."""

    criterion: str
    required: str
    achieved: str
    passed: bool

    def as_dict(self) -> CheckRecord:
        return {"criterion": self.criterion, "required": self.required, "achieved": self.achieved, "passed": self.passed}


def _num(value: float, bound: float | None = None) -> str:
    """Figures as a reader compares them: 4 significant digits (0.3019 vs 0.3), more when 4 would
    print a failing figure equal to its bound (0.30000002 must not read "0.3")."""
    if not math.isfinite(value):
        return str(value)
    digits = 4
    while bound is not None and value != bound and digits < 17 and f"{value:.{digits}g}" == f"{bound:.{digits}g}":
        digits += 1
    return f"{value:.{digits}g}"


def privacy_checks(privacy: PrivacyModel, achieved: PrivacyMeasures, sensitive: Sequence[str]) -> list[Check]:
    """k, l and t of `privacy` against `achieved` (the dict `privacy_measures` returns)."""
    checks = [
        Check("k-anonymity", f">= {privacy.k}", str(achieved["k"]), int(achieved["k"]) >= privacy.k),
    ]
    if privacy.l is not None:
        spec = privacy.l
        for col in sensitive:
            got = achieved["l"][col]
            if spec.variant == "distinct":
                value = float(got["distinct"])
                ok = value >= spec.value
                checks.append(Check(f"distinct l-diversity ({col})", f">= {spec.value}", _num(value), ok))
            elif spec.variant == "entropy":
                value = float(got["entropy"])
                ok = value > 0 and math.log(value) >= math.log(spec.value) - _EPS
                checks.append(Check(f"entropy l-diversity ({col})", f">= {spec.value}", _num(value, None if ok else spec.value), ok))
            else:
                need = float(got["recursive"]["c"])
                ok = need < float(spec.c or 0.0)
                rule = f"r1 / (r{spec.value} + ... + rm) < c = {_num(float(spec.c or 0.0))}"
                checks.append(Check(f"recursive (c,{spec.value})-diversity ({col})", rule, _num(need), ok))
    if privacy.t is not None:
        for col in sensitive:
            value = float(achieved["t"][col])
            ok = value <= privacy.t + _EPS
            checks.append(Check(f"t-closeness ({col})", f"<= {_num(privacy.t)}", _num(value, None if ok else privacy.t), ok))
    return checks


def suppression_check(privacy: PrivacyModel, suppressed: int, offered: int) -> Check:
    """Suppressed rows within the limit; the same floor the lattice search applies."""
    allowed = int(math.floor(privacy.suppression_limit * offered + 1e-9))
    share = suppressed / offered if offered else 0.0
    return Check(
        "suppression limit",
        f"<= {privacy.suppression_limit:.2%} ({allowed} of {offered} rows)",
        f"{share:.2%} ({suppressed} rows)",
        suppressed <= allowed,
    )


def token_check(column: str, colliding_released: int, length_bits: int) -> Check:
    """No released token shared by two different identifier values."""
    return Check(
        f"token uniqueness ({column}, {length_bits}-bit tokens)",
        "0 tokens shared by different identifiers",
        f"{colliding_released} shared",
        colliding_released == 0,
    )


def enforce(checks: Sequence[Check]) -> GateRecord:
    """Raise on the first failed check; else the gate record for the report."""
    for check in checks:
        if not check.passed:
            raise InputError(
                f"release gate: {check.criterion} required {check.required}, achieved {check.achieved} "
                "on the final table; release not written"
            )
    return {"passed": True, "checks": [c.as_dict() for c in checks]}
