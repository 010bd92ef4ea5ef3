"""DP-SGD mechanics: per-sample norms, the clipping bound, the noise, empty batches, secret noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

from anonymize.errors import InputError
from privmodel.data.features import EncodedData
from privmodel.dp import secure_noise
from privmodel.dp.dpsgd import PerSampleClipper, train_dp
from privmodel.dp.networks import build_model
from privmodel.dp.training import TrainConfig, fit

torch.set_num_threads(1)


def _data(n: int = 64, seed: int = 0) -> tuple[EncodedData, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_num = rng.random((n, 3), dtype=np.float32)
    x_cat = np.stack([rng.integers(0, 4, n), rng.integers(0, 3, n)], axis=1).astype(np.int64)
    logit = 3 * x_num[:, 0] - 2 * x_num[:, 1] + (x_cat[:, 0] == 2) - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return EncodedData(x_num, x_cat, [4, 3], ["a", "b", "c"], ["u", "v"]), y


def _per_sample_grads(model: torch.nn.Module, params: list, data: EncodedData, y: np.ndarray) -> list[torch.Tensor]:
    """Reference per-sample gradients from torch.func (an independent computation)."""
    names = {id(p): name for name, p in model.named_parameters()}
    pdict = {names[id(p)]: p.detach() for p in params}

    def loss(ps, xn, xc, t):
        logit = functional_call(model, ps, (xn.unsqueeze(0), xc.unsqueeze(0)))
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, t.unsqueeze(0), reduction="sum")

    g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(
        pdict, torch.from_numpy(data.x_num), torch.from_numpy(data.x_cat), torch.from_numpy(y)
    )
    return [g[names[id(p)]] for p in params]


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
@pytest.mark.parametrize("clipping", ["flat", "per_layer", None])
def test_clipped_sums_match_torch_func(kind: str, clipping: str | None) -> None:
    data, y = _data()
    torch.manual_seed(1)
    model = build_model(kind, 3, [4, 3], hidden=(8, 5))
    if kind == "logreg":  # zero init would make the test trivial
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    clipper = PerSampleClipper(model)
    params = clipper.params
    per_sample = _per_sample_grads(model, params, data, y)
    flat_norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample))
    C = 0.5
    if clipping is None:
        bounds, scales = None, [torch.ones(len(y))] * len(params)
    elif clipping == "flat":
        bounds = C
        scales = [(C / (flat_norms + 1e-6)).clamp(max=1.0)] * len(params)
    else:
        bounds = [C / np.sqrt(len(params))] * len(params)
        scales = [(b / (g.flatten(1).norm(dim=1) + 1e-6)).clamp(max=1.0) for b, g in zip(bounds, per_sample, strict=True)]
    sums = [torch.zeros_like(p) for p in params]
    norms = clipper.accumulate(model, torch.from_numpy(data.x_num), torch.from_numpy(data.x_cat),
                               torch.from_numpy(y), sums, bounds)
    clipper.close()
    torch.testing.assert_close(norms, flat_norms, rtol=1e-4, atol=1e-6)
    for got, g, s in zip(sums, per_sample, scales, strict=True):
        expected = (g * s.view(-1, *([1] * (g.dim() - 1)))).sum(0)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (flat_norms > C).any()  # the test exercises clipping


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_each_sample_contributes_at_most_the_bound(clipping: str) -> None:
    data, y = _data(n=20)
    torch.manual_seed(2)
    model = build_model("mlp", 3, [4, 3], hidden=(8,))
    clipper = PerSampleClipper(model)
    C = 0.3
    P = len(clipper.params)
    bounds = C if clipping == "flat" else [C / np.sqrt(P)] * P
    for i in range(len(y)):
        sums = [torch.zeros_like(p) for p in clipper.params]
        raw = clipper.accumulate(model, torch.from_numpy(data.x_num[i:i + 1]), torch.from_numpy(data.x_cat[i:i + 1]),
                                 torch.from_numpy(y[i:i + 1]), sums, bounds)
        total = torch.sqrt(sum(s.pow(2).sum() for s in sums))
        assert total <= C * (1 + 1e-5)
        if raw.item() < C * 0.99 and clipping == "flat":
            assert total == pytest.approx(raw.item(), rel=1e-4)  # small gradients are not scaled
        if clipping == "per_layer":
            for s, b in zip(sums, bounds, strict=True):
                assert s.norm() <= b * (1 + 1e-5)
    clipper.close()


def test_noise_std_and_empty_batches() -> None:
    """With (almost) only empty Poisson batches, each step's update is pure noise / (q n)."""
    data, y = _data(n=10)
    torch.manual_seed(0)
    model = build_model("logreg", 3, [4, 3])
    q, sigma, C, lr, steps = 1e-3, 2.0, 1.5, 1.0, 1500
    snapshots: list[torch.Tensor] = []

    def record(step: int, m: torch.nn.Module) -> None:
        snapshots.append(torch.cat([p.detach().flatten().clone() for p in m.parameters()]))

    stats = train_dp(model, data, y, sigma, q, steps, C, lr=lr, noise=secure_noise.NoiseSource.insecure(3),
                     optimizer="sgd", average_from=None, on_step=record)
    assert stats.steps == steps
    assert stats.empty_steps >= 0.97 * steps  # P(empty) = (1 - q)^10 ~ 0.99
    deltas = torch.diff(torch.stack(snapshots), dim=0)
    expected = lr * sigma * C / (q * len(y))
    assert deltas.std().item() == pytest.approx(expected, rel=0.05)
    assert deltas.mean().abs().item() < 0.05 * expected


