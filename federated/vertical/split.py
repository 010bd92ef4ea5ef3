"""Split learning between feature parties (one bottom model each) and a label party (top model and labels), with DP.

Shape (Flower's vertical-FL example): the feature party maps its columns to a k-dimensional embedding
per customer; the label party's top model reads its own columns and that embedding and owns the loss.
Per batch: embeddings go up, gradients with respect to the embeddings come down. Rows are never
named: both parties walk the intersection in the order PSI agreed, in batches both derive from the
public seed.

DP that fits the threat (each party protects its customers' data from the other; docs/vertical.md):

* feature party: each embedding is clipped to L2 norm `clip` and gets Gaussian noise sigma_e * clip
  before it leaves; its bottom-model update is DP-SGD (per-customer gradient clipped to `clip`, noise
  sigma_b * clip), because the bottom model shapes every later embedding;
* label party: each returned gradient is clipped to `clip_gradient` and gets noise sigma_g times that (label DP:
  the gradient is a function of the label); its top-model update is DP-SGD too (sigma_t), because
  the top model shapes every later gradient.

Neighbouring relation: one shared customer's row at a party replaced by a null row that contributes
nothing (zero-out, as DP-SGD's add/remove); each mechanism then has sensitivity `clip`. Every
training customer is in exactly one batch per epoch and the schedule is known to both parties, so
there is no amplification by subsampling: per party, a customer's privacy loss is the composition of
2 * epochs Gaussian mechanisms, which is exactly one Gaussian mechanism with noise multiplier
sigma_eff = (sum_k 1 / sigma_k^2)^(-1/2) (Gaussian DP composes in quadrature). `calibrate` splits a
target epsilon between a party's two mechanisms by `share`; `party_epsilon` reports it through
`privmodel.dp.accounting` (Opacus PRV; tests cross-check with dp-accounting's PLD on the composed events).
A scored (test) customer meets one more embedding release, at sigma_e, accounted alike.

Several feature parties (N >= 1): each runs its own bottom model and its own two mechanisms on its own
columns, so each feature party's epsilon is accounted exactly as above, independently of the others.
The top model reads the N embeddings side by side; the label party clips the gradient with respect to
the concatenated embeddings as ONE row (norm `clip_gradient`), noises it once, and sends each feature
party only its own block: one Gaussian mechanism per batch whatever N is, so the label party's epsilon
does not grow with N. A feature party's block depends on the other parties' embeddings only through
their noised releases (post-processing). With N = 1 every computation is the two-party one.

All noise comes from `privmodel.dp.secure_noise` (one NoiseSource per party per run).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anonymize.errors import InputError
from privmodel.dp import accounting, secure_noise

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from federated.vertical.channel import Channel


PROTOCOLS = ("split", "release", "encrypted")


@dataclass(frozen=True)
class SplitConfig:
    """Hyper-parameters and the per-party privacy target of one vertical run."""

    epsilon: float | None = 1.0  # per party; None = non-private (no clipping, no noise)
    label_epsilon: float | None = None  # the label party's own target when it differs (None = `epsilon`)
    delta: float = 1e-6
    epochs: int = 4
    batch_size: int = 512
    lr: float = 0.01
    embed_dim: int = 4
    hidden: int = 32
    clip: float = 1.0  # embeddings (norm bound of what the feature party sends) and both model updates
    clip_gradient: float = 0.1  # returned gradients: sized to their typical norm, so the noise is too
    embedding_share: float = 0.8  # feature party: share of its privacy on embeddings (rest: bottom updates)
    gradient_share: float = 0.8  # label party: share of its privacy on returned gradients (rest: top updates)
    accountant: str = "prv"
    # "gradient": the label party's columns and labels are protected (noised gradients, DP-SGD top);
    # "labels": randomized response on the labels once, the rest is post-processing (labels only)
    label_dp: Literal["gradient", "labels"] = "gradient"
    seed: int = 0  # weight initialisation and batch schedule only (public); never the noise
    insecure_seed: int | None = None  # TEST ONLY: reproducible noise, NOT differentially private
    # "split": this module's split learning; "release": `federated.vertical.release` (each party's data
    # crosses once, by randomized response; epsilon, label_epsilon, epochs, seed and bins apply);
    # "encrypted": `federated.vertical.encrypted` (gradients under CKKS, central DP; epsilon,
    # label_epsilon, delta and accountant apply)
    protocol: Literal["split", "release", "encrypted"] = "split"
    bins: int | None = None  # release only: score bins per feature party (None: by epsilon)

    def check(self) -> None:
        """One clear line for a setting that cannot run."""
        if self.protocol not in PROTOCOLS:
            raise InputError("--protocol must be split, release or encrypted")
        if self.bins is not None and (self.protocol != "release" or not 2 <= self.bins <= 64):
            raise InputError("--bins applies to --protocol release and must be between 2 and 64")
        if self.label_dp != "gradient" and self.protocol != "split":
            raise InputError("--label-dp applies to --protocol split (the other protocols protect the labels their own way)")
        for name, eps in (("--epsilon", self.epsilon), ("--label-epsilon", self.label_epsilon)):
            if eps is not None and not (eps > 0 and math.isfinite(eps)):
                raise InputError(f"{name} must be a positive finite number")
        if self.epsilon is None and self.label_epsilon is not None:
            raise InputError("--label-epsilon needs --epsilon: a run is private for both parties or for neither")
        if not 0.0 < self.delta < 1.0:
            raise InputError("--delta must be in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.embed_dim < 1 or self.hidden < 1:
            raise InputError("--epochs, --batch-size, embed_dim and hidden must be positive")
        if not (0.0 < self.embedding_share < 1.0 and 0.0 < self.gradient_share < 1.0):
            raise InputError("embedding_share and gradient_share must be in (0, 1)")
        if not (self.clip > 0 and self.clip_gradient > 0 and self.lr > 0):
            raise InputError("clip, clip_gradient and lr must be positive")


@dataclass(frozen=True)
class Noise:
    """Noise multipliers (std / clip) of the four mechanisms; all zero when non-private."""

    embedding: float
    bottom: float
    gradient: float
    top: float
    label_flip: float = 0.0  # randomized response: probability each training label is flipped (label_dp "labels")

    @property
    def private(self) -> bool:
        return self.embedding > 0

    def as_dict(self) -> dict[str, float]:
        return {"embedding": self.embedding, "bottom_update": self.bottom, "returned_gradient": self.gradient,
                "top_update": self.top, "label_flip": self.label_flip}


def effective_sigma(sigmas: list[float]) -> float:
    """The one Gaussian mechanism equal to the composition of Gaussians with these multipliers."""
    return 1.0 / math.sqrt(sum(1.0 / s**2 for s in sigmas))


def calibrate(config: SplitConfig) -> Noise:
    """Noise multipliers that spend exactly the target epsilon per party over `epochs`."""
    config.check()
    if config.epsilon is None:
        return Noise(0.0, 0.0, 0.0, 0.0)

    def split(epsilon: float, share: float) -> tuple[float, float]:
        try:
            with quiet():
                sigma = accounting.noise_for(epsilon, config.delta, 1.0, 1, config.accountant)
        except RuntimeError:  # Opacus' PRV cannot discretize a near-noiseless mechanism
            raise InputError(f"epsilon {epsilon:g} is beyond what the accountant can calibrate; use a smaller "
                             "epsilon (or 0 for a non-private run)") from None
        mu2 = 1.0 / sigma**2  # GDP mu^2 of the whole party budget
        return (1.0 / math.sqrt(share * mu2 / config.epochs), 1.0 / math.sqrt((1.0 - share) * mu2 / config.epochs))

    emb, bottom = split(config.epsilon, config.embedding_share)
    label_eps = config.label_epsilon if config.label_epsilon is not None else config.epsilon
    if config.label_dp == "labels":
        if label_eps > RR_MAX_EPSILON:
            raise InputError(f"--label-dp labels: epsilon {label_eps:g} is above {RR_MAX_EPSILON:.1f}, where a flip "
                             "probability is below the secret mask's resolution (2^-32)")
        # the mask flips with probability in [q - 2^-32, q]: aim q 2^-32 above the target's, so epsilon <= target
        return Noise(emb, bottom, 0.0, 0.0, 1.0 / (1.0 + math.exp(label_eps)) + 2.0**-32)
    grad, top = (emb, bottom) if label_eps == config.epsilon and config.gradient_share == config.embedding_share \
        else split(label_eps, config.gradient_share)
    return Noise(emb, bottom, grad, top)


def party_sigmas(noise: Noise, epochs: int, role: str) -> list[float]:
    """The multipliers of every mechanism one training customer meets at `role`'s side."""
    pair = [noise.embedding, noise.bottom] if role == "feature" else [noise.gradient, noise.top]
    return pair * epochs


