"""`privmodel federate simulate | superlink | join | run`: federated training across partners.

simulate   synthetic non-IID silos on Flower's Ray simulation engine, progress per round
keygen     a partner makes its own SuperNode key pair; only auth.pub leaves its machine
superlink  the coordinator's SuperLink: Fleet API for partners (TLS + node auth), Control API on
           loopback unless exposed on purpose; registers partners' public keys by name
join       all a partner runs: its training worker (data, policy, keys, budget, pinned coordinator
           key) and its SuperNode
run        the coordinator submits the training, signs it for the partners and follows it;
           non-zero exit when the run failed

Nothing heavy at import: flwr, torch and pandas load inside the commands.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from anonymize.errors import InputError
from federated.runtime.config import FedConfig
from privmodel.core.defaults import DEFAULTS

if TYPE_CHECKING:
    from rich.console import Console

# the option defaults ARE the run config's (privmodel.core.defaults): one set of defaults for every door
FED = FedConfig()


def register(app: typer.Typer) -> None:
    fed = typer.Typer(help="Federated training across partners (Flower).", no_args_is_help=True)
    fed.command("simulate")(simulate)
    fed.command("keygen")(keygen)
    fed.command("superlink")(superlink)
    fed.command("join")(join)
    fed.command("run")(run)
    from privmodel.cli.federate_vertical import register as register_vertical

    register_vertical(fed)
    app.add_typer(fed, name="federate")


def _config(**values: Any) -> FedConfig:
    from federated.runtime.config import FedConfig

    return FedConfig(**values).validate()


def _printer(console: Console) -> Callable[[dict[str, Any]], None]:
    def show(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "round":
            g = event.get("global") or {}
            silos = event.get("per_silo_previous") or {}
            eps = event.get("epsilon") or {}
            bad = [f"{i['partner']} rejected ({i['reason']})" for i in event.get("rejected", [])]
            bad += [i["reason"] for i in event.get("failed", [])]
            auc = f"{g['auc']:.4f}" if g.get("auc") is not None else "-"
            silo_text = " ".join(f"{k}={v['auc']:.3f}" for k, v in sorted(silos.items()))
            eps_text = f" ε max {max(eps.values()):.3f}" if eps and max(eps.values()) > 0 else ""
            console.print(
                f"round {event['round']}/{event['rounds']}  {event['seconds']:.1f}s  accepted {len(event['accepted'])}"
                f"  global AUC {auc}{eps_text}  silos(prev) {silo_text}"
            )
            for line in bad:
                console.print(f"  [yellow]{line}[/yellow]")
        elif kind == "partner_failed":
            console.print(f"  [yellow]{event['reason']}[/yellow]")
        elif kind == "done":
            silos = event.get("per_silo") or {}
            console.print("final per-silo AUC: " + " ".join(f"{k}={v['auc']:.3f}" for k, v in sorted(silos.items())))
    return show


def simulate(
    out: Path = typer.Option(Path("federated-sim"), "--out", help="Output directory (silos, partners, coordinator)."),
    silos: int = typer.Option(5, "--silos", min=2, help="Number of synthetic partners."),
    rounds: int = typer.Option(FED.rounds, "--rounds", min=1),
    customers: int = typer.Option(20000, "--customers", min=100, help="Customers over all silos."),
    heterogeneity: float = typer.Option(0.6, "--heterogeneity", help="0 = IID silos, 1 = strongly non-IID."),
    epsilon: float = typer.Option(DEFAULTS.epsilon, "--epsilon", help="Target ε per partner over all rounds; 0 = non-private."),
    delta: float = typer.Option(FED.delta, "--delta", help="δ of each partner's run (charged once per run)."),
    strategy: str = typer.Option(FED.strategy, "--strategy", help="fedavg, fedprox or fedadam."),
    proximal_mu: float = typer.Option(FED.proximal_mu, "--proximal-mu"),
    local_steps: int = typer.Option(FED.local_steps, "--local-steps"),
    batch_size: int = typer.Option(FED.batch_size, "--batch-size"),
    lr: float = typer.Option(FED.lr, "--lr"),
    min_partners: int = typer.Option(FED.min_partners, "--min-partners"),
    max_update_norm: float = typer.Option(FED.max_update_norm, "--max-update-norm", help="Robust aggregation bound."),
    client_dp_noise: float = typer.Option(FED.client_dp_noise, "--client-dp-noise", help="Client-level DP noise (Flower wrapper)."),
    client_dp_clip: float = typer.Option(FED.client_dp_clip, "--client-dp-clip"),
    model: str = typer.Option(FED.model, "--model"),
    label: str = typer.Option(FED.label, "--label"),
    seed: int = typer.Option(FED.seed, "--seed"),
    data: list[Path] = typer.Option(
        None, "--data", help="A partner's own table (repeat per partner) instead of synthetic silos; needs --policy."
    ),
    policy_path: Path = typer.Option(None, "--policy", help="The federation's policy for --data partners."),
    eval_data: Path = typer.Option(None, "--eval-data", help="Held-out table for server-side evaluation."),
    partner: list[str] = typer.Option(None, "--partner", help="Name of each --data partner, in the same order."),
    secagg: bool = typer.Option(
        False, "--secagg", help="Secure aggregation (SecAgg+): the coordinator only sees the sum of the updates."
    ),
    secagg_shares: int = typer.Option(FED.secagg_shares, "--secagg-shares", help="SecAgg+ shares per partner key (at most the partners)."),
    secagg_threshold: int = typer.Option(FED.secagg_threshold, "--secagg-threshold", help="SecAgg+ shares needed to unmask a dropout."),
) -> None:
    """Simulate partners (synthetic non-IID silos, or --data files) on Flower's simulation engine (Ray)."""
    from rich.console import Console

    from privmodel.workflows.federation import FederationRequest
    from privmodel.workflows.federation import simulate as run_federation

    console = Console()
    config = _config(
        rounds=rounds, epsilon=epsilon, delta=delta, strategy=strategy, proximal_mu=proximal_mu, local_steps=local_steps,
        batch_size=batch_size, lr=lr, min_partners=min_partners, max_update_norm=max_update_norm,
        client_dp_noise=client_dp_noise, client_dp_clip=client_dp_clip, model=model, label=label, seed=seed,
        secagg=secagg, secagg_shares=secagg_shares, secagg_threshold=secagg_threshold,
    )
    req = FederationRequest(out=out, config=config, data=list(data or []), policy=policy_path, eval_data=eval_data,
                            names=list(partner or []), silos=silos, customers=customers, heterogeneity=heterogeneity)
    source = "partner files" if data else f"{customers} synthetic customers"
    secure = ", SecAgg+" if secagg else ""
    started = time.monotonic()
    outcome = run_federation(req, on_round=_printer(console), on_start=lambda: console.print(
        f"{req.partners} partners ({source}), {rounds} rounds, {strategy}{secure}, ε={epsilon or 'off'}: starting Ray"))
    console.print(
        f"done in {time.monotonic() - started:.1f}s; model {outcome.model_hash[:16]}; "
        f"card {out / 'coordinator' / 'federated_card.md'}"
    )


