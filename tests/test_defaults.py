"""One set of defaults (privmodel.core.defaults) reaches every door: CLI, workflows, estimator, TrainConfig, federated."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privmodel.core.defaults import DEFAULTS, Defaults

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n", "batch"), [(100, 100), (1_000, 512), (5_282, 1024), (24_420, 2048),
                                          (150_000, 8192), (750_000, 16384), (7_500_000, 32768),
                                          (10_000_000, 65536)])
def test_batch_size_rule(n: int, batch: int) -> None:
    # power of two nearest 16 sqrt(n), at least 256 (no upper cap: issue 13), never above n -- by hand here
    assert DEFAULTS.batch_size_for(n) == batch
    assert Defaults(batch_size=300).batch_size_for(n) == 300  # a given batch size is kept


def test_delta_rule() -> None:
    assert DEFAULTS.delta_for(5_000) == 1e-6 and DEFAULTS.delta_for(200_000) == pytest.approx(5e-7)
    assert DEFAULTS.delta_rule == "min(1e-06, 1/(10 n))"


def test_every_door_reads_the_same_defaults() -> None:
    from federated.runtime.config import FedConfig
    from privmodel.cli import train as cli
    from privmodel.dp.training import TrainConfig
    from privmodel.estimator import DPPropensityClassifier
    from privmodel.workflows.train import TrainRequest

    est = DPPropensityClassifier()
    config = TrainConfig()
    req = TrainRequest(data=Path("d.csv"), label="y", policy=Path("p.yaml"), out=Path("m"))
    fed = FedConfig()
    assert est.epochs == config.epochs == req.epochs == DEFAULTS.epochs
    assert est.batch_size is config.batch_size is req.batch_size is None  # the rule
    assert est.lr is config.lr is req.lr is None  # per model: DEFAULTS.lr_for
    assert est.max_grad_norm == config.max_grad_norm == req.clip == fed.max_grad_norm == DEFAULTS.clip
    assert est.model == config.model == req.model == fed.model == DEFAULTS.model
    assert est.accountant == config.accountant == req.accountant == DEFAULTS.accountant
    assert est.delta is config.delta is req.delta is None  # the rule DEFAULTS.delta_for(n)
    assert fed.delta == DEFAULTS.delta
    options = {name: p.default.default for name, p in inspect.signature(cli.train).parameters.items()
               if hasattr(p.default, "default")}
    assert (options["epochs"], options["batch_size"], options["lr"], options["clip"], options["delta"],
            options["model"]) == (DEFAULTS.epochs, None, None, DEFAULTS.clip, None, DEFAULTS.model)
    curve = {name: p.default.default for name, p in inspect.signature(cli.curve).parameters.items()
             if hasattr(p.default, "default")}
    assert (curve["epochs"], curve["batch_size"], curve["lr"], curve["clip"]) == (DEFAULTS.epochs, None, None,
                                                                                   DEFAULTS.clip)


def test_fit_resolves_and_records_the_rules() -> None:
    from privmodel.data.features import EncodedData
    from privmodel.dp.training import TrainConfig, fit

    rng = np.random.default_rng(0)
    n = 3000
    x = rng.random((n, 2)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.random(n) > 0.7).astype(np.float32)
    data = EncodedData(x, np.zeros((n, 0), dtype=np.int64), [], ["a", "b"], [])
    result = fit(data, y, TrainConfig(model="mlp", epochs=2, hidden=(4,), accountant="rdp"))
    assert result.config.batch_size == 1024 and result.config.lr == DEFAULTS.lr["mlp"]  # 16 sqrt(3000) = 876 -> 1024
    assert result.privacy["sample_rate"] == pytest.approx(1024 / n)
    assert result.privacy["delta"] == pytest.approx(1e-6) and result.privacy["delta_rule"] == DEFAULTS.delta_rule


def test_defaults_module_is_import_light() -> None:
    code = "import sys, privmodel.core.defaults; print(sorted(m for m in ('torch', 'numpy', 'sklearn', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
