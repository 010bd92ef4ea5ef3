"""The encrypted vertical protocol: CKKS sums against plaintext, keys that cannot be misused, the
sensitivity bound attacked, epsilon cross-checked with dp-accounting, messages that carry no clear
per-customer training value, fresh noise, and a workflow run whose ledgers agree."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant as rdp

from anonymize.errors import InputError
from federated.vertical import ckks, encrypted
from federated.vertical.channel import Channel
from federated.vertical.split import SplitConfig, unpack
from federated.vertical.workflow import simulate
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import load_public_key
from privmodel.dp import budget
from tests.conftest import run_cli, vertical_inputs

#: gradient steps in these tests (a step costs about 1 s of CKKS work on one core; the default is 50)
STEPS = 6


@pytest.fixture(scope="module")
def keys() -> tuple[object, object]:
    """A key holder's private context and the evaluator's view of its public one."""
    ctx, public = ckks.keypair()
    return ctx, ckks.evaluator_context(public, "bank")


def test_encrypted_weighted_sums_equal_the_plaintext_ones(keys: tuple[object, object]) -> None:
    ctx, evaluator = keys
    rng = np.random.default_rng(0)
    n, k = ckks.SLOTS + 904, 7  # two chunks, the last one partial
    v, add = rng.uniform(-0.5, 1, n) / math.sqrt(n), rng.uniform(-0.5, 1, n) / math.sqrt(n)  # as the protocol scales
    cols, noise = rng.random((n, k)), rng.normal(0, 1e-3, k)
    got = ckks.decrypt(ctx, ckks.weighted_sums(evaluator, ckks.encrypt(evaluator, v), add, cols, noise), "shop")
    want = (v + add) @ cols + noise
    assert got.shape == (k,) and np.max(np.abs(want)) > 1.0 and np.max(np.abs(got - want)) < 2e-5


def test_the_evaluator_cannot_decrypt_and_a_secret_key_is_refused(keys: tuple[object, object]) -> None:
    """The attack: the party that computes on the other's ciphertexts tries to read them."""
    ctx, evaluator = keys
    blob = ckks.encrypt(evaluator, np.arange(10.0))[0]
    with pytest.raises(InputError, match="cannot decrypt"):
        ckks.decrypt(evaluator, blob, "bank")
    with pytest.raises(InputError, match="sent its secret key; refused"):
        ckks.evaluator_context(ctx.serialize(save_secret_key=True), "bank")  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="malformed encryption context"):
        ckks.evaluator_context(b"not a context", "bank")
    with pytest.raises(InputError, match="2 encrypted chunks for 10 customers"):
        ckks.weighted_sums(evaluator, [blob, blob], np.zeros(10), np.ones((10, 2)), np.zeros(2))


def test_feature_map_rows_have_norm_at_most_one_whatever_the_values() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 4, size=(500, 5))  # out of [0, 1] on purpose: clipped, never above the bound
    x[:, 3:] = rng.integers(0, 2, size=(500, 2))
    for intercept in (False, True):
        phi = encrypted.feature_map(x, 3, intercept=intercept)
        assert phi.shape[1] == 3 * (encrypted.BINS - 1) + 2 + 10 + int(intercept)
        assert np.linalg.norm(phi, axis=1).max() <= 1.0 + 1e-12
    ones = encrypted.feature_map(np.ones((1, 5)), 3, intercept=True)
    assert np.linalg.norm(ones) == pytest.approx(1.0)  # the bound is reached: no slack hidden in it


def _gradients(phi_l: np.ndarray, phi_f: np.ndarray, y: np.ndarray, w_l: np.ndarray, w_f: np.ndarray) -> np.ndarray:
    """Both mean gradients of the Taylor loss, written again here (not the module's code)."""
    c = np.clip(phi_l @ w_l / 4 + 0.5 - y, -encrypted.CLIP, encrypted.CLIP)
    r = np.clip(phi_f @ w_f / 4, -encrypted.CLIP, encrypted.CLIP)
    n = len(y)
    return np.concatenate([phi_l.T @ (c + r), phi_f.T @ (c + r)]) / n


