"""The one-shot release protocol: randomized response from the secret source, its epsilon cross-checked
with dp-accounting, exactly two messages that hold only released values, and a model that learns."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from sklearn.metrics import roc_auc_score

from anonymize.errors import InputError
from federated.vertical import release
from federated.vertical.channel import Channel
from federated.vertical.split import SplitConfig, unpack
from federated.vertical.workflow import simulate
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import load_public_key
from privmodel.dp import budget, secure_noise
from tests.conftest import run_cli, vertical_inputs

torch.set_num_threads(1)


def _pld_epsilon(k: int, epsilon_spent: float) -> float:
    """dp-accounting's PLD of k-ary randomized response with the replacement probability the epsilon implies."""
    q = k / (math.exp(epsilon_spent) + k - 1)
    pld = privacy_loss_distribution.from_randomized_response(q, k, value_discretization_interval=1e-7)
    return float(pld.get_epsilon_for_delta(0.0))


@pytest.mark.parametrize("k,epsilon", [(2, 1.0), (4, 1.0), (4, 4.0), (8, 0.5)])
def test_randomized_response_spends_at_most_its_target_checked_by_dp_accounting(k: int, epsilon: float) -> None:
    values = np.arange(200_000) % k
    answers, spent = secure_noise.NoiseSource.insecure(3).randomized_response(values, k, epsilon)
    assert epsilon - 1e-6 < spent <= epsilon
    assert _pld_epsilon(k, spent) == pytest.approx(spent, abs=1e-5)
    # the empirical channel: stays with e^eps / (e^eps + k - 1), else uniform over the other values
    stay = math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    assert float(np.mean(answers == values)) == pytest.approx(stay, abs=0.006)
    moved = answers[(values == 0) & (answers != 0)]
    counts = np.bincount(moved, minlength=k)[1:]
    assert counts.min() / counts.max() > 0.9  # no value favoured (no modulo bias)


def test_randomized_response_is_secret_unless_a_test_seed_is_given() -> None:
    """The replay attack: with the default source, knowing every setting does not reproduce the answers."""
    values = np.arange(5_000) % 2
    one, _ = secure_noise.source().randomized_response(values, 2, 1.0)
    two, _ = secure_noise.source().randomized_response(values, 2, 1.0)
    assert not np.array_equal(one, two)
    a, _ = secure_noise.source(5).randomized_response(values, 2, 1.0)
    b, _ = secure_noise.source(5).randomized_response(values, 2, 1.0)
    assert np.array_equal(a, b)


def test_randomized_response_refuses_bad_settings() -> None:
    src = secure_noise.NoiseSource.insecure(0)
    with pytest.raises(InputError, match="values must be in \\[0, 3\\)"):
        src.randomized_response(np.array([0, 3]), 3, 1.0)
    with pytest.raises(InputError, match="k >= 2"):
        src.randomized_response(np.array([0]), 1, 1.0)
    with pytest.raises(InputError, match="positive finite epsilon"):
        src.randomized_response(np.array([0]), 2, 0.0)


def _parties(config: release.ReleaseConfig, n: int = 3_000) -> tuple[release.FeatureRelease, release.LabelRelease]:
    """A label that needs both parties' columns: the feature party's column 0 and the label party's column 0."""
    rng = np.random.default_rng(7)
    xf = rng.normal(size=(n, 3)).astype(np.float32)
    xl = rng.normal(size=(n, 2)).astype(np.float32)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(2.5 * xf[:, 0] + 1.5 * xl[:, 0])))).astype(np.int64)
    return (release.FeatureRelease("retailer", xf, config),
            release.LabelRelease("bank", xl, y, config))


def test_two_messages_hold_only_released_values_and_no_held_out_label() -> None:
    config = release.ReleaseConfig(epsilon=1.0, epochs=3, insecure_seed=2)
    feature, label = _parties(config)
    train_rows = np.arange(2_400)
    channel = Channel()
    release.train(feature, label, train_rows, channel)
    assert [(m.sender, m.receiver, m.kind) for m in channel.log] == [
        ("bank", "retailer", "release.labels"), ("retailer", "bank", "release.bins")]
    from flwr.common import serde
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

    def payload(i: int) -> np.ndarray:
        proto = RecordDictProto()
        proto.ParseFromString(channel.log[i].payload)
        return unpack(serde.recorddict_from_proto(proto))

    labels, bins = payload(0), payload(1)
    assert labels.shape == (len(train_rows),) and set(np.unique(labels)) <= {0, 1}  # test customers' labels stay
    assert float(np.mean(labels != label.y[train_rows])) == pytest.approx(1 / (1 + math.e), abs=0.03)
    assert bins.shape == (3_000,) and set(np.unique(bins)) <= {0, 1}  # eps 1: two bins
    assert feature.epsilon_spent is not None and label.epsilon_spent is not None
    assert feature.epsilon_spent <= 1.0 and label.epsilon_spent <= 1.0
    # the feature party's three mechanisms, each checked apart: its DP-SGD model by dp-accounting's PLD
    # on the Poisson-sampled Gaussian steps, then the histogram's and the randomized response's pure epsilon
    rec = feature.model_privacy
    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(rec["sample_rate"], dp_accounting.GaussianDpEvent(
        rec["noise_multiplier"])), int(rec["steps"]))
    model_eps = float(acc.get_epsilon(rec["delta"]))
    part = release.feature_split(1.0)
    # the reported figure (Opacus' PRV) is not below dp-accounting's, and close to it
    assert 0.9 * rec["epsilon"] <= model_eps <= 1.01 * rec["epsilon"] and rec["epsilon"] <= part["model"] * 1.001
    rr = secure_noise.randomized_response_epsilon(2, part["rr"])
    assert _pld_epsilon(2, rr) == pytest.approx(rr, abs=1e-5)
    assert feature.epsilon_spent == pytest.approx(rec["epsilon"] + part["cuts"] + rr)


