"""One-shot release: each party's data crosses to the other ONCE, by randomized response, and nothing else does.

Why: in split learning (`split.py`) a shared customer's embedding crosses every epoch and the other
party knows the batch schedule, so nothing is amplified: at epsilon 1 the embedding drowns in noise
(9.5 times its clip norm) and the joint model falls below the bank alone (docs/vertical.md). The
oracle bound (`benchmarks/vertical_ldp_bound.py`) shows what ONE per-customer message can carry at
epsilon 1: a Gaussian-noised score nothing, a randomized-response bit most of the value. So here:

1. label party -> feature party (`release.labels`): the training customers' labels by randomized
   response (`NoiseSource.randomized_response`, k = 2, pure epsilon_label-DP); the held-out
   customers' labels never leave;
2. feature party: trains its own model on its columns and those released labels with DP-SGD (share
   `MODEL_SHARE` of its epsilon), scores every shared customer and cuts the scores into k bins at
   quantiles read from a Laplace-noised histogram of the scores (share `CUTS_SHARE`);
3. feature party -> label party (`release.bins`): every shared customer's bin by k-ary randomized
   response (the rest of its epsilon), once: the training customers' for the top model, the held-out
   ones' for scoring;
4. label party: trains the top model on its own columns, the received bins and ITS RELEASED labels,
   so everything it holds is post-processing of its one release (the top model is label-DP at
   epsilon_label; its own columns it never sends).

Why the feature party's model and cuts are DP: a customer's bin is a function of its own columns AND
of the model and the cut points, which every other customer's row shapes. Randomized response on the
bin alone would protect a customer against what its own bin says, not against what its row does to
everyone else's bins. With the model (DP-SGD) and the cuts (noised histogram) differentially private,
the released bins are, given them, each a function of one customer's row only, so by composition the
feature party's epsilon is epsilon_model + epsilon_cuts + epsilon_rr, with the model's delta. The label
party's release needs no such step: each released label is its own label through randomized response,
pure epsilon_label-DP (delta 0). `NoiseSource.randomized_response` returns the epsilon the rounded
probabilities spend (tests cross-check it with dp-accounting's randomized-response PLD). Scoring a NEW
customer costs the feature party one more release of that customer's bin (its randomized-response
share).

Neighbouring relation: as in `split.py`, one shared customer's row at a party replaced by a null row
(zero-out; DP-SGD's add/remove). The histogram's Laplace noise is sized for replace-one (sensitivity
2), which covers zero-out (1) too; randomized response is epsilon-LDP between any two inputs.

Non-private (`epsilon=None`): labels and bins cross exactly (bins = `NONPRIVATE_BINS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from anonymize.errors import InputError
from privmodel.dp import secure_noise

if TYPE_CHECKING:
    from torch import nn

    from federated.vertical.channel import Channel
    from federated.vertical.split import SplitConfig
    from privmodel.data.features import EncodedData
    from privmodel.dp.training import FitResult

#: bins when the run is non-private (the score's resolution, not a privacy setting)
NONPRIVATE_BINS = 16
#: the feature party's epsilon: its DP-SGD model, its noised score histogram, the rest its released bins.
#: Measured at eps 1 (200k people, 3 runs each): logreg 0.1 / 0.02 -> 0.7390; logreg 0.2 / 0.05 -> 0.7336;
#: MLP 0.2 / 0.05 -> 0.7306 (the released bit binds, not the model)
MODEL_SHARE, CUTS_SHARE = 0.1, 0.02
#: the score histogram the cuts are read from: logits clipped to +-HIST_LIMIT in HIST_BINS cells
HIST_BINS, HIST_LIMIT = 512, 8.0
#: below this feature epsilon 2 bins carry most, above it 4 (benchmarks/vertical_ldp_bound.py, 200k people:
#: oracle AUC at eps 1: 0.751 with 2 bins, 0.739 with 4; at eps 4: 0.810 with 2, 0.826 with 4)
TWO_BINS_BELOW = 2.5


@dataclass(frozen=True)
class ReleaseConfig:
    """One one-shot run: each party's epsilon per shared customer, the bins, and the two models."""

    epsilon: float | None = 1.0  # the feature party's (model, cuts and bins together); None = non-private
    label_epsilon: float | None = None  # the label party's (its labels); None = `epsilon`
    bins: int | None = None  # None: 2 below TWO_BINS_BELOW, else 4
    model: Literal["logreg", "mlp"] = "mlp"  # the label party's top model (non-private: post-processing)
    feature_model: Literal["logreg", "mlp"] = "logreg"  # the feature party's DP-SGD model (fewer weights to noise)
    delta: float = 1e-6  # the feature party's DP-SGD model
    epochs: int = 30  # the non-private fits (the top model; both when non-private): 4 epochs gave 0.728 at eps 1, 30 0.75
    seed: int = 0  # weight initialisation only (public); never the randomized response
    insecure_seed: int | None = None  # TEST ONLY: reproducible responses, NOT differentially private

    def check(self) -> None:
        """One clear line for a setting that cannot run."""
        for name, eps in (("--epsilon", self.epsilon), ("--label-epsilon", self.label_epsilon)):
            if eps is not None and not (eps > 0 and np.isfinite(eps)):
                raise InputError(f"{name} must be a positive finite number")
        if self.epsilon is None and self.label_epsilon is not None:
            raise InputError("--label-epsilon needs --epsilon: a run is private for both parties or for neither")
        if self.bins is not None and not 2 <= self.bins <= 64:
            raise InputError("--bins must be between 2 and 64")
        if self.epochs < 1:
            raise InputError("--epochs must be positive")

    @classmethod
    def of(cls, config: SplitConfig) -> ReleaseConfig:
        """The release settings of a vertical run's configuration (`protocol: release`)."""
        return cls(epsilon=config.epsilon, label_epsilon=config.label_epsilon, bins=config.bins, delta=config.delta,
                   epochs=config.epochs, seed=config.seed, insecure_seed=config.insecure_seed)

    @property
    def label_eps(self) -> float | None:
        return self.label_epsilon if self.label_epsilon is not None else self.epsilon

    @property
    def k(self) -> int:
        """The number of score bins the feature party releases."""
        if self.bins is not None:
            return self.bins
        if self.epsilon is None:
            return NONPRIVATE_BINS
        return 2 if feature_split(self.epsilon)["rr"] < TWO_BINS_BELOW else 4