def keygen(
    directory: Path = typer.Argument(..., help="Where to put auth.key (private, 0600) and auth.pub (to send)."),
) -> None:
    """A partner's own SuperNode key pair: the private key never leaves this machine; send auth.pub."""
    from rich.console import Console
    from rich.markup import escape

    from federated.runtime.tls import make_node_key

    meta = make_node_key(directory)
    Console(highlight=False).print(
        f"node key in {escape(meta['private_key'])} (keep it here); send {escape(meta['public_key'])} to the coordinator "
        f"(sha256 {meta['public_key_sha256'][:16]})"
    )


def superlink(
    tls: Path = typer.Option(..., "--tls", help="Directory from `privmodel keys tls`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Fleet API address for the partners' SuperNodes."),
    port: int = typer.Option(9092, "--port", help="Fleet API port."),
    control_host: str = typer.Option(
        "127.0.0.1", "--control-host",
        help="Control API address (submitting runs). Loopback by default; anything else exposes run submission.",
    ),
    control_port: int = typer.Option(9093, "--control-port", help="Control API port (what `federate run --superlink` uses)."),
    register_node: list[str] = typer.Option([], "--register", help="NAME=AUTH.PUB: a partner's public node key (repeat)."),
    workdir: Path = typer.Option(Path("superlink"), "--workdir", help="Log and registry.json (name -> node id -> key)."),
) -> None:
    """Start the SuperLink (TLS + node authentication); runs until interrupted, then stops it."""
    from rich.console import Console
    from rich.markup import escape

    from federated.runtime.deployment import start_superlink

    console = Console(highlight=False, soft_wrap=True)  # addresses and paths are never broken across lines
    # SIGTERM handled before anything starts: the SuperLink runs in its own session and must be stopped
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    link = None
    try:
        link = start_superlink(tls, workdir, host, port, control_host=control_host, control_port=control_port)
        for item in register_node:
            name, sep, key = item.partition("=")
            if not sep:
                raise InputError(f"--register: expected NAME=AUTH.PUB, got {item[:80]!r}")
            node_id = link.register(Path(key), name)
            console.print(f"registered partner {escape(name)} (node {node_id})")
        exposed = "" if control_host in ("127.0.0.1", "localhost", "::1") else " [red](exposed beyond loopback)[/red]"
        console.print(f"SuperLink: partners connect to {escape(link.address)} (Fleet API only); runs are submitted on "
                      f"{escape(link.control_address)}{exposed}; registry {escape(str(link.registry_path))}; Ctrl-C stops it")
        while link.proc.poll() is None:
            time.sleep(1)
        raise InputError(f"SuperLink exited with code {link.proc.returncode}; see {link.log}")
    except KeyboardInterrupt:
        pass
    finally:
        if link is not None:
            link.stop()


