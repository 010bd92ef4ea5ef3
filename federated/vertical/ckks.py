"""Homomorphic inner products for the encrypted vertical protocol: CKKS from TenSEAL (Microsoft SEAL).

Why a library and CKKS: the encrypted protocol (`federated/vertical/encrypted.py`) needs, every step,
k sums over every training customer of (a value the key holder encrypted) x (a column the other party
holds in the clear). CKKS packs 4,096 customers in one ciphertext, so a step at 73,000 customers is
about 18 encryptions and 18 k plaintext products; Paillier (FATE's choice) would need one encryption
per customer per step. TenSEAL is OpenMined's, as is the PSI library this package already uses.

Parameters: ring degree 8192 with a 200-bit modulus chain [60, 40, 40, 60] (under the 218 bits the
HE standard allows for 128-bit security at this degree), scale 2^40. A product by a plaintext column
uses one level, packing the k sums into one ciphertext (TenSEAL's `pack_vectors`: one-hot masks) the
second, so a reply is ONE ciphertext whatever k is. The absolute error of a sum is about 2e-6 whatever its size up
to about 2^19 (the last level at scale 2^40), so the protocol scales its sums to about sqrt(n).

Who sees what: a party's secret key never leaves it; the other side gets its public context (public,
relinearisation and Galois keys) and can encrypt and compute but not decrypt. `evaluator_context`
refuses a context that carries a secret key. Semi-honest model; CKKS as used here has no circuit
privacy: the key holder decrypts a ciphertext the other party computed from its columns, and besides
the k slot values it could read the ciphertext's approximation error (about 2e-6 of a sum). The
Gaussian noise the other party adds to each sum before sending it (its DP noise; std 0.25 at epsilon 1
on 73,000 customers) is five orders of magnitude larger; docs/vertical.md states this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    import tenseal as ts

POLY_DEGREE = 8192
SLOTS = POLY_DEGREE // 2
COEFF_BITS = (60, 40, 40, 60)
SCALE_BITS = 40


def keypair() -> tuple[ts.Context, bytes]:
    """(this party's private context, the public context to send: no secret key, with Galois keys)."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=POLY_DEGREE, coeff_mod_bit_sizes=list(COEFF_BITS))
    ctx.global_scale = 2.0**SCALE_BITS
    ctx.generate_galois_keys()
    public = ctx.copy()
    public.make_context_public()
    return ctx, public.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True,
                                 save_relin_keys=True)


def evaluator_context(blob: bytes, sender: str) -> ts.Context:
    """The other party's public context, to encrypt and compute under its key; refused if it is not a
    CKKS context at this package's parameters, or if it carries a secret key (a key holder must never
    hand its key over, and a receiver must not accept one)."""
    import tenseal as ts

    try:
        ctx = ts.context_from(blob)
    except Exception:  # noqa: BLE001 - TenSEAL raises bare exceptions on malformed input
        raise InputError(f"vertical: {sender} sent a malformed encryption context") from None
    if ctx.is_private():
        raise InputError(f"vertical: {sender} sent its secret key; refused")
    if ctx.galois_keys() is None or not ctx.has_public_key():
        raise InputError(f"vertical: {sender}'s encryption context lacks its public or Galois keys")
    return ctx


def encrypt(ctx: ts.Context, values: np.ndarray) -> list[bytes]:
    """`values` (one per customer) as serialised ciphertexts of SLOTS customers each (the last one
    zero-padded: vectors of one size add)."""
    import tenseal as ts

    v = _padded(np.asarray(values, dtype=np.float64))
    return [ts.ckks_vector(ctx, v[i:i + SLOTS].tolist()).serialize() for i in range(0, len(v), SLOTS)]


def _padded(a: np.ndarray) -> np.ndarray:
    """`a` with zero rows appended up to a multiple of SLOTS (at least one chunk)."""
    rows = max(1, -(-len(a) // SLOTS)) * SLOTS
    return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), dtype=a.dtype)])


def weighted_sums(ctx: ts.Context, chunks: list[bytes], add: np.ndarray, columns: np.ndarray,
                  noise: np.ndarray) -> bytes:
    """ONE ciphertext holding, in slot j, sum_i (v_i + add_i) * columns[i, j] + noise[j], where v is
    what `chunks` encrypt (under the other party's key `ctx`) and `add`, `columns`, `noise` are this
    party's, in the clear. Slots past k = columns.shape[1] hold 0."""
    import tenseal as ts

    n, k = columns.shape
    if len(add) != n or len(chunks) != max(1, -(-n // SLOTS)):
        raise InputError(f"vertical: {len(chunks)} encrypted chunks for {n} customers")
    if k > SLOTS:
        raise InputError(f"vertical: {k} columns; at most {SLOTS} fit one reply")
    try:
        enc = [ts.ckks_vector_from(ctx, c) for c in chunks]
    except Exception:  # noqa: BLE001 - TenSEAL raises bare exceptions on malformed input
        raise InputError("vertical: a malformed ciphertext") from None
    add, columns = _padded(np.asarray(add, dtype=np.float64)), _padded(np.asarray(columns, dtype=np.float64))
    shifted = [e + add[i * SLOTS:(i + 1) * SLOTS].tolist() for i, e in enumerate(enc)]
    sums = []
    for j in range(k):
        col = columns[:, j]
        acc = shifted[0] * col[:SLOTS].tolist()
        for i in range(1, len(shifted)):
            acc += shifted[i] * col[i * SLOTS:(i + 1) * SLOTS].tolist()
        sums.append(acc.sum())  # rotations: the sum over customers
    packed = ts.CKKSVector.pack_vectors(sums)  # one-hot masks (the second level): slot j holds sum j
    out = packed + np.asarray(noise, dtype=np.float64).tolist()
    return bytes(out.serialize())


def decrypt(ctx: ts.Context, blob: bytes, sender: str) -> np.ndarray:
    """The values of a ciphertext under this party's key (`ctx` private)."""
    import tenseal as ts

    try:
        values = ts.ckks_vector_from(ctx, blob).decrypt()
    except Exception:  # noqa: BLE001 - TenSEAL raises bare exceptions on malformed input
        raise InputError(f"vertical: {sender} sent a ciphertext this party cannot decrypt") from None
    return np.asarray(values, dtype=np.float64)
