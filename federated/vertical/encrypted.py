"""Encrypted protocol: full-batch DP gradient descent whose gradients are computed under CKKS, so no
per-customer value crosses in the clear during training, and each party adds Gaussian noise once per
step to the two gradient sums (central DP, not per-customer).

Why: split learning and the one-shot release send something per customer, so each message needs local
DP and at epsilon 1 the joint model barely beats the bank alone (the oracle bound in
`benchmarks/vertical_ldp_bound.py`: no per-customer message can reach the centralized AUC). Here what
a party sees of the other's data is ciphertexts (`federated/vertical/ckks.py`) and, each step, two sums
over all training customers, noised by the other party: FATE's hetero-LR shape (Taylor-approximated
logistic loss), without its arbiter, with each party's own CKKS key and per-party DP.

Model: logit = phi_L(x_L) . w_L + phi_F(x_F) . w_F, where phi is each party's fixed, public feature map
(`feature_map`: bins of each numeric column (equal-width on the square-root scale), the other columns,
products of column pairs, scaled so every row has norm <= 1; the label party adds the intercept). Taylor loss: the residual of
customer i is d_i = c_i + r_i, with c_i = clip(u_L,i / 4 + 1/2 - y_i, -C, C) (the label party's part,
label included) and r_i = clip(u_F,i / 4, -C, C) (the feature party's), u = phi . w.

One step (n = training customers, public; G = sqrt(n) x the mean gradient, where CKKS's absolute
error, about 2e-6 a sum, is smallest against the values): each party encrypts its part of every
training customer's residual under its own key and sends it; each computes under the other's key
the sum over customers of (both parts) x each of its own columns (`ckks.weighted_sums`), adds its
own noise z and sends that ONE ciphertext to the key holder; the key holder decrypts it, adds its own
noise and hands it back. Each party then holds its own G with both parties' noise in it and moves
its weights (momentum). The messages, label party -> feature party (its answer):

    he.keys      L's public context                      -> he.keys      F's public context
    he.residual  Enc_L(c / sqrt(n))                      -> he.residual  Enc_F(r / sqrt(n)), Enc_L(G_F + z_F)
    he.gradient  G_F + z_F + z_L, Enc_F(G_L + z_L)       -> gradient     G_L + z_L + z_F
    ... (he.residual, he.gradient) once per step ...
    score.request                                        -> score.partial  u_F of each held-out customer,
                                                                            and the feature part's hash

`feature_steps` is the feature party's side (a generator the simulation and the deployment's node
both run), `label_rounds` the label party's (the simulation and the deployment's ServerApp).

DP (zero-out neighbours, as in split.py): with ||phi|| <= 1 and |c|, |r| <= C, removing one customer's
row at the label party (phi_L,i = 0, c_i = 0) moves g_L by at most 2C/n and g_F by at most C/n, L2
sensitivity sqrt(5) C / n of the pair a step; the feature party's row alike. Each party's own noise,
N(0, (sigma sqrt(5) C / n)^2) per coordinate of both mean gradients (sqrt(n) times that on G), is
what the other party's view of its data carries, so each party's epsilon is that of `steps` Gaussian mechanisms at multiplier sigma
(`privmodel.dp.accounting`, full batch: sampling rate 1), its noise from the secret source.

Threat model: semi-honest, as the other protocols. A party that deviates can break the DP calibration:
its residual parts travel encrypted, so the other party cannot check they lie in [-C, C], and a huge
part for one customer makes that customer's term dominate the other party's noised sums. Range
proofs would close this; they are not built.

What is NOT covered by epsilon, and stated on the card: scoring. The label party scores a customer as
u_L + u_F, so the feature party sends u_F of each scored customer (here the held-out ones), exactly, as
FATE's hetero-LR inference does. That is one number per scored customer computed from its columns.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from privmodel.dp import secure_noise

if TYPE_CHECKING:
    from flwr.app import RecordDict
    from torch import nn

    from federated.vertical.channel import Channel
    from federated.vertical.split import SplitConfig

#: default gradient steps (`--epochs`), learning rate and momentum. Measured in the clear on 200k people
#: (bench_vertical's parties, eps 1 per party, equal-width bins): 50 / 16 / 0.9 -> 0.8302 (non-private
#: 0.8336); 50 / 8 -> 0.8261; 100 / 16 -> 0.8258 (more steps, more noise each); plain gradient descent
#: needs 200 steps
STEPS, LR, MOMENTUM = 50, 16.0, 0.9
#: the clip of each party's part of the residual (the Taylor residual is about 1/2 in magnitude)
CLIP = 1.0
#: bins of each numeric column (encoded to [0, 1] by the party's public bounds), equal-width on the
#: square-root scale: finer near the low end, where counts and durations change fastest. Measured in
#: the clear on 200k people (eps 1 per party / non-private): 8 on this scale 0.8349 / 0.8394, 8 equal-
#: width 0.8278 / 0.8336, 12 on this scale 0.8377 / 0.8438 (40 % more columns, so 40 % more CKKS work)
BINS = 8
#: the noise std on every decrypted-and-returned sum of a NON-private run (a private run's DP noise is
#: far larger): 500 times CKKS's error, so the returned values do not hand the other party the exact
#: decryption a key-recovery attack on CKKS (Li and Micciancio, 2021) needs
FLOOD = 1e-3


@dataclass(frozen=True)
class EncryptedConfig:
    """One encrypted run: each party's epsilon over the whole run, delta, and the accountant."""

    epsilon: float | None = 1.0  # the feature party's; None = non-private (no noise; still encrypted)
    label_epsilon: float | None = None  # the label party's; None = `epsilon`
    delta: float = 1e-6
    steps: int = STEPS  # full-batch gradient steps (the CLI's --epochs)
    accountant: str = "prv"
    insecure_seed: int | None = None  # TEST ONLY: reproducible noise, NOT differentially private

    @classmethod
    def of(cls, config: SplitConfig) -> EncryptedConfig:
        """The encrypted settings of a vertical run's configuration (`protocol: encrypted`; epochs = steps)."""
        return cls(epsilon=config.epsilon, label_epsilon=config.label_epsilon, delta=config.delta,
                   steps=config.epochs, accountant=config.accountant, insecure_seed=config.insecure_seed)

    def target(self, role: str) -> float | None:
        if role == "label" and self.label_epsilon is not None:
            return self.label_epsilon
        return self.epsilon


