"""Privacy-utility curve: the same model trained at each ε of a grid, every private point charged.

Each finite ε of the grid (times `repeats`) is a DP training run on the same customers, so the whole
curve costs their sum (basic composition) and is charged to the dataset's budget through
`budget.charge` BEFORE any training. `inf` on the grid is the non-private baseline: a figure from
private rows without DP, allowed only when the grid names it (opt-in), and listed as such in
curve.json and the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from privmodel.workflows.train import TrainRequest, config_for, fit_rows, predictor, split_rows

if TYPE_CHECKING:
    import pandas as pd

    from privmodel.artifacts.ledger import Ledger
    from privmodel.dp.training import FitResult
    from privmodel.evaluation.utility_curve import CurvePoint

DEFAULT_GRID = "0.25,0.5,1"


@dataclass
class Curve:
    rows: list[CurvePoint]
    paths: dict[str, Path]
    charged_epsilon: float
    not_dp: list[str]


def cost(grid: list[float], repeats: int) -> float:
    """ε the curve spends: every finite grid point, every repeat (basic composition)."""
    return float(sum(e for e in grid if math.isfinite(e)) * repeats)


def curve(req: TrainRequest, grid: list[float], repeats: int, book: Ledger, keys: Path | None,
          tick: Callable[[float], None] | None = None) -> Curve:
    """Charge the whole grid, then train and measure at each ε; write curve.json / .csv / .png."""
    from privmodel.dp import budget
    from privmodel.evaluation import utility_curve

    if repeats < 1:
        raise InputError("--repeats must be at least 1")
    split = split_rows(req, keys)
    policy, rows, ready, train_idx, test_idx = split.policy, split.rows, split.ready, split.train_idx, split.test_idx
    frame, y, encoder = ready.frame, ready.y, ready.encoder
    df_train, df_test = frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)
    spend = cost(grid, repeats)
    finite = sum(1 for e in grid if math.isfinite(e)) * repeats
    not_dp = ["the non-private point (ε = inf): trained without DP on the training rows"] if any(
        math.isinf(e) for e in grid) else []
    not_dp.append("every metric of the curve: measured on the held-out split without DP")
    content = rows.content_hash.result() if rows.content_hash is not None else None  # hashed meanwhile
    if finite:
        dataset = budget.dataset_of(policy, req.data, keys, content=content)
        budget.charge(dataset, spend, split.delta * finite, split.cap,
                      keys=keys, ledger=book, params={"command": "curve", "grid": [str(e) for e in grid],
                                                      "repeats": repeats, "unit": rows.unit})

    def train_at(eps: float, run_seed: int) -> tuple[FitResult, Callable[[pd.DataFrame], np.ndarray]]:
        config = config_for(req, None if math.isinf(eps) else eps, seed=run_seed)
        result = fit_rows(encoder, df_train, y[train_idx], config)
        return result, predictor(result, encoder)

    points = utility_curve.compute_curve(train_at, df_test, y[test_idx], grid, repeats, req.seed, tick)
    privacy_cost = {"epsilon": spend, "delta": split.delta * finite, "unit": rows.unit} if finite else None
    params = {"label": req.label, "model": req.model, "grid": [str(e) for e in grid], "delta": split.delta,
              "epochs": req.epochs, "repeats": repeats, "seed": req.seed, "rows": rows.as_record(),
              "released_without_dp": not_dp}
    paths = _publish(req, points, book, params, privacy_cost)
    return Curve(rows=points, paths=paths, charged_epsilon=spend, not_dp=not_dp)


def _publish(req: TrainRequest, points: list[CurvePoint], book: Ledger, params: dict[str, Any],
             privacy_cost: dict[str, Any] | None) -> dict[str, Path]:
    """Stage curve.json / .csv / .png, record them in the ledger, then publish them into --out."""
    import tempfile

    from privmodel.artifacts.ledger import artifact
    from privmodel.core.fileio import ensure_output_dir, outputs
    from privmodel.evaluation import utility_curve

    out = ensure_output_dir(req.out)
    with tempfile.TemporaryDirectory(prefix=".curve.", dir=out) as scratch:
        drawn = utility_curve.write_curve(points, Path(scratch), title=f"{req.model} for {req.label}")
        targets = {kind: out / path.name for kind, path in drawn.items()}
        with outputs(targets.values(), inputs=[req.data, req.policy], ledger=book.path, action="model.curve",
                     replace=True) as stage:
            for kind, path in drawn.items():
                stage.write_bytes(targets[kind], path.read_bytes())
            book.append("model.curve", inputs=[artifact(req.data), artifact(req.policy)],
                        outputs=stage.artifacts(), params=params, privacy_cost=privacy_cost)
            stage.publish()
    return targets
