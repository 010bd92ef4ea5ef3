"""`privmodel federate vertical simulate | join | run`: vertical federation between a label and feature parties.

simulate  every party in one process (`federated.vertical.workflow.simulate`): one label party and
          one or more feature parties (repeat --feature, --feature-data, --feature-keys)
join      the feature party's long-lived node (its table, policy, keys, budget, the label party's pinned
          key) and its SuperNode, on the label party's SuperLink (`privmodel federate superlink`)
run       the label party signs and submits the run to its SuperLink and follows it
          (`federated.vertical.deploy`); non-zero exit when the run failed
score     the label party's new customers scored with a trained model, the feature party online
          (a signed run too; the feature party charges its budget for the embeddings it sends)

Each party brings its party file (role, policy, join keys), its table and its keys directory (its
organisation: signer and budget store). The commands only parse, call one workflow and print; flwr
and torch load inside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import typer

if TYPE_CHECKING:
    from federated.vertical.split import SplitConfig
    from federated.vertical.workflow import PartyInput


def register(fed: typer.Typer) -> None:
    vertical = typer.Typer(help="Vertical federation: parties share customers, not columns.", no_args_is_help=True)
    vertical.command("simulate")(simulate)
    vertical.command("join")(join)
    vertical.command("run")(run)
    vertical.command("score")(score)
    fed.add_typer(vertical, name="vertical")


def simulate(
    label: Path = typer.Option(..., "--label", help="The label party's file (role: label)."),
    label_data: Path = typer.Option(..., "--label-data", help="The label party's table."),
    label_keys: Path = typer.Option(None, "--label-keys", help="The label party's key directory (its budget)."),
    feature: list[Path] = typer.Option(
        ..., "--feature", help="A feature party's file (role: feature); repeat for several feature parties."
    ),
    feature_data: list[Path] = typer.Option(..., "--feature-data", help="Its table (one per --feature, same order)."),
    feature_keys: list[Path] = typer.Option(
        None, "--feature-keys", help="Its key directory, its budget (none, or one per --feature, same order)."
    ),
    out: Path = typer.Option(Path("vertical-sim"), "--out", help="Output directory (one folder per party)."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Target ε per party for the run; 0 = non-private."),
    delta: float = typer.Option(1e-6, "--delta", help="δ per party."),
    label_epsilon: float = typer.Option(None, "--label-epsilon", help="The label party's own ε (default: --epsilon)."),
    label_dp: str = typer.Option(
        "gradient", "--label-dp",
        help="gradient: noised gradients + DP-SGD top (columns and labels); labels: randomized response (labels only).",
    ),
    protocol: str = typer.Option(
        "split", "--protocol",
        help="split: split learning (an embedding per customer per epoch); release: each party's data crosses once, "
             "by randomized response (labels down, the feature party's score bins up); encrypted: gradient sums "
             "under CKKS, Gaussian noise per step (central DP; docs/vertical.md).",
    ),
    bins: int = typer.Option(None, "--bins", help="release: score bins per feature party (default: 2 below ε 2.5, else 4)."),
    epochs: int = typer.Option(None, "--epochs", min=1,
                               help="Default: 4 (split), 30 (release: non-private fits), 50 (encrypted: gradient steps)."),
    batch_size: int = typer.Option(512, "--batch-size", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of the shared customers held out for the AUC."),
    workers: int = typer.Option(0, "--psi-workers", help="Processes for PSI (0 = all cores)."),
    seed: int = typer.Option(0, "--seed", help="Weights and batch schedule only (public); never the noise."),
    pin_label_key: Path = typer.Option(
        None, "--pin-label-key", help="The label party's public key the feature party trusts (default: --label-keys)."
    ),
) -> None:
    """Private set intersection, then split learning with per-party DP; a card names each party's ε.
    With several feature parties the model trains on the customers of every party."""
    from rich.console import Console

    from anonymize.errors import InputError
    from federated.vertical.psi import default_workers
    from federated.vertical.workflow import PartyInput
    from federated.vertical.workflow import simulate as run

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    err = Console(stderr=True)
    config = _config(epsilon, label_epsilon, delta, label_dp, epochs or DEFAULT_EPOCHS.get(protocol, 4),
                     batch_size, lr, seed, protocol=protocol, bins=bins)
    features = _feature_inputs(feature, feature_data, feature_keys)
    result = run(PartyInput(label, label_data, label_keys), features, config, out, test_size=test_size, workers=workers or default_workers(), progress=lambda m: err.print(m),
                 pinned_label_key=pin_label_key)
    console = Console()
    for name, p in result.parties.items():
        eps = "non-private" if p["epsilon"] is None else f"ε {p['epsilon']:.3f}, δ {p['delta']:.1e} ({p['covers']})"
        console.print(f"{name} ({p['role']} party): {eps}")
    auc = result.metrics["roc_auc"]
    console.print(f"overlap {result.overlap['size']:,} customers"
                  + (" (customers of every party)" if len(result.parties) > 2 else "") + "; test ROC-AUC "
                  f"{'-' if auc is None else f'{auc:.4f}'}; model hash {result.model_hash[:16]}; "
                  f"PSI {result.seconds['psi']:.1f} s, total {result.seconds['total']:.1f} s")
    console.print(f"card: {out / next(n for n, p in result.parties.items() if p['role'] == 'label') / 'card.md'}")


def _feature_inputs(files: list[Path], data: list[Path], keys: list[Path] | None) -> list[PartyInput]:
    """One PartyInput per --feature (one line when the repeated options do not pair up)."""
    from anonymize.errors import InputError
    from federated.vertical.workflow import PartyInput

    if len(data) != len(files) or (keys and len(keys) != len(files)):
        raise InputError("give one --feature-data (and, if any, one --feature-keys) per --feature, in the same order")
    return [PartyInput(f, d, keys[i] if keys else None) for i, (f, d) in enumerate(zip(files, data, strict=True))]


#: --epochs when not given, by protocol (split: 4)
DEFAULT_EPOCHS = {"release": 30, "encrypted": 50}


def _config(epsilon: float, label_epsilon: float | None, delta: float, label_dp: str, epochs: int, batch_size: int,
            lr: float, seed: int, *, protocol: str = "split", bins: int | None = None) -> SplitConfig:
    """The options as a checked SplitConfig (one line for a bad one)."""
    from anonymize.errors import InputError
    from federated.vertical.split import SplitConfig

    if epsilon < 0:
        raise InputError("--epsilon must be positive (0 = non-private)")
    if label_dp not in ("gradient", "labels"):
        raise InputError("--label-dp must be gradient or labels")
    config = SplitConfig(epsilon=epsilon or None, label_epsilon=label_epsilon, delta=delta, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, label_dp="labels" if label_dp == "labels" else "gradient",
                         protocol=cast("Literal['split', 'release', 'encrypted']", protocol), bins=bins)
    config.check()
    return config


def join(
    superlink: str = typer.Option(..., "--superlink", help="HOST:PORT of the label party's SuperLink (Fleet API)."),
    party: Path = typer.Option(..., "--party", help="This party's file (role: feature)."),
    data: Path = typer.Option(..., "--data", help="This party's table; never leaves."),
    keys: Path = typer.Option(None, "--keys", help="This party's key directory (signer, budget store)."),
    ca: Path = typer.Option(..., "--ca", help="CA certificate of the label party's SuperLink."),
    auth_key: Path = typer.Option(..., "--auth-key", help="This node's private key (`privmodel federate keygen`)."),
    label_key: Path = typer.Option(
        ..., "--label-key", help="The label party's public signing key (PEM or key directory): only runs it signed."
    ),
    workdir: Path = typer.Option(Path("vertical-node"), "--workdir", help="Ledger, model part, logs."),
    psi_workers: int = typer.Option(1, "--psi-workers", min=0, help="Processes for PSI (0 = all cores)."),
) -> None:
    """Join a vertical federation as the feature party: start this party's node and its SuperNode."""
    import signal
    import time

    from rich.console import Console
    from rich.markup import escape

    from anonymize.errors import InputError
    from federated.vertical.deploy import join as start_node
    from federated.vertical.node import PartyNodeSpec
    from federated.vertical.psi import default_workers

    console = Console(highlight=False, soft_wrap=True)
    spec = PartyNodeSpec(name="", party_file=str(party.resolve()), data=str(data.resolve()),
                         keys=str(keys.resolve()) if keys else "", workdir=str(workdir.resolve()),
                         coordinator_key=str(label_key.resolve()), psi_workers=psi_workers or default_workers())

    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    node = None
    try:
        node = start_node(spec, superlink, ca, auth_key)  # returns once the SuperLink accepted the node key
        console.print(f"party {escape(spec.name)} joined {escape(superlink)} as node {node.node_id}; Ctrl-C leaves")
        while node.supernode.poll() is None and node.worker.poll() is None:
            time.sleep(0.5)
        raise InputError(node.failure())
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.stop()


