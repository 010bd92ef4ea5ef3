"""A vertical party's file: who it is, its role, its policy, and how its join keys are normalised.

Why a file of its own beside the policy: the policy (consent, purpose, budget, dataset) is the
project's ordinary one, read by `minimise` and `privmodel.dp.budget`; the party file adds only what a
vertical join needs. Join keys are declared by name, in an order both parties must share; each party
declares its own normalisation, because each stores identifiers its own way.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anonymize.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from anonymize.policy.schema import Policy

Normaliser = Literal["strip", "lower", "digits", "nfkc", "collapse_space"]
_NON_DIGITS = re.compile(r"\D+")
_SPACES = re.compile(r"\s+")
NORMALISERS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "lower": str.lower,
    "digits": lambda v: _NON_DIGITS.sub("", v),
    "nfkc": lambda v: unicodedata.normalize("NFKC", v),
    "collapse_space": lambda v: _SPACES.sub(" ", v),
}
SEPARATOR = "\x1f"  # between key values of one row: cannot occur after any normaliser's output


class PartySpec(BaseModel):
    """The validated party file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    party: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    role: Literal["label", "feature"]
    policy: str = Field(min_length=1)
    join: dict[str, list[Normaliser]] = Field(min_length=1)
    min_overlap: int = Field(ge=1)


@dataclass(frozen=True)
class Party:
    """A party file with its policy loaded."""

    spec: PartySpec
    policy: Policy
    source: str

    @property
    def name(self) -> str:
        return self.spec.party

    @property
    def join_names(self) -> list[str]:
        return list(self.spec.join)


def load_party(path: str | os.PathLike[str]) -> Party:
    """Read a party file and the policy it names (relative to the party file); one clear line on error."""
    from anonymize.policy.schema import load_policy

    src = Path(path)
    try:
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
    except OSError:
        raise InputError(f"{src}: cannot read the party file") from None
    except yaml.YAMLError:
        raise InputError(f"{src}: not valid YAML") from None
    try:
        spec = PartySpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "file"
        raise InputError(f"{src}: {where}: {err['msg']}") from None
    policy = load_policy(src.parent / spec.policy)
    if policy.budget is None:
        raise InputError(f"{src.parent / spec.policy}: a vertical party's policy needs a budget")
    labels = policy.labels
    if spec.role == "label" and len(labels) != 1:
        raise InputError(f"{src}: the label party's policy must declare exactly one label column")
    if spec.role == "feature" and labels:
        raise InputError(f"{src}: a feature party's policy must declare no label column")
    return Party(spec, policy, str(src))


def normalised_keys(frame: pd.DataFrame, party: Party) -> list[str]:
    """One join string per row: each declared key normalised as the party says, joined by SEPARATOR.

    Refuses (one line, naming the column) a missing key column, an empty key and a repeated key: a
    repeated key would join one customer to two rows.
    """
    parts = []
    for name, steps in party.spec.join.items():
        if name not in frame.columns:
            raise InputError(f"{party.source}: join key {name!r} is not a column of the party's table")
        col = frame[name]
        missing = int(col.isna().sum())
        values = col.astype("string").fillna("").tolist()
        for step in steps:
            fn = NORMALISERS[step]
            values = [fn(v) for v in values]
        empty = missing + sum(1 for v in values if not v)
        if empty:
            raise InputError(f"{party.source}: join key {name!r} is empty after normalisation in {empty} row(s)")
        parts.append(values)
    keys = [SEPARATOR.join(row) for row in zip(*parts, strict=True)]
    repeated = len(keys) - len(set(keys))
    if repeated:
        raise InputError(f"{party.source}: {repeated} row(s) repeat another row's join key; a key must name one customer")
    return keys
