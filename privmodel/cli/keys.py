"""`privmodel keys init`: the signing key pair and the pseudonymization secret."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Create and manage key material.", no_args_is_help=True)
    keys_app.command("init")(init)
    keys_app.command("tls")(tls)
    app.add_typer(keys_app, name="keys")


def init(
    directory: Path = typer.Argument(..., help="New key directory (must not exist or be empty)."),
    actor: str = typer.Option(None, "--actor", help="Organisation / node name recorded in ledger entries."),
    passphrase: bool = typer.Option(
        False, "--passphrase", help="Encrypt the private key with a passphrase (prompted, or $PRIVMODEL_KEY_PASSPHRASE)."
    ),
) -> None:
    """Create an Ed25519 signing key pair and a pseudonymization secret; never overwrites."""
    import os

    from privmodel.core.keys import PASSPHRASE_ENV, init_keys

    secret = None
    if passphrase:
        secret = os.environ.get(PASSPHRASE_ENV) or typer.prompt("Passphrase", hide_input=True, confirmation_prompt=True)
    meta = init_keys(directory, passphrase=secret, actor=actor)
    # The actor name and path are user text: escaped, so `[/x]` is printed, not parsed as markup.
    Console(highlight=False).print(
        f"created keys in [bold]{escape(str(directory))}[/bold]: actor {escape(meta['actor'])}, key id {meta['key_id']}"
        f"{' (private key encrypted)' if meta['encrypted'] else ''}",
        soft_wrap=True,  # a long path is never broken by a line wrap (that would change the text)
    )


def tls(
    directory: Path = typer.Argument(..., help="New TLS directory for a federation (CA, SuperLink cert, node keys)."),
    host: list[str] = typer.Option([], "--host", help="Extra SuperLink host name or IP for the certificate (repeat)."),
    node: list[str] = typer.Option([], "--node", help="Partner name to create a SuperNode auth key for (repeat)."),
) -> None:
    """Create a CA, the SuperLink's TLS certificate and SuperNode authentication keys; never overwrites."""
    from federated.runtime.tls import add_nodes, make_tls

    if (directory / "ca.key").exists():
        add_nodes(directory, list(node))  # all or none
        Console(highlight=False).print(
            f"added node keys for {escape(', '.join(node)) or 'no one'} in [bold]{escape(str(directory))}[/bold]"
        )
        return
    meta = make_tls(directory, hosts=host, nodes=node)
    Console(highlight=False).print(
        f"created CA and SuperLink certificate in [bold]{escape(str(directory))}[/bold] "
        f"(hosts {escape(', '.join(meta['hosts']))}); node keys: {escape(', '.join(meta['nodes'])) or 'none'}"
    )
