"""The federated simulation workflow: partners (synthetic non-IID silos or their own files) on Flower's Ray engine.

`privmodel federate simulate` and the demo call `simulate`; each partner trains through the same
partner worker as in a deployment (consent by `anonymize.pipeline.minimise`, its own budget charged
by `privmodel.dp.budget.charge`, secret noise), and the coordinator writes the run card and ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError

if TYPE_CHECKING:
    from federated.coordinator.server_app import RunOutcome
    from federated.runtime.config import FedConfig


@dataclass(frozen=True)
class FederationRequest:
    """Either `data` (one table per partner, with `policy`) or synthetic silos (`silos`, `customers`)."""

    out: Path
    config: FedConfig
    data: list[Path] = field(default_factory=list)
    policy: Path | None = None
    eval_data: Path | None = None
    names: list[str] = field(default_factory=list)
    silos: int = 5
    customers: int = 20_000
    heterogeneity: float = 0.6

    @property
    def partners(self) -> int:
        return len(self.data) if self.data else self.silos


def _check_files(req: FederationRequest) -> None:
    if req.policy is None:
        raise InputError("--data needs --policy (the policy every partner applies locally)")
    if len(req.data) < 2:
        raise InputError("--data: a federation needs at least two partners")
    for path in (*req.data, req.policy, *([req.eval_data] if req.eval_data else [])):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    if req.names and len(req.names) != len(req.data):
        raise InputError(f"--partner: {len(req.names)} names for {len(req.data)} --data files")


def simulate(req: FederationRequest, on_round: Callable[[dict[str, Any]], None] | None = None,
             on_start: Callable[[], None] = lambda: None) -> RunOutcome:
    """Run the federation; `on_start()` once every option is checked, `on_round(event)` with each round's figures."""
    from federated.runtime.simulate import partner_specs, run_simulation, synth_silos
    from privmodel.core.fileio import ensure_output_dir

    if not 0.0 <= req.heterogeneity <= 1.0:
        raise InputError("--heterogeneity: must be between 0 and 1")
    if req.config.secagg:
        from federated.coordinator.secagg import check_options

        check_options(req.config, req.partners)
    if req.data:
        _check_files(req)
    on_start()
    base = ensure_output_dir(req.out)
    if req.data:
        paths, holdout, policy = list(req.data), req.eval_data, req.policy
    else:
        paths, holdout, policy = synth_silos(base, req.silos, req.customers, req.heterogeneity, req.config.seed,
                                             holdout=max(1000, req.customers // 10))
    if policy is None:
        raise InputError("--data needs --policy (the policy every partner applies locally)")
    names = list(req.names) if req.data and req.names else None
    specs = partner_specs(base, paths, policy, names=names)
    if req.config.secagg:
        from federated.coordinator.secagg import run_secagg_simulation

        return run_secagg_simulation(base, specs, req.config, policy, eval_data=holdout, on_round=on_round)
    return run_simulation(base, specs, req.config, policy, eval_data=holdout, on_round=on_round)
