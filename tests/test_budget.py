"""One budget per dataset, per organisation: every bypass of issue 10 finding 2 is refused.

Each attack runs against both stores: the default SQLite file beside the keys and a shared
PostgreSQL database (a real server started by the `postgres_server` fixture in conftest).
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from anonymize.errors import InputError
from anonymize.policy.schema import Policy
from privmodel.artifacts.ledger import Ledger, read_entries
from privmodel.core.keys import Signer, init_keys, load_signer
from privmodel.dp import budget
from privmodel.dp.budget import BudgetExceeded, Cap
from tests.conftest import run_cli

CAP = Cap(3.0, 1e-5)
POLICY = """\
version: 1
name: test-churn
%(dataset)s
purpose: {name: churn_modeling}
privacy: {k: 5}
budget: {epsilon: 3.0, delta: 1.0e-5}
columns:
  age: {role: quasi_identifier, type: integer, bounds: [18, 100]}
  churn: {role: label, type: boolean}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which store the organisation uses: the default SQLite file, or a PostgreSQL URL."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")
        monkeypatch.setenv(budget.URL_ENV, url)
    else:
        monkeypatch.delenv(budget.URL_ENV, raising=False)
    return request.param


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    init_keys(directory, actor="acme-bank")
    return directory


def _store_url(keys: Path) -> str:
    import os

    return os.environ.get(budget.URL_ENV) or f"sqlite:///{(keys / budget.STORE_FILE).resolve()}"


def _engine(keys: Path) -> sa.Engine:
    return sa.create_engine(_store_url(keys), poolclass=sa.pool.NullPool)


def _table(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)], "age": rng.integers(18, 90, n),
                          "income": rng.normal(5e4, 1e4, n).round(2), "churn": rng.random(n) < 0.3,
                          "zip_code": [f"0{z}" for z in rng.integers(1000, 9999, n)]})
    frame.to_csv(path, index=False)
    return path


# --- charging ----------------------------------------------------------------------------------


def test_charges_add_up_and_the_refusal_names_dataset_and_cap(backend: str, keys: Path, tmp_path: Path) -> None:
    asked = [0.7, 1.1, 0.2]
    for eps in asked:
        budget.charge("churn-2026", eps, 2e-6, CAP, keys=keys)
    assert budget.spent("churn-2026", keys).epsilon == pytest.approx(math.fsum(asked), abs=1e-12)
    assert budget.spent("churn-2026", keys).charges == 3
    with pytest.raises(BudgetExceeded, match=r"^privacy budget exceeded for dataset churn-2026: spent 2 \+ asked 1.5 > cap 3 \(epsilon\)$") as caught:
        budget.charge("churn-2026", 1.5, 1e-6, CAP, keys=keys)
    exc = caught.value
    assert isinstance(exc, InputError)
    assert (exc.dataset, exc.cap_epsilon, exc.cap_delta, exc.asked_epsilon) == ("churn-2026", 3.0, 1e-5, 1.5)
    assert exc.spent_epsilon == pytest.approx(2.0) and exc.spent_delta == pytest.approx(6e-6)
    record = budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)  # exactly filling the cap is allowed
    assert record.spent_before.epsilon == pytest.approx(2.0) and record.spent_after.epsilon == pytest.approx(3.0)
    assert record.as_dict()["cap"] == {"epsilon": 3.0, "delta": 1e-5} and record.as_dict()["charges"] == 4
    with pytest.raises(BudgetExceeded, match=r"dataset other: spent 0 \+ asked 2e-05 > cap 1e-05 \(delta\)"):
        budget.charge("other", 0.1, 2e-5, CAP, keys=keys)
    assert budget.spent("other", keys) == budget.Spent(0.0, 0.0, 0)  # a refusal costs nothing


def test_charge_and_refusal_are_recorded_in_the_ledger_given(backend: str, keys: Path, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl", load_signer(keys))
    record = budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=keys, ledger=ledger,
                           params={"command": "train", "accountant": "prv", "noise_multiplier": 1.3})
    with pytest.raises(BudgetExceeded):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys, ledger=ledger, params={"command": "curve"})
    entries = [e for e in read_entries(ledger.path) if e["action"] == "budget.charge"]
    assert [e["outcome"] for e in entries] == ["ok", "failed"]
    ok, failed = entries
    assert ok["seq"] == record.ledger_seq and ok["params"]["dataset"] == "churn-2026"
    assert ok["privacy_cost"]["epsilon"] == 2.5 and ok["privacy_cost"]["noise_multiplier"] == 1.3
    assert ok["privacy_cost"]["spent_after"] == {"epsilon": 2.5, "delta": 1e-6}
    assert failed["privacy_cost"] is None and "dataset churn-2026" in failed["reason"] and "cap 3" in failed["reason"]
    assert failed["params"]["asked"] == {"epsilon": 1.0, "delta": 1e-6}
    # the store records the refusal too, and `budget show` counts it
    state = budget.read_store(keys)
    assert [e["kind"] for e in state.events] == ["charge", "refusal"]
    assert state.datasets()[0].refusals == 1


