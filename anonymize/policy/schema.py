"""The release policy: one YAML file, readable by a compliance officer, that drives the code.

The file is validated with pydantic; every error becomes one `InputError` line naming the YAML line
and the field (``policy.yaml line 12, columns.age.hierarchy.widths: ...``), because a compliance
officer editing the file needs to know where to look, not a pydantic traceback. Line numbers come
from the node marks of ``yaml.compose`` mapped onto pydantic's error locations.

Semantics the rest of `anonymize` relies on (docs/policy.md explains them for readers):

* identifiers are pseudonymized (``token`` / ``encrypt``) or dropped; pseudonymized identifiers are
  always part of the release (they are the linkage keys), whatever `purpose.columns` says;
* `purpose.columns` (data minimization) selects among the other columns; anything not listed,
  and any data column the policy does not declare, is dropped and listed in the report;
* `bounds` / `categories` are public metadata (DP preprocessing uses them instead of the data);
  so is `transform` (log1p before scaling to the bounds, which stay in the column's own units);
* `recode` is the one generalization the model path applies: fixed interval bins (`minimise`);
* token `length` is at least 16 hex characters (64 bits), 32 (128 bits) by default.

Hostile files: YAML anchors / aliases and nesting deeper than `MAX_NESTING` are refused before
anything is built (an alias bomb of 6 KB otherwise hangs every walk over it), and every number
must be finite (`.inf` / `.nan` are refused with the field's name).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from anonymize.errors import InputError
from anonymize.policy.spec import (
    CsvHierarchy,
    DateHierarchy,
    HierarchySpec,
    IntervalsHierarchy,
    PrefixHierarchy,
    PrivacyModel,
    TreeHierarchy,
)

Role = Literal["identifier", "quasi_identifier", "sensitive", "feature", "label", "consent", "drop"]
ColumnType = Literal["string", "integer", "float", "boolean", "date", "categorical"]
Method = Literal["drop", "token", "encrypt"]
Transform = Literal["none", "log1p"]

NUMERIC_TYPES = ("integer", "float")
# Token lengths are in hex characters (4 bits each). Birthday bound: n people share some token with
# probability about n^2 / 2^(bits+1); 32-bit tokens collided within a second of searching (issue 10,
# finding 7). 64 bits is the floor (1e6 people: ~3e-8), 128 bits the default (no collision in practice
# for any population); the release gate still refuses a collision if one ever happens.
DEFAULT_TOKEN_LENGTH = 32  # hex characters = 128 bits
MIN_TOKEN_LENGTH = 16  # hex characters = 64 bits
MAX_TOKEN_LENGTH = 64  # a full HMAC-SHA256 digest in hex

# Which hierarchy kinds fit which column types: a prefix on a date or an interval on a string is
# a policy mistake worth one clear line, not a runtime surprise inside the algorithm.
_HIERARCHY_TYPES: dict[type, tuple[str, ...]] = {
    IntervalsHierarchy: NUMERIC_TYPES,
    DateHierarchy: ("date",),
    PrefixHierarchy: ("string", "categorical", "integer"),
    TreeHierarchy: ("categorical", "string", "boolean", "integer"),
    CsvHierarchy: ("categorical", "string", "integer", "float", "boolean", "date"),
}


def token_length_problem(length: int) -> str:
    """Why a token length is refused, in bits (what the collision risk depends on)."""
    return (
        f"token length {length} hex characters = {4 * length} bits is below the minimum of "
        f"{4 * MIN_TOKEN_LENGTH} bits ({MIN_TOKEN_LENGTH} hex characters): short tokens collide"
    )


class _Located(ValueError):
    """A validation error that knows which field (path below the validated model) it is about."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    # allow_inf_nan=False: YAML's .inf / .nan are floats, and an infinite epsilon or bound is no policy
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ColumnPolicy(_Strict):
    """What happens to one column of the input table."""

    role: Role
    type: ColumnType | None = None  # required for every role except drop
    method: Method | None = None  # identifiers only; default token
    length: int | None = Field(default=None, le=MAX_TOKEN_LENGTH)  # token only, hex characters (checked below)
    escrow: bool = False  # token only: keep AES-SIV ciphertext in a separate file so keys can rotate
    hierarchy: HierarchySpec | None = None  # quasi-identifiers only
    bounds: tuple[float, float] | None = None  # public range of a numeric column
    categories: list[str] | None = Field(default=None, min_length=1)  # public domain of a column
    on_invalid: Literal["error", "drop_row"] = "error"  # out-of-domain value: fail, or remove the row (counted)
    # public per-column transform the DP encoder applies before scaling to the bounds; log1p spreads a
    # skewed non-negative column (tenure, spend) over [0, 1] instead of squeezing its bulk into a sliver
    transform: Transform = "none"
    # fixed recoding on the model path (`minimise`): every value replaced by its interval at this
    # level of the column's intervals hierarchy. Data-independent (the bins are fixed by widths and
    # origin), so DP training on the recoded rows still protects customers; see docs/policy.md
    recode: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ColumnPolicy:
        """Cross-field rules, checked in this order so the first problem named is the most basic one."""
        if self.role != "drop" and self.type is None:
            raise _Located(("type",), f"a {self.role} column needs a type")
        self._check_method()
        self._check_hierarchy()
        self._check_recode()
        self._check_bounds_and_transform()
        self._check_categories()
        return self

    def _check_method(self) -> None:
        """Identifiers default to method token; token length (default 128 bits) and escrow need token."""
        if self.role == "identifier":
            if self.method is None:
                object.__setattr__(self, "method", "token")
        elif self.method is not None:
            raise _Located(("method",), "method applies to identifier columns only")
        if self.method != "token" and (self.length is not None or self.escrow):
            field = "length" if self.length is not None else "escrow"
            raise _Located((field,), "length and escrow apply to method token only")
        if self.method == "token" and self.length is None:
            object.__setattr__(self, "length", DEFAULT_TOKEN_LENGTH)
        if self.length is not None and self.length < MIN_TOKEN_LENGTH:
            raise _Located(("length",), token_length_problem(self.length))

    def _check_hierarchy(self) -> None:
        if self.hierarchy is None:
            return
        if self.role != "quasi_identifier":
            raise _Located(("hierarchy",), "hierarchy applies to quasi_identifier columns only")
        allowed = _HIERARCHY_TYPES[type(self.hierarchy)]
        if self.type not in allowed:
            raise _Located(
                ("hierarchy", "type"),
                f"a {self.hierarchy.type} hierarchy does not fit a {self.type} column (fits {', '.join(allowed)})",
            )

    def _check_recode(self) -> None:
        if self.recode is None:
            return
        if self.role != "quasi_identifier" or not isinstance(self.hierarchy, IntervalsHierarchy):
            raise _Located(
                ("recode",),
                "recode applies to quasi_identifier columns with an intervals hierarchy (the DP encoder "
                "reads a recoded value as its range; other hierarchies' node names are not public categories)",
            )
        if self.recode > len(self.hierarchy.widths):
            raise _Located(
                ("recode",), f"recode level {self.recode} is above the hierarchy's {len(self.hierarchy.widths)} levels"
            )

    def _check_bounds_and_transform(self) -> None:
        if self.bounds is not None:
            if self.type not in NUMERIC_TYPES:
                raise _Located(("bounds",), "bounds apply to integer and float columns only")
            if not self.bounds[0] < self.bounds[1]:
                raise _Located(("bounds",), "bounds must be [low, high] with low < high")
        if self.transform == "log1p":
            if self.type not in NUMERIC_TYPES:
                raise _Located(("transform",), "transform log1p applies to integer and float columns only")
            if self.bounds is not None and self.bounds[0] < 0:
                raise _Located(("transform",), "transform log1p needs non-negative bounds (low >= 0)")

    def _check_categories(self) -> None:
        if self.categories is None:
            return
        if self.type not in ("categorical", "string", "boolean", "integer"):
            raise _Located(("categories",), f"categories do not apply to a {self.type} column")
        if len(set(self.categories)) != len(self.categories):
            raise _Located(("categories",), "categories must not repeat")
        if isinstance(self.hierarchy, TreeHierarchy):
            missing = [c for c in self.categories if c not in self.hierarchy.levels]
            if missing:
                raise _Located(
                    ("hierarchy", "levels"),
                    f"missing hierarchy level for {len(missing)} declared categor{'y' if len(missing) == 1 else 'ies'}"
                    f" (first: category #{self.categories.index(missing[0]) + 1})",
                )

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES


