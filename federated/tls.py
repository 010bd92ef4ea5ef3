"""TLS and node-authentication material for a deployment (`privmodel keys tls DIR`).

Layout of DIR (private files mode 0600, never overwritten):
  ca.crt / ca.key              self-signed CA (EC P-384) the partners trust
  server.crt / server.key      SuperLink certificate, SAN = localhost, 127.0.0.1 and --host names
  nodes/NAME/auth.key          the partner's SuperNode key (EC P-384, OpenSSH PEM, what
                               `flower-supernode --auth-supernode-private-key` loads)
  nodes/NAME/auth.pub          its public key (OpenSSH), registered at the SuperLink
  nodes/NAME/ca.crt            copy of the CA certificate to hand to the partner with its key
  tls.json                     names, fingerprints, validity (no secrets)

Flower 1.41 authenticates SuperNodes with these EC keys (registered by the coordinator), not with
client certificates, so no node certificate is made: TLS authenticates the SuperLink to the
partners, the registered key authenticates each partner to the SuperLink.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

from anonymize.errors import InputError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
VALID_DAYS = 825


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(text: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privmodel federation")])


def _fingerprint(cert: Any) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InputError(f"node name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    return name


def check_host(host: str) -> str:
    """An IP address or a DNS name (ASCII labels) for the certificate; anything else is one line."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or not all(HOST_LABEL_RE.match(label) for label in labels):
        raise InputError(f"--host {host[:64]!r}: not an IP address or a DNS name")
    return host


def make_tls(directory: str | os.PathLike[str], hosts: list[str] | None = None, nodes: list[str] | None = None) -> dict[str, Any]:
    """Create the CA, the SuperLink certificate and one auth key pair per node; refuse to overwrite."""

    from privmodel.fileio import outputs

    target = Path(directory)
    if (target / "ca.key").exists():
        raise InputError(f"{target}: already holds a CA; refusing to overwrite TLS material")
    for node in nodes or []:
        check_name(node)
    for host in hosts or []:
        check_host(host)
    # Staged, published together; a directory this run creates is 0700, an existing one keeps its mode.
    node_dirs = [target / "nodes" / node for node in dict.fromkeys(nodes or [])]
    files = [target / name for name in ("ca.key", "ca.crt", "server.key", "server.crt", "tls.json")]
    private = [target / "ca.key", target / "server.key", target, *node_dirs]
    with outputs(files + node_dirs, secret=private, dirs=node_dirs) as stage:
        meta = _make_tls(stage, target, hosts, node_dirs)
        stage.publish()
    return meta


def _make_tls(stage: Any, target: Path, hosts: list[str] | None, node_dirs: list[Path]) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("privmodel federation CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    names = ["localhost", "127.0.0.1", *(hosts or [])]
    alt: list[x509.GeneralName] = []
    for host in dict.fromkeys(names):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(names[2] if len(names) > 2 else "localhost")).issuer_name(ca_name)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    plain = serialization.NoEncryption()
    stage.write_bytes(target / "ca.key", ca_key.private_bytes(pem, pkcs8, plain))  # staged 0600
    stage.write_bytes(target / "ca.crt", ca.public_bytes(pem))
    stage.write_bytes(target / "server.key", server_key.private_bytes(pem, pkcs8, plain))
    stage.write_bytes(target / "server.crt", server.public_bytes(pem))
    meta: dict[str, Any] = {
        "ca_sha256": _fingerprint(ca), "server_sha256": _fingerprint(server), "hosts": list(dict.fromkeys(names)),
        "created": now.isoformat(timespec="seconds"), "valid_days": VALID_DAYS, "nodes": {},
    }
    for node_dir in node_dirs:
        meta["nodes"][node_dir.name] = _node_keys(stage.dir(node_dir), ca.public_bytes(pem))
    stage.write_text(target / "tls.json", json.dumps(meta, indent=2) + "\n")
    return meta


def add_node(directory: str | os.PathLike[str], name: str) -> Path:
    """One partner's SuperNode auth key pair (EC P-384, OpenSSH format) and a copy of the CA cert."""
    return add_nodes(directory, [name])[0]


def add_nodes(directory: str | os.PathLike[str], names: list[str]) -> list[Path]:
    """Key pairs for several partners at once: all are added, or (on any error) none."""
    from privmodel.fileio import outputs

    for name in names:
        check_name(name)
    if len(set(names)) != len(names):
        raise InputError("--node: a partner name is given twice")
    target = Path(directory)
    if not (target / "ca.crt").is_file():
        raise InputError(f"{target}: no CA here (run `privmodel keys tls {target}` first)")
    node_dirs = [target / "nodes" / name for name in names]
    for node_dir in node_dirs:
        if node_dir.exists():
            raise InputError(f"{node_dir}: node {node_dir.name} already has keys; refusing to overwrite")
    meta_path = target / "tls.json"
    try:
        meta = json.loads(meta_path.read_text())
        nodes = meta["nodes"]
        if not isinstance(nodes, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{meta_path}: missing or not a tls.json written by `privmodel keys tls`") from None
    if not node_dirs:
        return []
    # tls.json is this tool's own file (replaced); the node directories are new and 0700.
    with outputs([*node_dirs, meta_path], secret=node_dirs, dirs=node_dirs, replace=[meta_path]) as stage:
        ca_pem = (target / "ca.crt").read_bytes()
        for node_dir in node_dirs:
            nodes[node_dir.name] = _node_keys(stage.dir(node_dir), ca_pem)
        stage.write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        stage.publish()
    return node_dirs


def _node_keys(node_dir: Path, ca_pem: bytes) -> dict[str, str]:
    """Write auth.key (0600), auth.pub and ca.crt into a (staged, 0700) node directory."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        node_dir / "auth.key",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_public(node_dir / "auth.pub", public + b"\n")
    _write_public(node_dir / "ca.crt", ca_pem)
    return {"public_key_sha256": hashlib.sha256(public).hexdigest()}


def check_ca(path: str | os.PathLike[str], who: str) -> Path:
    """A readable PEM certificate, or one line naming who supplied a bad one."""
    from cryptography import x509

    src = Path(path)
    try:
        x509.load_pem_x509_certificate(src.read_bytes())
    except OSError:
        raise InputError(f"{who}: certificate file {src} is missing or unreadable") from None
    except ValueError:
        raise InputError(f"{who}: {src} is not a PEM certificate") from None
    return src