@pytest.mark.parametrize(("eps", "delta", "dataset", "message"), [
    (0.0, 1e-6, "d", "epsilon must be a positive finite number"),
    (-1.0, 1e-6, "d", "epsilon must be a positive"),
    (float("nan"), 1e-6, "d", "epsilon must be a positive"),
    (1.0, -1e-6, "d", "delta must be a non-negative"),
    (1.0, 1e-6, "", "dataset id must be"),
    (1.0, 1e-6, "a b\nc", "dataset id must be"),
])
def test_bad_charge_arguments(keys: Path, eps: float, delta: float, dataset: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        budget.charge(dataset, eps, delta, CAP, keys=keys)


def test_key_material_never_reaches_the_store(keys: Path) -> None:
    with pytest.raises(InputError, match="looks like key material"):
        budget.charge("d", 1.0, 0.0, CAP, keys=keys, params={"pseudonym_secret": "00"})


def test_a_bad_store_url_is_one_line(keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(budget.URL_ENV, "not a url")
    with pytest.raises(InputError, match=r"\$PRIVMODEL_BUDGET_URL: not a database URL"):
        budget.charge("d", 1.0, 0.0, CAP, keys=keys)


# --- the bypasses of finding 2 -----------------------------------------------------------------


def test_a_second_ledger_or_output_dir_gets_no_fresh_budget(backend: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ledger` / `--out` choose where a run writes its ledger; the budget stays the organisation's
    (here the default keys dir, $PRIVMODEL_KEYS)."""
    monkeypatch.setenv("PRIVMODEL_KEYS", str(tmp_path / "org-keys"))
    signer = load_signer(budget.ensure_keys(None))
    first = Ledger((tmp_path / "out-1").joinpath("ledger.jsonl"), signer)
    first.path.parent.mkdir()
    second = Ledger((tmp_path / "elsewhere" / "out-2").joinpath("other-ledger.jsonl"), signer)
    second.path.parent.mkdir(parents=True)
    budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=None, ledger=first)
    with pytest.raises(BudgetExceeded, match=r"dataset churn-2026: spent 2.5 \+ asked 1 > cap 3 \(epsilon\)"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=None, ledger=second)
    assert budget.spent("churn-2026", tmp_path / "org-keys").epsilon == 2.5
    assert read_entries(second.path)[-1]["outcome"] == "failed"


def test_the_same_data_with_a_newline_appended_charges_the_same_budget(backend: str, keys: Path, tmp_path: Path) -> None:
    raw = _table(tmp_path / "customers.csv")
    copy = tmp_path / "copy.csv"
    copy.write_bytes(raw.read_bytes() + b"\n")
    assert raw.read_bytes() != copy.read_bytes()
    dataset = budget.dataset_of(None, raw, keys)
    assert budget.dataset_of(None, copy, keys) == dataset
    budget.charge(dataset, 2.5, 1e-6, CAP, keys=keys)
    with pytest.raises(BudgetExceeded, match=rf"dataset sha256:{dataset[:16]}: spent 2.5 \+ asked 1 > cap 3"):
        budget.charge(budget.dataset_of(None, copy, keys), 1.0, 1e-6, CAP, keys=keys)


def test_content_identity_ignores_byte_variants_but_not_values(tmp_path: Path) -> None:
    raw = _table(tmp_path / "customers.csv")
    frame = pd.read_csv(raw, dtype={"zip_code": str})
    ident = budget.content_id(raw)
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(raw.read_bytes().replace(b"\n", b"\r\n"))
    shuffled = tmp_path / "shuffled.csv"
    frame.sample(frac=1.0, random_state=1)[list(reversed(frame.columns))].to_csv(shuffled, index=False)
    parquet = tmp_path / "copy.parquet"
    pd.read_csv(raw).to_parquet(parquet)
    changed = tmp_path / "changed.csv"
    edited = frame.copy()
    edited.loc[17, "age"] = int(edited.loc[17, "age"]) + 1
    edited.to_csv(changed, index=False)
    assert budget.content_id(crlf) == ident
    assert budget.content_id(shuffled) == ident
    assert budget.content_id(parquet) == ident
    assert budget.content_id(changed) != ident
    other = tmp_path / "notes.txt"
    other.write_text("x")
    assert budget.content_id(other) is None
    # the estimator's rows in memory: the same digest as the file they were read from
    assert budget.frame_id(pd.read_csv(raw, dtype={"zip_code": str})) != ident  # "01234" is not 1234
    assert budget.frame_id(pd.read_csv(raw)) == ident
    assert budget.dataset_of_frame(None, pd.read_csv(raw), None) == ident
    assert budget.dataset_of_frame(SimpleNamespace(dataset="retail-2026"), frame, None) == "retail-2026"


def test_a_new_federated_workdir_gets_no_fresh_budget(backend: str, keys: Path, tmp_path: Path) -> None:
    """The partner's worker charges its organisation's store (its keys), not its run directory."""
    from federated.partner.worker import PartnerSpec, PartnerWorker, Refused

    data = _table(tmp_path / "silo.csv")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % {"dataset": ""})
    spec = {"name": "silo-0", "data": str(data), "policy": str(policy), "keys": str(keys)}
    first = PartnerWorker(PartnerSpec(**spec, workdir=str(tmp_path / "run-1")))
    second = PartnerWorker(PartnerSpec(**spec, workdir=str(tmp_path / "run-2")))
    first._charge(2.5, 1e-6, 3.0, 1e-5, {"command": "federate", "run_id": "a", "round": 1})
    assert second.spent() == pytest.approx(2.5)
    dataset = budget.dataset_of(None, data, keys)
    with pytest.raises(Refused, match=rf"partner silo-0 refused: privacy budget exceeded for dataset sha256:{dataset[:16]}: "
                                      r"spent 2.5 \+ asked 1 > cap 3 \(epsilon\)"):
        second._charge(1.0, 0.0, 3.0, 1e-5, {"command": "federate", "run_id": "b", "round": 1})
    refusals = [e for e in read_entries(tmp_path / "run-2" / "ledger.jsonl") if e["action"] == "budget.charge"]
    assert [e["outcome"] for e in refusals] == ["failed"]


def test_a_deleted_store_is_refused_while_its_head_remains(backend: str, keys: Path) -> None:
    budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=keys)
    if backend == "sqlite":
        (keys / budget.STORE_FILE).unlink()
    else:
        with _engine(keys).begin() as conn:
            conn.execute(sa.text("DROP TABLE privmodel_budget_events, privmodel_budget_meta"))
    for attempt in (lambda: budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys),
                    lambda: budget.spent("churn-2026", keys)):
        with pytest.raises(InputError, match=r"budget store missing or rolled back: .* does not exist but the signed "
                                             r"head .*budget.head records 1 event\(s\)"):
            attempt()
    if backend == "sqlite":
        assert not (keys / budget.STORE_FILE).exists()  # refusing did not create a fresh store


def test_a_store_rolled_back_to_an_earlier_copy_is_refused(backend: str, keys: Path, tmp_path: Path) -> None:
    budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)
    if backend == "sqlite":
        shutil.copy2(keys / budget.STORE_FILE, tmp_path / "backup.sqlite")
    budget.charge("churn-2026", 1.5, 1e-6, CAP, keys=keys)
    if backend == "sqlite":
        shutil.copy2(tmp_path / "backup.sqlite", keys / budget.STORE_FILE)
    else:  # what restoring an earlier dump does: the later events are gone, the chain is intact
        with _engine(keys).begin() as conn:
            conn.execute(sa.text("DELETE FROM privmodel_budget_events WHERE seq = 2"))
    with pytest.raises(InputError, match=r"budget store missing or rolled back: .* has 1 event\(s\) but the signed head "
                                         r".* records 2"):
        budget.charge("churn-2026", 1.5, 1e-6, CAP, keys=keys)


def test_another_store_put_in_its_place_is_refused(keys: Path, tmp_path: Path) -> None:
    """A fresh store signed with the same key (e.g. made elsewhere, then copied in) is not this store."""
    other_keys = tmp_path / "copy-of-keys"
    shutil.copytree(keys, other_keys)
    budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=keys)
    budget.charge("unrelated", 0.1, 0.0, CAP, keys=other_keys)
    budget.charge("unrelated", 0.1, 0.0, CAP, keys=other_keys)
    shutil.copy2(other_keys / budget.STORE_FILE, keys / budget.STORE_FILE)
    with pytest.raises(InputError, match="budget store missing or rolled back: .* not the store the signed head"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)


def _resign(row: dict, signer: Signer, store_id: str) -> dict:
    body = {k: row[k] for k in budget._HASHED}
    body["params"] = json.loads(row["params"])
    body["key_id"] = signer.key_id
    digest = budget._hash(body, store_id)
    return {"key_id": signer.key_id, "hash": digest,
            "signature": base64.b64encode(signer.sign(digest.encode())).decode()}


def test_a_row_re_signed_with_another_key_is_refused(backend: str, keys: Path) -> None:
    budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=keys)
    intruder = Signer.generate("intruder")
    events, meta = budget.EVENTS, budget.META
    with _engine(keys).begin() as conn:
        store_id = conn.execute(sa.select(meta.c.store_id)).scalar_one()
        row = dict(conn.execute(sa.select(events).where(events.c.seq == 1)).mappings().one())
        row["epsilon"] = 0.1  # free up budget, and make the row self-consistent under another key
        conn.execute(events.update().where(events.c.seq == 1).values(epsilon=0.1, **_resign(row, intruder, store_id)))
    with pytest.raises(InputError, match=r"event 1 is not signed by the organisation's key"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)
    result = run_cli("budget", "show", "--keys", str(keys))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "event 1 is not signed by the organisation's key" in result.stderr


def test_an_edited_or_deleted_event_is_refused(backend: str, keys: Path) -> None:
    for eps in (1.0, 0.5, 0.5):
        budget.charge("churn-2026", eps, 1e-6, CAP, keys=keys)
    events = budget.EVENTS
    with _engine(keys).begin() as conn:
        conn.execute(events.update().where(events.c.seq == 2).values(epsilon=0.01))
    with pytest.raises(InputError, match=r"event 2 was edited"):
        budget.spent("churn-2026", keys)
    with _engine(keys).begin() as conn:
        conn.execute(events.delete().where(events.c.seq == 2))
    with pytest.raises(InputError, match=r"event 2 is missing \(deleted\)"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)


def test_the_whole_store_re_signed_by_another_key_is_refused(keys: Path, tmp_path: Path) -> None:
    """Rebuild store and head with an intruder's key: verification uses the keys dir's public key."""
    budget.charge("churn-2026", 2.5, 1e-6, CAP, keys=keys)
    forged = tmp_path / "forged-keys"
    init_keys(forged, actor="intruder")
    budget.charge("churn-2026", 0.1, 1e-6, CAP, keys=forged)
    shutil.copy2(keys / budget.STORE_FILE, tmp_path / "original.sqlite")
    shutil.copy2(forged / budget.STORE_FILE, keys / budget.STORE_FILE)
    shutil.copy2(forged / budget.HEAD_FILE, keys / budget.HEAD_FILE)
    with pytest.raises(InputError, match=r"store record is not signed by the organisation's key"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)
    (keys / budget.HEAD_FILE).unlink()  # without the head, the forged store itself still fails
    with pytest.raises(InputError, match=r"store record is not signed by the organisation's key"):
        budget.spent("churn-2026", keys)
    shutil.copy2(tmp_path / "original.sqlite", keys / budget.STORE_FILE)  # the true store, a forged head
    shutil.copy2(forged / budget.HEAD_FILE, keys / budget.HEAD_FILE)
    with pytest.raises(InputError, match=r"budget.head: budget head is not signed by the organisation's key"):
        budget.charge("churn-2026", 1.0, 1e-6, CAP, keys=keys)


def test_concurrent_charges_never_pass_the_cap(backend: str, keys: Path) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        try:
            budget.charge("churn-2026", 1.0, 1e-7, CAP, keys=keys)
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    state = budget.read_store(keys)
    assert state.spent("churn-2026") == budget.Spent(3.0, pytest.approx(3e-7), 3)
    assert [e["seq"] for e in state.events] == list(range(1, 9))


def _charge_in_process(keys: str) -> str:
    from privmodel.dp import budget as b

    try:
        b.charge("churn-2026", 1.0, 0.0, b.Cap(3.0, 1e-5), keys=keys)
        return "ok"
    except b.BudgetExceeded:
        return "refused"


def test_concurrent_processes_never_pass_the_cap(keys: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_charge_in_process, [str(keys)] * 6))
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 3
    assert budget.spent("churn-2026", keys).epsilon == 3.0


# --- identity: declared id and lineage ---------------------------------------------------------


def test_the_policy_declares_the_dataset_id(tmp_path: Path, keys: Path) -> None:
    data = _table(tmp_path / "customers.csv")
    policy = Policy.from_yaml_text(POLICY % {"dataset": "dataset: retail-customers-2026"})
    assert budget.dataset_of(policy, data, keys) == "retail-customers-2026"
    other = _table(tmp_path / "other.csv", seed=3)
    assert budget.dataset_of(policy, other, keys) == "retail-customers-2026"  # the declaration names the dataset
    assert budget.dataset_of(Policy.from_yaml_text(POLICY % {"dataset": ""}), data, keys) == budget.content_id(data)
    with pytest.raises(InputError, match="dataset"):
        Policy.from_yaml_text(POLICY % {"dataset": "dataset: 'two words'"})


def test_a_derived_file_charges_its_source_through_lineage(backend: str, keys: Path, tmp_path: Path) -> None:
    raw = _table(tmp_path / "customers.csv")
    source = budget.dataset_of(None, raw, keys)
    release = tmp_path / "release.csv"
    pd.read_csv(raw).drop(columns=["customer_id"]).head(150).to_csv(release, index=False)
    split = tmp_path / "train.parquet"
    pd.read_csv(release).head(100).to_parquet(split)
    assert budget.dataset_of(None, release, keys) != source  # no lineage yet: a different table
    assert budget.record_lineage(source, release, keys) == source
    from privmodel.core.fileio import sha256_file

    assert budget.record_lineage(budget.dataset_of(None, release, keys), sha256_file(split), keys) == source
    assert budget.dataset_of(None, release, keys) == source
    assert budget.dataset_of(None, split, keys) == source
    moved = tmp_path / "release-copy.csv"
    moved.write_bytes(release.read_bytes() + b"\n")  # a byte variant of the derived file follows too
    assert budget.dataset_of(None, moved, keys) == source
    # lineage cannot be re-pointed to a fresh budget
    assert budget.record_lineage("fresh-dataset", release, keys) == "fresh-dataset"
    assert budget.dataset_of(None, release, keys) == source
    budget.charge(source, 2.5, 1e-6, CAP, keys=keys)
    with pytest.raises(BudgetExceeded, match=rf"dataset sha256:{source[:16]}: spent 2.5"):
        budget.charge(budget.dataset_of(None, split, keys), 1.0, 1e-6, CAP, keys=keys)


def test_lineage_records_are_part_of_the_signed_chain(keys: Path, tmp_path: Path) -> None:
    raw = _table(tmp_path / "customers.csv")
    release = tmp_path / "release.csv"
    pd.read_csv(raw).head(50).to_csv(release, index=False)
    budget.record_lineage(raw, release, keys)  # a Path source: its identity is computed
    budget.charge(budget.dataset_of(None, raw, keys), 1.0, 0.0, CAP, keys=keys)
    with _engine(keys).begin() as conn:  # deleting the lineage to give the release a fresh budget
        conn.execute(budget.EVENTS.delete().where(budget.EVENTS.c.kind == "lineage"))
    with pytest.raises(InputError, match="event 1 is missing"):
        budget.dataset_of(None, release, keys)


# --- budget show -------------------------------------------------------------------------------


def test_budget_show_prints_spent_and_cap_per_dataset(keys: Path, tmp_path: Path) -> None:
    empty = run_cli("budget", "show", "--keys", str(keys))
    assert empty.returncode == 0 and "nothing has been charged" in empty.stdout
    digest = budget.content_id(_table(tmp_path / "customers.csv"))
    budget.charge("churn-2026", 1.25, 2e-6, CAP, keys=keys)
    budget.charge("churn-2026", 0.5, 1e-6, CAP, keys=keys)
    budget.charge(digest, 0.75, 0.0, Cap(2.0, 1e-6), keys=keys)
    with pytest.raises(BudgetExceeded):
        budget.charge(digest, 2.0, 0.0, Cap(2.0, 1e-6), keys=keys)
    result = run_cli("budget", "show", "--keys", str(keys), env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    assert rows["churn-2026"] == ["1.75", "3", "3e-06", "1e-05", "2", "0"]
    assert rows[f"sha256:{digest[:16]}"] == ["0.75", "2", "0", "1e-06", "1", "1"]
    assert "chain verified: 4 event(s)" in result.stdout
    with _engine(keys).begin() as conn:
        conn.execute(budget.EVENTS.update().where(budget.EVENTS.c.seq == 2).values(epsilon=0.0))
    broken = run_cli("budget", "show", "--keys", str(keys))
    assert broken.returncode == 2
    assert broken.stderr.strip() == (f"error: budget store {budget.DEFAULT_LOCATION}: event 2 was edited "
                                     "(content does not match its hash)")


def test_spent_without_a_store_is_zero_and_creates_nothing(keys: Path) -> None:
    assert budget.spent("churn-2026", keys) == budget.Spent(0.0, 0.0, 0)
    assert budget.dataset_of(SimpleNamespace(dataset=None), keys / "keys.json", keys)  # a non-table file: its sha256
    assert not (keys / budget.STORE_FILE).exists()
