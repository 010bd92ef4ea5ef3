"""Hostile input over the model commands (train, score, evaluate, curve, report, budget show), with the
same invariant and counters as tests/test_fuzz_cli.py: exit 0 or 2, one line, no traceback, nothing
outside --out changed, nothing left in --out on failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmodel.core.keys import init_keys
from tests.test_cli_train import POLICY as TRAIN_POLICY
from tests.test_cli_train import make_table
from tests.test_fuzz_cli import FUZZ, Tally, check, junk_bytes, junk_text, mutate, report, run_main, sandbox

NUMBERS = ["nan", "inf", "-inf", "0", "-1", "1e308", "abc", ""]
FAST = ["--epochs", "1", "--batch-size", "64", "--accountant", "rdp"]  # rdp calibrates in milliseconds
FEWER = settings(FUZZ, max_examples=17)  # every example of these commands is a bad input; 17 > MIN_TRIED


@pytest.fixture(scope="module")
def model_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keys, a labelled table, its policy, a trained model and the run's ledger."""
    base = tmp_path_factory.mktemp("fuzz-model")
    keys = base / "keys"
    init_keys(keys, actor="fuzzer")
    data, policy = base / "customers.csv", base / "policy.yaml"
    make_table(300).to_csv(data, index=False)
    policy.write_text(TRAIN_POLICY % {"cap": 1000.0})
    code, _, err = run_main(["train", data, "--label", "churn", "--policy", policy, "--out", base / "model",
                             "--delta", "1e-4", "--keys", keys, *FAST])
    assert code == 0, err
    return {"base": base, "keys": keys, "data": data, "policy": policy, "model": base / "model"}


def _copy(world: dict[str, Path], root: Path) -> dict[str, Path]:
    shutil.copytree(world["keys"], root / "keys")
    shutil.copytree(world["model"], root / "model")
    shutil.copy(world["data"], root / "customers.csv")
    shutil.copy(world["policy"], root / "policy.yaml")
    return {"keys": root / "keys", "model": root / "model", "data": root / "customers.csv",
            "policy": root / "policy.yaml"}


TRAIN_BREAKS = st.one_of(
    st.tuples(st.sampled_from(["--epsilon", "--delta", "--lr", "--clip", "--test-size", "--epochs", "--batch-size"]),
              st.sampled_from(NUMBERS)),
    st.tuples(st.sampled_from(["--model", "--clipping", "--accountant", "--label"]),
              st.one_of(st.sampled_from(["xyz", "", "[/x]", "churn\x00"]), junk_text)),
    st.tuples(st.just("--tune-lr"), st.sampled_from(["", "a,b", "0,1", "-1", "nan"])),
)


