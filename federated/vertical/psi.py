"""ECDH private set intersection between two parties (openmined-psi), both learning one agreed order.

Why this shape: openmined-psi's own protocol (client request, server Golomb-compressed set) tells
only the client the intersection. Vertical training needs both parties to know which of their rows
are shared, in the same order, without either learning anything else. So each party uses the
library's two primitives with its own secret P-256 scalar (never written, never sent):

    1. each sends its keys encrypted with its scalar:   L -> F: H(x)^a     F -> L: H(y)^b   (shuffled)
    2. each raises the other's request to its scalar and returns a 16-byte SHA-256 of each result:
                                                         F -> L: h(H(x)^ab)  L -> F: h(H(y)^ab)
    3. each intersects its own tokens with the other's (step 2 gave it both) and sorts the shared
       rows by token: the same order on both sides; both send (size, digest) and compare.

Under DDH a token of a non-member is a random-looking value to the other party, so each learns the
intersection, the other's set size and nothing else; no plaintext key, no hash of one, no row number
crosses (requests are shuffled). The ledger records the size and the digest (a SHA-256 over the
sorted tokens, known to both), never a member. An overlap below either party's `min_overlap` ends
the run: a tiny intersection is itself a disclosure.

Several feature parties (`common`): the label party L first runs a one-sided pass with each feature
party F_i (`label_learns`: steps 1 and 2 without L's tokens going back, so only L learns L n F_i and
F_i learns nothing but L's set size), computes the common set C = L n F_1 n ... n F_N on its own
side, then runs the two-sided protocol above with each F_i on C's keys only. So F_i learns C (and |C|
as L's input size), never L n F_i: nothing about another feature party's members beyond what C
itself says (a member of C is a customer of every party). L finally tells each F_i, as a
permutation of their pair's agreed order, the training order (pair 1's): pair orders come from
secret scalars, so that permutation looks uniformly random to F_i. Each pairwise overlap is checked
against L's minimum, C against every party's. With one feature party this is exactly the protocol above.

Cost: 2 elliptic-curve operations per key per party (encrypt own, process the other's), 33 + 16 bytes
sent per key. Both are spread over processes in batches (`workers`, `batch`); openmined-psi's
one-sided GCS protocol needs about as many operations but leaves the feature party blind.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from federated.vertical.channel import Channel

if TYPE_CHECKING:
    from flwr.app import RecordDict

POINT_BYTES = 33  # a compressed P-256 point
TOKEN_BYTES = 16  # SHA-256 prefix of a doubly encrypted key: 128 bits, collisions negligible
DEFAULT_BATCH = 50_000


class OverlapTooSmall(InputError):
    """The intersection is smaller than a party's policy allows."""


def _encrypt_batch(key: bytes, items: list[str]) -> bytes:
    """H(x)^key for each item, concatenated (worker process)."""
    from private_set_intersection.python import client

    request = client.CreateFromKey(key, True).CreateRequest(items)
    out = b"".join(request.encrypted_elements)
    if len(out) != POINT_BYTES * len(items):
        raise InputError("psi: unexpected point encoding from openmined-psi")
    return out


def _exponentiate_batch(key: bytes, points: bytes) -> bytes:
    """SHA-256[:16] of p^key for each 33-byte point p (worker process)."""
    from private_set_intersection.python import Request, server

    elements = [points[i:i + POINT_BYTES] for i in range(0, len(points), POINT_BYTES)]
    response = server.CreateFromKey(key, True).ProcessRequest(Request(reveal_intersection=True,
                                                                      encrypted_elements=elements))
    return b"".join(hashlib.sha256(p).digest()[:TOKEN_BYTES] for p in response.encrypted_elements)


@dataclass
class Pool:
    """Where the elliptic-curve work runs: inline (workers=1) or over processes in batches."""

    workers: int = 1
    batch: int = DEFAULT_BATCH
    _executor: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> Pool:
        if self.workers > 1:
            import multiprocessing

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def map(self, fn: Any, key: bytes, chunks: list[Any]) -> bytes:
        if self._executor is None or len(chunks) == 1:
            return b"".join(fn(key, c) for c in chunks)
        return b"".join(self._executor.map(fn, [key] * len(chunks), chunks))

    def chunks(self, n: int) -> list[slice]:
        size = max(1, min(self.batch, math.ceil(n / max(1, self.workers))))
        return [slice(i, i + size) for i in range(0, n, size)] or [slice(0, 0)]