def feature_split(epsilon: float) -> dict[str, float]:
    """The feature party's epsilon as (model, cuts, rr) targets."""
    model, cuts = MODEL_SHARE * epsilon, CUTS_SHARE * epsilon
    return {"model": model, "cuts": cuts, "rr": epsilon - model - cuts}


def planned_epsilons(config: ReleaseConfig) -> dict[str, float | None]:
    """Each role's epsilon per shared customer before anything is drawn (budgets are checked first):
    the feature party's by basic composition of its three mechanisms (the model's at its target, an
    upper bound of what the accountant reports after training)."""
    if config.epsilon is None:
        return {"feature": None, "label": None}
    label_eps = config.label_eps
    assert label_eps is not None
    part = feature_split(config.epsilon)
    return {"feature": part["model"] + part["cuts"] + secure_noise.randomized_response_epsilon(config.k, part["rr"]),
            "label": secure_noise.randomized_response_epsilon(2, label_eps)}


def planned_deltas(config: ReleaseConfig) -> dict[str, float]:
    """The feature party's delta is its DP-SGD model's; the label party's release is pure."""
    return {"feature": config.delta if config.epsilon is not None else 0.0, "label": 0.0}


def randomization(config: ReleaseConfig, eps: dict[str, Any]) -> dict[str, float]:
    """What the card and ledgers state about the randomization (0 when non-private)."""
    if eps.get("feature") is None or eps.get("label") is None:
        return {"label_flip": 0.0, "bins": float(config.k), "bin_kept": 1.0}
    assert config.epsilon is not None
    k, e_rr, e_l = config.k, feature_split(config.epsilon)["rr"], float(eps["label"])
    return {"label_flip": 1.0 / (1.0 + math.exp(e_l)), "bins": float(k),
            "bin_kept": math.exp(e_rr) / (math.exp(e_rr) + k - 1)}


