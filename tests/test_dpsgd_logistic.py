"""The logistic model's closed-form per-sample gradients equal the generic hooks + autograd path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privmodel.dp import dpsgd
from privmodel.dp.networks import build_model


@pytest.mark.parametrize("bounds", [None, 0.5, 2.0, "per-layer"])
def test_closed_form_sums_and_norms_equal_the_generic_path(bounds: object) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, cards = 700, [3, 40, 5]
    model = build_model("logreg", 4, [c + 1 for c in cards])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # away from the zero start, so every term matters
    x_num = torch.as_tensor(rng.random((n, 4), dtype=np.float32))
    x_cat = torch.as_tensor(np.stack([rng.integers(0, c + 1, n) for c in cards], 1))
    y = torch.as_tensor((rng.random(n) < 0.3).astype(np.float32))
    clipper = dpsgd._clipper_for(model)
    assert clipper.logistic is model
    chosen = [0.3, 0.1, 0.2, 0.4, 0.5] if bounds == "per-layer" else bounds
    fast = [torch.zeros_like(p) for p in clipper.params]
    norms_fast = clipper.accumulate(model, x_num, x_cat, y, fast, chosen)  # type: ignore[arg-type]
    clipper.logistic = None  # the generic path: forward hooks and autograd.grad
    slow = [torch.zeros_like(p) for p in clipper.params]
    norms_slow = clipper.accumulate(model, x_num, x_cat, y, slow, chosen)  # type: ignore[arg-type]
    clipper.close()
    assert torch.allclose(norms_fast, norms_slow, rtol=1e-5, atol=1e-7)
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(s.abs().sum() > 0 for s in fast)


def test_mlp_and_bias_only_models_keep_the_generic_path() -> None:
    assert dpsgd._clipper_for(build_model("mlp", 3, [4], hidden=(4,))).logistic is None
    assert dpsgd._clipper_for(build_model("logreg", 0, [4, 3])).logistic is None