@dataclass
class PsiSide:
    """One party's state in the protocol. Its scalar lives only here and in its worker processes."""

    name: str
    keys: Sequence[str]
    min_overlap: int
    pool: Pool
    _scalar: bytes = field(default=b"", repr=False)
    _order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    own_tokens: bytes = b""
    other_tokens: bytes = b""

    def __post_init__(self) -> None:
        try:
            from private_set_intersection.python import client
        except ImportError:
            raise InputError("psi: openmined-psi is not installed; install it with "
                             "`pip install --no-deps openmined-psi==2.0.6` (the Makefile does)") from None

        self._scalar = client.CreateWithNewKey(True).GetPrivateKeyBytes()
        # a secret shuffle: the position of a request element says nothing about the table's row order
        self._order = np.argsort(np.frombuffer(secrets.token_bytes(8 * len(self.keys)), dtype=np.uint64),
                                 kind="stable")

    def request(self) -> bytes:
        """Step 1: this party's keys, shuffled, each raised to its scalar."""
        items = [self.keys[i] for i in self._order]
        return self.pool.map(_encrypt_batch, self._scalar, [items[s] for s in self.pool.chunks(len(items))])

    def answer(self, points: bytes) -> bytes:
        """Step 2: the other party's request raised to this party's scalar, as 16-byte tokens."""
        if len(points) % POINT_BYTES:
            raise InputError(f"psi: {self.name} received a malformed request")
        n = len(points) // POINT_BYTES
        parts = [points[s.start * POINT_BYTES:s.stop * POINT_BYTES] for s in self.pool.chunks(n)]
        self.other_tokens = self.pool.map(_exponentiate_batch, self._scalar, parts)
        return self.other_tokens

    def members(self, own_tokens: bytes) -> tuple[np.ndarray, str]:
        """Step 3: rows of this party's table in the intersection, in the agreed (token) order, and the
        digest of the sorted shared tokens."""
        if len(own_tokens) != TOKEN_BYTES * len(self.keys):
            raise InputError(f"psi: {self.name} received tokens for a set of another size")
        dtype = np.dtype(f"S{TOKEN_BYTES}")
        mine = np.frombuffer(own_tokens, dtype=dtype)
        theirs = np.frombuffer(self.other_tokens, dtype=dtype)
        shared = np.isin(mine, theirs)
        idx = np.flatnonzero(shared)
        by_token = idx[np.argsort(mine[idx], kind="stable")]
        digest = hashlib.sha256(b"privmodel.psi v1\x00" + mine[by_token].tobytes()).hexdigest()
        return self._order[by_token], digest


@dataclass
class PsiResult:
    """What one party keeps: its shared rows in the agreed order, and what the ledger may record."""

    party: str
    rows: np.ndarray  # positions in the party's key list, agreed order
    size: int
    digest: str
    own_size: int
    other_size: int
    seconds: float
    bytes_sent: int

    def ledger_params(self) -> dict[str, Any]:
        """Size and digest only: never a member, a key or a row number."""
        return {"intersection_size": self.size, "intersection_sha256": self.digest,
                "own_rows": self.own_size, "other_rows": self.other_size, "protocol": "ecdh-p256 (openmined-psi 2.0.6)"}


