"""Privacy-utility curve: the same model trained at each ε of a grid, scored on the same held-out rows.

The question it answers for a data owner is "how much accuracy does each step of privacy cost?";
the answer is a table (JSON + CSV) and a plot (PNG, matplotlib with the Agg backend so it works on
a server with no display). ε = ∞ is the non-private baseline: the same code path with no clipping
and no noise. Each point is one seeded training run; `repeats` > 1 averages seeds and reports the
spread, since at small ε a single run's AUC is noisy.

The curve is an internal analysis: its models are discarded and its metrics are computed on a
held-out split, not released under DP (see the model card's caveat). `privmodel curve` records it in
the ledger with every ε tried, and does not charge the dataset's budget because no model leaves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeVar

import numpy as np

from anonymize.errors import InputError
from privmodel.core.fileio import atomic_path, atomic_write_text
from privmodel.evaluation import metrics

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

DEFAULT_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
COLUMNS = ("epsilon", "repeats", "roc_auc", "roc_auc_std", "pr_auc", "brier", "ece", "top_decile_lift",
           "noise_multiplier", "epsilon_spent")

#: (epsilon or inf, seed) -> (fit result with .privacy, predict_proba on the evaluation rows)
RowsT = TypeVar("RowsT")  # the evaluation rows, as the trainer's predict function takes them
CurveTrainer = Callable[[float, int], tuple[object, Callable[[RowsT], np.ndarray]]]


class CurvePoint(TypedDict):
    """One ε of the curve: mean metrics over the repeats (None where no repeat gave a value)."""

    epsilon: float
    repeats: int
    roc_auc: float | None
    roc_auc_std: float
    pr_auc: float | None
    brier: float | None
    ece: float | None
    top_decile_lift: float | None
    noise_multiplier: float | None
    epsilon_spent: float | None


def parse_grid(text: str) -> list[float]:
    """'0.5,1,inf' -> [0.5, 1.0, inf]; one-line error on a bad or non-positive value."""
    values: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = math.inf if part.lower() in ("inf", "infinity", "∞") else float(part)
        except ValueError:
            raise InputError(f"--grid: {part!r} is not a number") from None
        if not value > 0 or math.isnan(value):
            raise InputError(f"--grid: epsilon must be positive (got {part})")
        values.append(value)
    if not values:
        raise InputError("--grid: no epsilon values")
    return sorted(set(values))


def compute_curve(
    train: CurveTrainer[RowsT],
    x_eval: RowsT,
    y_eval: ArrayLike,
    grid: Sequence[float] = DEFAULT_GRID,
    repeats: int = 1,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> list[CurvePoint]:
    """One row per ε: mean metrics over `repeats` seeded runs (std of ROC-AUC beside it)."""
    if repeats < 1:
        raise InputError("curve: repeats must be at least 1")
    rows: list[CurvePoint] = []
    for eps in sorted(grid):
        results, noises, spent = [], [], []
        for r in range(repeats):
            fit, predict = train(eps, seed + r)
            results.append(metrics.evaluate(y_eval, predict(x_eval)))
            privacy = getattr(fit, "privacy", {}) or {}
            noises.append(privacy.get("noise_multiplier"))
            spent.append(privacy.get("epsilon"))
        aucs = [m["roc_auc"] for m in results if m["roc_auc"] is not None]
        rows.append({
            "epsilon": eps,
            "repeats": repeats,
            "roc_auc": _mean(aucs),
            "roc_auc_std": float(np.std(aucs)) if len(aucs) > 1 else 0.0,
            "pr_auc": _mean([m["pr_auc"] for m in results]),
            "brier": _mean([m["brier"] for m in results]),
            "ece": _mean([m["ece"] for m in results]),
            "top_decile_lift": _mean([m["top_decile_lift"] for m in results]),
            "noise_multiplier": _mean(noises),
            "epsilon_spent": _mean(spent),
        })
        if progress is not None:
            progress(eps)
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _json_ready(rows: Sequence[CurvePoint]) -> list[dict[str, object]]:
    """JSON has no infinity: ε = ∞ is written as the string "inf"."""
    return [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()} for row in rows]


def write_curve(rows: Sequence[CurvePoint], out_dir: str | os.PathLike[str], title: str = "") -> dict[str, Path]:
    """curve.json, curve.csv and curve.png in `out_dir`, each written atomically."""
    out = Path(out_dir)
    paths = {"json": out / "curve.json", "csv": out / "curve.csv", "png": out / "curve.png"}
    atomic_write_text(paths["json"], json.dumps({"title": title, "rows": _json_ready(rows)}, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in _json_ready(rows):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    atomic_write_text(paths["csv"], buffer.getvalue())
    plot_curve(rows, paths["png"], title)
    return paths


def plot_curve(rows: Sequence[CurvePoint], path: str | os.PathLike[str], title: str = "") -> None:
    """ROC-AUC (± std) against ε on a log axis; the non-private baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [(r["epsilon"], auc, r["roc_auc_std"]) for r in rows if (auc := r["roc_auc"]) is not None and math.isfinite(r["epsilon"])]
    baseline = [auc for r in rows if (auc := r["roc_auc"]) is not None and math.isinf(r["epsilon"])]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        if finite:
            xs, ys, err = ([p[i] for p in finite] for i in range(3))
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label="DP-SGD")
            ax.set_xscale("log", base=2)
        if baseline:
            ax.axhline(baseline[0], linestyle="--", color="grey", label="non-private baseline (ε = ∞)")
        ax.axhline(0.5, linestyle=":", color="lightgrey", label="chance")
        ax.set_xlabel("ε (privacy budget, log scale)")
        ax.set_ylabel("ROC-AUC on held-out rows")
        ax.set_title(title or "Privacy-utility curve")
        ax.legend(loc="lower right")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
