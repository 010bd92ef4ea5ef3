"""Private set intersection: exact against a plain set intersection, nothing else in any message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anonymize.errors import InputError
from federated.vertical.channel import Channel, PartyDropped
from federated.vertical.party import load_party, normalised_keys
from federated.vertical.psi import OverlapTooSmall, Pool, PsiSide, intersect
from privmodel.data.synth.vertical import generate_vertical, party_policies


def _sides(a: list[str], b: list[str], min_overlap: int = 1) -> tuple[PsiSide, PsiSide]:
    pool = Pool(workers=1, batch=700)
    return PsiSide("bank", a, min_overlap, pool), PsiSide("retailer", b, min_overlap, pool)


def test_matches_plain_intersection_in_one_order() -> None:
    rng = np.random.default_rng(5)
    a = [f"c{i}@mail.test" for i in rng.choice(5000, 1500, replace=False)]
    b = [f"c{i}@mail.test" for i in rng.choice(5000, 1800, replace=False)]
    left, right = _sides(a, b)
    channel = Channel()
    res_a, res_b = intersect(left, right, channel)
    assert set(a[i] for i in res_a.rows) == set(a) & set(b) == set(b[i] for i in res_b.rows)
    assert [a[i] for i in res_a.rows] == [b[i] for i in res_b.rows]  # the same order on both sides
    assert res_a.size == len(set(a) & set(b)) and res_a.digest == res_b.digest
    assert set(res_a.ledger_params()) == {"intersection_size", "intersection_sha256", "own_rows", "other_rows",
                                          "protocol"}


def test_messages_carry_no_key_hash_or_row_number() -> None:
    a = [f"alice{i}@bank.test" for i in range(400)]
    b = [f"alice{i}@bank.test" for i in range(200, 700)]
    left, right = _sides(a, b)
    channel = Channel()
    intersect(left, right, channel)
    assert [m.kind for m in channel.log] == ["psi.request", "psi.request", "psi.tokens", "psi.tokens",
                                             "psi.done", "psi.done"]
    wire = b"".join(m.payload for m in channel.log)
    for key in a + b:
        raw = key.encode()
        assert raw not in wire
        assert hashlib.sha256(raw).digest()[:8] not in wire and hashlib.sha256(raw).hexdigest()[:16].encode() not in wire
    # a non-member's request point is not what a member's point would be under the other's key
    assert len(channel.log[0].payload) < 400 * 33 + 200


def test_overlap_below_minimum_is_refused() -> None:
    a = [f"k{i}" for i in range(300)]
    b = [f"k{i}" for i in range(290, 600)]
    left, right = _sides(a, b, min_overlap=50)
    with pytest.raises(OverlapTooSmall, match="overlap of 10 customers, below its policy's min_overlap 50"):
        intersect(left, right, Channel())


def test_a_dropped_party_ends_the_run_with_its_name() -> None:
    left, right = _sides(["a", "b"], ["b", "c"])
    with pytest.raises(PartyDropped, match="party 'retailer' dropped out during psi.request"):
        intersect(left, right, Channel(offline={"retailer"}))


def test_pool_over_processes_gives_the_same_intersection() -> None:
    a = [f"p{i}" for i in range(0, 900)]
    b = [f"p{i}" for i in range(600, 1500)]
    with Pool(workers=2, batch=250) as pool:
        res_a, res_b = intersect(PsiSide("bank", a, 1, pool), PsiSide("retailer", b, 1, pool), Channel())
    assert sorted(a[i] for i in res_a.rows) == sorted(set(a) & set(b))
    assert [a[i] for i in res_a.rows] == [b[i] for i in res_b.rows]


def _write_parties(tmp_path: Path) -> None:
    import yaml

    for name, doc in party_policies(10).items():
        (tmp_path / name).write_text(yaml.safe_dump(doc, sort_keys=False))


def test_party_normalisation_joins_differently_formatted_ids(tmp_path: Path) -> None:
    _write_parties(tmp_path)
    data = generate_vertical(1200, seed=4)
    bank, shop = load_party(tmp_path / "bank.party.yaml"), load_party(tmp_path / "retailer.party.yaml")
    keys_b = normalised_keys(data.bank.to_pandas(), bank)
    keys_r = normalised_keys(data.retailer.to_pandas(), shop)
    assert len(set(keys_b) & set(keys_r)) == data.shared
    raw = set(data.bank.column("national_id").to_pylist()) & set(data.retailer.column("national_id").to_pylist())
    assert not raw  # the formats differ; only the declared normalisation joins them


def test_party_file_problems_are_one_line(tmp_path: Path) -> None:
    _write_parties(tmp_path)
    shop = load_party(tmp_path / "retailer.party.yaml")
    frame = pd.DataFrame({"email": ["a@x", "A@X ", "b@x"], "national_id": ["1", "1", "2"]})
    with pytest.raises(InputError, match="1 row\\(s\\) repeat another row's join key"):
        normalised_keys(frame, shop)
    with pytest.raises(InputError, match="join key 'email' is not a column"):
        normalised_keys(frame.drop(columns=["email"]), shop)
    (tmp_path / "bad.party.yaml").write_text("version: 1\nparty: x\nrole: boss\npolicy: p.yaml\njoin: {}\nmin_overlap: 1\n")
    with pytest.raises(InputError, match="bad.party.yaml: role"):
        load_party(tmp_path / "bad.party.yaml")
