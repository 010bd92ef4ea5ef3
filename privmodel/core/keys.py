"""Key material: the Ed25519 signing key of the audit ledger and the pseudonymization secret.

`privmodel keys init DIR` writes:
  signing.key      Ed25519 private key, PKCS#8 PEM, mode 0600, encrypted when a passphrase is given
  signing.pub      the public key (what auditors trust)
  pseudonym.secret 32 random bytes (hex), mode 0600: the master secret for keyed tokens / AES-SIV
  keys.json        actor name, key id, creation time, whether the private key is encrypted
The directory is created atomically (built beside the target, then renamed) and never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from anonymize.errors import InputError

SIGNING_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"
PSEUDONYM_SECRET = "pseudonym.secret"
METADATA = "keys.json"
PASSPHRASE_ENV = "PRIVMODEL_KEY_PASSPHRASE"
KEYS_ENV = "PRIVMODEL_KEYS"


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Short, stable identifier of a public key: first 16 hex chars of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key_pem(pem: str | bytes, source: str = "public key") -> Ed25519PublicKey:
    try:
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # UnicodeEncodeError is a ValueError
        raise InputError(f"{source}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{source}: not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Signer:
    """A loaded signing identity: who signs (actor) and with which key."""

    private_key: Ed25519PrivateKey
    actor: str

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls, actor: str) -> Signer:
        return cls(Ed25519PrivateKey.generate(), actor)


def default_keys_dir() -> Path:
    """`$PRIVMODEL_KEYS`, else `~/.privmodel/keys`: the organisation's key store on this machine."""
    env = os.environ.get(KEYS_ENV)
    return Path(env) if env else Path.home() / ".privmodel" / "keys"


class KeyMetadata(TypedDict):
    """key.json of a key directory: public facts about the signing key, never key material."""

    actor: str
    key_id: str
    created: str
    encrypted: bool
    algorithm: str


def init_keys(
    directory: str | os.PathLike[str], passphrase: str | None = None, actor: str | None = None
) -> KeyMetadata:
    """Create a new key directory; refuse if it already holds anything."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target}: key directory already exists; refusing to overwrite keys")
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{parent}: cannot create directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: directory is not writable")
    actor = actor or f"{socket.gethostname()}"
    _check_actor(actor)
    private_key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode("utf-8"))
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    meta: KeyMetadata = {
        "actor": actor,
        "key_id": key_id_of(private_key.public_key()),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "encrypted": bool(passphrase),
        "algorithm": "Ed25519",
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        staging.chmod(0o700)
        _write_private(staging / SIGNING_KEY, private_pem)
        (staging / PUBLIC_KEY).write_text(public_key_pem(private_key.public_key()))
        _write_private(staging / PSEUDONYM_SECRET, os.urandom(32).hex().encode("ascii") + b"\n")
        (staging / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked above); rename needs the name free or an empty dir
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return meta


def _check_actor(actor: str) -> None:
    """Refuse, before any key is written, an actor name that a ledger or terminal cannot carry."""
    try:
        actor.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("--actor: not valid UTF-8 text") from None
    if not actor.strip() or len(actor) > 200 or not actor.isprintable():
        raise InputError("--actor: must be 1-200 printable characters (no control characters)")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _require_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise InputError(f"{directory}: no key directory (create one with `privmodel keys init {directory}`)")


def read_metadata(directory: str | os.PathLike[str]) -> KeyMetadata:
    path = Path(directory) / METADATA
    _require_dir(Path(directory))
    try:
        return cast(KeyMetadata, json.loads(path.read_text()))  # written by init_keys
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: missing or unreadable key metadata") from None


def load_signer(directory: str | os.PathLike[str], passphrase: str | None = None) -> Signer:
    """Load the signing key; the passphrase comes from the argument or $PRIVMODEL_KEY_PASSPHRASE."""
    directory = Path(directory)
    meta = read_metadata(directory)
    path = directory / SIGNING_KEY
    try:
        pem = path.read_bytes()
    except OSError:
        raise InputError(f"{path}: missing or unreadable signing key") from None
    secret = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(pem, password=secret.encode("utf-8") if secret else None)
    except TypeError:
        raise InputError(
            f"{path}: signing key is encrypted; set {PASSPHRASE_ENV} or pass --passphrase"
        ) from None
    except ValueError:
        raise InputError(f"{path}: cannot load signing key (wrong passphrase or corrupt file)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key")
    return Signer(key, meta.get("actor", "unknown"))


def load_public_key(directory_or_file: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Public key from a key directory or a .pub file."""
    path = Path(directory_or_file)
    if path.is_dir():
        path = path / PUBLIC_KEY
    try:
        pem = path.read_bytes()
    except OSError:
        raise InputError(f"{path}: missing or unreadable public key") from None
    return load_public_key_pem(pem, str(path))