def join(
    superlink_address: str = typer.Option(..., "--superlink", help="HOST:PORT of the coordinator's SuperLink (Fleet API)."),
    data: Path = typer.Option(..., "--data", help="This partner's customer table (CSV / Parquet); never leaves."),
    policy: Path = typer.Option(..., "--policy", help="The federation's policy (must match the coordinator's)."),
    name: str = typer.Option(..., "--name", help="Partner name (must be the name its key is registered under)."),
    ca: Path = typer.Option(..., "--ca", help="CA certificate of the federation."),
    auth_key: Path = typer.Option(..., "--auth-key", help="This node's private key (from `privmodel federate keygen`)."),
    coordinator_key: Path = typer.Option(
        ..., "--coordinator-key",
        help="The coordinator's public signing key (PEM, or its key directory): only runs it signed are accepted.",
    ),
    keys: Path = typer.Option(None, "--keys", help="Key directory (signing key, pseudonym secret)."),
    workdir: Path = typer.Option(Path("partner"), "--workdir", help="Ledger, privacy state, logs."),
    epsilon_cap: float = typer.Option(0.0, "--epsilon-cap", help="ε cap for this data (default: the policy's budget)."),
) -> None:
    """Join a federation as a partner: start the local training worker and the SuperNode."""
    from rich.console import Console
    from rich.markup import escape

    from federated.partner.worker import PartnerSpec
    from federated.runtime.deployment import join as start_partner
    from federated.runtime.tls import check_name
    from privmodel.core.keys import ensure_keys

    console = Console(highlight=False, soft_wrap=True)
    check_name(name)
    if not coordinator_key.exists():
        raise InputError(f"partner {name}: --coordinator-key {coordinator_key}: no such file")
    spec = PartnerSpec(
        name=name, data=str(data.resolve()), policy=str(policy.resolve()), keys=str(ensure_keys(keys, actor=name).resolve()),
        workdir=str(workdir.resolve()), epsilon_cap=epsilon_cap, coordinator_key=str(coordinator_key.resolve()),
    )
    stopping: list[str] = []

    def _term(*_: object) -> None:
        stopping.append("signal")
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    partner = None
    try:
        partner = start_partner(spec, superlink_address, ca, auth_key)  # returns once the SuperLink accepted the node
        console.print(f"partner {escape(name)} joined {escape(superlink_address)} as node {partner.node_id}; "
                      "Ctrl-C leaves the federation")
        while partner.supernode.poll() is None and partner.worker.poll() is None:
            time.sleep(0.5)
        raise InputError(partner.failure())
    except KeyboardInterrupt:
        pass
    finally:
        if partner is not None:
            partner.stop()