def test_non_private_path_is_the_plain_gradient() -> None:
    data, y = _data()
    torch.manual_seed(4)
    model = build_model("mlp", 3, [4, 3], hidden=(6,))
    clipper = PerSampleClipper(model)
    sums = [torch.zeros_like(p) for p in clipper.params]
    xn, xc, t = torch.from_numpy(data.x_num), torch.from_numpy(data.x_cat), torch.from_numpy(y)
    clipper.accumulate(model, xn, xc, t, sums, None)
    clipper.close()
    model.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(xn, xc), t, reduction="sum").backward()
    for s, p in zip(sums, clipper.params, strict=True):
        torch.testing.assert_close(s, p.grad, rtol=1e-5, atol=1e-6)


def test_train_dp_refuses_noise_without_clipping_and_bad_modes() -> None:
    data, y = _data()
    model = build_model("logreg", 3, [4, 3])
    with pytest.raises(InputError):
        train_dp(model, data, y, 1.0, 0.1, 10, None)
    with pytest.raises(InputError):
        train_dp(model, data, y, 1.0, 0.1, 10, 1.0, clipping="ghost")
    with pytest.raises(InputError):
        train_dp(model, data, y, 1.0, 0.0, 10, 1.0)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_insecure_seed_reproduces_the_mechanics_and_says_so() -> None:
    """The test-only switch: same insecure_seed -> bit-identical model, recorded as INSECURE."""
    data, y = _data(n=400)
    cfg = TrainConfig(model="mlp", epsilon=2.0, epochs=3, batch_size=64, hidden=(8,), seed=11, accountant="rdp",
                      insecure_seed=5)
    a, b = fit(data, y, cfg), fit(data, y, cfg)
    assert _same_weights(a.model, b.model)
    assert a.privacy["noise"] == b.privacy["noise"] == "INSECURE-reproducible"
    assert a.stats["noise"] == "INSECURE-reproducible"
    c = fit(data, y, cfg.model_copy(update={"insecure_seed": 6}))  # other noise, same init
    assert not _same_weights(a.model, c.model)
    d = fit(data, y, cfg.model_copy(update={"seed": 12}))  # same noise, other init
    assert not torch.equal(a.model.body[0].weight, d.model.body[0].weight)


