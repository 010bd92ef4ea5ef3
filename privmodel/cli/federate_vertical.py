"""`privmodel federate vertical simulate`: a label party and a feature party in one process.

Each party brings its party file (role, policy, join keys), its table and its keys directory (its
organisation: signer and budget store). The command only parses, calls
`federated.vertical.workflow.simulate` and prints; flwr and torch load inside it.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(fed: typer.Typer) -> None:
    vertical = typer.Typer(help="Vertical federation: parties share customers, not columns.", no_args_is_help=True)
    vertical.command("simulate")(simulate)
    fed.add_typer(vertical, name="vertical")


def simulate(
    label: Path = typer.Option(..., "--label", help="The label party's file (role: label)."),
    label_data: Path = typer.Option(..., "--label-data", help="The label party's table."),
    label_keys: Path = typer.Option(None, "--label-keys", help="The label party's key directory (its budget)."),
    feature: Path = typer.Option(..., "--feature", help="The feature party's file (role: feature)."),
    feature_data: Path = typer.Option(..., "--feature-data", help="The feature party's table."),
    feature_keys: Path = typer.Option(None, "--feature-keys", help="The feature party's key directory (its budget)."),
    out: Path = typer.Option(Path("vertical-sim"), "--out", help="Output directory (one folder per party)."),
    epsilon: float = typer.Option(1.0, "--epsilon", help="Target ε per party for the run; 0 = non-private."),
    delta: float = typer.Option(1e-6, "--delta", help="δ per party."),
    label_epsilon: float = typer.Option(None, "--label-epsilon", help="The label party's own ε (default: --epsilon)."),
    label_dp: str = typer.Option(
        "gradient", "--label-dp",
        help="gradient: noised gradients + DP-SGD top (columns and labels); labels: randomized response (labels only).",
    ),
    epochs: int = typer.Option(4, "--epochs", min=1),
    batch_size: int = typer.Option(512, "--batch-size", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    test_size: float = typer.Option(0.2, "--test-size", help="Share of the shared customers held out for the AUC."),
    workers: int = typer.Option(0, "--psi-workers", help="Processes for PSI (0 = all cores)."),
    seed: int = typer.Option(0, "--seed", help="Weights and batch schedule only (public); never the noise."),
    pin_label_key: Path = typer.Option(
        None, "--pin-label-key", help="The label party's public key the feature party trusts (default: --label-keys)."
    ),
) -> None:
    """Private set intersection, then split learning with per-party DP; a card names each party's ε."""
    from rich.console import Console

    from anonymize.errors import InputError
    from federated.vertical.psi import default_workers
    from federated.vertical.split import SplitConfig
    from federated.vertical.workflow import PartyInput
    from federated.vertical.workflow import simulate as run

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if epsilon < 0:
        raise InputError("--epsilon must be positive (0 = non-private)")
    err = Console(stderr=True)
    if label_dp not in ("gradient", "labels"):
        raise InputError("--label-dp must be gradient or labels")
    config = SplitConfig(epsilon=epsilon or None, label_epsilon=label_epsilon, delta=delta, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, label_dp="labels" if label_dp == "labels" else "gradient")
    result = run(PartyInput(label, label_data, label_keys), PartyInput(feature, feature_data, feature_keys), config,
                 out, test_size=test_size, workers=workers or default_workers(), progress=lambda m: err.print(m),
                 pinned_label_key=pin_label_key)
    console = Console()
    for name, p in result.parties.items():
        eps = "non-private" if p["epsilon"] is None else f"ε {p['epsilon']:.3f}, δ {p['delta']:.1e} ({p['covers']})"
        console.print(f"{name} ({p['role']} party): {eps}")
    auc = result.metrics["roc_auc"]
    console.print(f"overlap {result.overlap['size']:,} customers; test ROC-AUC "
                  f"{'-' if auc is None else f'{auc:.4f}'}; model hash {result.model_hash[:16]}; "
                  f"PSI {result.seconds['psi']:.1f} s, total {result.seconds['total']:.1f} s")
    console.print(f"card: {out / next(n for n, p in result.parties.items() if p['role'] == 'label') / 'card.md'}")
