"""The `privmodel` command: `app.py` builds the typer app; one module per command (`register(app)`).

Command modules only parse arguments, call one workflow (`privmodel.workflows`) and print; heavy
imports stay inside their functions so `privmodel --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privmodel.cli.app import app, main

__all__ = ["app", "main"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module 'privmodel.cli' has no attribute {name!r}")
    return getattr(importlib.import_module("privmodel.cli.app"), name)