RR_MAX_EPSILON = math.log(2.0**32 - 2.0)  # flip probability 1 / (1 + e^eps) must stay >= 2 * 2^-32


def rr_epsilon(flip: float) -> float:
    """Epsilon of randomized response that flips with probability `flip`. The secret mask flips with
    probability at most `flip` and at least flip - 2^-32 (`bernoulli_mask`), so this uses the lower end."""
    low = flip - 2.0**-32
    return math.log((1.0 - low) / low)


def party_delta(noise: Noise, role: str, delta: float) -> float:
    """Delta of a party's run: 0 for randomized response (pure DP), else the run's delta."""
    return 0.0 if role == "label" and noise.label_flip > 0 else delta


def party_epsilon(noise: Noise, epochs: int, role: str, delta: float, accountant: str = "prv") -> float:
    """Epsilon a training customer's data at `role` ("feature" / "label") spends in one run."""
    if not noise.private:
        return math.inf
    if role == "label" and noise.label_flip > 0:
        return rr_epsilon(noise.label_flip)
    with quiet():
        return accounting.epsilon_for(effective_sigma(party_sigmas(noise, epochs, role)), 1.0, 1, delta, accountant)


def score_epsilon(noise: Noise, delta: float, accountant: str = "prv") -> float:
    """Epsilon of scoring one customer after training: the feature party releases one clipped, noised
    embedding of it (one Gaussian mechanism at the embedding's multiplier, sensitivity `clip`)."""
    if not noise.private:
        return math.inf
    with quiet():
        return accounting.epsilon_for(noise.embedding, 1.0, 1, delta, accountant)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Opacus' PRV takes log(1 - q) = log(0) at sampling rate 1 (harmless: that branch is unused); silence it."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --- the two parties' models --------------------------------------------------------------------


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out))


