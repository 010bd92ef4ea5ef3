"""Propensity models for encoded tabular data: logistic regression and an MLP with embeddings.

Both are built from `nn.Linear` and `nn.Embedding` only, each called once per forward on a
[batch, ...] input. That restriction is what lets `privmodel.dp.dpsgd` compute every per-sample
gradient norm in closed form from the layer's input and output gradient (no per-sample gradient
tensor is materialized), which is where its speed comes from.

Numeric inputs arrive in [0, 1] from the encoder and are mapped to [-1, 1] (`centre`).

* "logreg": logit = w . x_num + sum_j W_j[x_cat_j] + b. The one-column embeddings are exactly
  the weights of a one-hot encoding (slot 0 = unknown), so this IS logistic regression on
  [numeric, one-hot categoricals]; embeddings start at zero like the other weights would.
* "mlp": z = concat(x_num, embeddings); h = (Linear -> ReLU) x len(hidden); logit = Linear([h, z]).
  The output layer also sees z ("wide & deep"): under DP noise the linear part is learnt directly
  rather than through the hidden layers (Telco, epsilon = 1, 5 seeds: ROC-AUC 0.838 -> 0.839).
  Embedding width is min(16, ceil(cardinality / 2)), a common rule of thumb.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict, cast

import torch
from torch import nn

from anonymize.errors import InputError

MODEL_KINDS = ("logreg", "mlp")


def centre(x_num: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: a fixed preconditioning, not a learned or data-derived transform.

    The encoder scales by PUBLIC bounds to [0, 1]; centring on the bounds' midpoint decorrelates
    the weights from the bias, and doubling the range gives numeric features a larger share of a
    clipped gradient against one-hot inputs (0/1). On Telco at epsilon = 1 this moved the DP
    logistic regression's ROC-AUC from 0.837 to 0.839 (5 seeds). The model class is unchanged (an
    affine reparametrization); only the optimization geometry differs.
    """
    return x_num * 2.0 - 1.0


def embedding_dim(cardinality: int) -> int:
    return max(1, min(16, math.ceil(cardinality / 2)))


class LogisticModel(nn.Module):
    """Logistic regression over numeric inputs and one-hot categoricals (as 1-wide embeddings)."""

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int]) -> None:
        super().__init__()
        self.n_num = n_num
        self.cat_cardinalities = list(cat_cardinalities)
        self.linear = nn.Linear(n_num, 1) if n_num else None
        self.bias = None if n_num else nn.Linear(1, 1)  # a bias lives in the linear layer when there is one
        self.embeddings = nn.ModuleList(nn.Embedding(c, 1) for c in self.cat_cardinalities)
        with torch.no_grad():
            if self.linear is not None:
                self.linear.weight.zero_()
                self.linear.bias.zero_()
            for emb in self._embeddings():
                emb.weight.zero_()

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        if self.linear is not None:
            logit = self.linear(centre(x_num)).squeeze(-1)
        else:
            bias = cast(nn.Linear, self.bias)  # set exactly when there is no linear layer
            logit = bias(torch.ones(x_cat.shape[0], 1, dtype=torch.float32)).squeeze(-1)
        for j, emb in enumerate(self._embeddings()):
            logit = logit + emb(x_cat[:, j]).squeeze(-1)
        return logit

    def _embeddings(self) -> list[nn.Embedding]:
        return cast("list[nn.Embedding]", self.embeddings)  # a ModuleList of Embedding only


class MLPModel(nn.Module):
    """MLP over numeric inputs and learned embeddings of the categoricals."""

    def __init__(self, n_num: int, cat_cardinalities: Sequence[int], hidden: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.n_num = n_num
        self.cat_cardinalities = list(cat_cardinalities)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in self.cat_cardinalities)
        width = n_num + sum(embedding_dim(c) for c in self.cat_cardinalities)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        # wide & deep head: the output layer sees the hidden features AND the inputs, so the
        # linear (logistic) part is learnt directly instead of through the hidden layers
        self.head = nn.Linear(width + n_num + sum(embedding_dim(c) for c in self.cat_cardinalities), 1)
        with torch.no_grad():
            for emb in cast("list[nn.Embedding]", self.embeddings):
                emb.weight.normal_(0.0, 0.1)  # small start: N(0, 1) embeddings swamp [0, 1] inputs

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        embeddings = cast("list[nn.Embedding]", self.embeddings)  # a ModuleList of Embedding only
        parts = [centre(x_num)] + [emb(x_cat[:, j]) for j, emb in enumerate(embeddings)]
        z = torch.cat(parts, dim=1)
        return self.head(torch.cat([self.body(z), z], dim=1)).squeeze(-1)


def build_model(
    kind: str, n_num: int, cat_cardinalities: Sequence[int], hidden: Sequence[int] = (64, 32)
) -> nn.Module:
    """A fresh model; seed it by calling under `torch.manual_seed` (training.fit does so)."""
    if kind not in MODEL_KINDS:
        raise InputError(f"model {kind!r} is not one of {', '.join(MODEL_KINDS)}")
    if n_num < 0 or any(int(c) < 1 for c in cat_cardinalities):
        raise InputError("model: feature counts must be non-negative and cardinalities positive")
    if n_num == 0 and not cat_cardinalities:
        raise InputError("model: no input features")
    if kind == "logreg":
        return LogisticModel(n_num, cat_cardinalities)
    if not hidden or any(int(h) < 1 for h in hidden):
        raise InputError("model: hidden layer sizes must be positive integers")
    return MLPModel(n_num, cat_cardinalities, hidden)


class ModelSpec(TypedDict):
    """The architecture as saved beside the weights (model.json "architecture")."""

    kind: str
    n_num: int
    cat_cardinalities: list[int]
    hidden: list[int]


def model_spec(model: nn.Module) -> ModelSpec:
    """What build_model needs to rebuild `model` (saved next to its weights)."""
    if isinstance(model, LogisticModel):
        return {"kind": "logreg", "n_num": model.n_num, "cat_cardinalities": model.cat_cardinalities, "hidden": []}
    if isinstance(model, MLPModel):
        hidden = [m.out_features for m in model.body if isinstance(m, nn.Linear)]
        return {"kind": "mlp", "n_num": model.n_num, "cat_cardinalities": model.cat_cardinalities, "hidden": hidden}
    raise InputError("model: not built by privmodel.dp.networks.build_model")
