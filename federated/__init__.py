"""Flower-based training across data silos, each partner keeping its data and privacy budget.

Names load lazily (Flower's own packages do the same): a ClientApp process imports this package and
must not pay for torch or Ray unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from federated.config import FedConfig
    from federated.simulate import run_simulation
    from federated.worker import PartnerSpec, PartnerWorker

_LAZY = {
    "FedConfig": "federated.config",
    "run_simulation": "federated.simulate",
    "PartnerSpec": "federated.worker",
    "PartnerWorker": "federated.worker",
}

__all__ = ["FedConfig", "PartnerSpec", "PartnerWorker", "run_simulation"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'federated' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
