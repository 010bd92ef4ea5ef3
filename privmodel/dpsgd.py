"""DP-SGD for in-memory tabular data: Poisson sampling by Bernoulli mask, closed-form per-sample norms.

Why not Opacus' DataLoader + GradSampleModule loop: on small tabular models its per-batch Python
and DataLoader overhead dominates (and Poisson batches can come out empty and trip it). The data
already sits in memory as two tensors, so one step is:

1. Poisson sampling: each row joins the logical batch independently with probability q (a
   Bernoulli mask from `privmodel.secure_noise`); an empty batch is a legal outcome and yields a
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
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anonymize.errors import InputError
from privmodel import secure_noise

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
        self.layers: list[nn.Module] = []
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
        self.params: list[nn.Parameter] = []
        for layer in self.layers:
            self.params.append(layer.weight)
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                self.params.append(layer.bias)
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._outputs: dict[nn.Module, torch.Tensor] = {}
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module in self._outputs:
            raise InputError("dpsgd: a layer was called twice in one forward pass (weight sharing is not supported)")
        self._inputs[module] = args[0].detach()
        self._outputs[module] = output

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


def _as_tensors(data: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x_num = torch.as_tensor(np.ascontiguousarray(data.x_num), dtype=torch.float32)
    x_cat = torch.as_tensor(np.ascontiguousarray(data.x_cat), dtype=torch.int64)
    y_t = torch.as_tensor(np.asarray(y, dtype=np.float32).ravel())
    if y_t.shape[0] != x_num.shape[0]:
        raise InputError(f"train: {x_num.shape[0]} feature rows but {y_t.shape[0]} labels")
    return x_num, x_cat, y_t


def train_dp(
    model: nn.Module,
    data: Any,
    y: Any,
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
) -> TrainStats:
    """Run `steps` DP-SGD steps on `model` in place; returns what was executed.

    data: an `EncodedData` (x_num float [n, d], x_cat int [n, c]); y: 0/1 labels [n].
    The accountant's inputs are exactly (noise_multiplier, sample_rate, steps).
    noise: where the Poisson masks and the Gaussian noise come from; None = a fresh secure source.
    There is deliberately no seed: reproducible noise must be asked for by name (tests only).
    """
    if clipping not in CLIPPING_MODES:
        raise InputError(f"clipping {clipping!r} is not one of {', '.join(CLIPPING_MODES)}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if not (0.0 < sample_rate <= 1.0):
        raise InputError("sample_rate must be in (0, 1]")
    if steps < 0:
        raise InputError("steps must be non-negative")
    if not (noise_multiplier >= 0.0 and math.isfinite(noise_multiplier)):
        raise InputError("noise_multiplier must be a non-negative finite number")
    if max_grad_norm is not None and not (max_grad_norm > 0.0 and math.isfinite(max_grad_norm)):
        raise InputError("max_grad_norm must be positive (or None for the non-private baseline)")
    if noise_multiplier > 0.0 and max_grad_norm is None:
        raise InputError("noise without clipping protects nothing: give max_grad_norm")
    if physical_batch_size < 1:
        raise InputError("physical_batch_size must be at least 1")
    x_num, x_cat, y_t = _as_tensors(data, y)
    n = x_num.shape[0]
    if n == 0:
        raise InputError("train: no rows")

    clipper = PerSampleClipper(model)
    params = clipper.params
    if {id(p) for p in params} != {id(p) for p in model.parameters() if p.requires_grad}:
        clipper.close()
        raise InputError("dpsgd: every trainable parameter must belong to a Linear or Embedding layer")
    if max_grad_norm is None:
        bounds: Sequence[float] | float | None = None
    elif clipping == "flat":
        bounds = float(max_grad_norm)
    else:
        bounds = [float(max_grad_norm) / math.sqrt(len(params))] * len(params)
    noise_std = noise_multiplier * (max_grad_norm or 0.0)
    expected_batch = sample_rate * n
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    )
    source = noise if noise is not None else secure_noise.NoiseSource.secure()
    shapes = [p.shape for p in params]
    numels = [p.numel() for p in params]
    sums = [torch.zeros_like(p) for p in params]
    # Polyak-Ruppert tail averaging: the returned weights are the mean of the iterates after
    # `average_from * steps`. Pure post-processing of the private iterates (no privacy cost); it
    # averages out much of the injected noise at the end of training.
    avg_start = int(steps) if average_from is None else min(int(steps) - 1, int(average_from * steps))
    averages = [p.detach().clone() for p in params]
    averaged = 0
    empty = 0
    total_rows = 0
    max_rows = 0
    started = time.perf_counter()
    model.train()
    try:
        for step in range(int(steps)):
            mask = source.bernoulli_mask(n, sample_rate)
            idx = mask.nonzero().squeeze(1)
            rows = int(idx.shape[0])
            total_rows += rows
            max_rows = max(max_rows, rows)
            for acc in sums:
                acc.zero_()
            if rows == 0:
                empty += 1
            for chunk in idx.split(physical_batch_size):
                clipper.accumulate(model, x_num[chunk], x_cat[chunk], y_t[chunk], sums, bounds)
            if noise_std > 0.0:  # one draw for every coordinate of the step
                for acc, z, shape in zip(sums, source.gaussian(sum(numels), noise_std).split(numels),
                                         shapes, strict=True):
                    acc.add_(z.view(shape))
            for p, acc in zip(params, sums, strict=True):
                p.grad = acc / expected_batch
            opt.step()
            if step >= avg_start:
                averaged += 1
                with torch.no_grad():
                    for avg, p in zip(averages, params, strict=True):
                        avg.lerp_(p, 1.0 / averaged)
            if on_step is not None:
                on_step(step, model)
        if averaged:
            with torch.no_grad():
                for avg, p in zip(averages, params, strict=True):
                    p.copy_(avg)
    finally:
        clipper.close()
        for p in params:
            p.grad = None
    model.eval()
    return TrainStats(
        steps=int(steps),
        empty_steps=empty,
        mean_batch_size=total_rows / steps if steps else 0.0,
        max_batch_size=max_rows,
        sample_rate=float(sample_rate),
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        clipping=clipping if max_grad_norm is not None else "none",
        seconds=time.perf_counter() - started,
        noise=source.kind,
    )


def predict_logits(model: nn.Module, data: Any, chunk: int = 65536) -> np.ndarray:
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


def predict_proba(model: nn.Module, data: Any) -> np.ndarray:
    """P(y = 1) for encoded data, float64 [n]."""
    logits = predict_logits(model, data).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-logits))