def party_cost(config: ReleaseConfig, role: str) -> dict[str, Any]:
    """What a party's budget entry says about its mechanism."""
    if role == "feature":
        assert config.epsilon is not None
        return {"mechanism": "vertical one-shot release (feature party): DP-SGD model, Laplace-noised score "
                             "histogram, k-ary randomized response on each shared customer's score bin (basic "
                             "composition)", "bins": config.k, "epsilon_parts": feature_split(config.epsilon)}
    return {"mechanism": "vertical one-shot release (label party): randomized response on the training customers' "
                         "labels, once", "bins": 2}


def dense_data(x: np.ndarray) -> EncodedData:
    """A dense float matrix as EncodedData (no categorical columns): what `privmodel.dp.training.fit` takes."""
    from privmodel.data.features import EncodedData

    return EncodedData(np.ascontiguousarray(x, dtype=np.float32), np.zeros((len(x), 0), dtype=np.int64), [],
                       [f"x{i}" for i in range(x.shape[1])], [])


def _fit(x: np.ndarray, y: np.ndarray, config: ReleaseConfig,
         epsilon: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """(model, its privacy record): the feature party's DP-SGD model at `epsilon` (the project's training
    path), or a non-private fit of data the caller holds (its own columns, released labels) when None."""
    from privmodel.dp.training import TrainConfig, fit

    settings = (TrainConfig(model=config.feature_model, epsilon=epsilon, delta=config.delta, seed=config.seed,
                            insecure_seed=config.insecure_seed) if epsilon is not None
                else TrainConfig(model=config.model, epsilon=None, epochs=config.epochs, seed=config.seed))
    result: FitResult = fit(dense_data(x), y, settings)
    return result.model, result.privacy


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    data = dense_data(x)
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(data.x_num), torch.from_numpy(data.x_cat)).numpy()).ravel()


def quantile_bins(scores: np.ndarray, k: int) -> np.ndarray:
    """Each score's bin among k of (about) equal size, cut at the scores' own quantiles (non-private runs)."""
    cuts = np.quantile(scores, np.linspace(0.0, 1.0, k + 1)[1:-1])
    return np.searchsorted(cuts, scores, side="right").astype(np.int64)


def private_cuts(scores: np.ndarray, k: int, epsilon: float, source: secure_noise.NoiseSource) -> np.ndarray:
    """k - 1 cut points at the quantiles of a Laplace-noised histogram of the scores (epsilon-DP).

    Why a histogram: the cuts decide every customer's bin, so they must not depend on any one row
    more than DP allows. Replacing one customer's row moves one count down and one up: L1
    sensitivity 2, Laplace scale 2 / epsilon per cell (`NoiseSource.laplace`, the secret source);
    negative noisy counts are read as 0. The cells are fixed (public), the scores clipped to them."""
    edges = np.linspace(-HIST_LIMIT, HIST_LIMIT, HIST_BINS + 1)
    counts, _ = np.histogram(np.clip(scores, -HIST_LIMIT, HIST_LIMIT), bins=edges)
    noisy = np.maximum(counts + source.laplace(2.0 / epsilon, HIST_BINS), 0.0)
    cumulative = np.cumsum(noisy) / max(float(noisy.sum()), 1e-12)
    cells = np.searchsorted(cumulative, np.linspace(0.0, 1.0, k + 1)[1:-1])
    return np.asarray(edges[np.minimum(cells + 1, HIST_BINS)])


def one_hot(bins: np.ndarray, k: int) -> np.ndarray:
    """k - 1 indicator columns (bin 0 is the reference)."""
    return np.eye(k, dtype=np.float32)[bins][:, 1:]