def keyring_line(public_key: Ed25519PublicKey, label: str = "") -> str:
    """One keyring line: `<key id> <base64 of the raw 32-byte key> [label]`."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return " ".join(part for part in (key_id_of(public_key), base64.b64encode(raw).decode(), label) if part)


def load_keyring(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Trusted Ed25519 public keys from a keyring file (what a verifier trusts, not what a ledger says).

    The file holds, in any mix: PEM public key blocks (so `cat a/signing.pub b/signing.pub` is a
    keyring), and lines `<key id> <base64 raw key> [label]` (the key id must match the key, so a
    typo cannot trust the wrong key). Blank lines and lines starting with `#` are ignored.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such keyring file")
    try:
        with open(src, "rb") as handle:
            data = handle.read((1 << 20) + 1)
    except OSError as exc:
        raise InputError(f"{src}: cannot read keyring ({exc.strerror})") from None
    if len(data) > 1 << 20:
        raise InputError(f"{src}: keyring is larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{src}: keyring is not UTF-8 (invalid byte at offset {exc.start})") from None
    keys: dict[str, Ed25519PublicKey] = {}
    pem: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if pem is not None:
            pem.append(stripped)
            if stripped.startswith("-----END "):
                key = load_public_key_pem("\n".join(pem) + "\n", f"{src}: PEM block ending at line {number}")
                keys[key_id_of(key)] = key
                pem = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("-----BEGIN "):
            pem = [stripped]
            continue
        key = _keyring_entry(stripped, f"{src}: line {number}")
        keys[key_id_of(key)] = key
    if pem is not None:
        raise InputError(f"{src}: PEM block is not terminated (no -----END line)")
    if not keys:
        raise InputError(f"{src}: keyring holds no keys")
    return list(keys.values())


def _keyring_entry(line: str, where: str) -> Ed25519PublicKey:
    parts = line.split()
    if len(parts) < 2:
        raise InputError(f"{where}: expected `<key id> <base64 Ed25519 public key> [label]`")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: not a base64 Ed25519 public key (32 bytes)") from None
    if key_id_of(key) != parts[0].lower():
        raise InputError(f"{where}: key id does not match the key (expected {key_id_of(key)})")
    return key


def load_pseudonym_secret(directory: str | os.PathLike[str]) -> bytes:
    """The 32-byte master secret for keyed pseudonymization."""
    directory = Path(directory)
    _require_dir(directory)
    path = directory / PSEUDONYM_SECRET
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        raise InputError(f"{path}: missing or corrupt pseudonymization secret") from None
    if len(secret) < 32:
        raise InputError(f"{path}: pseudonymization secret is shorter than 32 bytes")
    return secret


def ensure_keys(directory: str | os.PathLike[str] | None, actor: str | None = None) -> Path:
    """Return a usable key directory, creating the default one on first use (like ssh-keygen would).

    An explicitly named directory must already exist: a typo should not silently mint new keys.
    """
    if directory is not None:
        _require_dir(Path(directory))
        return Path(directory)
    default = default_keys_dir()
    if not (default / METADATA).exists():
        init_keys(default, actor=actor)
    return default