def test_non_private_release_learns_from_both_parties_and_private_beats_label_party_alone() -> None:
    test_rows = np.arange(2_400, 3_000)
    feature, label = _parties(release.ReleaseConfig(epsilon=None, epochs=5))
    release.train(feature, label, np.arange(2_400), Channel(keep=False))
    both = roc_auc_score(label.y[test_rows], label.score(test_rows))
    own_only = roc_auc_score(label.y[test_rows], label.x[test_rows, 0])
    assert both > own_only + 0.08
    feature, label = _parties(release.ReleaseConfig(epsilon=4.0, epochs=5, insecure_seed=9))
    release.train(feature, label, np.arange(2_400), Channel(keep=False))
    assert roc_auc_score(label.y[test_rows], label.score(test_rows)) > own_only + 0.03
    assert feature.config.k == 4


def test_bad_bins_and_settings_are_refused() -> None:
    feature, label = _parties(release.ReleaseConfig(epsilon=1.0, insecure_seed=1))
    label.labels(np.arange(10))
    with pytest.raises(InputError, match="expected 3000 bins in \\[0, 2\\) from each feature party"):
        label.fit(np.arange(10), [np.full(3_000, 2)])
    with pytest.raises(InputError, match="--bins must be between 2 and 64"):
        release.ReleaseConfig(bins=1).check()
    with pytest.raises(InputError, match="--label-epsilon needs --epsilon"):
        release.ReleaseConfig(epsilon=None, label_epsilon=1.0).check()


# --- the protocol in the vertical workflow: budgets, ledgers, card, CLI -----------------------------------------------


def test_release_run_charges_each_party_once_and_every_ledger_agrees(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    config = SplitConfig(epsilon=2.0, label_epsilon=1.0, epochs=3, protocol="release", insecure_seed=4)
    result = simulate(bank, shop, config, tmp_path / "out")
    assert result.parties["bank"]["delta"] == 0.0 and result.parties["retailer"]["delta"] == config.delta
    assert result.parties["bank"]["covers"].startswith("columns and labels")
    for inp, name, target, delta in ((bank, "bank", 1.0, 0.0), (shop, "retailer", 2.0, config.delta)):
        book = tmp_path / "out" / name / "ledger.jsonl"
        assert verify(book, [load_public_key(inp.keys)]).ok  # type: ignore[arg-type]
        train = next(e for e in read_entries(book) if e["action"] == "vertical.train")
        assert train["params"]["model_hash"] == result.model_hash
        spent = budget.spent(f"{name}-customers", inp.keys)
        assert spent.charges == 1 and spent.delta == delta
        assert spent.epsilon == pytest.approx(result.parties[name]["epsilon"]) and target - 1e-6 < spent.epsilon <= target
    assert _pld_epsilon(2, result.parties["bank"]["epsilon"]) == pytest.approx(result.parties["bank"]["epsilon"], abs=1e-5)
    assert result.noise["bins"] == 2.0 and result.noise["label_flip"] == pytest.approx(1 / (1 + math.e), abs=1e-6)
    card = (tmp_path / "out" / "bank" / "card.md").read_text()
    assert "Protocol: vertical one-shot release." in card and "one more randomized-response release" in card
    assert result.metrics["roc_auc"] is not None and result.metrics["test_customers"] > 100  # utility: kernel tests


def test_cli_release_protocol_and_bad_options(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    args = ["federate", "vertical", "simulate", "--label", str(bank.party_file), "--label-data", str(bank.data),
            "--label-keys", str(bank.keys), "--feature", str(shop.party_file), "--feature-data", str(shop.data),
            "--feature-keys", str(shop.keys), "--out", str(tmp_path / "cli"), "--psi-workers", "1",
            "--protocol", "release", "--epochs", "2", "--bins", "3"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "retailer (feature party): ε 1.000, δ 1.0e-06 (columns)" in done.stdout
    bad = run_cli(*[a if a != "release" else "gossip" for a in args])
    assert bad.returncode == 2 and "--protocol must be split, release or encrypted" in bad.stderr and "Traceback" not in bad.stderr
    split_bins = run_cli(*[a for a in args if a not in ("--protocol", "release")])
    assert split_bins.returncode == 2 and "--bins applies to --protocol release" in split_bins.stderr
