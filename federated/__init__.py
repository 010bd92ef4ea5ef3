"""Flower-based training across data silos, each partner keeping its data and privacy budget.

Names load lazily (Flower's own packages do the same): a ClientApp process imports this package and
must not pay for torch or Ray unless it uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from federated.partner.worker import PartnerSpec, PartnerWorker
    from federated.runtime.config import FedConfig
    from federated.runtime.simulate import run_simulation

_LAZY = {
    "FedConfig": "federated.runtime.config",
    "run_simulation": "federated.runtime.simulate",
    "PartnerSpec": "federated.partner.worker",
    "PartnerWorker": "federated.partner.worker",
}

__all__ = ["FedConfig", "PartnerSpec", "PartnerWorker", "run_simulation"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'federated' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
