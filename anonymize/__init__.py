"""Policy-driven pseudonymization and k-anonymity / l-diversity / t-closeness.

Imports pandas, numpy, cryptography, pydantic and PyYAML only: never torch or Flower.

The safe path is the short one: `load_policy` then `run(df, policy, keys)` for a release, or
`minimise(df, policy, keys)` for the rows a model may train on (consent-filtered, identifiers
keyed or dropped, nothing generalized from the data). Everything but
`InputError` loads lazily: every layer imports `anonymize.errors`, and that must not pull pandas
into the CLI's start-up (`privmodel --help` answers at once).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from anonymize.errors import InputError

if TYPE_CHECKING:
    from anonymize.pipeline import Minimised, Release, minimise, run
    from anonymize.policy.schema import ColumnPolicy, Policy, load_policy
    from anonymize.pseudonymize import (
        ColumnKey,
        Keys,
        Rotated,
        decrypt_series,
        encrypt_series,
        pseudonymize,
        reidentify,
        rotate_tokens,
        tokenize_series,
    )

_LAZY = {
    "Minimised": "anonymize.pipeline",
    "Release": "anonymize.pipeline",
    "minimise": "anonymize.pipeline",
    "run": "anonymize.pipeline",
    "ColumnPolicy": "anonymize.policy.schema",
    "Policy": "anonymize.policy.schema",
    "load_policy": "anonymize.policy.schema",
    "ColumnKey": "anonymize.pseudonymize",
    "Keys": "anonymize.pseudonymize",
    "Rotated": "anonymize.pseudonymize",
    "decrypt_series": "anonymize.pseudonymize",
    "encrypt_series": "anonymize.pseudonymize",
    "pseudonymize": "anonymize.pseudonymize",
    "reidentify": "anonymize.pseudonymize",
    "rotate_tokens": "anonymize.pseudonymize",
    "tokenize_series": "anonymize.pseudonymize",
}

__all__ = [
    "ColumnKey",
    "ColumnPolicy",
    "InputError",
    "Keys",
    "Minimised",
    "Policy",
    "Release",
    "Rotated",
    "decrypt_series",
    "encrypt_series",
    "load_policy",
    "minimise",
    "pseudonymize",
    "reidentify",
    "rotate_tokens",
    "run",
    "tokenize_series",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anonymize' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