class Purpose(_Strict):
    """Why the data is processed: the consent it needs and the columns it may use."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    consent: str | None = None
    columns: list[str] | None = None  # None = every declared column


class Budget(_Strict):
    """The differential-privacy cap per dataset that `privmodel train` charges against."""

    epsilon: float = Field(gt=0)
    delta: float = Field(ge=0, lt=1)


class Policy(_Strict):
    """A validated release policy. Build with `load_policy(path)` or `Policy.from_yaml_text`."""

    version: Literal[1]
    name: str = Field(min_length=1)
    dataset: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # budget identity (privmodel.dp.budget)
    purpose: Purpose
    privacy: PrivacyModel
    budget: Budget | None = None
    fairness_groups: list[str] = Field(default_factory=list)
    columns: dict[str, ColumnPolicy] = Field(min_length=1)

    _source: str = PrivateAttr(default="policy")
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _cross_references(self) -> Policy:
        cols = self.columns
        consent = self.purpose.consent
        if consent is not None:
            if consent not in cols:
                raise _Located(("purpose", "consent"), "consent column is not declared under columns")
            if cols[consent].role != "consent":
                raise _Located(("purpose", "consent"), "consent column must have role consent")
        for i, name in enumerate(self.purpose.columns or []):
            if name not in cols:
                raise _Located(("purpose", "columns", i), f"column {name!r} is not declared under columns")
            if cols[name].role == "drop":
                raise _Located(("purpose", "columns", i), f"column {name!r} has role drop")
        if self.purpose.columns is not None and len(set(self.purpose.columns)) != len(self.purpose.columns):
            raise _Located(("purpose", "columns"), "columns must not repeat")
        for i, name in enumerate(self.fairness_groups):
            if name not in cols:
                raise _Located(("fairness_groups", i), f"column {name!r} is not declared under columns")
        for name, col in cols.items():
            if col.role == "consent" and col.type != "boolean":
                raise _Located(("columns", name, "type"), "a consent column must have type boolean")
        return self

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "policy", base_dir: str | os.PathLike[str] | None = None) -> Policy:
        """Parse and validate YAML text; `source` names the file in every error line."""
        try:
            _refuse_hostile_structure(text, source)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"{source}{line}: not valid YAML ({exc.problem or 'syntax error'})") from None
        except yaml.YAMLError:
            raise InputError(f"{source}: not valid YAML") from None
        if node is None:
            raise InputError(f"{source}: empty policy file")
        _check_duplicate_keys(node, source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:  # compose succeeded, so only a constructor problem (bad tag) is left
            raise InputError(f"{source}: YAML value could not be read") from None
        if not isinstance(data, dict):
            raise InputError(f"{source} line {node.start_mark.line + 1}: the policy must be a mapping of fields")
        try:
            policy = cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(_describe(exc, node, source)) from None
        policy._source = source
        policy._base_dir = Path(base_dir) if base_dir is not None else None
        return policy

    # --- accessors used by the pipeline and the DP encoder -----------------------------------

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path | None:
        """Directory that relative paths in the policy (csv hierarchies) are resolved against."""
        return self._base_dir

    def with_role(self, *roles: str) -> list[str]:
        """Declared columns with one of `roles`, in file order."""
        return [name for name, col in self.columns.items() if col.role in roles]

    @property
    def identifiers(self) -> list[str]:
        return self.with_role("identifier")

    @property
    def quasi_identifiers(self) -> list[str]:
        return self.with_role("quasi_identifier")

    @property
    def sensitive(self) -> list[str]:
        return self.with_role("sensitive")

    @property
    def labels(self) -> list[str]:
        return self.with_role("label")

    def purpose_columns(self) -> list[str]:
        """Columns the purpose may use besides the pseudonymized identifiers (data minimization)."""
        if self.purpose.columns is not None:
            return list(self.purpose.columns)
        return self.with_role("quasi_identifier", "sensitive", "feature", "label")

    def released_columns(self) -> list[str]:
        """Columns the release carries, in a stable order: linkage keys, QIs, sensitive, features, labels."""
        keep = set(self.purpose_columns())
        out = [n for n in self.identifiers if self.columns[n].method in ("token", "encrypt")]
        for role in ("quasi_identifier", "sensitive", "feature", "label"):
            out += [n for n in self.with_role(role) if n in keep]
        return out


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; csv hierarchy paths resolve relative to its directory."""
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such policy file")
    try:
        text = src.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{src}: policy file is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{src}: cannot read policy file ({exc.strerror})") from None
    return Policy.from_yaml_text(text, source=str(src), base_dir=src.resolve().parent)


