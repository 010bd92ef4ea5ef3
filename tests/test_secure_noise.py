"""Secret DP randomness: distributions, the test-only switch, and nothing of the key on the card."""

from __future__ import annotations

import base64
import copy
import json
import math
import pickle
import secrets
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from anonymize.errors import InputError
from privmodel.artifacts import model_card as card
from privmodel.data.features import EncodedData
from privmodel.dp import secure_noise
from privmodel.dp.secure_noise import NoiseSource
from privmodel.dp.training import FitResult, TrainConfig, fit


def _data(n: int = 300) -> tuple[EncodedData, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.random((n, 3), dtype=np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(3 * x[:, 0] - 1.5)))).astype(np.float32)
    return EncodedData(x, np.zeros((n, 0), dtype=np.int64), [], ["a", "b", "c"], []), y


def _card(result: FitResult) -> dict[str, Any]:
    return card.build_card(model_type="logreg", label="churn", features=[], data={"rows": 300},
                           privacy=result.privacy, training={"seed": result.config.seed}, metrics={},
                           baseline_metrics=None, comparison={}, mia=None)


def test_gaussian_has_the_stated_std_and_mean_and_is_normal() -> None:
    """A wrong scale (the sum of four not halved: 2x; halved twice: 0.5x) fails the 1 % tolerance."""
    n, std = 200_000, 3.0
    z = NoiseSource.secure().gaussian((400, 500), std)
    assert z.shape == (400, 500) and z.dtype == torch.float32
    x = z.double().flatten().numpy()
    assert x.std() == pytest.approx(std, rel=0.01)  # standard error of the std: 0.16 %
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert stats.kstest(x / std, "norm").pvalue > 1e-4
    assert stats.kurtosis(x) == pytest.approx(0.0, abs=0.05)  # Gaussian tails, not Laplace (3)
    one = NoiseSource.secure().gaussian(1, 1.0)  # a single value still draws four distinct pairs
    assert one.shape == (1,) and torch.isfinite(one).all()
    assert torch.equal(NoiseSource.secure().gaussian(5, 0.0), torch.zeros(5))


def test_gaussian_values_are_independent() -> None:
    """Neighbouring values (which share no Box-Muller pair) are uncorrelated."""
    x = NoiseSource.secure().gaussian(100_000, 1.0).double().numpy()
    for lag in (1, 2, 3):
        assert abs(np.corrcoef(x[:-lag], x[lag:])[0, 1]) < 5 / math.sqrt(len(x))


def _reference_gaussian(words: np.ndarray, chunks: int) -> np.ndarray:
    """The textbook construction, written out with numpy's own trigonometry: per chunk of C values,
    4 C keystream words -> 2 C Box-Muller pairs -> value j = (cos_j + cos_{C+j} + sin_{j+1} +
    sin_{C+j+1}) / 2, indices mod C."""
    c = secure_noise.GAUSSIAN_CHUNK
    out = []
    for k in range(chunks):
        u = (words[4 * c * k:4 * c * (k + 1)] >> np.uint64(11)).astype(np.float64)
        r = np.sqrt(-2.0 * np.log((u[:2 * c] + 1.0) * 2.0**-53))
        theta = u[2 * c:] * (2.0 * math.pi * 2.0**-53)
        cos, sin = r * np.cos(theta), r * np.sin(theta)
        j = np.arange(c)
        out.append((cos[j] + cos[c + j] + sin[(j + 1) % c] + sin[c + (j + 1) % c]) / 2)
    return np.concatenate(out)


