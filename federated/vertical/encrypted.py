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
(`feature_map`: equal-width bins of each numeric column, the other columns, products of column pairs,
scaled so every row has norm <= 1; the label party adds the intercept). Taylor loss: the residual of
customer i is d_i = c_i + r_i, with c_i = clip(u_L,i / 4 + 1/2 - y_i, -C, C) (the label party's part,
label included) and r_i = clip(u_F,i / 4, -C, C) (the feature party's), u = phi . w.

One step (t = 1..steps; n = training customers, public):
1. label party -> feature party: Enc_L(c / sqrt(n)), its key; feature party -> label party: Enc_F(r / sqrt(n))
   (sums scaled by 1 / sqrt(n) sit where CKKS's absolute error, about 2e-6, is smallest against them);
2. feature party: Enc_L(G_F + z_F) = sum_i (Enc_L(c_i / sqrt(n)) + r_i / sqrt(n)) phi_F,i + z_F, its noise z_F;
   label party likewise Enc_F(G_L + z_L) with its noise z_L (`ckks.weighted_sums`); each sends that
   ONE ciphertext to the key holder;
3. each decrypts what is under its key, adds its own noise and returns it: the feature party then
   holds G_F + z_F + z_L, the label party G_L + z_L + z_F; each moves its weights (momentum) by the
   mean gradient g = G / sqrt(n).

DP (zero-out neighbours, as in split.py): with ||phi|| <= 1 and |c|, |r| <= C, removing one customer's
row at the label party (phi_L,i = 0, c_i = 0) moves g_L by at most 2C/n and g_F by at most C/n, L2
sensitivity sqrt(5) C / n of the pair a step; the feature party's row alike. Each party's own noise,
N(0, (sigma sqrt(5) C / n)^2) per coordinate of both mean gradients (sqrt(n) times that on G), is what the other party's view of its data
carries, so each party's epsilon is that of `steps` Gaussian mechanisms at multiplier sigma
(`privmodel.dp.accounting`, full batch: sampling rate 1), its noise from the secret source.

What is NOT covered by epsilon, and stated on the card: scoring. The label party scores a customer as
u_L + u_F, so the feature party sends u_F of each scored customer (here the held-out ones), exactly, as
FATE's hetero-LR inference does. That is one number per scored customer computed from its columns.
"""

from __future__ import annotations

import math
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
#: (bench_vertical's parties, eps 1 per party): 50 / 16 / 0.9 -> 0.8302 (non-private 0.8336); 50 / 8 ->
#: 0.8261; 100 / 16 -> 0.8258 (more steps, more noise each); plain gradient descent needs 200 steps
STEPS, LR, MOMENTUM = 50, 16.0, 0.9
#: the clip of each party's part of the residual (the Taylor residual is about 1/2 in magnitude)
CLIP = 1.0
#: equal-width bins of each numeric column (encoded to [0, 1] by the party's public bounds)
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


def sigma(config: EncryptedConfig, role: str) -> float:
    """The noise multiplier that spends the role's epsilon over the run's full-batch Gaussian steps (0: non-private)."""
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
        b = np.minimum((x[:, j] * BINS).astype(np.int64), BINS - 1)
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
        self.velocity = MOMENTUM * self.velocity + gradient
        self.w = self.w - LR * self.velocity

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


def unblobs(content: RecordDict, sender: str) -> list[bytes]:
    try:
        out = [bytes(b) for b in content["he"]["c"]]  # type: ignore[union-attr,arg-type]
    except (KeyError, TypeError):
        raise InputError(f"vertical: a message from {sender} without its ciphertexts") from None
    return out


def _exchange_keys(feature: Party, label: Party, channel: Channel) -> None:
    from federated.vertical import ckks

    got_l = unblobs(channel.send(label.name, feature.name, "he.keys", blobs([label.keys()])), label.name)
    got_f = unblobs(channel.send(feature.name, label.name, "he.keys", blobs([feature.keys()])), feature.name)
    feature.peer = ckks.evaluator_context(got_l[0], label.name)
    label.peer = ckks.evaluator_context(got_f[0], feature.name)


def train(feature: Party, label: Party, train_rows: np.ndarray, channel: Channel) -> None:
    """The messages of a run, in order (module doc): keys, then `steps` rounds of encrypted residual parts,
    encrypted noised gradient sums and the decrypted, twice-noised gradients."""
    from federated.vertical import ckks
    from federated.vertical.split import pack, unpack

    n = len(train_rows)
    if n == 0:
        raise InputError("vertical: no training customers")
    _exchange_keys(feature, label, channel)
    phi_l, phi_f = label.phi[train_rows], feature.phi[train_rows]
    k_l, k_f = phi_l.shape[1], phi_f.shape[1]
    for _ in range(label.config.steps):
        root = math.sqrt(n)
        c, r = label.part(train_rows) / root, feature.part(train_rows) / root
        enc_c = unblobs(channel.send(label.name, feature.name, "he.residual", blobs(ckks.encrypt(label.ctx, c))),
                        label.name)
        enc_r = unblobs(channel.send(feature.name, label.name, "he.residual", blobs(ckks.encrypt(feature.ctx, r))),
                        feature.name)
        for_label = ckks.weighted_sums(feature.peer, enc_c, r, phi_f, feature.draw(k_f, n))
        for_feature = ckks.weighted_sums(label.peer, enc_r, c, phi_l, label.draw(k_l, n))
        got_l = unblobs(channel.send(feature.name, label.name, "he.gradient", blobs([for_label])), feature.name)
        got_f = unblobs(channel.send(label.name, feature.name, "he.gradient", blobs([for_feature])), label.name)
        g_f = ckks.decrypt(label.ctx, got_l[0], k_f, feature.name) + label.draw(k_f, n)
        g_l = ckks.decrypt(feature.ctx, got_f[0], k_l, label.name) + feature.draw(k_l, n)
        feature.step(unpack(channel.send(label.name, feature.name, "gradient", pack(g_f))) / root)
        label.step(unpack(channel.send(feature.name, label.name, "gradient", pack(g_l))) / root)
    for side in (feature, label):
        side.epsilon_spent = planned_epsilon(side.config, side.role)


def score(feature: Party, label: Party, rows: np.ndarray, channel: Channel) -> np.ndarray:
    """Churn probabilities of shared customers: the feature party sends u_F of each, exactly (the
    inference release the card states), the label party adds its own part."""
    from federated.vertical.split import pack, unpack

    u_f = unpack(channel.send(feature.name, label.name, "score.partial", pack(feature.phi[rows] @ feature.w)))
    logit = label.phi[rows] @ label.w + np.asarray(u_f, dtype=np.float64)
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))
