"""Save and load a trained model directory: weights, encoder, config, privacy record.

Layout of a model directory (created whole or not at all):
  model.pt       state_dict (torch.save), loaded with weights_only=True (no pickle code execution)
  encoder.json   the TabularEncoder (public bounds / categories, missing-value rules)
  model.json     architecture, training config, privacy record, caller's `extra`, and the SHA-256
                 of model.pt and encoder.json (checked on load: a swapped weights file is refused)

Atomicity: everything is written into a temp directory beside the target, then renamed onto it;
a crash leaves no half-written model directory. An existing target is refused (InputError): a
model that has been scored or audited must not be silently replaced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from anonymize.json_values import json_ready
from privmodel.core.fileio import sha256_file
from privmodel.data.features import EncodedData, TabularEncoder

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from privmodel.dp.training import FitResult

WEIGHTS = "model.pt"
ENCODER = "encoder.json"
MANIFEST = "model.json"
FORMAT = 1


def save_model(directory: str | os.PathLike[str], fit_result: FitResult, encoder: TabularEncoder,
               extra: dict[str, Any] | None = None) -> Path:
    """Write a new model directory (staged, then renamed into place); refuse if it exists."""
    from privmodel.core.fileio import outputs

    target = Path(directory)
    if target.exists():
        raise InputError(f"{target}: model directory already exists; refusing to overwrite")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output directory does not exist")
    with outputs([target], dirs=[target]) as stage:
        write_model(stage.dir(target), fit_result, encoder, extra)
        stage.publish()
    return target


def write_model(directory: Path, fit_result: FitResult, encoder: TabularEncoder,
                extra: dict[str, Any] | None = None) -> None:
    """Write the weights, encoder and manifest into an existing (staging) directory."""
    import torch

    from privmodel.dp.networks import model_spec

    spec = model_spec(fit_result.model)
    if spec["n_num"] != encoder.n_num or spec["cat_cardinalities"] != encoder.cat_cardinalities:
        raise InputError("save_model: the encoder does not match the model's inputs")
    torch.save(fit_result.model.state_dict(), directory / WEIGHTS)
    (directory / ENCODER).write_text(json.dumps(json_ready(encoder.to_dict()), indent=2, allow_nan=False) + "\n")
    manifest = {
        "format": FORMAT,
        "architecture": spec,
        "config": fit_result.config.model_dump(mode="json"),
        "privacy": fit_result.privacy,
        "extra": extra or {},
        "sha256": {WEIGHTS: sha256_file(directory / WEIGHTS), ENCODER: sha256_file(directory / ENCODER)},
    }
    (directory / MANIFEST).write_text(json.dumps(json_ready(manifest), indent=2, allow_nan=False) + "\n")


@dataclass
class ScoringModel:
    """A loaded model: encodes a DataFrame with its saved encoder and returns P(y = 1)."""

    model: torch.nn.Module
    encoder: TabularEncoder
    manifest: dict[str, Any]
    path: Path

    @property
    def privacy(self) -> dict[str, Any]:
        return self.manifest["privacy"]

    @property
    def extra(self) -> dict[str, Any]:
        return self.manifest.get("extra", {})

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """P(y = 1) per row of `df` (a DataFrame with the encoder's columns), float64 [n]."""
        return self.predict_proba_encoded(self.encoder.transform(df))

    def predict_proba_encoded(self, data: EncodedData) -> np.ndarray:
        from privmodel.dp.dpsgd import predict_proba

        return predict_proba(self.model, data)


def load_model(directory: str | os.PathLike[str]) -> ScoringModel:
    """Load a model directory written by save_model, checking file hashes first."""
    import torch

    from privmodel.dp.networks import build_model

    src = Path(directory)
    if not src.is_dir():
        raise InputError(f"{src}: no such model directory")
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{src / MANIFEST}: missing or unreadable model manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("sha256"), dict):
        raise InputError(f"{src / MANIFEST}: unknown model format")
    for name in (WEIGHTS, ENCODER):
        path = src / name
        if not path.is_file():
            raise InputError(f"{path}: missing")
        if sha256_file(path) != manifest.get("sha256", {}).get(name):
            raise InputError(f"{path}: content does not match the hash in {MANIFEST} (altered file)")
    try:
        encoder = TabularEncoder.from_dict(json.loads((src / ENCODER).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{src / ENCODER}: not valid JSON") from None
    arch = manifest.get("architecture")
    if not isinstance(arch, dict):
        raise InputError(f"{src / MANIFEST}: architecture record is malformed")
    try:
        model = build_model(arch["kind"], arch["n_num"], arch["cat_cardinalities"], tuple(arch["hidden"]) or (64, 32))
    except (TypeError, KeyError, ValueError):
        raise InputError(f"{src / MANIFEST}: architecture record is malformed") from None
    try:
        state = torch.load(src / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises several types for corrupt archives
        raise InputError(f"{src / WEIGHTS}: cannot load weights ({type(exc).__name__})") from None
    model.eval()
    return ScoringModel(model, encoder, manifest, src)