@functools.lru_cache(maxsize=64)
def sigma(config: EncryptedConfig, role: str) -> float:
    """The noise multiplier that spends the role's epsilon over the run's full-batch Gaussian steps (0: non-private).
    Cached: the plan, the budget entries, the card and each party ask for it, and it is an accountant bisection."""
    from federated.vertical.split import quiet
    from privmodel.dp import accounting

    eps = config.target(role)
    if eps is None:
        return 0.0
    with quiet():
        return float(accounting.noise_for(eps, config.delta, 1.0, config.steps, config.accountant))


def planned_epsilon(config: EncryptedConfig, role: str) -> float | None:
    """The epsilon the role's noise spends (at or just under its target), None when non-private."""
    from federated.vertical.split import quiet
    from privmodel.dp import accounting

    s = sigma(config, role)
    if s == 0.0:
        return None
    with quiet():
        return float(accounting.epsilon_for(s, 1.0, config.steps, config.delta, config.accountant))


def multipliers(config: EncryptedConfig) -> dict[str, float]:
    """What the card and ledgers state about the noise: each party's multiplier (0: non-private) and the steps."""
    return {"feature_multiplier": sigma(config, "feature"), "label_multiplier": sigma(config, "label"),
            "steps": float(config.steps)}


def noise_std(multiplier: float, n: int) -> float:
    """Per-coordinate std of a party's noise on G = sqrt(n) x the mean gradients: multiplier x the
    mean's sensitivity sqrt(5) C / n, times sqrt(n)."""
    return multiplier * math.sqrt(5.0) * CLIP / math.sqrt(n)


def party_cost(config: EncryptedConfig, role: str) -> dict[str, Any]:
    """What a party's budget entry says about its mechanism."""
    return {"mechanism": f"vertical encrypted gradient descent ({role} party): CKKS-encrypted gradient sums, "
                         "Gaussian noise on both sums each step", "accountant": config.accountant, "steps": config.steps,
            "noise_multiplier": sigma(config, role)}


