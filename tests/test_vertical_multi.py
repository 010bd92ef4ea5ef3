"""One label party and two feature parties: the telco's synthetic data, the common set, three ledgers and budgets."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import dp_accounting
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from dp_accounting import pld
from sklearn.metrics import roc_auc_score

from federated.vertical import split
from federated.vertical.channel import Channel, PartyDropped
from federated.vertical.psi import OverlapTooSmall, Pool, PsiSide, label_learns
from federated.vertical.workflow import PartyInput, open_side, psi_common, simulate
from privmodel.artifacts.ledger import read_entries, verify
from privmodel.core.keys import init_keys, load_public_key
from privmodel.data.synth.vertical import generate_vertical
from privmodel.dp import budget
from tests.conftest import run_cli

torch.set_num_threads(1)
NAMES = ("bank", "retailer", "telco")


def _norm(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().lower()


def test_telco_formats_overlap_and_truth() -> None:
    two, three = generate_vertical(4000, overlap=0.6, seed=3), generate_vertical(4000, overlap=0.6, seed=3,
                                                                                  feature_parties=2)
    assert three.telco is not None and two.telco is None
    assert three.retailer.equals(two.retailer)  # the telco draws from its own stream
    assert three.bank.drop_columns(["churn"]).equals(two.bank.drop_columns(["churn"]))
    bank = {_norm(v) for v in three.bank.column("email").to_pylist()}
    telco_raw = three.telco.column("email").to_pylist()
    assert len(bank & {_norm(v) for v in telco_raw}) == three.shared == round(0.6 * three.bank.num_rows)
    assert len(bank & set(telco_raw)) < three.shared  # full-width and upper-case e-mails need nfkc + lower
    assert any(unicodedata.normalize("NFKC", v) != v for v in telco_raw)
    ids = {v.replace("-", "") for v in three.bank.column("national_id").to_pylist()}
    assert len(ids & {v.replace(" ", "") for v in three.telco.column("national_id").to_pylist()}) == three.shared
    shop = {_norm(v) for v in three.retailer.column("email").to_pylist()}
    assert len(bank & shop & {_norm(v) for v in telco_raw}) == three.shared_all
    y = three.bank.column("churn").to_numpy()
    assert three.p_without_telco is not None
    assert roc_auc_score(y, three.p_churn) > roc_auc_score(y, three.p_without_telco) + 0.02  # the telco matters


def test_gradient_blocks_are_one_jointly_clipped_and_noised_release() -> None:
    cfg = split.SplitConfig(epsilon=1.0, epochs=2, insecure_seed=2)
    noise = split.calibrate(cfg)
    rng = np.random.default_rng(0)
    xs = [rng.random((300, d)).astype(np.float32) for d in (4, 3)]
    sides = [split.FeatureSide(n, x, cfg, noise, index=i) for i, (n, x) in enumerate(zip(("r", "t"), xs, strict=True))]
    label = split.LabelSide("b", rng.random((300, 2)).astype(np.float32), (rng.random(300) < 0.3).astype(np.int64),
                            cfg, noise, feature_parties=2)
    assert split.state_hash(sides[0].model) != split.state_hash(sides[1].model)  # own initialisation each
    rows = np.arange(300)
    grads = label.step_many(rows, [s.embed(rows) for s in sides])
    assert [g.shape for g in grads] == [(300, cfg.embed_dim)] * 2
    both = np.concatenate(grads, axis=1)
    assert both.std() == pytest.approx(noise.gradient * cfg.clip_gradient, rel=0.15)
    # the label party's epsilon is the two-party one: one gradient release per batch whatever N is
    assert split.party_sigmas(noise, 2, "label") == [noise.gradient, noise.top] * 2


def test_the_one_sided_pass_tells_the_feature_party_nothing_and_checks_the_label_partys_minimum() -> None:
    a = [f"k{i}" for i in range(300)]
    b = [f"k{i}" for i in range(200, 600)]
    pool = Pool(workers=1)
    channel = Channel()
    rows, _digest = label_learns(PsiSide("bank", a, 50, pool), PsiSide("retailer", b, 1, pool), channel)
    assert sorted(a[i] for i in rows) == sorted(set(a) & set(b))
    assert [(m.sender, m.kind) for m in channel.log] == [("bank", "psi.request"), ("retailer", "psi.request"),
                                                         ("retailer", "psi.tokens")]  # no token, no size back
    with pytest.raises(OverlapTooSmall, match="bank refuses an overlap of 10 customers with telco, below its policy's "
                                              "min_overlap 50"):
        label_learns(PsiSide("bank", a, 50, pool), PsiSide("telco", b[90:], 1, pool), Channel())


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vertical3")
    done = run_cli("synth", "--vertical", "--feature-parties", "2", "--customers", "3000", "--out", str(root / "data"),
                   "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert "telco" in done.stdout and "customers of all three" in done.stdout
    return root / "data"


def _inputs(data: Path, tmp: Path) -> list[PartyInput]:
    out = []
    for name in NAMES:
        init_keys(tmp / f"keys-{name}", actor=name)
        out.append(PartyInput(data / f"{name}.party.yaml", data / f"{name}.parquet", tmp / f"keys-{name}"))
    return out


def _pld_epsilon(sigmas: list[float], delta: float) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in sigmas]))
    return float(acc.get_epsilon(delta))


def test_common_set_is_the_plain_triple_intersection_in_one_order(parties: Path, tmp_path: Path) -> None:
    sides = [open_side(inp, tmp_path / "out") for inp in _inputs(parties, tmp_path)]
    channel = Channel()
    rows_l, rows_fs, overlap = psi_common(sides[0], sides[1:], channel, workers=1)
    keys = [[s.join[i] for i in rows] for s, rows in zip(sides, [rows_l, *rows_fs], strict=True)]
    assert keys[0] == keys[1] == keys[2]  # the same customer at each training position
    plain = set(sides[0].join) & set(sides[1].join) & set(sides[2].join)
    assert set(keys[0]) == plain and overlap["size"] == len(plain)
    pair = {f.name: len(set(sides[0].join) & set(f.join)) for f in sides[1:]}
    assert all(n > len(plain) for n in pair.values())
    # a feature party never sees the label party's pairwise overlap with it or with the other: what the
    # label party sends it is its whole request (one-sided pass), then the common set's keys only
    for f in sides[1:]:
        to_f = [m for m in channel.log if m.receiver == f.name]
        assert [m.kind for m in to_f] == ["psi.request", "psi.request", "psi.tokens", "psi.done"] + (
            ["psi.order"] if f.name == "telco" else [])
        sizes = [len(m.payload) for m in to_f if m.kind == "psi.request"]
        assert sizes[0] > len(sides[0].join) * 33 > sizes[1] > len(plain) * 33
        entries = read_entries(f.book.path)
        assert {e["params"].get("intersection_size") for e in entries} == {None, len(plain)}
    label_sizes = {e["params"]["other_party"]: e["params"]["intersection_size"] for e in read_entries(sides[0].book.path)
                   if e["params"].get("phase", "").startswith("pairwise")}
    assert label_sizes == pair  # only the label party records the pairwise overlaps


def test_three_party_run_ledgers_agree_budgets_and_epsilons(parties: Path, tmp_path: Path) -> None:
    inputs = _inputs(parties, tmp_path)
    cfg = split.SplitConfig(epsilon=2.0, epochs=1, batch_size=256, insecure_seed=3)
    result = simulate(inputs[0], inputs[1:], cfg, tmp_path / "out")
    assert list(result.parties) == list(NAMES)
    noise = split.calibrate(cfg)
    hashes = set()
    for inp, name in zip(inputs, NAMES, strict=True):
        book = tmp_path / "out" / name / "ledger.jsonl"
        assert verify(book, [load_public_key(inp.keys)]).ok  # type: ignore[arg-type]
        train = next(e for e in read_entries(book) if e["action"] == "vertical.train")
        hashes.add(train["params"]["model_hash"])
        assert train["params"]["overlap"] == result.overlap["size"]
        role = "label" if name == "bank" else "feature"
        eps = result.parties[name]["epsilon"]
        assert eps == pytest.approx(_pld_epsilon(split.party_sigmas(noise, cfg.epochs, role), cfg.delta), rel=0.02)
        assert 1.9 < eps <= 2.0
        spent = budget.spent(f"{name}-customers", inp.keys)
        assert spent.charges == 1 and spent.epsilon == pytest.approx(eps)
        emails = pq.read_table(inp.data).column("email").to_pylist()
        assert not any(_norm(e) in book.read_text().lower() for e in emails[:200])
    assert hashes == {result.model_hash}
    card = json.loads((tmp_path / "out" / "bank" / "card.json").read_text())
    assert list(card["parties"]) == list(NAMES) and card["overlap"]["size"] == result.overlap["size"]
    assert set(card["overlap"]["pairs"]) == {"retailer", "telco"} and "needs every party online" in card["scoring"]
    md = (tmp_path / "out" / "bank" / "card.md").read_text()
    assert all(f"| {n} |" in md for n in NAMES)
    assert result.metrics["roc_auc"] is not None


def test_a_feature_party_below_its_minimum_or_offline_ends_the_run_naming_it(parties: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for p in parties.iterdir():
        if p.suffix in (".yaml", ".parquet"):
            (data / p.name).write_bytes(p.read_bytes())
    doc = yaml.safe_load((data / "telco.party.yaml").read_text())
    doc["min_overlap"] = 100_000
    (data / "telco.party.yaml").write_text(yaml.safe_dump(doc))
    inputs = _inputs(data, tmp_path)
    cfg = split.SplitConfig(epsilon=2.0, epochs=1, insecure_seed=3)
    with pytest.raises(OverlapTooSmall, match="telco refuses an overlap of .* below its policy's min_overlap 100000"):
        simulate(inputs[0], inputs[1:], cfg, tmp_path / "out")
    for inp, name in zip(inputs, NAMES, strict=True):
        assert budget.spent(f"{name}-customers", inp.keys).charges == 0
        assert read_entries(tmp_path / "out" / name / "ledger.jsonl")[-1]["outcome"] == "failed"
    inputs = _inputs(parties, tmp_path / "again")
    with pytest.raises(PartyDropped, match="party 'telco' dropped out"):
        simulate(inputs[0], inputs[1:], cfg, tmp_path / "out2", offline={"telco"})


def test_cli_simulate_three_parties_and_unpaired_options(parties: Path, tmp_path: Path) -> None:
    inputs = _inputs(parties, tmp_path)
    args = ["federate", "vertical", "simulate", "--label", str(inputs[0].party_file), "--label-data",
            str(inputs[0].data), "--label-keys", str(inputs[0].keys)]
    for inp in inputs[1:]:
        args += ["--feature", str(inp.party_file), "--feature-data", str(inp.data), "--feature-keys", str(inp.keys)]
    done = run_cli(*args, "--out", str(tmp_path / "cli"), "--epochs", "1", "--epsilon", "0", "--psi-workers", "1")
    assert done.returncode == 0, done.stderr
    assert "telco (feature party)" in done.stdout and "customers of every party" in done.stdout
    bad = run_cli(*args[:-2], "--out", str(tmp_path / "bad"))  # the telco's keys left out
    assert bad.returncode == 2 and "one --feature-data" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_synth_refuses_three_feature_parties(tmp_path: Path) -> None:
    done = run_cli("synth", "--vertical", "--feature-parties", "3", "--out", str(tmp_path / "v"))
    assert done.returncode == 2 and "--feature-parties must be 1 or 2" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "v").exists()
