"""THE training defaults: one set for the CLI, the workflows, the estimator, TrainConfig and federated partners.

Why one module: the same run used to get 10 epochs / batch 256 / lr 0.1 from the CLI and 20 / 1024 /
another lr from the estimator, so a table tried through one door behaved differently through the
other. Every door now reads these values (a door that must show a number before it has seen the
data -- a CLI option, a federated run config -- shows the fixed value; the rules below resolve
`None` once the number of training rows n is known).

How they were chosen: `benchmarks/bench_dp.py --only e` runs these defaults at epsilon = 1 on Telco,
Adult and privmodel.data.synth customers, three tables tuned by nobody for them, beside a small grid of
tuned settings: the default DP ROC-AUC is within 0.01 of the best tuned DP figure on each
(benchmarks/RESULTS.md has the table).

Import-light on purpose (stdlib only): `privmodel --help` and the Flower ClientApp import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Defaults:
    """Default hyper-parameters and privacy target of one DP training run."""

    model: str = "logreg"
    epsilon: float = 1.0
    # delta: this value, or 1/(10 n) when that is smaller (delta must stay well below 1/n: a
    # mechanism that publishes one random row outright satisfies delta = 1/n)
    delta: float = 1e-6
    epochs: int = 40
    # expected (Poisson) batch size: None = `batch_size_for(n)`; larger logical batches divide the
    # DP noise over more rows per step, and keep the number of steps moderate on large tables
    batch_size: int | None = None
    # Adam step size per model (`lr_for`): the noisy gradients are normalised by Adam, so one step
    # size per model family works across tables
    lr: dict[str, float] = field(default_factory=lambda: {"logreg": 0.2, "mlp": 0.02})
    clip: float = 2.0  # per-example gradient norm bound
    clipping: str = "flat"
    accountant: str = "prv"
    hidden: tuple[int, ...] = (64, 32)
    optimizer: str = "adam"
    average_from: float = 0.5  # tail-average the iterates of the last half of training (free: post-processing)
    test_size: float = 0.25
    seed: int = 0

    def lr_for(self, model: str) -> float:
        """The default Adam step size of `model` (logreg | mlp)."""
        return self.lr[model]

    def batch_size_for(self, n: int) -> int:
        """Expected batch size for n training rows: the power of two nearest 16 sqrt(n), at least 256,
        and at most n (sample rate <= 1). E.g. 5,000 rows -> 1024, 25,000 -> 2048, 150,000 -> 8192,
        750,000 -> 16,384, 7.5M -> 32,768.

        No upper cap (issue 13): with a cap the number of steps grew as n, and the run's time with it
        past the cap; growing as sqrt(n), the steps do too. Only the LOGICAL batch grows: DP-SGD
        computes it in physical chunks of `TrainConfig.physical_batch_size` rows, so memory stays
        bounded. Measured on 1M synthetic customers (DP logreg, epsilon = 1): batch 8,192, 16,384
        and 65,536 give the same held-out ROC-AUC (issue 13 report)."""
        if self.batch_size is not None:
            return self.batch_size
        target = 16.0 * math.sqrt(max(n, 1))
        size = 2 ** round(math.log2(target))
        return int(max(1, min(n, max(256, size))))

    def delta_for(self, n: int) -> float:
        """min(delta, 1/(10 n)) for n training rows."""
        return min(self.delta, 1.0 / (10.0 * n))

    @property
    def delta_rule(self) -> str:
        return f"min({self.delta:g}, 1/(10 n))"


DEFAULTS = Defaults()
#: how the CLI's --help states the rules
BATCH_RULE = "the power of two nearest 16 sqrt(n), at least 256"
LR_RULE = ", ".join(f"{model} {lr:g}" for model, lr in DEFAULTS.lr.items())