def run(
    superlink_address: str = typer.Option(
        "127.0.0.1:9093", "--superlink", help="HOST:PORT of the SuperLink's Control API (loopback by default)."
    ),
    ca: Path = typer.Option(..., "--ca", help="CA certificate of the federation."),
    registry: Path = typer.Option(
        Path("superlink/registry.json"), "--registry",
        help="The SuperLink's registry.json (partner name -> node id -> key), signed into the run.",
    ),
    policy: Path = typer.Option(..., "--policy"),
    out: Path = typer.Option(Path("federated-run"), "--out", help="Coordinator output (model, card, ledger)."),
    partners: int = typer.Option(..., "--partners", min=1, help="Partners to wait for before round 1."),
    eval_data: Path = typer.Option(None, "--eval-data", help="Held-out table for server-side evaluation."),
    keys: Path = typer.Option(None, "--keys"),
    rounds: int = typer.Option(FED.rounds, "--rounds", min=1),
    epsilon: float = typer.Option(DEFAULTS.epsilon, "--epsilon"),
    delta: float = typer.Option(FED.delta, "--delta", help="δ of each partner's run (charged once per run)."),
    strategy: str = typer.Option(FED.strategy, "--strategy"),
    proximal_mu: float = typer.Option(FED.proximal_mu, "--proximal-mu"),
    local_steps: int = typer.Option(FED.local_steps, "--local-steps"),
    batch_size: int = typer.Option(FED.batch_size, "--batch-size"),
    lr: float = typer.Option(FED.lr, "--lr"),
    min_partners: int = typer.Option(FED.min_partners, "--min-partners"),
    max_update_norm: float = typer.Option(FED.max_update_norm, "--max-update-norm"),
    client_dp_noise: float = typer.Option(FED.client_dp_noise, "--client-dp-noise"),
    client_dp_clip: float = typer.Option(FED.client_dp_clip, "--client-dp-clip"),
    label: str = typer.Option(FED.label, "--label"),
    round_timeout: float = typer.Option(FED.round_timeout, "--round-timeout"),
    timeout: float = typer.Option(3600.0, "--timeout", help="Whole-run deadline (the run is stopped after it)."),
    secagg: bool = typer.Option(
        False, "--secagg", help="Secure aggregation (SecAgg+): the coordinator only sees the sum of the updates."
    ),
    secagg_shares: int = typer.Option(FED.secagg_shares, "--secagg-shares", help="SecAgg+ shares per partner key (at most the partners)."),
    secagg_threshold: int = typer.Option(FED.secagg_threshold, "--secagg-threshold", help="SecAgg+ shares needed to unmask a dropout."),
) -> None:
    """Submit the federated training to the SuperLink, sign it for the partners, follow it round by round."""
    from rich.console import Console

    from privmodel.workflows.federation import DeploymentRequest, deploy

    console = Console()
    config = _config(
        rounds=rounds, epsilon=epsilon, delta=delta, strategy=strategy, proximal_mu=proximal_mu, local_steps=local_steps,
        batch_size=batch_size, lr=lr, min_partners=min_partners, max_update_norm=max_update_norm,
        client_dp_noise=client_dp_noise, client_dp_clip=client_dp_clip, label=label, round_timeout=round_timeout,
        secagg=secagg, secagg_shares=secagg_shares, secagg_threshold=secagg_threshold,
    )
    req = DeploymentRequest(superlink=superlink_address, ca=ca, registry=registry, policy=policy, out=out,
                            partners=partners, config=config, eval_data=eval_data, keys=keys, timeout=timeout)
    result = deploy(req, on_event=_printer(console))
    console.print(f"run {result['run_id']} {result['status']}; model and card in {result['out']}")
