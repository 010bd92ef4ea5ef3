"""The one source of DP randomness: Poisson masks, Gaussian noise (DP-SGD) and Laplace noise (DP statistics).

Why it exists: DP holds only if the mechanism's randomness is secret. When the masks and the noise
came from a generator seeded with `--seed` (written in the model card), anyone who knew the other
rows could re-run training and learn membership with certainty (epsilon = infinity).

What it does
------------
* Uniform source: an AES-256 keystream in CTR mode (the `cryptography` package, OpenSSL; a
  cryptographically secure PRNG), keyed with 256 bits from `secrets.token_bytes` (the operating
  system's CSPRNG). The key is never kept on any Python attribute, never logged, returned, pickled or
  written; it lives only inside the OpenSSL cipher context of one `NoiseSource` for one run
  (`train_dp` call, `fit_dp` call, tuning search). Nothing in a card, ledger or config determines it.
  AES-CTR was chosen over `torch.Generator` (Mersenne Twister: not a CSPRNG, and its seed is 64 bits)
  and over `os.urandom` per draw (a system call per step, about 18x slower than AES-CTR here).
* Poisson masks: row i joins the batch when a 32-bit keystream word is below floor(q * 2^32), so the
  realised rate is at most q (short by < 2.4e-10); the accountant's q is therefore an upper bound.
  On large tables at small rates (`poisson_positions`) the same Bernoulli process is drawn by its
  geometric gaps, one uniform per chosen row instead of one per row (issue 13: 10M rows).
* Gaussian noise: Box-Muller on 53-bit uniforms (u1 in (0, 1], u2 in [0, 1)), computed in float64;
  each returned value is the SUM OF FOUR independent standard normals divided by 2 (variance 1),
  times the standard deviation. This is Opacus' `secure_mode` (`_generate_noise`, n = 2 in
  Holohan & Braghin 2021, "Secure random sampling in differential privacy", Sec. 5.1, arXiv
  2107.10138). Why: a single floating-point Gaussian sample takes values on a sparse,
  sampler-dependent set; an observer of a noisy value can test which set it lies on and tell
  neighbouring inputs apart (Mironov 2012 for Laplace; Jin et al. 2022, "Are we there yet? Timing
  and floating-point attacks on differential privacy systems", arXiv 2112.05307, for Opacus'
  Gaussian). Summing 2n samples makes the attack cost about 2^(p(2n-1)) with p = 53, i.e. 2^159 for
  n = 2. The four normals of one value come from four distinct Box-Muller pairs (a pair's cos and
  sin outputs never meet in one value), so they are independent draws, as in Opacus.
  The sums are made GAUSSIAN_CHUNK (8,192) at a time from one stretch of keystream and handed out
  in order, each once (a cursor that only moves forward): a small model's step (~60 values) no
  longer pays the whole per-call cost, and the values are the same sequence whatever the call sizes.
* Laplace noise (DP statistics, tuning scores): b * (ln(u1) cos(pi u2) + ln(u3) cos(pi u4)), the
  product-of-normals construction that Holohan & Braghin 2021 propose (and diffprivlib uses) instead
  of the textbook inverse CDF b * sign(u) ln(1 - 2|u|) that Mironov 2012 attacked:
  Z1 Z2 - Z3 Z4 ~ Laplace(0, 1) for independent standard normals, and Z1 Z2 = E cos(pi U) in law
  with E ~ Exp(1) = -ln(u1).

One explicit test-only switch: `NoiseSource.insecure(seed)` keys the same AES-CTR stream with
SHA-256 of a fixed label and the seed, so tests exercise exactly the production sampler while being
reproducible. Its `kind` is "INSECURE-reproducible" (else "secure"); training records it as
`privacy["noise"]`, and the model card's first line then says the model is NOT differentially
private.

What remains (not covered)
--------------------------
* The noisy gradient sum is rounded to float32 before the optimizer step; the four-sample sum
  makes the reachable set dense but this is a hardening, not a proof. The exact remedy is discrete
  noise on a fixed grid (discrete Gaussian, Canonne, Kamath & Steinke 2020), which needs its own
  accountant; not done.
* Truncation: u1 >= 2^-53 bounds a Box-Muller radius at sqrt(2 * 53 ln 2) = 8.57, i.e. each pair
  misses the mass P(R > 8.57) = 2^-53 = 1.1e-16; a noise value (four pairs) is within total
  variation 4.4e-16 of an exact Gaussian and reaches 17.1 sigma. Over 10^4 steps of 5,000
  coordinates that adds at most 2.2e-8 to delta (0.2 % of delta = 1e-5); the reported delta does not
  include it.
* Timing: a step's duration depends on the realised batch size (as in every Poisson DP-SGD).
* Cost: four float64 normals per noise coordinate instead of one float32 one (float32 arithmetic
  would be cheaper but cuts p above from 53 to 24 bits, so it is not used). Measured in
  `benchmarks/bench_dp.py` section (d) against the seeded torch sampler it replaced: the masks are
  cheaper than `torch.rand` (AES-CTR with AES-NI), the noise dearer; the net shows there per model.
* Memory: the key (and the not yet used Gaussian values of the current chunk) sit in process
  memory for the run; an attacker who can read that memory (core
  dumps, a debugger) is out of scope.
* Weight initialisation (`--seed`) and the train/test split stay seeded on purpose: they are
  data-independent, so publishing them costs no privacy.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    import torch

SECURE = "secure"
INSECURE = "INSECURE-reproducible"
INSECURE_WARNING = "NOT differentially private: reproducible (insecure) noise was used for testing"
KEY_BYTES = 32  # AES-256: 256 bits of fresh OS entropy per source
_INSECURE_LABEL = b"privmodel.dp.secure_noise insecure test key v1\x00"
_TWO_POW_M53 = 2.0**-53
#: Gaussian values made per refill: amortises the per-call cost over steps of small models, while the
#: work arrays (4 uniforms a value: 256 KiB) stay in cache
#: `poisson_positions` draws gaps instead of a mask from this many rows, at rates up to SPARSE_MAX_RATE
SPARSE_MIN_ROWS = 1 << 16
SPARSE_MAX_RATE = 1.0 / 16.0
GAUSSIAN_CHUNK = 1 << 13
#: torch runs an elementwise op on fewer elements than this in the calling thread (at::internal::GRAIN_SIZE)
TORCH_GRAIN = 32768
assert 2 * GAUSSIAN_CHUNK < TORCH_GRAIN  # the Box-Muller of one refill never enters torch's thread pool


class NoiseSource:
    """A secret (or, for tests only, reproducible) stream of DP randomness; one per mechanism run.

    Use `NoiseSource.secure()` (the default everywhere) or `NoiseSource.insecure(seed)` (tests).
    Not picklable or copyable: its keystream must never leave the process.
    """

    __slots__ = ("_next", "_stream", "_sums", "kind")

    def __init__(self, key: bytes, kind: str) -> None:
        """Private: call `secure()` or `insecure(seed)`. The key is handed to OpenSSL, not kept."""
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if kind not in (SECURE, INSECURE) or len(key) != KEY_BYTES:
            raise InputError("secure_noise: use NoiseSource.secure() or NoiseSource.insecure(seed)")
        # a fresh key per source, so a fixed (zero) counter block never repeats a keystream
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self.kind = kind
        self._sums = np.empty(0)  # the current chunk of Gaussian sums (`_refill`); [_next:] not yet used
        self._next = 0

    @classmethod
    def secure(cls) -> NoiseSource:
        """A source keyed with 256 bits of fresh OS entropy, never stored anywhere."""
        return cls(secrets.token_bytes(KEY_BYTES), SECURE)

    @classmethod
    def insecure(cls, seed: int) -> NoiseSource:
        """TEST ONLY: a reproducible source; a model trained with it is NOT differentially private."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise InputError("insecure_seed must be an integer")
        key = hashlib.sha256(_INSECURE_LABEL + str(int(seed)).encode()).digest()
        return cls(key, INSECURE)

    def __repr__(self) -> str:
        return f"NoiseSource({self.kind})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a NoiseSource cannot be pickled or copied: its keystream must stay secret")

    # ------------------------------------------------------------------ raw stream
    def _words(self, count: int, dtype: str) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        return np.frombuffer(self._stream.update(bytes(width * count)), dtype=dtype)

    def _uniform53(self, count: int) -> np.ndarray:
        """count integers uniform on [0, 2^53), as float64 (exact)."""
        return (self._words(count, "<u8") >> np.uint64(11)).astype(np.float64)

    # ------------------------------------------------------------------ draws
    def bernoulli_mask(self, n: int, p: float) -> torch.Tensor:
        """torch bool tensor [n]: each entry True independently with probability <= p (Poisson sampling)."""
        import torch

        if not 0.0 <= p <= 1.0:
            raise InputError("secure_noise: a sampling rate must be in [0, 1]")
        if p >= 1.0:
            return torch.ones(int(n), dtype=torch.bool)
        threshold = np.uint32(math.floor(p * 2.0**32))
        return torch.from_numpy(self._words(int(n), "<u4") < threshold)

    def poisson_positions(self, n: int, p: float) -> np.ndarray:
        """Sorted int64 positions in [0, n) of a Poisson sample: each row in independently with
        probability <= p.

        Why two ways: the mask (`bernoulli_mask`) costs one keystream word per ROW per step, so a
        run's sampling cost grows as n * steps; past SPARSE_MIN_ROWS rows at rates below
        SPARSE_MAX_RATE the positions are drawn by their gaps instead, one 53-bit uniform per CHOSEN
        row: the number of rows skipped before the next chosen one is Geometric(r), by inversion
        floor(ln(1 - u) / ln(1 - r)) in float64 (P(gap >= k) = (1 - r)^k, so every row is in
        independently with probability r). r is the mask's rate floor(p 2^32) / 2^32 shrunk by
        2^-30 of itself, so float64 rounding in the inversion (relative ~1e-15) cannot lift any
        row's rate above the accountant's q; the gaps are truncated where 1 - u = 2^-53 (a mass of
        2^-53 per gap, like the Gaussian sampler's).
        """
        if not 0.0 <= p <= 1.0:
            raise InputError("secure_noise: a sampling rate must be in [0, 1]")
        if n < SPARSE_MIN_ROWS or p > SPARSE_MAX_RATE:
            return np.flatnonzero(self.bernoulli_mask(n, p).numpy()).astype(np.int64)
        rate = math.floor(p * 2.0**32) / 2.0**32 * (1.0 - 2.0**-30)
        if rate <= 0.0:
            return np.empty(0, dtype=np.int64)
        log_keep = math.log1p(-rate)
        parts, last = [], -1
        while last < n:
            # enough gaps for the rest of the rows with ~6 standard deviations to spare
            left = (n - last) * rate
            u = self._uniform53(int(left + 6.0 * math.sqrt(left) + 16))
            u *= _TWO_POW_M53  # [0, 1)
            gaps = np.floor(np.log1p(-u) / log_keep).astype(np.int64)
            chosen = last + np.cumsum(gaps + 1)
            parts.append(chosen[chosen < n])
            last = int(chosen[-1])
        return np.concatenate(parts)

    def randomized_response(self, values: np.ndarray, k: int, epsilon: float) -> tuple[np.ndarray, float]:
        """k-ary randomized response on integer `values` in [0, k): (answers, epsilon they spend).

        Each value is replaced, with probability q, by a value uniform over all k (so it stays itself
        with 1 - q + q / k); q = k / (e^eps + k - 1) makes that eps-LDP (pure). q is rounded UP to the
        keystream's 2^-32 grid, which can only lower the epsilon; the epsilon returned is the one the
        rounded q gives, ln(k / q - k + 1). The uniform value is drawn by rejection on 32-bit words
        (no modulo bias). For k = 2 this is the classic label flip with probability 1 / (1 + e^eps).
        """
        values = np.asarray(values)
        if not (isinstance(k, int | np.integer) and k >= 2):
            raise InputError("secure_noise: randomized response needs k >= 2 values")
        if not (epsilon > 0.0 and math.isfinite(epsilon)):
            raise InputError("secure_noise: randomized response needs a positive finite epsilon")
        if values.size and (int(values.min()) < 0 or int(values.max()) >= k):
            raise InputError(f"secure_noise: randomized response values must be in [0, {k})")
        grid = _rr_grid(k, epsilon)
        replace = self._words(values.size, "<u4") < np.uint32(grid)
        answers = values.astype(np.int64, copy=True).ravel()
        answers[replace] = self._uniform_below(k, int(replace.sum()))
        return answers.reshape(values.shape), randomized_response_epsilon(k, epsilon)

    def _uniform_below(self, k: int, count: int) -> np.ndarray:
        """count integers uniform on [0, k), by rejection of 32-bit words at or above the largest multiple of k."""
        limit = (2**32 // k) * k
        out = np.empty(0, dtype=np.int64)
        while out.size < count:
            words = self._words(count - out.size + 16, "<u4").astype(np.int64)
            out = np.concatenate([out, words[words < limit] % k])
        return out[:count]

    def _box_muller(self, pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """Two numpy float64 [pairs] arrays of N(0, 1): the cos and sin outputs of Box-Muller pairs.

        sqrt(-2 ln u1) * (cos, sin)(2 pi u2) in float64, in place on the fresh uniforms (no
        temporaries). ln and sqrt by numpy (vectorised); cos and sin by torch's vectorised float64
        kernels (SLEEF, 1-ulp accuracy like numpy's), about 4x faster than numpy's scalar float64
        trigonometry, which was most of the sampler's cost. `pairs` stays below torch's parallel
        grain size (TORCH_GRAIN), so these calls run in the calling thread: torch's intra-op threads
        spin on a busy machine and made a float64 cos of 9k values take 5 ms instead of 0.03 ms when
        they were used (measured on the 2-core machine).
        """
        import torch

        u = self._uniform53(2 * pairs)
        radius, theta = u[:pairs], u[pairs:]
        radius += 1.0
        radius *= _TWO_POW_M53  # (0, 1]: the log is finite
        np.log(radius, out=radius)
        radius *= -2.0
        np.sqrt(radius, out=radius)
        theta *= 2.0 * math.pi * _TWO_POW_M53  # [0, 2 pi)
        angles = torch.from_numpy(theta)  # shares memory: the sin overwrites the angles in place
        cos = torch.cos(angles).numpy()
        angles.sin_()
        cos *= radius
        theta *= radius
        return cos, theta

    def _refill(self) -> np.ndarray:
        """GAUSSIAN_CHUNK float64 SUMS of four standard normals (variance 4), from fresh keystream.

        Value j: cos of pairs j and C+j, sin of pairs j+1 and C+j+1 (mod C), C = GAUSSIAN_CHUNK: four
        distinct pairs, each output used once; contiguous slices, so the sums are plain vector adds.
        """
        cols = GAUSSIAN_CHUNK
        cos, sin = self._box_muller(2 * cols)
        z = cos[:cols]
        z += cos[cols:]
        z[:-1] += sin[1:cols]
        z[:-1] += sin[cols + 1:]
        z[-1:] += sin[:1]
        z[-1:] += sin[cols:cols + 1]
        return z

    def gaussian(self, shape: int | tuple[int, ...] | list[int], std: float) -> torch.Tensor:
        """torch float32 tensor of `shape`, N(0, std^2) per entry: four normals from four distinct
        Box-Muller pairs, summed and halved (variance 1), times std.

        Values come in order from chunks of GAUSSIAN_CHUNK made by `_refill` (amortising the
        per-call cost: a logistic model's step asks for ~60 values); each is handed out once and
        the cursor only moves forward, so no keystream or value is ever reused, and the values
        returned are the same sequence whatever the sizes of the calls.
        """
        import torch

        size = torch.Size(shape if isinstance(shape, tuple | list | torch.Size) else (int(shape),))
        count = size.numel()
        if not (std >= 0.0 and math.isfinite(std)):
            raise InputError("secure_noise: the noise standard deviation must be finite and non-negative")
        if count == 0 or std == 0.0:
            return torch.zeros(size, dtype=torch.float32)
        scale = 0.5 * float(std)
        out = np.empty(count, dtype=np.float32)
        filled = 0
        while filled < count:
            if self._next == self._sums.shape[0]:
                self._sums, self._next = self._refill(), 0
            take = min(count - filled, self._sums.shape[0] - self._next)
            # float64 product, rounded once to float32 (as sum * (std / 2) then .to(float32))
            np.multiply(self._sums[self._next:self._next + take], scale, out=out[filled:filled + take],
                        casting="same_kind")
            self._next += take
            filled += take
        return torch.from_numpy(out).view(size)

    def laplace(self, scale: float, size: int) -> np.ndarray:
        """numpy float64 [size]: Laplace(0, scale) as ln(u1) cos(pi u2) + ln(u3) cos(pi u4), times scale."""
        if not (scale > 0.0 and math.isfinite(scale)):
            raise InputError("secure_noise: the Laplace scale must be positive and finite")
        size = int(size)
        u = self._uniform53(4 * size)
        logs = np.log((u[: 2 * size] + 1.0) * _TWO_POW_M53)  # ln of (0, 1]
        terms = logs * np.cos(math.pi * _TWO_POW_M53 * u[2 * size:])
        return float(scale) * (terms[:size] + terms[size:])


def _rr_grid(k: int, epsilon: float) -> int:
    """Randomized response's replacement probability q = k / (e^eps + k - 1), rounded UP to 2^-32 units."""
    grid = min(math.ceil(k / (math.exp(epsilon) + k - 1) * 2.0**32), 2**32 - 1)
    if grid < 1:
        raise InputError(f"secure_noise: epsilon {epsilon:g} is beyond the keystream's 2^-32 resolution")
    return grid


def randomized_response_epsilon(k: int, epsilon: float) -> float:
    """The epsilon `NoiseSource.randomized_response(values, k, epsilon)` spends: ln(k / q - k + 1) for
    its rounded q (at most `epsilon`); known before any value is drawn (a budget is checked first)."""
    q = _rr_grid(k, epsilon) / 2.0**32
    return math.log(k / q - k + 1.0)


def source(insecure_seed: int | None = None) -> NoiseSource:
    """The source a mechanism should use: secure unless the test-only `insecure_seed` is given."""
    return NoiseSource.secure() if insecure_seed is None else NoiseSource.insecure(insecure_seed)