class TopModel(nn.Module):
    """The label party's network: its columns and the received embedding -> logit (wide & deep)."""

    def __init__(self, d_own: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.deep = _mlp(d_own + embed_dim, hidden, 1)
        self.wide = nn.Linear(d_own + embed_dim, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x, e], dim=-1)
        out: torch.Tensor = (self.deep(z) + self.wide(z)).squeeze(-1)
        return out


def state_hash(model: nn.Module) -> str:
    """SHA-256 of a model's parameters (names, shapes and float32 bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        arr = tensor.detach().cpu().numpy().astype(np.float32)
        digest.update(name.encode() + b"\x00" + str(arr.shape).encode() + b"\x00" + arr.tobytes())
    return digest.hexdigest()


def load_state(model: nn.Module, data: bytes) -> None:
    """Load a part saved by `state_bytes` (tensors only: `weights_only`), or one clear line."""
    try:
        model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    except (RuntimeError, ValueError, KeyError, EOFError) as exc:
        raise InputError(f"vertical: the saved model part does not fit this model ({type(exc).__name__})") from None


def state_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _per_sample_step(model: nn.Module, loss_of: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                     clip: float, sigma: float, noise: secure_noise.NoiseSource | None,
                     optimizer: torch.optim.Optimizer) -> None:
    """One DP-SGD step: per-customer gradients (torch.func), clipped to `clip`, summed, Gaussian noise
    sigma * clip from `noise`, divided by the batch size. Non-private (sigma 0): the plain mean gradient."""
    from torch.func import functional_call, grad, vmap

    n = inputs[0].shape[0]
    if sigma <= 0:  # non-private: the plain mean gradient, no per-customer work
        optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = loss_of(model, *inputs) / n
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, torch.Tensor], *row: torch.Tensor) -> torch.Tensor:
        batch = tuple(r.unsqueeze(0) for r in row)
        return loss_of(lambda *a: functional_call(model, p, a), *batch)

    grads = vmap(grad(one), in_dims=(None, *([0] * len(inputs))))(params, *inputs)
    norms = torch.sqrt(sum((g.reshape(n, -1) ** 2).sum(1) for g in grads.values()))
    scale = (clip / (norms + 1e-12)).clamp(max=1.0)
    assert noise is not None
    optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        g = torch.einsum("n,n...->...", scale, grads[name]) + noise.gaussian(tuple(p.shape), sigma * clip)
        p.grad = g / n
    optimizer.step()


def bounded(z: torch.Tensor, clip: float) -> torch.Tensor:
    """The bottom model's output layer: clip * tanh(z) / sqrt(k) has L2 norm below `clip` by construction.

    Why not only rescale rows to the bound: rescaling keeps a row's direction and throws its length
    away, which cost 0.06 AUC with no noise at all (60k people); tanh keeps both inside the bound.
    The per-row clip that follows is then a no-op kept as the guard the accounting relies on.
    """
    return clip * torch.tanh(z) / math.sqrt(z.shape[-1])


def clip_rows(v: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each row to L2 norm at most `clip`."""
    norms = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    return v * torch.clamp(clip / (norms + 1e-12), max=1.0)