# --- error locations --------------------------------------------------------------------------


def _children(node: yaml.Node) -> Iterator[tuple[object, yaml.Node, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key.value, key, value


MAX_NESTING = 32  # a policy is columns -> column -> hierarchy -> levels: a handful of levels deep


def _refuse_hostile_structure(text: str, source: str) -> None:
    """Anchors / aliases and deep nesting are refused before anything is built from the YAML.

    An alias repeats a node without repeating its text, so a 6 KB file of nested aliases stands for
    billions of values and every walk over the result (duplicate keys, validation) hangs (issue 11,
    finding 6). A policy is meant to be read line by line by a compliance officer, so every value
    has to be written out where it applies: there is nothing an alias is needed for. Deep nesting
    would exhaust the recursive YAML composer. One pass over the parser's events, linear in the text.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise InputError(
                f"{source} line {_event_line(event)}: YAML {what} found; anchors and aliases are not "
                "allowed in a policy (write each value out)"
            )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise InputError(f"{source} line {_event_line(event)}: nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _event_line(event: yaml.Event) -> int | str:
    """1-based line where a parser event starts ("?" if the parser gave no mark)."""
    return event.start_mark.line + 1 if event.start_mark is not None else "?"


def _check_duplicate_keys(node: yaml.Node, source: str) -> None:
    """YAML silently keeps the last of two equal keys; in a policy that hides a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key, value in node.value:
            if key.value in seen:
                raise InputError(f"{source} line {key.start_mark.line + 1}: field {key.value!r} appears twice")
            seen.add(key.value)
            _check_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source)


def _line_of(root: yaml.Node, path: tuple[str | int, ...]) -> int:
    """1-based line of the deepest YAML node along `path` (pydantic's extra loc parts are skipped)."""
    node, line = root, root.start_mark.line
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for name, k, v in _children(node) if name == str(part)), None)
            if match is None:
                continue  # e.g. the discriminator tag pydantic puts into the location
            key, node = match
            line = key.start_mark.line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
    return line + 1


_HIERARCHY_TAGS = {"intervals", "date", "prefix", "tree", "csv"}


def _describe(exc: ValidationError, root: yaml.Node, source: str) -> str:
    """One line for the first pydantic error: file, YAML line, dotted field, message."""
    error = exc.errors()[0]
    loc: tuple[str | int, ...] = tuple(error["loc"])
    message = error["msg"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Located):
        loc = loc + cause.path
        message = str(cause)
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "literal_error" and loc and loc[-1] == "role":
        message = f"unknown role (use {error.get('ctx', {}).get('expected', 'a declared role')})"
    # Drop pydantic's union tags ('intervals' under hierarchy) from the dotted name.
    shown = [
        str(p) for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] == "hierarchy" and p in _HIERARCHY_TAGS)
    ]
    # Error messages for inputs must never echo raw values; pydantic's messages describe types only.
    return f"{source} line {_line_of(root, loc)}, {'.'.join(shown) or 'policy'}: {message}"