@dataclass
class FeatureRelease:
    """The feature party: its encoded columns for the shared customers (in the agreed order) and its model."""

    name: str
    x: np.ndarray
    config: ReleaseConfig
    epsilon_spent: float | None = None  # per shared customer, after `bins` (model + cuts + randomized response)
    model: Any = field(default=None, repr=False)
    model_privacy: dict[str, Any] = field(default_factory=dict, repr=False)  # its DP-SGD model's record

    def bins(self, train_rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Fit on the released labels of `train_rows`, bin every shared customer's score, release the bins."""
        if len(labels) != len(train_rows):
            raise InputError(f"vertical: {len(labels)} released labels for {len(train_rows)} training customers")
        k, eps = self.config.k, self.config.epsilon
        if eps is None:
            self.model, _ = _fit(self.x[train_rows], labels, self.config)
            return quantile_bins(_logits(self.model, self.x), k)
        part = feature_split(eps)
        self.model, self.model_privacy = _fit(self.x[train_rows], labels, self.config, part["model"])
        source = secure_noise.source(None if self.config.insecure_seed is None else self.config.insecure_seed + 1)
        scores = _logits(self.model, self.x)
        bins = np.searchsorted(private_cuts(scores, k, part["cuts"], source), scores, side="right").astype(np.int64)
        answers, rr_eps = source.randomized_response(bins, k, part["rr"])
        self.epsilon_spent = float(self.model_privacy["epsilon"]) + part["cuts"] + rr_eps
        return answers


@dataclass
class LabelRelease:
    """The label party: its encoded columns and labels for the shared customers and its top model."""

    name: str
    x: np.ndarray
    y: np.ndarray
    config: ReleaseConfig
    epsilon_spent: float | None = None  # per training customer, after `labels`
    released: np.ndarray | None = field(default=None, repr=False)
    model: Any = field(default=None, repr=False)
    bins: list[np.ndarray] = field(default_factory=list, repr=False)  # one array per feature party

    def labels(self, train_rows: np.ndarray) -> np.ndarray:
        """The training customers' labels as released: by randomized response unless non-private."""
        y = np.asarray(self.y[train_rows], dtype=np.int64)
        eps = self.config.label_eps
        if eps is None:
            self.released = y
        else:
            source = secure_noise.source(self.config.insecure_seed)
            self.released, self.epsilon_spent = source.randomized_response(y, 2, eps)
        return self.released

    def fit(self, train_rows: np.ndarray, bins: list[np.ndarray]) -> None:
        """The top model on own columns + every feature party's received bins, with the labels it
        released (post-processing)."""
        k = self.config.k
        for b in bins:
            if len(b) != len(self.x) or (len(b) and (int(b.min()) < 0 or int(b.max()) >= k)):
                raise InputError(f"vertical: expected {len(self.x)} bins in [0, {k}) from each feature party")
        if self.released is None:
            raise InputError("vertical: the top model needs the labels released first")
        self.bins = list(bins)
        self.model, _ = _fit(self._inputs(train_rows), self.released, self.config)

    def _inputs(self, rows: np.ndarray) -> np.ndarray:
        k = self.config.k
        return np.concatenate([self.x[rows], *(one_hot(b[rows], k) for b in self.bins)], axis=1)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Churn probabilities of shared customers whose bins were released (no new message)."""
        if self.model is None:
            raise InputError("vertical: score before the top model was trained")
        return np.asarray(1.0 / (1.0 + np.exp(-_logits(self.model, self._inputs(rows)))))


def train(features: FeatureRelease | list[FeatureRelease], label: LabelRelease, train_rows: np.ndarray,
          channel: Channel) -> None:
    """The messages of a run, in order: per feature party the released labels down (ONE draw, the same
    array to each) and its released bins up; then the top model."""
    from federated.vertical.split import pack, unpack

    label.config.check()
    released = label.labels(train_rows).astype(np.int8)
    bins = []
    for feature in [features] if isinstance(features, FeatureRelease) else features:
        labels = unpack(channel.send(label.name, feature.name, "release.labels", pack(released)))
        answer = feature.bins(train_rows, labels.astype(np.int64)).astype(np.int16)
        bins.append(unpack(channel.send(feature.name, label.name, "release.bins", pack(answer))).astype(np.int64))
    label.fit(train_rows, bins)