def feature_map(x: np.ndarray, n_num: int, intercept: bool = False) -> np.ndarray:
    """The party's public feature map (module doc): fixed by the column count and BINS, never by data."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    parts = []
    for j in range(n_num):
        b = np.minimum((np.sqrt(x[:, j]) * BINS).astype(np.int64), BINS - 1)
        parts.append(np.eye(BINS)[b][:, 1:])
    parts.append(x[:, n_num:])
    pairs = list(combinations(range(x.shape[1]), 2))
    if pairs:
        parts.append(np.stack([x[:, a] * x[:, b] for a, b in pairs], axis=1))
    if intercept:
        parts.append(np.ones((len(x), 1)))
    phi = np.concatenate(parts, axis=1)
    # each binned column contributes at most 1 to the squared norm, every other entry at most 1
    bound = n_num + (x.shape[1] - n_num) + len(pairs) + int(intercept)
    return phi / math.sqrt(max(bound, 1))


@dataclass
class Party:
    """One side of the encrypted protocol: its mapped rows, weights, keys and noise."""

    name: str
    phi: np.ndarray
    config: EncryptedConfig
    role: str
    y: np.ndarray | None = None  # the label party's labels (0/1)
    w: np.ndarray = field(init=False, repr=False)
    velocity: np.ndarray = field(init=False, repr=False)
    ctx: Any = field(default=None, repr=False)  # this party's private CKKS context
    peer: Any = field(default=None, repr=False)  # the other party's public context
    noise: secure_noise.NoiseSource | None = field(default=None, repr=False)
    multiplier: float = 0.0
    epsilon_spent: float | None = None

    @classmethod
    def of(cls, name: str, x: np.ndarray, n_num: int, config: SplitConfig, role: str,
           y: np.ndarray | None = None) -> Party:
        """A party of a vertical run: its encoded shared rows through its feature map (the label
        party's with the intercept), the run's settings."""
        phi = feature_map(x, n_num, intercept=role == "label")
        return cls(name, phi, EncryptedConfig.of(config), role, None if y is None else np.asarray(y, dtype=np.float64))

    def __post_init__(self) -> None:
        self.w = np.zeros(self.phi.shape[1])
        self.velocity = np.zeros(self.phi.shape[1])
        self.multiplier = sigma(self.config, self.role)
        seed = self.config.insecure_seed
        self.noise = secure_noise.source(None if seed is None else seed + (0 if self.role == "label" else 1))

    def keys(self) -> bytes:
        """Make this party's CKKS keys; return the public context to send."""
        from federated.vertical import ckks

        self.ctx, public = ckks.keypair()
        return public

    def part(self, rows: np.ndarray) -> np.ndarray:
        """This party's clipped part of the Taylor residual of `rows` (module doc)."""
        u = np.asarray(self.phi[rows] @ self.w, dtype=np.float64)
        shift = 0.0 if self.y is None else 0.5 - self.y[rows]
        return np.asarray(np.clip(u / 4.0 + shift, -CLIP, CLIP))

    def draw(self, k: int, n: int) -> np.ndarray:
        """This party's noise on a k-vector G: its DP noise, or FLOOD when non-private."""
        assert self.noise is not None
        std = noise_std(self.multiplier, n) if self.multiplier > 0 else FLOOD
        return np.asarray(self.noise.gaussian(k, std), dtype=np.float64)

    def step(self, gradient: np.ndarray) -> None:
        """Heavy-ball momentum on the noised mean gradient (post-processing)."""
        if gradient.shape != self.w.shape:
            raise InputError(f"vertical: {self.name} got a gradient of {gradient.size} values for {self.w.size} weights")
        self.velocity = MOMENTUM * self.velocity + gradient
        self.w = self.w - LR * self.velocity

    @property
    def model(self) -> nn.Module:
        """The weights as a bias-free linear layer (what `split.state_hash` and `model.pt` take)."""
        import torch

        layer = torch.nn.Linear(self.phi.shape[1], 1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.w.astype(np.float32))[None, :])
        return layer


def blobs(values: list[bytes]) -> RecordDict:
    """A message of serialised ciphertexts (or a public context)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({"he": ConfigRecord({"c": values})})


def unblobs(content: RecordDict, sender: str, key: str = "he") -> list[bytes]:
    """The serialised ciphertexts of a message's `key` record (one line when there are none)."""
    try:
        out = [bytes(b) for b in content[key]["c"]]  # type: ignore[union-attr,arg-type]
    except (KeyError, TypeError):
        raise InputError(f"vertical: a message from {sender} without its ciphertexts") from None
    return out


#: what the label party's link does: send (kind, content), return the feature party's (kind, content),
#: refusing an answer whose kind is not among those expected (`server_app.Link.exchange`'s shape)
Exchange = Callable[[str, "RecordDict", "str | tuple[str, ...]"], "tuple[str, RecordDict]"]


