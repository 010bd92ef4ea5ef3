"""Declarative pieces of the policy shared by the policy loader and the algorithms.

Generalization hierarchies (what a quasi-identifier may become) and the privacy model (k, l, t,
suppression, algorithm) are plain pydantic models so that `anonymize.policy.schema` validates them from
YAML and `anonymize.generalization.hierarchies` / `anonymize.generalization.generalize` consume them without parsing anything.

YAML shapes (the top level "*" = fully suppressed is always implied as the last level):

    hierarchy: {type: intervals, widths: [5, 10, 20]}         # numeric: 5-wide bins, then 10, 20
    hierarchy: {type: date, levels: [month, year]}            # 1990-05-17 -> 1990-05 -> 1990
    hierarchy: {type: prefix, keep: [4, 3, 1]}                # zip 02139 -> 0213* -> 021** -> 0****
    hierarchy: {type: tree, levels: {Bachelors: [Undergrad, Higher-ed], Masters: [Graduate, Higher-ed]}}
    hierarchy: {type: csv, path: hierarchies/education.csv}   # col 0 = value, cols 1.. = levels
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # allow_inf_nan=False: YAML's .inf / .nan are floats, and an infinite epsilon or bound is no policy
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class IntervalsHierarchy(_Strict):
    type: Literal["intervals"]
    widths: list[float] = Field(min_length=1)
    origin: float = 0.0  # bins are [origin + i*w, origin + (i+1)*w)

    @field_validator("widths")
    @classmethod
    def _increasing(cls, widths: list[float]) -> list[float]:
        if any(w <= 0 for w in widths):
            raise ValueError("interval widths must be positive")
        if any(b < a for a, b in zip(widths, widths[1:], strict=False)):
            raise ValueError("interval widths must not decrease from one level to the next")
        return widths


class DateHierarchy(_Strict):
    type: Literal["date"]
    levels: list[Literal["month", "quarter", "year", "decade"]] = Field(min_length=1)


class PrefixHierarchy(_Strict):
    type: Literal["prefix"]
    keep: list[int] = Field(min_length=1)  # characters kept at each level, strictly decreasing

    @field_validator("keep")
    @classmethod
    def _decreasing(cls, keep: list[int]) -> list[int]:
        if any(k < 0 for k in keep) or any(b >= a for a, b in zip(keep, keep[1:], strict=False)):
            raise ValueError("prefix 'keep' lengths must be >= 0 and strictly decreasing")
        return keep


class TreeHierarchy(_Strict):
    type: Literal["tree"]
    levels: dict[str, list[str]] = Field(min_length=1)  # value -> its ancestors, level 1 upward

    @model_validator(mode="after")
    def _same_depth(self) -> TreeHierarchy:
        depths = {len(v) for v in self.levels.values()}
        if len(depths) != 1:
            raise ValueError("every value of a tree hierarchy needs the same number of levels")
        return self


class CsvHierarchy(_Strict):
    type: Literal["csv"]
    path: str  # relative to the policy file


HierarchySpec = Annotated[
    IntervalsHierarchy | DateHierarchy | PrefixHierarchy | TreeHierarchy | CsvHierarchy,
    Field(discriminator="type"),
]


class LDiversity(_Strict):
    value: int = Field(ge=2)
    variant: Literal["distinct", "entropy", "recursive"] = "distinct"
    c: float | None = Field(default=None, gt=0)  # recursive (c, l) only

    @model_validator(mode="after")
    def _c_for_recursive(self) -> LDiversity:
        if self.variant == "recursive" and self.c is None:
            raise ValueError("recursive (c,l)-diversity needs c")
        return self


class PrivacyModel(_Strict):
    """What the released quasi-identifiers must satisfy."""

    k: int = Field(ge=2)
    l: LDiversity | None = None  # noqa: E741 - the literature's name
    t: float | None = Field(default=None, gt=0, le=1)
    suppression_limit: float = Field(default=0.0, ge=0, lt=1)  # share of rows that may be suppressed
    algorithm: Literal["mondrian", "mondrian_relaxed", "lattice"] = "mondrian"
