"""privmodel: privacy-preserving customer modeling.

The front door: `from privmodel import DPPropensityClassifier, train, TrainRequest, ...`. Every name
loads lazily (as Flower's packages do): `privmodel --help` and Flower ClientApp processes must not
pay for torch, flwr or scikit-learn unless they use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from privmodel.artifacts.ledger import Ledger, verify
    from privmodel.artifacts.model_store import load_model
    from privmodel.data.synth import generate
    from privmodel.dp.budget import BudgetExceeded, Cap, charge, dataset_of
    from privmodel.dp.training import FitResult, TrainConfig, fit
    from privmodel.estimator import DPPropensityClassifier
    from privmodel.workflows.curve import curve
    from privmodel.workflows.release import ReleaseRequest, release
    from privmodel.workflows.rows import ModelRows, model_rows
    from privmodel.workflows.score import evaluate, score
    from privmodel.workflows.synthesize import SynthRequest, synthesize
    from privmodel.workflows.train import TrainRequest, train

_LAZY = {
    "Ledger": "privmodel.artifacts.ledger",
    "verify": "privmodel.artifacts.ledger",
    "BudgetExceeded": "privmodel.dp.budget",
    "Cap": "privmodel.dp.budget",
    "charge": "privmodel.dp.budget",
    "dataset_of": "privmodel.dp.budget",
    "DPPropensityClassifier": "privmodel.estimator",
    "load_model": "privmodel.artifacts.model_store",
    "generate": "privmodel.data.synth",
    "FitResult": "privmodel.dp.training",
    "TrainConfig": "privmodel.dp.training",
    "fit": "privmodel.dp.training",
    "curve": "privmodel.workflows.curve",
    "ReleaseRequest": "privmodel.workflows.release",
    "release": "privmodel.workflows.release",
    "SynthRequest": "privmodel.workflows.synthesize",
    "synthesize": "privmodel.workflows.synthesize",
    "ModelRows": "privmodel.workflows.rows",
    "model_rows": "privmodel.workflows.rows",
    "evaluate": "privmodel.workflows.score",
    "score": "privmodel.workflows.score",
    "TrainRequest": "privmodel.workflows.train",
    "train": "privmodel.workflows.train",
}

__all__ = [
    "BudgetExceeded",
    "Cap",
    "DPPropensityClassifier",
    "FitResult",
    "Ledger",
    "ModelRows",
    "ReleaseRequest",
    "SynthRequest",
    "TrainConfig",
    "TrainRequest",
    "charge",
    "curve",
    "dataset_of",
    "evaluate",
    "fit",
    "generate",
    "load_model",
    "model_rows",
    "release",
    "score",
    "synthesize",
    "train",
    "verify",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'privmodel' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
