"""Split learning's DP: calibration per party, cross-checked with dp-accounting, and the noise that leaves."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld

from anonymize.errors import InputError
from federated.vertical import split
from federated.vertical.channel import Channel

torch.set_num_threads(1)  # small tensors: intra-op threads only spin on a shared machine


def _pld_epsilon(sigmas: list[float], delta: float) -> float:
    """dp-accounting's PLD accountant on the composed Gaussian mechanisms, sensitivity 1."""
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in sigmas]))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("epsilon,epochs", [(1.0, 8), (4.0, 3)])
def test_each_party_spends_its_target_by_two_accountants(epsilon: float, epochs: int) -> None:
    cfg = split.SplitConfig(epsilon=epsilon, epochs=epochs, delta=1e-5)
    noise = split.calibrate(cfg)
    for role in ("feature", "label"):
        ours = split.party_epsilon(noise, epochs, role, cfg.delta)
        theirs = _pld_epsilon(split.party_sigmas(noise, epochs, role), cfg.delta)
        assert ours <= epsilon * 1.001 and ours >= epsilon * 0.97
        assert theirs == pytest.approx(ours, rel=0.02)
    # the embedding gets the larger share: less noise than the bottom-model update
    assert noise.embedding < noise.bottom and noise.gradient < noise.top


def test_non_private_has_no_noise_and_infinite_epsilon() -> None:
    noise = split.calibrate(split.SplitConfig(epsilon=None))
    assert not noise.private and split.party_epsilon(noise, 3, "label", 1e-5) == float("inf")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InputError, match="--epsilon"):
        split.calibrate(split.SplitConfig(epsilon=-1.0))
    with pytest.raises(InputError, match="embedding_share"):
        split.calibrate(split.SplitConfig(embedding_share=1.0))


def _sides(epsilon: float | None, n: int = 600) -> tuple[split.FeatureSide, split.LabelSide, split.Noise]:
    rng = np.random.default_rng(0)
    xf = rng.random((n, 5)).astype(np.float32) * 10  # large inputs: embeddings would exceed the clip
    xl = rng.random((n, 3)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    cfg = split.SplitConfig(epsilon=epsilon, epochs=2, batch_size=100, insecure_seed=7)
    noise = split.calibrate(cfg)
    return split.FeatureSide("retailer", xf, cfg, noise), split.LabelSide("bank", xl, y, cfg, noise), noise


def test_embeddings_are_clipped_then_noised_at_the_calibrated_scale() -> None:
    feature, _label, noise = _sides(1.0)
    rows = np.arange(600)
    with torch.no_grad():
        clean = split.bounded(feature.model(torch.from_numpy(feature.x)), 1.0).numpy()
    sent = feature.embed(rows)
    resid = sent - clean
    assert np.all(np.linalg.norm(clean, axis=1) <= 1.0 + 1e-5)
    assert resid.std() == pytest.approx(noise.embedding, rel=0.08)


def test_returned_gradients_carry_label_dp_noise() -> None:
    feature, label, noise = _sides(1.0)
    rows = np.arange(100)
    grads = label.step(rows, feature.embed(rows))
    assert grads.shape == (100, label.config.embed_dim)
    assert grads.std() == pytest.approx(noise.gradient * label.config.clip_gradient, rel=0.15)


def test_non_private_training_learns_and_messages_hold_only_arrays() -> None:
    feature, label, _ = _sides(None)
    label.y = label.y_train = (feature.x[:, 0] > 5).astype(np.int64)  # the label: the feature party's column only
    channel = Channel()
    train_rows = np.arange(500)
    split.train(feature, label, train_rows, channel)
    p = split.score(feature, label, np.arange(500, 600), Channel())
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(label.y[500:], p) > 0.9
    kinds = {m.kind for m in channel.log}
    assert kinds == {"split.embedding", "split.gradient"}
    assert len(channel.log) == 2 * 2 * 5  # two epochs of five batches, one round trip each


def test_randomized_response_flips_labels_at_the_target_rate() -> None:
    cfg = split.SplitConfig(epsilon=1.0, label_dp="labels", epochs=2, insecure_seed=11)
    noise = split.calibrate(cfg)
    assert noise.gradient == 0.0 and noise.top == 0.0
    eps = split.party_epsilon(noise, 2, "label", 1e-6)
    assert 1.0 - 1e-6 < eps <= 1.0 and split.party_delta(noise, "label", 1e-6) == 0.0
    y = np.tile(np.array([0, 1], dtype=np.int64), 20_000)
    rng = np.random.default_rng(1)
    side = split.LabelSide("bank", rng.random((len(y), 2)).astype(np.float32), y, cfg, noise)
    flipped = float(np.mean(side.y_train != y))
    assert flipped == pytest.approx(1 / (1 + np.e), abs=0.01)
    assert np.array_equal(side.y, y)  # the true labels stay for the label party's own evaluation
    with pytest.raises(InputError, match="below the secret mask's resolution"):
        split.calibrate(split.SplitConfig(epsilon=1.0, label_epsilon=64.0, label_dp="labels"))


def test_label_epsilon_may_differ_from_the_feature_partys() -> None:
    noise = split.calibrate(split.SplitConfig(epsilon=1.0, label_epsilon=4.0, epochs=3))
    assert split.party_epsilon(noise, 3, "feature", 1e-6) == pytest.approx(1.0, rel=0.03)
    assert split.party_epsilon(noise, 3, "label", 1e-6) == pytest.approx(4.0, rel=0.03)
    with pytest.raises(InputError, match="--label-epsilon needs --epsilon"):
        split.calibrate(split.SplitConfig(epsilon=None, label_epsilon=2.0))