def test_a_seed_replay_reproduces_nothing() -> None:
    """Finding 1 of issue 10: re-running with the card's settings (seed included) must not give the
    same model, because the masks and the noise are secret; weight init stays seeded."""
    data, y = _data(n=400)
    cfg = TrainConfig(model="mlp", epsilon=2.0, epochs=3, batch_size=64, hidden=(8,), seed=11, accountant="rdp")
    a, b = fit(data, y, cfg), fit(data, y, cfg)
    assert a.privacy["noise"] == b.privacy["noise"] == "secure"
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert not torch.equal(pa, pb)  # every tensor differs, not just one
    # the noise itself differs: same model and data, two runs of pure-noise steps (q tiny)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("logreg", 3, [4, 3])
        train_dp(model, data, y, 1.0, 1e-6, 3, 1.0, lr=1.0, optimizer="sgd", average_from=None)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(runs[0], runs[1])
    # weight initialisation is still governed by the seed: a non-private full-batch run (no noise,
    # every row in every step) is bit-identical under the same seed and differs under another
    base = TrainConfig(model="mlp", epsilon=None, epochs=3, batch_size=400, hidden=(8,), seed=11)
    e, f = fit(data, y, base), fit(data, y, base)
    assert e.privacy["sample_rate"] == 1.0 and _same_weights(e.model, f.model)
    g = fit(data, y, base.model_copy(update={"seed": 12}))
    assert not _same_weights(e.model, g.model)


def test_fit_accounts_what_ran() -> None:
    data, y = _data(n=400)
    cfg = TrainConfig(model="mlp", epsilon=2.0, epochs=3, batch_size=64, hidden=(8,), seed=11, accountant="rdp")
    a = fit(data, y, cfg)
    p = a.privacy
    assert p["steps"] == round(3 / (64 / 400)) and p["sample_rate"] == pytest.approx(64 / 400)
    assert p["delta"] == pytest.approx(min(1e-6, 1 / 4000))  # privmodel.core.defaults: min(1e-6, 1/(10 n))
    assert 0.98 * 2.0 <= p["epsilon"] <= 2.0
    assert a.epsilon_history[-1]["epsilon"] == pytest.approx(p["epsilon"])
    assert [h["epsilon"] for h in a.epsilon_history] == sorted(h["epsilon"] for h in a.epsilon_history)


def test_dp_model_learns_and_baseline_is_same_path() -> None:
    from sklearn.metrics import roc_auc_score

    data, y = _data(n=4000, seed=5)
    test, y_test = _data(n=2000, seed=6)
    dp = fit(data, y, TrainConfig(epsilon=1.0, epochs=5, batch_size=500, lr=0.1, accountant="rdp"))
    base = fit(data, y, TrainConfig(epsilon=None, epochs=5, batch_size=500, lr=0.1))
    assert base.privacy["private"] is False and base.privacy["noise_multiplier"] == 0.0
    assert dp.privacy["noise_multiplier"] > 0.5
    auc_dp = roc_auc_score(y_test, dp.predict_proba(test))
    auc_base = roc_auc_score(y_test, base.predict_proba(test))
    assert auc_base > 0.75 and auc_dp > auc_base - 0.05


@pytest.mark.parametrize(
    ("update", "labels"),
    [
        ({"epsilon": 0.0}, None),
        ({"epsilon": -1.0}, None),
        ({"delta": 1 / 400}, None),  # delta must be below 1/n
        ({}, "single"),
        ({}, "ternary"),
        ({}, "nan"),
    ],
)
def test_fit_rejects_bad_input(update: dict, labels: str | None) -> None:
    data, y = _data(n=400)
    if labels == "single":
        y = np.ones_like(y)
    elif labels == "ternary":
        y = y.copy()
        y[5] = 2.0
    elif labels == "nan":
        y = y.copy()
        y[7] = np.nan
    with pytest.raises(InputError):
        fit(data, y, TrainConfig(epochs=1, batch_size=100, accountant="rdp").model_copy(update=update))


def test_fit_rejects_nan_features() -> None:
    data, y = _data(n=50)
    data.x_num[9, 1] = np.nan
    with pytest.raises(InputError, match=r"column 'b', row 10"):
        fit(data, y, TrainConfig(epochs=1, batch_size=10, accountant="rdp"))