def test_gaussian_chunks_follow_the_keystream_in_order_and_never_reuse_it() -> None:
    """Draws of any sizes are consecutive slices of one sequence, which is the textbook Box-Muller
    sum of the keystream chunk after chunk; the stream moves on by exactly the chunks used."""
    c = secure_noise.GAUSSIAN_CHUNK
    sizes = [1, 60, 4569, c, 3, 2 * c + 5, 7]  # crosses several chunk boundaries, one draw spans three
    total = sum(sizes)
    chunks = -(-total // c)
    draws = NoiseSource.insecure(5)
    pieces = [draws.gaussian(n, 1.0).double().numpy() for n in sizes]
    joined = np.concatenate(pieces)
    assert np.array_equal(joined, NoiseSource.insecure(5).gaussian(total, 1.0).double().numpy())
    raw = NoiseSource.insecure(5)
    words = raw._words(4 * c * chunks + 4, "<u8")
    # each keystream word feeds one reference value, so this also says no value was handed out twice
    assert np.allclose(joined, _reference_gaussian(words, chunks)[:total], rtol=1e-6, atol=1e-6)
    # the next draw of any kind starts right after the chunks used: no keystream is read twice
    assert np.array_equal(draws._words(4, "<u8"), words[-4:])


def test_many_small_draws_keep_the_distribution() -> None:
    """A logistic model's steps (61 values each) across many chunk boundaries: std 1, normal, no lag correlation."""
    source = NoiseSource.secure()
    x = torch.cat([source.gaussian(61, 1.0) for _ in range(2000)]).double().numpy()
    assert x.std() == pytest.approx(1.0, rel=0.015)
    assert stats.kstest(x, "norm").pvalue > 1e-4
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 5 / math.sqrt(len(x))
    scaled = NoiseSource.insecure(9).gaussian(1000, 2.5).double().numpy()
    assert np.allclose(scaled, 2.5 * NoiseSource.insecure(9).gaussian(1000, 1.0).double().numpy(), rtol=1e-6)


def test_laplace_has_the_stated_scale() -> None:
    b, n = 2.0, 200_000
    x = NoiseSource.secure().laplace(b, n)
    assert x.shape == (n,) and x.dtype == np.float64
    assert x.var() == pytest.approx(2 * b * b, rel=0.03)
    assert np.abs(x).mean() == pytest.approx(b, rel=0.01)
    assert abs(x.mean()) < 5 * math.sqrt(2) * b / math.sqrt(n)
    assert stats.kstest(x, "laplace", args=(0.0, b)).pvalue > 1e-4
    with pytest.raises(InputError):
        NoiseSource.secure().laplace(0.0, 3)


@pytest.mark.parametrize("rate", [0.001, 0.09, 0.5])
def test_poisson_mask_has_the_stated_rate(rate: float) -> None:
    n = 2_000_000
    mask = NoiseSource.secure().bernoulli_mask(n, rate)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert mask.float().mean().item() == pytest.approx(rate, abs=5 * math.sqrt(rate * (1 - rate) / n))


def test_poisson_mask_edges() -> None:
    source = NoiseSource.secure()
    assert source.bernoulli_mask(1000, 1.0).all() and not source.bernoulli_mask(1000, 0.0).any()
    with pytest.raises(InputError):
        source.bernoulli_mask(10, 1.5)


def test_secure_sources_never_repeat_and_the_insecure_switch_always_does() -> None:
    a, b = NoiseSource.secure(), NoiseSource.secure()
    assert a.kind == b.kind == "secure"
    assert not torch.equal(a.gaussian(64, 1.0), b.gaussian(64, 1.0))
    assert not torch.equal(a.bernoulli_mask(512, 0.5), b.bernoulli_mask(512, 0.5))
    c, d, e = NoiseSource.insecure(7), NoiseSource.insecure(7), NoiseSource.insecure(8)
    assert c.kind == "INSECURE-reproducible"
    assert torch.equal(c.gaussian(64, 1.0), d.gaussian(64, 1.0))
    assert np.array_equal(c.laplace(1.0, 9), d.laplace(1.0, 9))
    assert not torch.equal(NoiseSource.insecure(7).gaussian(64, 1.0), e.gaussian(64, 1.0))
    assert secure_noise.source(None).kind == "secure" and secure_noise.source(3).kind == "INSECURE-reproducible"
    with pytest.raises(InputError):
        NoiseSource.insecure("7")  # type: ignore[arg-type]


def test_a_source_cannot_be_pickled_copied_or_printed_with_its_key() -> None:
    source = NoiseSource.secure()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(source)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(source)
    assert repr(source) == "NoiseSource(secure)"
    # no attribute to keep the key on: the cipher context, the kind, and the Gaussian chunk with its cursor
    assert set(NoiseSource.__slots__) == {"_stream", "kind", "_sums", "_next"}
    source.gaussian(3, 1.0)
    assert not any(isinstance(getattr(source, name), bytes | bytearray) for name in NoiseSource.__slots__)


def test_no_entropy_reaches_the_fit_result_or_the_card(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture the 256-bit key the OS hands out; no form of it is in the FitResult or the card."""
    keys: list[bytes] = []
    real = secrets.token_bytes

    def spy(n: int) -> bytes:
        value = real(n)
        keys.append(value)
        return value

    monkeypatch.setattr(secrets, "token_bytes", spy)  # the module secure_noise draws its keys from
    data, y = _data()
    result = fit(data, y, TrainConfig(epsilon=2.0, delta=1e-4, epochs=2, batch_size=60, accountant="rdp", seed=5))
    assert len(keys) == 1 and len(keys[0]) == secure_noise.KEY_BYTES == 32
    the_card = _card(result)
    text = "\n".join([json.dumps(the_card), card.render_markdown(the_card), json.dumps(result.privacy),
                      json.dumps(result.stats), result.config.model_dump_json(), repr(result)])
    key = keys[0]
    forms = [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(),
             str(int.from_bytes(key, "big")), str(int.from_bytes(key, "little")),
             str(int.from_bytes(key[:8], "little")), key.hex()[:16]]
    for form in forms:
        assert form not in text
    assert result.privacy["noise"] == the_card["privacy"]["noise"] == "secure"
    assert "warning" not in the_card
    assert not card.render_markdown(the_card).startswith("**NOT")


def test_insecure_run_is_reproducible_and_its_card_says_not_dp_first() -> None:
    data, y = _data()
    cfg = TrainConfig(epsilon=2.0, delta=1e-4, epochs=2, batch_size=60, accountant="rdp", insecure_seed=11)
    a, b = fit(data, y, cfg), fit(data, y, cfg)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.privacy["noise"] == "INSECURE-reproducible"
    the_card = _card(a)
    assert list(the_card)[0] == "warning"
    assert the_card["warning"] == ("NOT differentially private: reproducible (insecure) noise was used for "
                                   "testing")
    assert the_card["privacy"]["noise"] == "INSECURE-reproducible"
    first = card.render_markdown(the_card).splitlines()[0]
    assert first == "**NOT differentially private: reproducible (insecure) noise was used for testing**"
