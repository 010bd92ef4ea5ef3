"""`privmodel federate simulate`: the same ServerApp and ClientApp on Flower's Ray simulation engine.

Every simulated partner is a real partner in miniature: its own data file (a synthetic non-IID silo),
its own signing key, ledger and privacy state under OUT/partners/NAME. The
coordinator writes to OUT/coordinator. The ClientApp runs in Ray actors with one in-process worker
per partner (torch is imported once per actor, not once per message).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError
from federated.coordinator.server_app import RunOutcome, ServerSettings, make_server_app
from federated.partner.worker import PartnerSpec
from federated.runtime.config import FedConfig

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

HOLDOUT_NAME = "holdout.parquet"
DEFAULT_POLICY = Path(__file__).with_name("customers_policy.yaml")


def synth_silos(
    out_dir: Path, silos: int, customers: int, heterogeneity: float, seed: int, holdout: int
) -> tuple[list[Path], Path, Path]:
    """Write one synthetic table per silo, a pooled held-out table and the starter policy."""
    from privmodel.core.fileio import write_table
    from privmodel.data.synth import generate

    data_dir = out_dir / "silos"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame = generate(customers + holdout, silos, heterogeneity=heterogeneity, seed=seed)
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    held = frame.iloc[:holdout]
    rest = frame.iloc[holdout:]
    paths = []
    for silo in range(silos):
        part = rest[rest["silo"] == silo].drop(columns=["silo"])
        path = data_dir / f"silo-{silo}.parquet"
        write_table(part.reset_index(drop=True), path)
        paths.append(path)
    holdout_path = out_dir / HOLDOUT_NAME
    write_table(held.drop(columns=["silo"]).reset_index(drop=True), holdout_path)
    policy_path = out_dir / "policy.yaml"
    if not policy_path.exists():
        policy_path.write_bytes(DEFAULT_POLICY.read_bytes())
    return paths, holdout_path, policy_path


def partner_specs(out_dir: Path, data: list[Path], policy: Path, epsilon_caps: dict[str, float] | None = None,
                  names: list[str] | None = None) -> list[PartnerSpec]:
    """One spec (and, on first use, one key directory) per simulated partner (named silo-i by default)."""
    from privmodel.core.keys import init_keys

    specs = []
    for i, path in enumerate(data):
        name = names[i] if names else f"silo-{i}"
        home = out_dir / "partners" / name
        keys = home / "keys"
        if not (keys / "keys.json").exists():
            home.mkdir(parents=True, exist_ok=True)
            init_keys(keys, actor=name)
        specs.append(
            PartnerSpec(
                name=name, data=str(path), policy=str(policy), keys=str(keys), workdir=str(home),
                epsilon_cap=float((epsilon_caps or {}).get(name, 0.0)),
            )
        )
    return specs


def run_simulation(
    out_dir: str | os.PathLike[str],
    specs: list[PartnerSpec],
    config: FedConfig,
    policy: Path,
    eval_data: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    behaviours: dict[int, str] | None = None,
) -> RunOutcome:
    """Run the federated job on Flower's simulation engine (Ray) and return the coordinator's outcome."""
    from federated.partner.client_app import make_client_app

    config.validate()
    partners = [s.to_dict() for s in specs]
    if behaviours:
        from federated.partner.adversary import make_adversarial_client_app

        client_app = make_adversarial_client_app(partners, behaviours)
    else:
        client_app = make_client_app(partners)
    return run_on_ray(out_dir, specs, config, policy, make_server_app, client_app, eval_data, on_round, num_cpus,
                      verbose)


def run_on_ray(
    out_dir: str | os.PathLike[str],
    specs: list[PartnerSpec],
    config: FedConfig,
    policy: Path,
    server_app_factory: Callable[[ServerSettings, list[RunOutcome]], ServerApp],
    client_app: ClientApp,
    eval_data: Path | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """What every simulation shares (plain and SecAgg+): coordinator keys, the Ray backend, quiet
    logs, unwrapping the ServerApp thread's InputError, and stopping Ray afterwards."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from privmodel.core.keys import init_keys

    out = Path(out_dir)
    coordinator = out / "coordinator"
    coordinator.mkdir(parents=True, exist_ok=True)
    keys = coordinator / "keys"
    if not (keys / "keys.json").exists():
        init_keys(keys, actor="coordinator")
    settings = ServerSettings(
        config=config, policy=str(policy), out_dir=str(coordinator), keys=str(keys),
        eval_data=str(eval_data) if eval_data else None, expected_partners=len(specs),
        wait_timeout=60.0, on_round=on_round,
    )
    result: list[RunOutcome] = []
    cpus = num_cpus or max(1, min(len(specs), os.cpu_count() or 1))
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "error", "log_to_driver": verbose},
    }
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        flwr_run_simulation(
            server_app=server_app_factory(settings, result),
            client_app=client_app,
            num_supernodes=len(specs),
            backend_config=backend,
        )
    except InputError:
        raise
    except Exception as exc:  # the ServerApp thread's InputError may come back wrapped
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, InputError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, InputError):
            raise InputError(str(cause)) from None
        raise
    finally:
        flwr_logger.setLevel(level)
        _shutdown_ray()
    if not result:
        raise InputError(f"simulation ended without a result; see {coordinator / 'progress.jsonl'}")
    return result[0]


def _shutdown_ray() -> None:
    """Ray is started by Flower in this process; stop it so no raylet outlives the command."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass
