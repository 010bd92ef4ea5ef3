"""DP-SGD for in-memory tabular data: Poisson sampling by Bernoulli mask, closed-form per-sample norms.

Why not Opacus' DataLoader + GradSampleModule loop: on small tabular models its per-batch Python
and DataLoader overhead dominates (and Poisson batches can come out empty and trip it). The data
already sits in memory as two tensors, so one step is:

1. Poisson sampling: each row joins the logical batch independently with probability q (a
   Bernoulli mask from `privmodel.dp.secure_noise`); an empty batch is a legal outcome and yields a
   noise-only step, still counted.
2. Forward/backward on the batch (split into physical chunks when large), recording each
   `nn.Linear` / `nn.Embedding` layer's input A and output gradient G (hooks + autograd.grad
   w.r.t. the layer outputs; the loss is a sum, so row i of G is sample i's own gradient).
3. Per-sample gradient norms without materializing per-sample gradients ("ghost norms",
   Goodfellow 2015; Li et al. 2022): a Linear weight's per-sample gradient is the outer product
   G_i A_i^T, whose Frobenius norm is |G_i| |A_i|; its bias gradient is G_i; an Embedding's is G_i
   placed at row idx_i. Flat clipping scales sample i by min(1, C / |g_i|) over all parameters;
   per-layer clipping gives each parameter tensor the bound C / sqrt(P), so the total sensitivity
   is still C and the noise below is the same as for flat clipping (Opacus' convention).
4. The clipped sum is one matmul per Linear ((c * G)^T A) and one index_add per Embedding; add
   N(0, (sigma C)^2) noise per coordinate, divide by the EXPECTED batch size q n (not the realized
   one, which would leak the batch size), and take an optimizer step.

Secret randomness: the masks and the noise come from one `secure_noise.NoiseSource` per call, by
default keyed with fresh OS entropy that nothing written down can reproduce (a seeded generator
would let anyone who knows the other rows replay training and read off membership). Weight
initialisation is the caller's business (seeded: it is data-independent). A reproducible source
(`NoiseSource.insecure`) exists for tests only and makes the model NOT differentially private.

The accountant must be told exactly this: `steps` Poisson-sampled Gaussian steps at rate q with
noise multiplier sigma. noise_multiplier=0 with max_grad_norm=None is the non-private baseline on
the same code path (no clipping, no noise); noise without clipping is refused (unbounded
sensitivity).

Tests check the norms against torch.func per-sample gradients, the clipping bound and the noise
standard deviation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from anonymize.errors import InputError
from privmodel.dp import secure_noise
from privmodel.dp.networks import LogisticModel, centre

if TYPE_CHECKING:
    from privmodel.data.features import EncodedData

CLIPPING_MODES = ("flat", "per_layer")
OPTIMIZERS = ("adam", "sgd")
_NORM_EPS = 1e-6  # as in Opacus: scale = C / (norm + 1e-6)


@dataclass
class TrainStats:
    """What train_dp executed: the figures the accountant needs and what a reader wants to check."""

    steps: int
    empty_steps: int
    mean_batch_size: float
    max_batch_size: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float | None
    clipping: str
    seconds: float
    noise: str = secure_noise.SECURE  # the NoiseSource kind: "secure" or "INSECURE-reproducible"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerSampleClipper:
    """Records layer inputs/outputs of a Linear/Embedding-only model; returns clipped gradient sums."""

    def __init__(self, model: nn.Module) -> None:
        self.layers: list[nn.Linear | nn.Embedding] = []
        covered: set[int] = set()
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                if module.padding_idx is not None or module.max_norm is not None or module.sparse:
                    raise InputError("dpsgd: embeddings with padding_idx, max_norm or sparse gradients are not supported")
            elif not isinstance(module, nn.Linear):
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    raise InputError(f"dpsgd: layer type {type(module).__name__} has no per-sample gradient rule")
                continue
            self.layers.append(module)
            covered.update(id(p) for p in module.parameters(recurse=False))
        if not self.layers:
            raise InputError("dpsgd: model has no trainable Linear or Embedding layer")
        self.params: list[torch.Tensor] = []
        for layer in self.layers:
            self.params.append(layer.weight)
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                self.params.append(layer.bias)
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._outputs: dict[nn.Module, torch.Tensor] = {}
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        # the logistic model (numeric inputs, a biased linear layer, 1-wide embeddings) has a closed form
        self.logistic = (model if isinstance(model, LogisticModel) and model.linear is not None
                         and model.linear.bias is not None else None)

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module in self._outputs:
            raise InputError("dpsgd: a layer was called twice in one forward pass (weight sharing is not supported)")
        self._inputs[module] = args[0].detach()
        self._outputs[module] = output

    def _accumulate_logistic(self, model: LogisticModel, x_num: torch.Tensor, x_cat: torch.Tensor, y: torch.Tensor,
                             sums: Sequence[torch.Tensor], bounds: Sequence[float] | float | None) -> torch.Tensor:
        """`accumulate` for the logistic model without autograd: the gradient of the summed
        log-loss with respect to every layer's output is the same column r = sigmoid(z) - y, so each
        per-sample gradient (and norm) is r times the layer's input; the same figures as the hooks
        and `autograd.grad` give (tests compare them), at a third of the time per step."""
        assert model.linear is not None
        embeddings = cast("list[nn.Embedding]", list(model.embeddings))  # a ModuleList of Embedding only
        with torch.no_grad():
            a = centre(x_num)
            z = F.linear(a, model.linear.weight, model.linear.bias).squeeze(-1)
            for j, emb in enumerate(embeddings):
                z = z + F.embedding(x_cat[:, j], emb.weight).squeeze(-1)
            r = (torch.sigmoid(z) - y).unsqueeze(1)
            g_sq = r.pow(2).sum(1)
            sq_norms = [g_sq * a.pow(2).sum(1), g_sq] + [g_sq] * len(embeddings)
            total = torch.stack(sq_norms).sum(0).sqrt()
            if bounds is None:
                scales: list[torch.Tensor | None] = [None] * len(sq_norms)
            elif isinstance(bounds, int | float):
                scales = [(float(bounds) / (total + _NORM_EPS)).clamp(max=1.0)] * len(sq_norms)
            else:
                scales = [(float(b) / (sq.sqrt() + _NORM_EPS)).clamp(max=1.0)
                          for b, sq in zip(bounds, sq_norms, strict=True)]
            clipped = [r if scale is None else r * scale.unsqueeze(1) for scale in scales]
            sums[0].add_(clipped[0].t() @ a)
            sums[1].add_(clipped[1].sum(0))
            for j, (gs, acc) in enumerate(zip(clipped[2:], sums[2:], strict=True)):
                acc.index_add_(0, x_cat[:, j], gs)
        return total

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def accumulate(
        self,
        model: nn.Module,
        x_num: torch.Tensor,
        x_cat: torch.Tensor,
        y: torch.Tensor,
        sums: Sequence[torch.Tensor],
        bounds: Sequence[float] | float | None,
    ) -> torch.Tensor:
        """Add the (clipped) per-sample gradients of this chunk into `sums`; return per-sample norms.

        `bounds`: None (no clipping), a float (flat clipping bound) or one bound per parameter.
        """
        if self.logistic is not None:
            return self._accumulate_logistic(self.logistic, x_num, x_cat, y, sums, bounds)
        self._inputs.clear()
        self._outputs.clear()
        try:
            logits = model(x_num, x_cat)
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
            outs = [self._outputs[layer] for layer in self.layers]
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
        finally:
            self._outputs.clear()
        batch = x_num.shape[0]
        # per-parameter list of (kind, A or idx, G) and per-sample squared norms
        pieces: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        sq_norms: list[torch.Tensor] = []
        for layer, g in zip(self.layers, grads, strict=True):
            a = self._inputs[layer]
            if g is None:
                width = layer.out_features if isinstance(layer, nn.Linear) else layer.embedding_dim
                g = torch.zeros(batch, width, dtype=torch.float32)
            if a.dim() != (2 if isinstance(layer, nn.Linear) else 1):
                raise InputError("dpsgd: layers must see one input row (or one index) per sample")
            g_sq = g.pow(2).sum(1)
            if isinstance(layer, nn.Linear):
                pieces.append(("weight", a, g))
                sq_norms.append(g_sq * a.pow(2).sum(1))
                if layer.bias is not None:
                    pieces.append(("bias", a, g))
                    sq_norms.append(g_sq)
            else:
                pieces.append(("embedding", a, g))
                sq_norms.append(g_sq)
        self._inputs.clear()
        total = torch.stack(sq_norms).sum(0).sqrt()
        if bounds is None:
            scales: list[torch.Tensor | None] = [None] * len(pieces)
        elif isinstance(bounds, int | float):
            flat = (float(bounds) / (total + _NORM_EPS)).clamp(max=1.0)
            scales = [flat] * len(pieces)
        else:
            scales = [(float(b) / (sq.sqrt() + _NORM_EPS)).clamp(max=1.0)
                      for b, sq in zip(bounds, sq_norms, strict=True)]
        for (kind, a, g), scale, acc in zip(pieces, scales, sums, strict=True):
            gs = g if scale is None else g * scale.unsqueeze(1)
            if kind == "weight":
                acc.add_(gs.t() @ a)
            elif kind == "bias":
                acc.add_(gs.sum(0))
            else:
                acc.index_add_(0, a, gs)
        return total


def _as_tensors(data: EncodedData, y: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_num = torch.as_tensor(np.ascontiguousarray(data.x_num), dtype=torch.float32)
    x_cat = torch.as_tensor(np.ascontiguousarray(data.x_cat), dtype=torch.int64)
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float32).ravel())
    if y_t.shape[0] != x_num.shape[0]:
        raise InputError(f"train: {x_num.shape[0]} feature rows but {y_t.shape[0]} labels")
    return x_num, x_cat, y_t


@dataclass(frozen=True)
class DPParams:
    """The figures that make a run DP: the accountant's (sigma, q, steps) and the clipping rule.

    Why one record: these five values are what the privacy claim rests on, so they are checked
    together and nothing else in `train_dp` (learning rate, optimizer, chunking) can change them.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float | None
    clipping: str = "flat"

    def check(self) -> None:
        """Refuse values for which the accountant's figure would not describe the run."""
        if not (0.0 < self.sample_rate <= 1.0):
            raise InputError("sample_rate must be in (0, 1]")
        if self.steps < 0:
            raise InputError("steps must be non-negative")
        if not (self.noise_multiplier >= 0.0 and math.isfinite(self.noise_multiplier)):
            raise InputError("noise_multiplier must be a non-negative finite number")
        if self.max_grad_norm is not None and not (self.max_grad_norm > 0.0 and math.isfinite(self.max_grad_norm)):
            raise InputError("max_grad_norm must be positive (or None for the non-private baseline)")
        if self.noise_multiplier > 0.0 and self.max_grad_norm is None:
            raise InputError("noise without clipping protects nothing: give max_grad_norm")

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise per coordinate of the gradient sum."""
        return self.noise_multiplier * (self.max_grad_norm or 0.0)

    def bounds(self, n_params: int) -> Sequence[float] | float | None:
        """Clipping bounds for `PerSampleClipper.accumulate`; per-layer bounds keep the total at C."""
        if self.max_grad_norm is None:
            return None
        if self.clipping == "flat":
            return float(self.max_grad_norm)
        return [float(self.max_grad_norm) / math.sqrt(n_params)] * n_params


def _check_options(dp: DPParams, optimizer: str, physical_batch_size: int) -> None:
    if dp.clipping not in CLIPPING_MODES:
        raise InputError(f"clipping {dp.clipping!r} is not one of {', '.join(CLIPPING_MODES)}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    dp.check()
    if physical_batch_size < 1:
        raise InputError("physical_batch_size must be at least 1")


def _clipper_for(model: nn.Module) -> PerSampleClipper:
    """A clipper that sees every trainable parameter: one it missed would train without noise."""
    clipper = PerSampleClipper(model)
    if {id(p) for p in clipper.params} != {id(p) for p in model.parameters() if p.requires_grad}:
        clipper.close()
        raise InputError("dpsgd: every trainable parameter must belong to a Linear or Embedding layer")
    return clipper


def _make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class _TailAverage:
    """Polyak-Ruppert tail averaging: the returned weights are the mean of the iterates after
    `average_from * steps`. Pure post-processing of the private iterates (no privacy cost); it
    averages out much of the injected noise at the end of training."""

    def __init__(self, params: list[torch.Tensor], steps: int, average_from: float | None) -> None:
        self.start = int(steps) if average_from is None else min(int(steps) - 1, int(average_from * steps))
        self.averages = [p.detach().clone() for p in params]
        self.count = 0

    def update(self, step: int, params: list[torch.Tensor]) -> None:
        if step < self.start:
            return
        self.count += 1
        with torch.no_grad():
            for avg, p in zip(self.averages, params, strict=True):
                avg.lerp_(p, 1.0 / self.count)

    def apply(self, params: list[torch.Tensor]) -> None:
        """Write the average into the parameters (nothing when no step was averaged)."""
        if not self.count:
            return
        with torch.no_grad():
            for avg, p in zip(self.averages, params, strict=True):
                p.copy_(avg)


@dataclass
class _BatchTally:
    """Realised batch sizes, for TrainStats (never for the accountant, which uses q)."""

    empty: int = 0
    total_rows: int = 0
    max_rows: int = 0

    def add(self, rows: int) -> None:
        self.total_rows += rows
        self.max_rows = max(self.max_rows, rows)
        if rows == 0:
            self.empty += 1


class _DPStep:
    """One DP-SGD step: Poisson batch, clipped per-sample gradient sum, Gaussian noise, optimizer step."""

    def __init__(self, model: nn.Module, clipper: PerSampleClipper,
                 tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor], dp: DPParams,
                 source: secure_noise.NoiseSource, opt: torch.optim.Optimizer, physical_batch_size: int,
                 rows: torch.Tensor | None = None) -> None:
        self.model, self.clipper, self.source, self.opt = model, clipper, source, opt
        self.x_num, self.x_cat, self.y = tensors
        # `rows`: the positions of the training rows in the arrays (a memory-mapped table holds the
        # held-out rows too); the Poisson mask is over them, and the sampled ones are read by index
        self.rows = rows
        self.n = self.x_num.shape[0] if rows is None else int(rows.shape[0])
        self.sample_rate = dp.sample_rate
        self.physical_batch_size = physical_batch_size
        self.params = clipper.params
        self.bounds = dp.bounds(len(self.params))
        self.noise_std = dp.noise_std
        # divide by the EXPECTED batch size: the realised one would leak how many rows were drawn
        self.expected_batch = dp.sample_rate * self.n
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.sums = [torch.zeros_like(p) for p in self.params]

    def __call__(self) -> int:
        """Take the step; returns the realised batch size."""
        idx = torch.from_numpy(self.source.poisson_positions(self.n, self.sample_rate))
        if self.rows is not None:
            idx = self.rows.index_select(0, idx)
        for acc in self.sums:
            acc.zero_()
        for chunk in torch.split(idx, self.physical_batch_size):
            # index_select gathers the rows ~4x faster than advanced indexing
            self.clipper.accumulate(self.model, self.x_num.index_select(0, chunk), self.x_cat.index_select(0, chunk),
                                    self.y.index_select(0, chunk), self.sums, self.bounds)
        self._add_noise()
        for p, acc in zip(self.params, self.sums, strict=True):
            p.grad = acc / self.expected_batch
        self.opt.step()
        return int(idx.shape[0])

    def _add_noise(self) -> None:
        if self.noise_std <= 0.0:
            return
        draws = torch.split(self.source.gaussian(sum(self.numels), self.noise_std), self.numels)  # one draw per step
        for acc, z, shape in zip(self.sums, draws, self.shapes, strict=True):
            acc.add_(z.view(shape))


def train_dp(
    model: nn.Module,
    data: EncodedData,
    y: npt.ArrayLike,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float | None,
    clipping: str = "flat",
    lr: float = 0.01,
    *,
    noise: secure_noise.NoiseSource | None = None,
    optimizer: str = "adam",
    physical_batch_size: int = 8192,
    average_from: float | None = 0.5,
    on_step: Callable[[int, nn.Module], None] | None = None,
    rows: npt.NDArray[np.int64] | None = None,
) -> TrainStats:
    """Run `steps` DP-SGD steps on `model` in place; returns what was executed.

    data: an `EncodedData` (x_num float [n, d], x_cat int [n, c]); y: 0/1 labels [n].
    The accountant's inputs are exactly (noise_multiplier, sample_rate, steps) (see `DPParams`).
    noise: where the Poisson masks and the Gaussian noise come from; None = a fresh secure source.
    There is deliberately no seed: reproducible noise must be asked for by name (tests only).
    rows: train on these positions of `data` / `y` only (sorted, distinct; None = every row): the
    arrays may be memory-mapped over a whole table, and only the sampled rows are ever read.
    """
    dp = DPParams(noise_multiplier, sample_rate, steps, max_grad_norm, clipping)
    _check_options(dp, optimizer, physical_batch_size)
    tensors = _as_tensors(data, y)
    positions = None if rows is None else torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    if positions is not None and positions.numel() and not (
            int(positions.min()) >= 0 and int(positions.max()) < tensors[0].shape[0]):
        raise InputError("train: row positions outside the table")
    if (tensors[0].shape[0] if positions is None else positions.numel()) == 0:
        raise InputError("train: no rows")
    clipper = _clipper_for(model)
    params = clipper.params
    opt = _make_optimizer(optimizer, params, lr)
    source = noise if noise is not None else secure_noise.NoiseSource.secure()
    dp_step = _DPStep(model, clipper, tensors, dp, source, opt, physical_batch_size, positions)
    average = _TailAverage(params, steps, average_from)
    tally = _BatchTally()
    started = time.perf_counter()
    model.train()
    threads = torch.get_num_threads()
    # one intra-op thread: a step's tensors are small, and torch's threads spin idle on a busy machine
    # (measured on the 2-core machine: 44 ms a step instead of 235 ms at 750k rows, batch 8192)
    torch.set_num_threads(1)
    try:
        for step in range(int(steps)):
            tally.add(dp_step())
            average.update(step, params)
            if on_step is not None:
                on_step(step, model)
        average.apply(params)
    finally:
        torch.set_num_threads(threads)
        clipper.close()
        for p in params:
            p.grad = None
    model.eval()
    return _stats(dp, tally, time.perf_counter() - started, source.kind)


def _stats(dp: DPParams, tally: _BatchTally, seconds: float, noise_kind: str) -> TrainStats:
    return TrainStats(
        steps=int(dp.steps),
        empty_steps=tally.empty,
        mean_batch_size=tally.total_rows / dp.steps if dp.steps else 0.0,
        max_batch_size=tally.max_rows,
        sample_rate=float(dp.sample_rate),
        noise_multiplier=float(dp.noise_multiplier),
        max_grad_norm=None if dp.max_grad_norm is None else float(dp.max_grad_norm),
        clipping=dp.clipping if dp.max_grad_norm is not None else "none",
        seconds=seconds,
        noise=noise_kind,
    )


def predict_logits(model: nn.Module, data: EncodedData, chunk: int = 65536) -> npt.NDArray[np.float32]:
    """Logits for encoded data, in chunks, without gradients."""
    x_num = torch.as_tensor(np.ascontiguousarray(data.x_num), dtype=torch.float32)
    x_cat = torch.as_tensor(np.ascontiguousarray(data.x_cat), dtype=torch.int64)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x_num.shape[0], chunk):
            out.append(model(x_num[start:start + chunk], x_cat[start:start + chunk]))
    if not out:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(out).numpy()


def predict_proba(model: nn.Module, data: EncodedData) -> npt.NDArray[np.float64]:
    """P(y = 1) for encoded data, float64 [n]."""
    logits = predict_logits(model, data).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))