@pytest.mark.parametrize("role", ["label", "feature"])
def test_one_customer_moves_the_released_gradients_by_at_most_the_sensitivity(role: str) -> None:
    """The attack on the noise's calibration: the customer whose removal moves the two gradient sums
    most, at weights that saturate the clip, still moves them by at most sqrt(5) C / n."""
    rng = np.random.default_rng(2)
    n = 400
    phi_l = encrypted.feature_map(rng.random((n, 4)), 2, intercept=True)
    phi_f = encrypted.feature_map(rng.random((n, 3)), 3)
    y = rng.integers(0, 2, n).astype(float)
    bound = math.sqrt(5) * encrypted.CLIP / n
    worst = 0.0
    for scale in (1.0, 30.0, 300.0):  # large weights: both residual parts at the clip
        w_l, w_f = rng.normal(0, scale, phi_l.shape[1]), rng.normal(0, scale, phi_f.shape[1])
        base = _gradients(phi_l, phi_f, y, w_l, w_f)
        for i in range(n):
            pl, pf, yy = phi_l.copy(), phi_f.copy(), y.copy()
            if role == "label":  # zero-out: a null row at the label party (its part of the residual 0)
                pl[i] = 0.0
                yy[i] = 0.5
            else:
                pf[i] = 0.0
            worst = max(worst, float(np.linalg.norm(_gradients(pl, pf, yy, w_l, w_f) - base)))
    assert worst <= bound * (1 + 1e-9)
    assert worst > 0.6 * bound  # the bound is nearly reached: it is not loose by construction


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_each_party_epsilon_is_cross_checked_with_dp_accounting(epsilon: float) -> None:
    config = encrypted.EncryptedConfig(epsilon=epsilon, label_epsilon=epsilon / 2, delta=1e-6)
    for role, target in (("feature", epsilon), ("label", epsilon / 2)):
        sigma = encrypted.sigma(config, role)
        ours = encrypted.planned_epsilon(config, role)
        assert ours is not None and ours <= target * (1 + 1e-3)
        pld = privacy_loss_distribution.from_gaussian_mechanism(sigma, sensitivity=1.0,
                                                               value_discretization_interval=1e-4)
        theirs = pld.self_compose(config.steps).get_epsilon_for_delta(1e-6)
        assert theirs == pytest.approx(ours, rel=0.02)
        accountant = rdp.RdpAccountant()
        import dp_accounting

        accountant.compose(dp_accounting.GaussianDpEvent(sigma), config.steps)
        assert accountant.get_epsilon(1e-6) >= ours * 0.98  # RDP is an upper bound of the exact PLD figure


def _small(config: encrypted.EncryptedConfig, n: int = 1200) -> tuple[encrypted.Party, encrypted.Party, np.ndarray]:
    rng = np.random.default_rng(3)
    xl, xf = rng.random((n, 3)), rng.random((n, 3))
    logit = 3 * (xl[:, 0] - 0.5) + 4 * (xf[:, 1] - 0.5) ** 2 * 4 - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return (encrypted.Party("shop", encrypted.feature_map(xf, 3), config, "feature"),
            encrypted.Party("bank", encrypted.feature_map(xl, 3, intercept=True), config, "label", y=y), y)


def test_non_private_encrypted_training_equals_plaintext_gradient_descent() -> None:
    feature, label, y = _small(encrypted.EncryptedConfig(epsilon=None, steps=STEPS))
    rows = np.arange(1000)
    encrypted.train(feature, label, rows, np.arange(1000, 1200), Channel(keep=False))
    w_l, w_f = np.zeros(label.phi.shape[1]), np.zeros(feature.phi.shape[1])
    v = np.zeros(len(w_l) + len(w_f))
    for _ in range(STEPS):  # the same descent in the clear
        v = encrypted.MOMENTUM * v + _gradients(label.phi[rows], feature.phi[rows], y[rows], w_l, w_f)
        w_l, w_f = w_l - encrypted.LR * v[:len(w_l)], w_f - encrypted.LR * v[len(w_l):]
    # within what FLOOD moves them (about 0.013 here: 1e-3 on each sum, amplified by lr 16 and momentum
    # over the steps, at 5 standard deviations); CKKS's own error moves them by about 1e-5
    tol = 0.02 * float(np.abs(w_f).max())
    assert np.allclose(label.w, w_l, atol=tol) and np.allclose(feature.w, w_f, atol=tol)
    assert not np.allclose(label.w, w_l, atol=1e-7)  # the flooding noise is there
    assert np.abs(w_f).max() > 0.1  # it learned from the feature party's columns