@dataclass
class FeatureSide:
    """The feature party: its encoded columns for the shared customers (agreed order) and its bottom model."""

    name: str
    x: np.ndarray
    config: SplitConfig
    noise: Noise
    source: secure_noise.NoiseSource | None = None
    model: Any = None
    optimizer: Any = None
    index: int = 0  # the party's place among the feature parties (its block of the top model's input)
    _last: tuple[Any, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 2 + 1 + 1000 * self.index)
            self.model = _mlp(self.x.shape[1], self.config.hidden, self.config.embed_dim)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        if self.noise.private:
            test_seed = self.config.insecure_seed
            if test_seed is not None and self.index:
                test_seed += 1 + self.index  # the label party's is insecure_seed + 1
            self.source = secure_noise.source(test_seed)

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings of `rows` as they leave this party: clipped and noised when private."""
        x = torch.from_numpy(self.x[rows])
        with torch.no_grad():
            h = bounded(self.model(x), self.config.clip)
            if self.noise.private:
                assert self.source is not None
                h = clip_rows(h, self.config.clip) + self.source.gaussian(tuple(h.shape),
                                                                          self.noise.embedding * self.config.clip)
        self._last = (rows, None)
        return h.numpy().astype(np.float32)

    def backward(self, rows: np.ndarray, grads: np.ndarray) -> None:
        """Update the bottom model with the returned gradients (DP-SGD when private)."""
        private = self.noise.private
        clip = self.config.clip

        def loss_of(f: Callable[..., torch.Tensor], x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            h = bounded(f(x), clip)
            return ((clip_rows(h, clip) if private else h) * g).sum()

        _per_sample_step(self.model, loss_of, (torch.from_numpy(self.x[rows]), torch.from_numpy(grads)),
                         clip, self.noise.bottom, self.source, self.optimizer)


@dataclass
class LabelSide:
    """The label party: its encoded columns and labels for the shared customers and its top model."""

    name: str
    x: np.ndarray
    y: np.ndarray
    config: SplitConfig
    noise: Noise
    source: secure_noise.NoiseSource | None = None
    model: Any = None
    optimizer: Any = None
    y_train: Any = field(default=None, repr=False)  # the labels training sees: randomized when label_dp "labels"
    feature_parties: int = 1  # how many embeddings the top model reads, side by side

    def __post_init__(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed * 2)
            self.model = TopModel(self.x.shape[1], self.config.embed_dim * self.feature_parties, self.config.hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        self.y_train = self.y
        if self.noise.private:
            self.source = secure_noise.source(None if self.config.insecure_seed is None else self.config.insecure_seed + 1)
        if self.noise.label_flip > 0:
            assert self.source is not None
            # the one randomized-response rule (`NoiseSource.randomized_response`, as the one-shot release);
            # it flips with probability >= 1 / (1 + e^eps), so it spends at most the epsilon reported
            self.y_train, _ = self.source.randomized_response(np.asarray(self.y, dtype=np.int64), 2,
                                                              rr_epsilon(self.noise.label_flip))

    def step(self, rows: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """Gradients of each customer's loss with respect to its embedding (clipped and noised when
        private), then this party's own DP-SGD step on the top model."""
        return self.step_many(rows, [emb])[0]

    def step_many(self, rows: np.ndarray, embs: list[np.ndarray]) -> list[np.ndarray]:
        """`step` with one embedding per feature party: the gradient of the concatenated embeddings is
        clipped and noised as one row (one mechanism), then cut into each party's block."""
        if len(embs) != self.feature_parties:
            raise InputError(f"vertical: {self.name} expected {self.feature_parties} embeddings, got {len(embs)}")
        x = torch.from_numpy(self.x[rows])
        y = torch.from_numpy(self.y_train[rows].astype(np.float32))
        e = torch.from_numpy(np.concatenate(embs, axis=1) if len(embs) > 1 else embs[0]).requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(self.model(x, e.clone()), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, e)
        if self.noise.gradient > 0:
            assert self.source is not None
            bound = self.config.clip_gradient
            g = clip_rows(g, bound) + self.source.gaussian(tuple(g.shape), self.noise.gradient * bound)

        def loss_of(f: Callable[..., torch.Tensor], xb: torch.Tensor, eb: torch.Tensor,
                    yb: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(f(xb, eb), yb, reduction="sum")

        _per_sample_step(self.model, loss_of, (x, e.detach(), y), self.config.clip, self.noise.top,
                         self.source, self.optimizer)
        out = g.detach().numpy().astype(np.float32)
        k = self.config.embed_dim
        return [out] if len(embs) == 1 else [np.ascontiguousarray(out[:, i * k:(i + 1) * k]) for i in range(len(embs))]

    def score(self, rows: np.ndarray, emb: np.ndarray | list[np.ndarray]) -> np.ndarray:
        e = np.concatenate(emb, axis=1) if isinstance(emb, list) else emb
        with torch.no_grad():
            return torch.sigmoid(self.model(torch.from_numpy(self.x[rows]), torch.from_numpy(e))).numpy()


def batches(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """The public batch schedule: a seeded permutation of 0..n-1 per epoch, cut into batches."""
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5B17])).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def pack(array: np.ndarray) -> RecordDict:
    """A split-learning message (embeddings, gradients, scores' embeddings): one array."""
    from flwr.app import Array, ArrayRecord, RecordDict

    return RecordDict({"split": ArrayRecord({"v": Array(np.ascontiguousarray(array))})})


