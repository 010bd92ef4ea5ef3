"""The federated run configuration: one flat record that travels as Flower run config.

Flat scalar values only, because Flower's `ConfigRecord` / `UserConfig` carry scalars, and the same
dict is written into the generated app's `pyproject.toml` for a deployment run. Kept stdlib-only so
the lean ClientApp can import it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anonymize.errors import InputError
from privmodel.core.defaults import DEFAULTS

STRATEGIES = ("fedavg", "fedprox", "fedadam")
MODELS = ("logreg", "mlp")
# What a partner trains on: its own minimised rows (per-customer ε), or -- benchmarks only -- its
# anonymized release (ε per release row). Partners state it at hello; the card reports it.
TRAINING_ROWS = ("minimised", "release")


@dataclass
class FedConfig:
    """Everything the coordinator decides; each partner still enforces its own ε cap."""

    strategy: str = "fedavg"
    rounds: int = 10
    min_partners: int = 2  # a round completes when at least this many partners contribute
    # model, optimizer, clip and δ: privmodel.core.defaults (one set for every door); the round structure
    # (local steps, batch, lr of a round) stays federated: a partner runs a few steps per round, not epochs
    model: str = DEFAULTS.model
    label: str = "churn"
    local_steps: int = 20  # DP-SGD steps per partner per round
    batch_size: int = 512  # expected Poisson batch: sample_rate = batch_size / n_train
    lr: float = 0.05
    optimizer: str = DEFAULTS.optimizer  # local optimizer of privmodel.dp.dpsgd.train_dp ("adam" or "sgd")
    max_grad_norm: float = DEFAULTS.clip
    epsilon: float = 0.0  # target ε per partner over all rounds; 0 = non-private (no noise, no clipping)
    delta: float = DEFAULTS.delta
    proximal_mu: float = 0.0  # FedProx
    server_lr: float = 0.1  # FedAdam eta
    server_tau: float = 1e-3  # FedAdam tau
    max_update_norm: float = 50.0  # robust aggregation: larger updates are rejected
    client_dp_noise: float = 0.0  # client-level DP (Flower wrapper); 0 = off
    client_dp_clip: float = 0.0  # clipping norm of the client-level DP wrapper
    secagg: bool = False  # SecAgg+ (legacy workflow)
    secagg_shares: int = 3
    secagg_threshold: int = 2
    eval_fraction: float = 0.2  # each partner's local held-out share (per-silo AUC)
    round_timeout: float = 300.0
    seed: int = 0  # weight initialisation and each partner's held-out split only; never the DP noise
    # TEST ONLY: >= 0 asks partners for reproducible noise (NOT differentially private). A partner
    # refuses unless its own spec allows it (`PartnerSpec.insecure_noise`); the card says so first.
    insecure_seed: int = -1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> FedConfig:
        """Reject impossible settings with one line naming the option."""
        self._check_choices()
        self._check_numbers()
        self._check_combinations()
        return self

    def _check_choices(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy: unknown strategy {self.strategy!r} (choose from {', '.join(STRATEGIES)})")
        if self.model not in MODELS:
            raise InputError(f"--model: unknown model {self.model!r} (choose from {', '.join(MODELS)})")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"--optimizer: unknown optimizer {self.optimizer!r} (adam or sgd)")

    def _check_numbers(self) -> None:
        for name in ("rounds", "min_partners", "local_steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1")
        for name in ("lr", "max_grad_norm", "max_update_norm", "server_lr", "round_timeout", "delta"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"--{name.replace('_', '-')}: must be a positive number")
        for name in ("epsilon", "proximal_mu", "client_dp_noise", "client_dp_clip"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise InputError(f"--{name.replace('_', '-')}: must be zero or a positive number")

    def _check_combinations(self) -> None:
        if self.delta >= 1e-3:
            raise InputError("--delta: must be well below 1/n (at most 1e-3); the default is 1e-6")
        if not 0.0 < self.eval_fraction < 0.9:
            raise InputError("--eval-fraction: must be between 0 and 0.9")
        if self.client_dp_noise > 0 and self.client_dp_clip <= 0:
            raise InputError("--client-dp-clip: client-level DP needs a positive clipping norm")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise InputError("--proximal-mu: FedProx needs a positive proximal term")
        if int(self.insecure_seed) < -1:
            raise InputError("--insecure-seed: must be -1 (off) or a non-negative test seed")
        if self.secagg and self.secagg_threshold > self.secagg_shares:
            raise InputError("--secagg-threshold: cannot exceed --secagg-shares")

    @property
    def private(self) -> bool:
        return self.epsilon > 0

    def to_record(self) -> dict[str, Any]:
        """Flat dict of scalars (what Flower's ConfigRecord and run config accept)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update({f"extra_{k}": v for k, v in self.extra.items()})
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FedConfig:
        """Inverse of `to_record`; unknown keys are ignored (Flower adds its own, e.g. server-round)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in record.items():
            name = key.replace("-", "_")
            if name.startswith("extra_"):
                extra[name[len("extra_"):]] = value
            elif name in known and name != "extra":
                default = known[name].default
                if isinstance(default, bool) and isinstance(value, str):
                    kwargs[name] = value.strip().lower() in ("1", "true", "yes")
                else:
                    convert: Callable[[Any], Any] = type(default)  # the field's own type (int, float, str)
                    kwargs[name] = convert(value)
        return cls(**kwargs, extra=extra)
