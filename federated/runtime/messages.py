"""Local request/reply protocol between the lean ClientApp and the partner's training worker.

Why: Flower's deployment runtime starts a fresh `flwr-clientapp` process for every message, and
importing torch + opacus there would cost seconds per message. The ClientApp therefore imports only
flwr + numpy + stdlib and forwards each task to a long-lived worker process on the same machine.

Frame: 4-byte big-endian header length, JSON header, then the raw bytes of the arrays the header
lists (name, dtype, shape, nbytes) in order. Authentication: the worker opens each connection with a
random 32-byte nonce; the caller answers HMAC-SHA256(token, nonce) before its request. The token is
a per-node random secret in a 0600 file; the socket lives in a 0700 directory. Every read has a
deadline, so a dead peer never hangs a round.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np

NONCE_BYTES = 32
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 30


class WireError(RuntimeError):
    """The worker could not be reached, did not authenticate, or sent a malformed frame."""


def new_token(path: str | os.PathLike[str]) -> bytes:
    """Create a random per-node token file (mode 0600) and return the token."""
    token = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(token.hex().encode("ascii"))
    return token


def read_token(path: str | os.PathLike[str]) -> bytes:
    try:
        return bytes.fromhex(Path(path).read_text().strip())
    except (OSError, ValueError):
        raise WireError(f"{path}: missing or corrupt worker token") from None


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise WireError("connection closed by peer")
        chunks.extend(chunk)
    return bytes(chunks)


def send_frame(sock: socket.socket, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = arrays or {}
    specs = []
    blobs = []
    for name, array in arrays.items():
        arr = np.ascontiguousarray(array)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "nbytes": arr.nbytes})
        blobs.append(arr.tobytes())
    body = json.dumps({**header, "arrays": specs}, allow_nan=True).encode("utf-8")
    sock.sendall(struct.pack(">I", len(body)) + body)
    for blob in blobs:
        # Never a zero-length send: once the peer has read a request whose last array is empty, it
        # may answer and close before that send, which then fails with BrokenPipe although the
        # request was delivered (and acted on).
        if blob:
            sock.sendall(blob)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    if size > MAX_HEADER:
        raise WireError("header too large")
    try:
        header = json.loads(_recv_exact(sock, size))
    except ValueError:
        raise WireError("malformed header") from None
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec in header.pop("arrays", []):
        total += int(spec["nbytes"])
        if total > MAX_PAYLOAD:
            raise WireError("payload too large")
        raw = _recv_exact(sock, int(spec["nbytes"]))
        arrays[spec["name"]] = np.frombuffer(raw, dtype=np.dtype(spec["dtype"])).reshape(spec["shape"]).copy()
    return header, arrays


def proof(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


def call(
    address: str,
    token: bytes,
    header: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
    timeout: float = 300.0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One authenticated request to the worker at `address` (a Unix socket path or host:port)."""
    try:
        if ":" in address and not address.startswith("/"):
            host, port = address.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address)
    except OSError as exc:
        raise WireError(f"training worker at {address} is not reachable ({exc.strerror or type(exc).__name__})") from None
    try:
        sock.settimeout(timeout)
        nonce = _recv_exact(sock, NONCE_BYTES)
        sock.sendall(proof(token, nonce))
        send_frame(sock, header, arrays)
        return recv_frame(sock)
    except TimeoutError:
        raise WireError(f"training worker at {address} did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise WireError(f"training worker at {address} failed ({type(exc).__name__})") from None
    finally:
        sock.close()


def accept_authenticated(conn: socket.socket, token: bytes, timeout: float = 30.0) -> bool:
    """Server side of the handshake: send a nonce, check the caller's HMAC."""
    conn.settimeout(timeout)
    nonce = secrets.token_bytes(NONCE_BYTES)
    conn.sendall(nonce)
    answer = _recv_exact(conn, hashlib.sha256().digest_size)
    return hmac.compare_digest(answer, proof(token, nonce))


def arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    """Canonical SHA-256 of model parameters (sorted names, dtype, shape, bytes).

    Both ledgers record this, so the coordinator and every partner can show they hold the same model.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name], dtype=np.float32)
        digest.update(name.encode("utf-8"))
        digest.update(str(arr.shape).encode("ascii"))
        digest.update(arr.tobytes())
    return digest.hexdigest()
