"""Federated training workflows: a simulation on Flower's Ray engine, or a run on a deployed SuperLink.

`privmodel federate simulate` and the demo call `simulate` (synthetic non-IID silos or the partners'
own files); `privmodel federate run` calls `deploy`. Each partner trains through the same partner
worker in both (consent by `anonymize.pipeline.minimise`, its own budget charged
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


def _check_files(req: FederationRequest) -> Path:
    """The partners' files and the federation's policy exist; returns the policy."""
    if req.policy is None:
        raise InputError("--data needs --policy (the policy every partner applies locally)")
    if len(req.data) < 2:
        raise InputError("--data: a federation needs at least two partners")
    for path in (*req.data, req.policy, *([req.eval_data] if req.eval_data else [])):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    if req.names and len(req.names) != len(req.data):
        raise InputError(f"--partner: {len(req.names)} names for {len(req.data)} --data files")
    return req.policy


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
    given = _check_files(req) if req.data else None
    on_start()
    base = ensure_output_dir(req.out)
    if given is not None:
        paths, holdout, policy = list(req.data), req.eval_data, given
    else:
        paths, holdout, policy = synth_silos(base, req.silos, req.customers, req.heterogeneity, req.config.seed,
                                             holdout=max(1000, req.customers // 10))
    names = list(req.names) if req.data and req.names else None
    specs = partner_specs(base, paths, policy, names=names)
    if req.config.secagg:
        from federated.coordinator.secagg import run_secagg_simulation

        return run_secagg_simulation(base, specs, req.config, policy, eval_data=holdout, on_round=on_round)
    return run_simulation(base, specs, req.config, policy, eval_data=holdout, on_round=on_round)


@dataclass(frozen=True)
class DeploymentRequest:
    """A coordinator's run on a running SuperLink (`privmodel federate run`): partners joined with their own keys."""

    superlink: str  # HOST:PORT of the SuperLink's Control API
    ca: Path
    registry: Path  # the SuperLink's registry.json: partner name -> node id -> key, signed into the run
    policy: Path
    out: Path
    partners: int
    config: FedConfig
    eval_data: Path | None = None
    keys: Path | None = None
    timeout: float = 3600.0


def _check_deployment(req: DeploymentRequest) -> dict[str, dict[str, Any]]:
    """Every file and option checked before anything is submitted; the registry (name -> node id, key)."""
    from federated.runtime.deployment import read_registry
    from federated.runtime.tls import check_ca

    if req.config.secagg:
        from federated.coordinator.secagg import check_options

        check_options(req.config, req.partners)
    check_ca(req.ca, "coordinator")
    if not req.policy.is_file():
        raise InputError(f"{req.policy}: no such policy file")
    if req.eval_data is not None and not req.eval_data.is_file():
        raise InputError(f"{req.eval_data}: no such file")
    if not req.registry.is_file():
        raise InputError(f"--registry {req.registry}: no such file (the SuperLink's workdir holds registry.json)")
    names = read_registry(req.registry)
    if not names:
        raise InputError(f"--registry {req.registry}: no partner is registered")
    return names


def deploy(req: DeploymentRequest, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Submit the training to the SuperLink, signed for the partners, and follow it to the end.

    Returns the run's id, status and output directory; a failed run raises (one line).
    """
    from federated.coordinator.server_app import ServerSettings
    from federated.runtime.deployment import AUTHORIZATION_FILE, submit_to
    from privmodel.core.fileio import ensure_output_dir
    from privmodel.core.keys import ensure_keys, load_signer

    names = _check_deployment(req)
    key_dir = ensure_keys(req.keys, actor="coordinator").resolve()
    signer = load_signer(key_dir)
    base = ensure_output_dir(req.out).resolve()
    settings = ServerSettings(
        config=req.config, policy=str(req.policy.resolve()), out_dir=str(base), keys=str(key_dir),
        eval_data=str(req.eval_data.resolve()) if req.eval_data else None, expected_partners=req.partners,
        wait_timeout=120.0, authorization=str(base / AUTHORIZATION_FILE),
    )
    result = submit_to(req.superlink, req.ca, settings.to_record(), base, req.timeout, on_event, signer=signer,
                       record=settings.to_record(), registry=names)
    return {**result, "out": base}