def feature_steps(feature: Party, label_keys: RecordDict, label: str, train_rows: np.ndarray,
                  test_rows: np.ndarray) -> Generator[tuple[str, RecordDict], RecordDict, None]:
    """The feature party's answers, in order, to the label party's messages (module doc): its public
    context to `he.keys`; per step its encrypted part and Enc_L(G_F + z_F) to `he.residual`, its
    noised gradient for the label party to `he.gradient`; then its score parts of `test_rows` and
    its part's hash. The simulation and the deployment's node both run this generator."""
    from flwr.app import ConfigRecord

    from federated.vertical import ckks
    from federated.vertical.split import pack, state_hash, unpack

    n = len(train_rows)
    if n == 0:
        raise InputError("vertical: no training customers")
    root = math.sqrt(n)
    feature.peer = ckks.evaluator_context(unblobs(label_keys, label)[0], label)
    got = yield "he.keys", blobs([feature.keys()])
    phi = feature.phi[train_rows]
    for _ in range(feature.config.steps):
        r = feature.part(train_rows) / root
        reply = blobs(ckks.encrypt(feature.ctx, r))
        reply["g"] = ConfigRecord({"c": [ckks.weighted_sums(feature.peer, unblobs(got, label), r, phi,
                                                            feature.draw(phi.shape[1], n))]})
        got = yield "he.residual", reply
        feature.step(unpack(got) / root)
        g_l = ckks.decrypt(feature.ctx, unblobs(got, label)[0], label)
        got = yield "gradient", pack(g_l + feature.draw(len(g_l), n))
    scores = pack(feature.phi[test_rows] @ feature.w)
    scores["h"] = ConfigRecord({"part": state_hash(feature.model)})
    yield "score.partial", scores


def label_rounds(label: Party, train_rows: np.ndarray, test_rows: np.ndarray, exchange: Exchange,
                 on_step: Callable[[int], None] | None = None) -> tuple[np.ndarray, str]:
    """The label party's side of a run over `exchange` (module doc): keys, the steps, then the held-out
    customers' churn probabilities. Returns (those probabilities, the feature party's part hash)."""
    from federated.vertical import ckks
    from federated.vertical.split import pack, unpack

    n = len(train_rows)
    root = math.sqrt(n)
    _, got = exchange("he.keys", blobs([label.keys()]), "he.keys")
    label.peer = ckks.evaluator_context(unblobs(got, "the feature party")[0], "the feature party")
    phi = label.phi[train_rows]
    for step in range(label.config.steps):
        c = label.part(train_rows) / root
        _, got = exchange("he.residual", blobs(ckks.encrypt(label.ctx, c)), "he.residual")
        g_f = ckks.decrypt(label.ctx, unblobs(got, "the feature party", "g")[0], "the feature party")
        message = pack(g_f + label.draw(len(g_f), n))
        message["he"] = blobs([ckks.weighted_sums(label.peer, unblobs(got, "the feature party"), c, phi,
                                                  label.draw(phi.shape[1], n))])["he"]
        _, got = exchange("he.gradient", message, "gradient")
        label.step(unpack(got) / root)
        if on_step is not None:
            on_step(step + 1)
    _, got = exchange("score.request", pack(np.zeros(0)), "score.partial")
    u_f = np.asarray(unpack(got), dtype=np.float64)
    if u_f.shape != (len(test_rows),):
        raise InputError(f"vertical: {len(u_f)} score parts for {len(test_rows)} held-out customers")
    logit = label.phi[test_rows] @ label.w + u_f
    return np.asarray(1.0 / (1.0 + np.exp(-logit))), str(got["h"]["part"])


def local_exchange(feature: Party, label: str, train_rows: np.ndarray, test_rows: np.ndarray,
                   channel: Channel) -> Exchange:
    """The two sides joined in one process: each message over `channel` (serialised, counted) and
    answered by `feature_steps`."""
    steps: Generator[tuple[str, RecordDict], RecordDict, None] | None = None

    def exchange(kind: str, content: RecordDict, expect: str | tuple[str, ...]) -> tuple[str, RecordDict]:
        nonlocal steps
        got = channel.send(label, feature.name, kind, content)
        if steps is None:
            steps = feature_steps(feature, got, label, train_rows, test_rows)
            reply_kind, reply = next(steps)
        else:
            reply_kind, reply = steps.send(got)
        wanted = (expect,) if isinstance(expect, str) else expect
        if reply_kind not in wanted:
            raise InputError(f"vertical: {feature.name} answered {reply_kind} where {' or '.join(wanted)} was due")
        return reply_kind, channel.send(feature.name, label, reply_kind, reply)

    return exchange


def train(feature: Party, label: Party, train_rows: np.ndarray, test_rows: np.ndarray,
          channel: Channel) -> tuple[np.ndarray, str]:
    """A whole run in one process: (the held-out customers' churn probabilities, the feature party's
    part hash). The epsilon each party spent is set on it."""
    scores, bottom = label_rounds(label, train_rows, test_rows,
                                  local_exchange(feature, label.name, train_rows, test_rows, channel))
    for side in (feature, label):
        side.epsilon_spent = planned_epsilon(side.config, side.role)
    return scores, bottom
