"""TLS and node-authentication material for a deployment (`privmodel keys tls DIR`).

Layout of DIR (private files mode 0600, never overwritten):
  ca.crt / ca.key              self-signed CA (EC P-384) the partners trust
  server.crt / server.key      SuperLink certificate, SAN = localhost, 127.0.0.1 and --host names
  tls.json                     names, fingerprints, validity (no secrets)

Partners' node keys are NOT made here (issue 11, finding 4: a coordinator that mints every partner's
private key can act as any partner). Each partner runs `privmodel federate keygen DIR` on its own
machine (`make_node_key`): DIR/auth.key (EC P-384, OpenSSH PEM, mode 0600, what
`flower-superlink --auth-supernode-private-key` loads) never leaves it; it hands over DIR/auth.pub
only, which the coordinator registers under the partner's name.

Flower 1.42 authenticates SuperNodes with these EC keys (registered by the coordinator), not with
client certificates, so no node certificate is made: TLS authenticates the SuperLink to the
partners, the registered key authenticates each partner to the SuperLink.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anonymize.errors import InputError

if TYPE_CHECKING:
    from cryptography import x509

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
VALID_DAYS = 825
NODE_KEYS_ARE_PARTNERS = (
    "the coordinator no longer creates partners' node keys: each partner runs `privmodel federate keygen DIR` "
    "and sends only DIR/auth.pub, which the coordinator registers (`federate superlink --register NAME=auth.pub`)"
)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(text: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privmodel federation")])


def _fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return str(cert.fingerprint(hashes.SHA256()).hex())


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

    from privmodel.core.fileio import outputs

    target = Path(directory)
    if nodes:
        raise InputError(NODE_KEYS_ARE_PARTNERS)
    if (target / "ca.key").exists():
        raise InputError(f"{target}: already holds a CA; refusing to overwrite TLS material")
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
    """Refused since issue 11: partners create their own node keys (`make_node_key`)."""
    from privmodel.core.fileio import outputs

    if names:
        raise InputError(NODE_KEYS_ARE_PARTNERS)
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


def make_node_key(directory: str | os.PathLike[str]) -> dict[str, str]:
    """A partner's own SuperNode key pair, made on the partner's machine: DIR/auth.key (0600, never
    leaves) and DIR/auth.pub (what it sends to the coordinator). Never overwrites."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    target = Path(directory)
    for name in ("auth.key", "auth.pub"):
        if (target / name).exists():
            raise InputError(f"{target / name}: already exists; refusing to overwrite a node key")
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise InputError(f"{target}: cannot create ({exc.strerror})") from None
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        _write_private(target / "auth.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        _write_public(target / "auth.pub", public + b"\n")
    except OSError as exc:
        for name in ("auth.key", "auth.pub"):
            with contextlib.suppress(OSError):
                (target / name).unlink()
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise InputError(f"{target}: cannot write the node key ({exc.strerror})") from None
    return {"private_key": str(target / "auth.key"), "public_key": str(target / "auth.pub"),
            "public_key_sha256": hashlib.sha256(public).hexdigest()}


def read_node_public_key(path: str | os.PathLike[str], who: str) -> tuple[Path, str]:
    """A partner's SuperNode public key (OpenSSH, EC) and the SHA-256 of its key line, or one line."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    src = Path(path)
    try:
        raw = src.read_bytes()
    except OSError:
        raise InputError(f"{who}: public key {src} not found or unreadable") from None
    if b"PRIVATE KEY" in raw:
        raise InputError(f"{who}: {src} is a private key; send and register only auth.pub")
    line = raw.strip().split(b"\n")[0] if raw.strip() else b""
    try:
        key = serialization.load_ssh_public_key(b" ".join(line.split()[:2]))
    except (ValueError, TypeError, IndexError):
        raise InputError(f"{who}: {src} is not an OpenSSH public key (from `privmodel federate keygen`)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InputError(f"{who}: {src} is not an EC public key (Flower's node authentication needs one)")
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return src, hashlib.sha256(canonical).hexdigest()
