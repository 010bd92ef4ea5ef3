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


def make_tls(directory: str | os.PathLike[str], hosts: list[str] | None = None, nodes: list[str] | None = None) -> dict[str, Any]:
    """Create the CA, the SuperLink certificate and one auth key pair per node; refuse to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    target = Path(directory)
    if (target / "ca.key").exists():
        raise InputError(f"{target}: already holds a CA; refusing to overwrite TLS material")
    for node in nodes or []:
        check_name(node)
    try:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o700)
    except OSError as exc:
        raise InputError(f"{target}: cannot create directory ({exc.strerror})") from None
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
    _write_private(target / "ca.key", ca_key.private_bytes(pem, pkcs8, plain))
    _write_public(target / "ca.crt", ca.public_bytes(pem))
    _write_private(target / "server.key", server_key.private_bytes(pem, pkcs8, plain))
    _write_public(target / "server.crt", server.public_bytes(pem))
    meta = {
        "ca_sha256": _fingerprint(ca), "server_sha256": _fingerprint(server), "hosts": list(dict.fromkeys(names)),
        "created": now.isoformat(timespec="seconds"), "valid_days": VALID_DAYS, "nodes": {},
    }
    (target / "tls.json").write_text(json.dumps(meta, indent=2) + "\n")
    for node in nodes or []:
        add_node(target, node)
    return json.loads((target / "tls.json").read_text())


def add_node(directory: str | os.PathLike[str], name: str) -> Path:
    """One partner's SuperNode auth key pair (EC P-384, OpenSSH format) and a copy of the CA cert."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    check_name(name)
    target = Path(directory)
    if not (target / "ca.crt").is_file():
        raise InputError(f"{target}: no CA here (run `privmodel keys tls {target}` first)")
    node_dir = target / "nodes" / name
    if node_dir.exists():
        raise InputError(f"{node_dir}: node {name} already has keys; refusing to overwrite")
    node_dir.mkdir(parents=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        node_dir / "auth.key",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_public(node_dir / "auth.pub", public + b"\n")
    _write_public(node_dir / "ca.crt", (target / "ca.crt").read_bytes())
    meta_path = target / "tls.json"
    meta = json.loads(meta_path.read_text())
    import hashlib

    meta["nodes"][name] = {"public_key_sha256": hashlib.sha256(public).hexdigest()}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return node_dir


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