def run(
    superlink: str = typer.Option("127.0.0.1:9093", "--superlink", help="HOST:PORT of the SuperLink's Control API."),
    ca: Path = typer.Option(..., "--ca", help="CA certificate of the SuperLink."),
    registry: Path = typer.Option(Path("superlink/registry.json"), "--registry",
                                  help="The SuperLink's registry.json (party name -> node id -> key)."),
    label: Path = typer.Option(..., "--label", help="The label party's file (role: label)."),
    label_data: Path = typer.Option(..., "--label-data", help="The label party's table."),
    label_keys: Path = typer.Option(None, "--label-keys", help="The label party's key directory (signs the run)."),
    feature_party: str = typer.Option(..., "--feature-party", help="The feature party's registered name."),
    out: Path = typer.Option(Path("vertical-run"), "--out", help="The label party's output (model part, card, ledger)."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Target ε per party for the run; 0 = non-private."),
    delta: float = typer.Option(1e-6, "--delta", help="δ per party."),
    label_epsilon: float = typer.Option(None, "--label-epsilon", help="The label party's own ε (default: --epsilon)."),
    label_dp: str = typer.Option("gradient", "--label-dp", help="gradient (columns and labels) or labels (randomized response)."),
    protocol: str = typer.Option("split", "--protocol", help="split (split learning), release (each party's data "
                                 "crosses once, by randomized response) or encrypted (gradient sums under CKKS, "
                                 "central DP)."),
    bins: int = typer.Option(None, "--bins", help="release: score bins (default: 2 below ε 2.5, else 4)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Default: 4 (split), 30 (release), 50 (encrypted: steps)."),
    batch_size: int = typer.Option(512, "--batch-size", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of the shared customers held out for the AUC."),
    psi_workers: int = typer.Option(0, "--psi-workers", min=0, help="Processes for PSI (0 = all cores)."),
    seed: int = typer.Option(0, "--seed", help="Weights and batch schedule only (public); never the noise."),
    message_timeout: float = typer.Option(300.0, "--message-timeout", help="Seconds the feature party may take per message."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Whole-run deadline (the run is stopped after it)."),
) -> None:
    """Submit a vertical run to the label party's SuperLink, signed for the feature party; follow it."""
    from rich.console import Console

    from federated.vertical.deploy import RunRequest
    from federated.vertical.deploy import run as submit_run
    from federated.vertical.psi import default_workers

    console = Console(highlight=False)
    config = _config(epsilon, label_epsilon, delta, label_dp, epochs or DEFAULT_EPOCHS.get(protocol, 4),
                     batch_size, lr, seed, protocol=protocol, bins=bins)
    req = RunRequest(superlink=superlink, ca=ca, registry=registry, label_party=label, label_data=label_data,
                     label_keys=label_keys, feature_party=feature_party, out=out, config=config, test_size=test_size,
                     psi_workers=psi_workers or default_workers(), timeout=timeout, message_timeout=message_timeout)

    def show(event: dict[str, object]) -> None:
        if event.get("event") == "psi":
            console.print(f"PSI: {event['overlap']:,} shared customers, {event['seconds']} s")
        elif event.get("event") == "round":
            console.print(f"epoch {event['round']}/{event['rounds']}  {event['seconds']} s  "
                          f"{event['per_round']} s per round ({event['batches']} rounds)")

    result = submit_run(req, on_event=show)
    done = result["done"]
    auc = done["metrics"]["roc_auc"]
    for name, p in done["parties"].items():
        eps = "non-private" if p["epsilon"] is None else f"ε {p['epsilon']:.3f}, δ {p['delta']:.1e} ({p['covers']})"
        console.print(f"{name} ({p['role']} party): {eps}")
    console.print(f"run {result['run_id']} {result['status']}; test ROC-AUC {'-' if auc is None else f'{auc:.4f}'}; "
                  f"model hash {done['model_hash'][:16]}; {done['seconds']['per_round']} s per round; "
                  f"card {result['out'] / next(n for n, p in done['parties'].items() if p['role'] == 'label') / 'card.md'}")


def score(
    superlink: str = typer.Option("127.0.0.1:9093", "--superlink", help="HOST:PORT of the SuperLink's Control API."),
    ca: Path = typer.Option(..., "--ca", help="CA certificate of the SuperLink."),
    registry: Path = typer.Option(Path("superlink/registry.json"), "--registry",
                                  help="The SuperLink's registry.json (party name -> node id -> key)."),
    model: Path = typer.Option(..., "--model", help="The label party's output of the training run (model.pt, card.json)."),
    label: Path = typer.Option(..., "--label", help="The label party's file (role: label)."),
    label_data: Path = typer.Option(..., "--label-data", help="The new customers (the label party's columns)."),
    label_keys: Path = typer.Option(None, "--label-keys", help="The label party's key directory (signs the run)."),
    feature_party: str = typer.Option(..., "--feature-party", help="The feature party's registered name."),
    out: Path = typer.Option(Path("vertical-scores"), "--out", help="The label party's scores.parquet and ledger."),
    psi_workers: int = typer.Option(0, "--psi-workers", min=0, help="Processes for PSI (0 = all cores)."),
    message_timeout: float = typer.Option(300.0, "--message-timeout", help="Seconds the feature party may take per message."),
    timeout: float = typer.Option(3600.0, "--timeout", help="Whole-run deadline (the run is stopped after it)."),
) -> None:
    """Score the label party's new customers with a trained vertical model; both parties online."""
    from rich.console import Console

    from federated.vertical.deploy import RunRequest, trained_model
    from federated.vertical.deploy import run as submit_run
    from federated.vertical.psi import default_workers

    console = Console(highlight=False)
    config, _ = trained_model(model)
    req = RunRequest(superlink=superlink, ca=ca, registry=registry, label_party=label, label_data=label_data,
                     label_keys=label_keys, feature_party=feature_party, out=out, config=config,
                     psi_workers=psi_workers or default_workers(), timeout=timeout, message_timeout=message_timeout,
                     model_dir=model)
    result = submit_run(req)
    done = result["done"]
    eps = next(iter(done["parties"].values()))["epsilon"]
    console.print(f"run {result['run_id']} {result['status']}: {done['scored']:,} shared customers scored with model "
                  f"{done['model_hash'][:16]}; {feature_party} spent ε {'-' if eps is None else f'{eps:.3f}'}; "
                  f"scores in {done['files'][0]}")