def test_messages_carry_no_clear_per_customer_training_value() -> None:
    feature, label, y = _small(encrypted.EncryptedConfig(epsilon=1.0, steps=STEPS, insecure_seed=3))
    channel = Channel(keep=True)
    train_rows, test_rows = np.arange(1000), np.arange(1000, 1200)
    scores, _bottom = encrypted.train(feature, label, train_rows, test_rows, channel)
    from flwr.common import serde
    from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

    step = ["he.residual", "he.residual", "he.gradient", "gradient"]
    assert [m.kind for m in channel.log] == ["he.keys", "he.keys", *step * STEPS, "score.request", "score.partial"]
    k = {"shop": feature.phi.shape[1], "bank": label.phi.shape[1]}
    for m in channel.log:
        proto = RecordDictProto()
        proto.ParseFromString(m.payload)
        content = serde.recorddict_from_proto(proto)
        receiver = feature if m.receiver == "shop" else label
        if m.kind in ("gradient", "he.gradient"):  # sums over all training customers: the receiver's k, never n
            assert unpack(content).shape == (k[m.receiver],)
        if m.kind == "score.partial":  # held-out customers only
            assert unpack(content).shape == (len(test_rows),)
        for key in ("he", "g"):  # ciphertexts: the receiver holds no key that opens them
            if key in content and m.kind != "he.keys":
                for blob in encrypted.unblobs(content, m.sender, key):
                    with pytest.raises(InputError, match="cannot decrypt"):
                        ckks.decrypt(receiver.peer, blob, m.sender)
    assert len(scores) == len(test_rows) and 0.0 < float(scores.min()) <= float(scores.max()) < 1.0


def test_noise_is_fresh_each_run_unless_a_test_seed_is_given() -> None:
    weights = []
    for seed in (None, None, 5, 5):
        feature, label, _y = _small(encrypted.EncryptedConfig(epsilon=1.0, steps=2, insecure_seed=seed), n=300)
        encrypted.train(feature, label, np.arange(250), np.arange(250, 300), Channel(keep=False))
        weights.append(feature.w)
    assert not np.allclose(weights[0], weights[1])
    assert np.allclose(weights[2], weights[3], atol=1e-6)


# --- in the vertical workflow: budgets, ledgers, card, refusals --------------------------------------------------


def test_encrypted_run_charges_each_party_once_and_every_ledger_agrees(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    config = SplitConfig(epsilon=2.0, label_epsilon=1.0, epochs=STEPS, protocol="encrypted")
    result = simulate(bank, shop, config, tmp_path / "out")
    for inp, name, target in ((bank, "bank", 1.0), (shop, "retailer", 2.0)):
        book = tmp_path / "out" / name / "ledger.jsonl"
        assert verify(book, [load_public_key(inp.keys)]).ok  # type: ignore[arg-type]
        train = next(e for e in read_entries(book) if e["action"] == "vertical.train")
        assert train["params"]["model_hash"] == result.model_hash
        spent = budget.spent(f"{name}-customers", inp.keys)
        assert spent.charges == 1 and spent.delta == config.delta
        assert spent.epsilon == pytest.approx(result.parties[name]["epsilon"]) and spent.epsilon <= target * 1.001
    assert result.noise["steps"] == STEPS and result.noise["label_multiplier"] > result.noise["feature_multiplier"]
    card = (tmp_path / "out" / "bank" / "card.md").read_text()
    assert "vertical encrypted gradient descent" in card and "epsilon covers training only" in card
    assert result.metrics["roc_auc"] is not None and result.metrics["test_customers"] > 100  # utility: benchmark


def test_encrypted_protocol_refuses_several_feature_parties(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    with pytest.raises(InputError, match="--label-dp applies to --protocol split"):
        SplitConfig(protocol="encrypted", label_dp="labels").check()
    with pytest.raises(InputError, match="--protocol encrypted takes one feature party"):
        simulate(bank, [shop, shop], SplitConfig(protocol="encrypted"), tmp_path / "out")


def test_cli_encrypted_protocol(vertical_parties: Path, tmp_path: Path) -> None:
    bank, shop = vertical_inputs(vertical_parties, tmp_path)
    done = run_cli("federate", "vertical", "simulate", "--label", str(bank.party_file), "--label-data", str(bank.data),
                   "--label-keys", str(bank.keys), "--feature", str(shop.party_file), "--feature-data", str(shop.data),
                   "--feature-keys", str(shop.keys), "--out", str(tmp_path / "cli"), "--psi-workers", "1",
                   "--protocol", "encrypted", "--epochs", "2", "--epsilon", "1")
    assert done.returncode == 0, done.stderr
    assert "retailer (feature party): ε 0.99" in done.stdout and "bank (label party): ε 0.99" in done.stdout
    assert "encrypted gradient descent (2 steps)" in done.stderr
    card = (tmp_path / "cli" / "bank" / "card.md").read_text()
    assert "Protocol: vertical encrypted gradient descent." in card
