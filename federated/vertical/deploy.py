"""Vertical federation deployed: `privmodel federate vertical join` and `privmodel federate vertical run`.

Two organisations on Flower's runtime, with what horizontal federation already has
(`federated.runtime.deployment`): the label party runs the SuperLink (`privmodel federate superlink`,
TLS, the feature party's node key registered by name) and submits signed runs; the feature party
joins with its own node key, its long-lived node (`federated.vertical.node`: its table, policy, keys,
budget and ledger) and its SuperNode (the app gate of `federated.partner.supernode`), pinning the
label party's public key. See docs/vertical.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError

if TYPE_CHECKING:
    from federated.runtime.deployment import Partner
    from federated.vertical.node import PartyNodeSpec
    from federated.vertical.split import SplitConfig


def join(spec: PartyNodeSpec, superlink: str, ca: Path, auth_key: Path, start_timeout: float = 300.0) -> Partner:
    """Start the feature party's node and SuperNode; returns once the SuperLink accepted the node key."""
    from federated.runtime.deployment import join as start_node
    from federated.runtime.tls import check_name
    from federated.vertical.party import load_party

    party = load_party(spec.party_file)
    check_name(party.name)
    if party.spec.role != "feature":
        raise InputError(f"party {party.name}: `vertical join` is for a feature party (role: feature); the label party "
                         "runs the SuperLink and submits the run (`vertical run`)")
    if not Path(spec.coordinator_key).exists():
        raise InputError(f"party {party.name}: --label-key {spec.coordinator_key}: no such file")
    spec.name = party.name
    if not spec.keys:  # this organisation's default key directory, made on first use (as `federate join` does)
        from privmodel.core.keys import ensure_keys

        spec.keys = str(ensure_keys(None, actor=party.name).resolve())
    return start_node(spec, superlink, ca, auth_key, start_timeout=start_timeout, worker_module="federated.vertical.node")


@dataclass(frozen=True)
class RunRequest:
    """The label party's run on its SuperLink: its party file, table and keys; the feature party by
    the name its node key is registered under."""

    superlink: str  # the SuperLink's Control API (loopback by default)
    ca: Path
    registry: Path
    label_party: Path
    label_data: Path
    label_keys: Path | None
    feature_party: str
    out: Path
    config: SplitConfig
    test_size: float = 0.2
    psi_workers: int = 1
    timeout: float = 3600.0
    message_timeout: float = 300.0
    model_dir: Path | None = None  # scoring: the label party's part of a trained model (`model.pt`, `card.json`)


def trained_model(model_dir: Path) -> tuple[SplitConfig, str]:
    """The configuration and model hash of a trained model, from the label party's card beside its part."""
    from federated.vertical.server_app import SPLIT_FIELDS
    from federated.vertical.split import SplitConfig

    try:
        card = json.loads((model_dir / "card.json").read_text())
        config = SplitConfig(**{k: card["config"][k] for k in SPLIT_FIELDS})
        digest = str(card["model_hash"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"--model {model_dir}: not the label party's output of a vertical run (card.json)") from None
    if not (model_dir / "model.pt").is_file():
        raise InputError(f"--model {model_dir}: model.pt is missing")
    return config, digest


def _check(req: RunRequest) -> int:
    """Every file and option checked before anything is submitted; the feature party's node id."""
    from federated.runtime.deployment import read_registry
    from federated.runtime.tls import check_ca

    req.config.check()
    if not 0.0 < req.test_size < 1.0:
        raise InputError("--test-size must be in (0, 1)")
    check_ca(req.ca, "label party")
    for path, what in ((req.label_party, "--label"), (req.label_data, "--label-data")):
        if not path.is_file():
            raise InputError(f"{what} {path}: no such file")
    if not req.registry.is_file():
        raise InputError(f"--registry {req.registry}: no such file (the SuperLink's workdir holds registry.json)")
    registry = read_registry(req.registry)
    if req.feature_party not in registry:
        raise InputError(f"--feature-party {req.feature_party}: not registered at the SuperLink (registered: "
                         f"{', '.join(sorted(registry)) or 'none'})")
    return int(registry[req.feature_party]["node_id"])


def run(req: RunRequest, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Submit the run, sign it for the feature party once the SuperLink gave it an id, follow it.
    With `model_dir`, a scoring run: the label party's new customers scored with that trained model
    (configuration and hash from its card), both parties online.

    Returns the run's id, status and the label party's `done` event (model hash, metrics, seconds per
    round, bytes); a failed run raises with its one line (a dropped party named)."""
    from federated.partner.supernode import VERTICAL_APP
    from federated.runtime.deployment import AUTHORIZATION_FILE, submit_to
    from federated.vertical.party import load_party
    from federated.vertical.server_app import VerticalSettings, expected_spec
    from privmodel.artifacts.ledger import canonical_json
    from privmodel.core.fileio import atomic_write_text, ensure_output_dir
    from privmodel.core.keys import ensure_keys, load_signer

    node = _check(req)
    mode, model_hash, config = "train", "", req.config
    if req.model_dir is not None:
        mode = "score"
        config, model_hash = trained_model(req.model_dir)
    label = load_party(req.label_party)
    keys = ensure_keys(req.label_keys, actor=label.name).resolve()
    signer = load_signer(keys)
    base = ensure_output_dir(req.out).resolve()
    settings = VerticalSettings(
        config=config, label_party=str(req.label_party.resolve()), label_data=str(req.label_data.resolve()),
        label_keys=str(keys), out_dir=str(base), feature_party=req.feature_party, feature_node=node,
        authorization=str(base / AUTHORIZATION_FILE), test_size=req.test_size, psi_workers=req.psi_workers,
        message_timeout=req.message_timeout, mode=mode, model_hash=model_hash,
        model_dir=str(req.model_dir.resolve()) if req.model_dir is not None else "",
    )
    spec = expected_spec(label, settings, signer.key_id)

    def sign(run_id: int) -> None:
        """The label party's signature of this run (its id, now known), for the feature party to verify."""
        body = canonical_json({**spec, "run_id": str(run_id), "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        atomic_write_text(base / AUTHORIZATION_FILE, json.dumps(
            {"body": body.decode(), "signature": base64.b64encode(signer.sign(body)).decode()}) + "\n")

    result = submit_to(req.superlink, req.ca, settings.to_record(), base, req.timeout, on_event,
                       components_of=VERTICAL_APP, sign=sign)
    done: dict[str, Any] = next((e for e in reversed(result["events"]) if e.get("event") == "done"), {})
    return {**result, "out": base, "done": done}