def intersect(label: PsiSide, feature: PsiSide, channel: Channel) -> tuple[PsiResult, PsiResult]:
    """Run the protocol between the two parties over `channel`; refuse an overlap below either minimum."""
    def send(sender: PsiSide, receiver: PsiSide, kind: str, blob: bytes, **extra: int | str) -> bytes:
        return blob_of(channel.send(sender.name, receiver.name, kind, psi_message(blob, **extra)))

    start = time.perf_counter()
    req_l = send(label, feature, "psi.request", label.request(), count=len(label.keys))
    req_f = send(feature, label, "psi.request", feature.request(), count=len(feature.keys))
    tokens_l = send(feature, label, "psi.tokens", feature.answer(req_l))
    tokens_f = send(label, feature, "psi.tokens", label.answer(req_f))
    rows_l, digest_l = label.members(tokens_l)
    rows_f, digest_f = feature.members(tokens_f)
    seconds = time.perf_counter() - start
    for side, rows, digest, other in ((label, rows_l, digest_l, feature), (feature, rows_f, digest_f, label)):
        send(side, other, "psi.done", b"", size=len(rows), digest=digest)
    check_agreed(len(rows_l), digest_l, len(rows_f), digest_f)
    size = len(rows_l)
    for side in (label, feature):
        check_overlap(side, size)
    results = []
    for side, rows, other in ((label, rows_l, feature), (feature, rows_f, label)):
        results.append(PsiResult(side.name, rows, size, digest_l, len(side.keys), len(other.keys), seconds,
                                 channel.bytes_by_sender.get(side.name, 0)))
    return results[0], results[1]


def psi_message(blob: bytes, **extra: int | str) -> RecordDict:
    """Every PSI message: one ConfigRecord `psi` with the `data` bytes (and counts, size, digest)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({"psi": ConfigRecord({"data": blob, **extra})})


def blob_of(content: RecordDict) -> bytes:
    """The data bytes of a PSI message (one line when it has none)."""
    try:
        data = content["psi"]["data"]
    except (KeyError, TypeError):
        data = None
    if not isinstance(data, bytes):
        raise InputError("psi: a PSI message without its data")
    return data


def check_agreed(size: int, digest: str, other_size: int, other_digest: str) -> None:
    """Both parties must hold the same intersection (size and digest of the sorted tokens)."""
    if size != other_size or digest != other_digest:
        raise InputError("psi: the parties disagree on the intersection (sizes or digests differ); nothing was trained")


def check_overlap(side: PsiSide, size: int, other: str = "") -> None:
    """A party refuses an intersection below its policy's minimum: a tiny one is itself a disclosure."""
    if size < side.min_overlap:
        with_ = f" with {other}" if other else ""
        raise OverlapTooSmall(f"psi: {side.name} refuses an overlap of {size} customers{with_}, below its policy's "
                              f"min_overlap {side.min_overlap} (a tiny intersection is itself a disclosure)")


def label_learns(label: PsiSide, feature: PsiSide, channel: Channel) -> tuple[np.ndarray, str]:
    """The one-sided pass: only the label party learns its rows in the pairwise intersection (agreed
    order and digest); the feature party receives the label party's request (its size) and no token.
    Refuses, naming the feature party, a pairwise overlap below the label party's minimum."""
    def send(sender: PsiSide, receiver: PsiSide, kind: str, blob: bytes, **extra: int | str) -> bytes:
        return blob_of(channel.send(sender.name, receiver.name, kind, psi_message(blob, **extra)))

    req_l = send(label, feature, "psi.request", label.request(), count=len(label.keys))
    req_f = send(feature, label, "psi.request", feature.request(), count=len(feature.keys))
    tokens_l = send(feature, label, "psi.tokens", feature.answer(req_l))
    label.answer(req_f)  # kept by the label party: never sent back
    rows, digest = label.members(tokens_l)
    check_overlap(label, len(rows), feature.name)
    return rows, digest


def order_message(order: np.ndarray) -> RecordDict:
    """The `psi.order` message: the training order as positions in the pair's agreed order."""
    from flwr.app import Array, ArrayRecord, RecordDict

    return RecordDict({"psi": ArrayRecord({"order": Array(np.ascontiguousarray(order.astype(np.int64)))})})


def order_of(content: RecordDict, size: int) -> np.ndarray:
    """The permutation in a `psi.order` message; one line when it is not a permutation of 0..size-1."""
    try:
        order: np.ndarray = content["psi"]["order"].numpy()  # type: ignore[union-attr]
    except (KeyError, AttributeError, TypeError):
        raise InputError("psi: an order message without its permutation") from None
    if len(order) != size or not np.array_equal(np.sort(order), np.arange(size)):
        raise InputError("psi: the training order is not a permutation of the common set")
    return order


def default_workers() -> int:
    """Processes for the elliptic-curve work: the machine's cores (at least 1)."""
    return max(1, os.cpu_count() or 1)