def test_fuzz_train(model_world, tmp_path) -> None:
    tally = Tally()
    csv_bytes = model_world["data"].read_bytes()
    policy_bytes = model_world["policy"].read_bytes()

    @FEWER
    @given(data=st.one_of(st.just(csv_bytes), mutate(csv_bytes), junk_bytes),
           policy=st.one_of(st.just(policy_bytes), mutate(policy_bytes), junk_bytes),
           breaks=st.lists(TRAIN_BREAKS, min_size=0, max_size=2),
           out_kind=st.sampled_from(["new", "existing", "input", "under-file"]))
    def run(data, policy, breaks, out_kind) -> None:
        with sandbox(tmp_path) as root:
            w = _copy(model_world, root)
            w["data"].write_bytes(data)
            w["policy"].write_bytes(policy)
            out = {"new": root / "m", "existing": w["model"], "input": w["data"],
                   "under-file": w["data"] / "m"}[out_kind]
            args = ["train", w["data"], "--label", "churn", "--policy", w["policy"], "--out", out, "--delta", "1e-4",
                    "--keys", w["keys"], *FAST]
            for option, value in breaks:
                args += [option, value]
            ledger = root / "ledger.jsonl"
            check(tally, root, args, out=out if out_kind == "new" else None, ledger=ledger,
                  may_succeed=out_kind == "new")

    run()
    report("train", tally)


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_fuzz_score_and_evaluate(model_world, tmp_path, command: str) -> None:
    tally = Tally()
    csv_bytes = model_world["data"].read_bytes()
    manifest = (model_world["model"] / "model.json").read_bytes()

    @FUZZ
    @given(data=st.one_of(st.just(csv_bytes), mutate(csv_bytes), junk_bytes),
           damage=st.sampled_from(["none", "manifest", "weights", "policy-copy", "not-a-model"]),
           junk=st.one_of(mutate(manifest), junk_bytes),
           out_kind=st.sampled_from(["new", "data", "model-dir", "existing", "policy-copy"]))
    def run(data, damage, junk, out_kind) -> None:
        with sandbox(tmp_path) as root:
            w = _copy(model_world, root)
            w["data"].write_bytes(data)
            model = w["model"]
            if damage == "manifest":
                (model / "model.json").write_bytes(junk)
            elif damage == "weights":
                (model / "model.pt").write_bytes(junk)
            elif damage == "policy-copy":
                (model / "policy.yaml").unlink()
            elif damage == "not-a-model":
                model = root
            (root / "existing.csv").write_text("mine\n")
            out = {"new": root / "scores.csv", "data": w["data"], "model-dir": model,
                   "existing": root / "existing.csv", "policy-copy": model / "policy.yaml"}[out_kind]
            args = [command, model, w["data"], "--out", out, "--keys", w["keys"]]
            check(tally, root, args, out=out if out_kind == "new" else None, ledger=root / "ledger.jsonl",
                  may_succeed=out_kind == "new")

    run()
    report(command, tally)


def test_fuzz_curve(model_world, tmp_path) -> None:
    tally = Tally()
    csv_bytes = model_world["data"].read_bytes()

    @FEWER
    @given(data=st.one_of(mutate(csv_bytes), junk_bytes),
           grid=st.one_of(st.sampled_from(["", "0", "-1", "nan", "a,b", "1,1e308", "inf", "0.5,,1"]), junk_text),
           repeats=st.sampled_from(["1", "0", "-1", "x"]))
    def run(data, grid, repeats) -> None:
        with sandbox(tmp_path) as root:
            w = _copy(model_world, root)
            w["data"].write_bytes(data)
            args = ["curve", w["data"], "--label", "churn", "--policy", w["policy"], "--out", root / "curve",
                    "--grid", grid, "--repeats", repeats, "--delta", "1e-4", "--keys", w["keys"], *FAST]
            check(tally, root, args, out=None, allowed={root / "curve"}, may_succeed=True)

    run()
    report("curve", tally)


def test_fuzz_report_and_budget_show(model_world, tmp_path) -> None:
    tallies = {"report": Tally(), "budget show": Tally()}
    ledger_bytes = (model_world["base"] / "ledger.jsonl").read_bytes()
    store_bytes = (model_world["keys"] / "budget.sqlite").read_bytes()

    @FUZZ
    @given(ledger=st.one_of(mutate(ledger_bytes), junk_bytes), store=st.one_of(mutate(store_bytes), junk_bytes),
           out_kind=st.sampled_from(["new", "ledger", "existing"]), trust=st.sampled_from(["keys", "none", "tofu"]))
    def run(ledger, store, out_kind, trust) -> None:
        with sandbox(tmp_path) as root:
            w = _copy(model_world, root)
            (root / "ledger.jsonl").write_bytes(ledger)
            (w["keys"] / "budget.sqlite").write_bytes(store)
            (root / "existing.html").write_text("mine\n")
            out = {"new": root / "r.html", "ledger": root / "ledger.jsonl", "existing": root / "existing.html"}[out_kind]
            args = ["report", root / "ledger.jsonl", "--out", out]
            args += {"keys": ["--trust", w["keys"]], "none": [], "tofu": ["--tofu"]}[trust]
            # a page is written even when verification fails (exit 2 then): only r.html may appear
            check(tallies["report"], root, args, allowed={root / "r.html"}, may_succeed=True)
            check(tallies["budget show"], root, ["budget", "show", "--keys", w["keys"]], may_succeed=True)

    run()
    for command, t in tallies.items():
        report(command, t)