def unpack(content: RecordDict) -> np.ndarray:
    """The array of a split-learning message (one line when it is not one)."""
    try:
        out: np.ndarray = content["split"]["v"].numpy()  # type: ignore[union-attr]
    except (KeyError, AttributeError, TypeError):
        raise InputError("vertical: a split-learning message without its array") from None
    return out


def _arrays(channel: Channel, sender: str, receiver: str, kind: str, array: np.ndarray) -> np.ndarray:
    return unpack(channel.send(sender, receiver, kind, pack(array)))


def _features(feature: FeatureSide | list[FeatureSide]) -> list[FeatureSide]:
    return feature if isinstance(feature, list) else [feature]


def train(feature: FeatureSide | list[FeatureSide], label: LabelSide, train_rows: np.ndarray, channel: Channel,
          on_epoch: Callable[[int], None] | None = None) -> None:
    """Run the epochs over `train_rows` (positions in the agreed order), one round trip per batch and
    feature party (each feature party sees only its own gradient block)."""
    cfg = label.config
    sides = _features(feature)
    for epoch in range(cfg.epochs):
        for idx in batches(len(train_rows), cfg.batch_size, epoch, cfg.seed):
            rows = train_rows[idx]
            embs = [_arrays(channel, f.name, label.name, "split.embedding", f.embed(rows)) for f in sides]
            for f, g in zip(sides, label.step_many(rows, embs), strict=True):
                f.backward(rows, _arrays(channel, label.name, f.name, "split.gradient", g))
        if on_epoch is not None:
            on_epoch(epoch + 1)


def score(feature: FeatureSide | list[FeatureSide], label: LabelSide, rows: np.ndarray, channel: Channel) -> np.ndarray:
    """Scores for `rows` (the label party learns them; each feature party sends one noisy embedding each)."""
    sides = _features(feature)
    out = []
    for part in score_parts(rows):
        embs = [_arrays(channel, f.name, label.name, "split.score", f.embed(part)) for f in sides]
        out.append(label.score(part, embs if len(embs) > 1 else embs[0]))
    return np.concatenate(out) if out else np.zeros(0)


SCORE_CHUNK = 8192


def score_parts(rows: np.ndarray) -> list[np.ndarray]:
    """The scoring schedule: `rows` in chunks, one `split.score` message each."""
    return [rows[start:start + SCORE_CHUNK] for start in range(0, len(rows), SCORE_CHUNK)]
