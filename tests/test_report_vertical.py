"""`privmodel report` on a vertical run: the label party's card as a section, shown only when a ledger records it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from federated.vertical.split import SplitConfig
from federated.vertical.workflow import PartyInput, simulate
from privmodel.artifacts.ledger import Ledger, artifact
from privmodel.artifacts.report.evidence import Artifact, Evidence
from privmodel.artifacts.report.sections import eps_text, vertical_section
from privmodel.artifacts.report.summary import costs, summarise
from privmodel.core.keys import init_keys, load_signer
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def vertical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast two-party run (one-shot release protocol, reproducible test noise): ROOT/out and ROOT/keys-*."""
    root = tmp_path_factory.mktemp("vertical-report")
    done = run_cli("synth", "--vertical", "--customers", "1500", "--out", str(root / "data"), "--seed", "5")
    assert done.returncode == 0, done.stderr
    parties = []
    for name in ("bank", "retailer"):
        init_keys(root / f"keys-{name}", actor=name)
        parties.append(PartyInput(root / "data" / f"{name}.party.yaml", root / "data" / f"{name}.parquet",
                                  root / f"keys-{name}"))
    simulate(parties[0], parties[1], SplitConfig(epsilon=2.0, epochs=3, protocol="release", insecure_seed=4),
             root / "out")
    return root


def _copy(run: Path, tmp: Path) -> Path:
    """A private copy of the run (its keys beside it), so a test may forge files without touching the others'."""
    shutil.copytree(run / "out", tmp / "out")
    for name in ("bank", "retailer"):
        shutil.copytree(run / f"keys-{name}", tmp / f"keys-{name}")
    return tmp / "out"


def _report(root: Path, out: Path) -> tuple[int, str, str, str]:
    """Run the CLI as a user would; the page's text ("" when none was written)."""
    done = run_cli("report", str(out), "--trust", str(root / "keys-bank"), "--trust", str(root / "keys-retailer"),
                   "--out", str(root / "report.html"))
    page = (root / "report.html").read_text(encoding="utf-8") if (root / "report.html").exists() else ""
    return done.returncode, done.stdout, done.stderr, page


def test_report_shows_every_partys_epsilon_and_the_overlap(vertical_run: Path, tmp_path: Path) -> None:
    out = _copy(vertical_run, tmp_path)
    other = out / "elsewhere" / "card.json"  # another tool's card.json, not a vertical card: left alone
    other.parent.mkdir()
    other.write_text(json.dumps({"kind": "poster", "epsilon": 99.5}))
    code, stdout, stderr, page = _report(tmp_path, out)
    assert code == 0, stderr
    assert "1 vertical model(s)" in stdout
    card = json.loads((out / "bank" / "card.json").read_text())
    assert "<h2>Vertical model (vertical one-shot release)</h2>" in page
    for name, party in card["parties"].items():
        assert 1.9 < party["epsilon"] <= 2.0
        cells = f"<td>{name}</td><td>{party['role']}</td><td>{eps_text(party['epsilon'])}</td>"
        assert cells in page  # the parties table: name, role, ε as the card records it
        assert f"vertical party {name}: NOT differentially private: reproducible test noise" in page  # costs
    assert f"<td>overlap: shared customers</td><td>{card['overlap']['size']}</td>" in page
    assert f"<td>{card['overlap']['share_of_label_party']:.1%}</td>" in page
    assert card["overlap"]["sha256"][:16] in page
    assert f"<td>{card['metrics']['roc_auc']:.4g}</td>" in page
    assert "Released without DP: the intersection size (PSI reveals it to both parties)" in page
    assert "Scoring: the held-out customers were scored" in page
    assert "99.5" not in page and "poster" not in page
    # insecure test noise is not DP: the budget control says so rather than passing
    assert "vertical party retailer: NOT differentially private" in page.split('id="controls"')[1]


def test_an_edited_card_is_refused_not_shown(vertical_run: Path, tmp_path: Path) -> None:
    out = _copy(vertical_run, tmp_path)
    path = out / "bank" / "card.json"
    card = json.loads(path.read_text())
    card["parties"]["retailer"]["epsilon"] = 0.0123
    path.write_text(json.dumps(card))
    code, stdout, stderr, page = _report(tmp_path, out)
    assert code == 2
    assert "card.json: not recorded in any ledger" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert page == "" and "0.0123" not in stdout + stderr


HOSTILE = [
    {"kind": "vertical <script>alert(1)</script>", "parties": [{"name": "<script>p</script>", "epsilon": 1.0}],
     "overlap": "<script>o</script>", "metrics": [1, 2], "noise_multipliers": "<b>", "private": "yes",
     "released_without_dp": "<script>r</script>", "scoring": {"<script>": [None, math.inf]}},
    {"kind": "vertical split learning",
     "parties": {"<script>n</script>": {"role": ["<i>"], "epsilon": "lots", "delta": {"a": [1]}, "covers": None,
                                        "budget": {"spent_after": "<script>b</script>", "cap": 3}},
                 "plain": "<img src=x onerror=alert(1)>"},
     "overlap": {"size": "<script>s</script>", "share_of_label_party": "most", "sha256": 7, "pairs": "x"},
     "metrics": {"roc_auc": "<script>a</script>", "test_customers": [], "train_customers": {}},
     "noise": ["INSECURE"], "model_hash": None, "released_without_dp": [["<script>", 1], {"k": "<u>"}]},
]


def test_hostile_card_fields_render_as_text(vertical_run: Path, tmp_path: Path) -> None:
    """A ledger signed by a party's own key can vouch for any card: every field renders as escaped text."""
    out = _copy(vertical_run, tmp_path)
    files = []
    for i, card in enumerate(HOSTILE):
        path = out / f"hostile-{i}" / "card.json"
        path.parent.mkdir()
        path.write_text(json.dumps(card))
        files.append(artifact(path))
    Ledger(out / "bank" / "ledger.jsonl", load_signer(tmp_path / "keys-bank")).append("vertical.train", outputs=files)
    code, stdout, stderr, page = _report(tmp_path, out)
    assert code == 0, stderr
    assert "3 vertical model(s)" in stdout
    assert "<script" not in page and "<img" not in page and "<b>" not in page and "<i>" not in page
    assert "Vertical model (vertical &lt;script&gt;alert(1)&lt;/script&gt;)" in page
    assert "<td>&lt;script&gt;n&lt;/script&gt;</td>" in page and "<td>lots</td>" in page
    assert "Released without DP: &lt;script&gt;r&lt;/script&gt;." in page


@pytest.mark.parametrize("value", [None, "<x>", 0, -1.5, math.nan, math.inf, True, [], {}, [1, {"a": None}],
                                   {"epsilon": {"x": [[]]}}])
def test_any_field_of_any_type_makes_a_section(value: object) -> None:
    """The section and the summary read the card through tolerant accessors: no field type crashes them."""
    good: dict[str, Any] = {"kind": "vertical split learning", "model_hash": "ab" * 32, "noise": "secure", "private": True,
            "parties": {"bank": {"role": "label", "epsilon": 1.0, "delta": 1e-6, "covers": "columns",
                                 "budget": {"spent_after": {"epsilon": 1.0}, "cap": {"epsilon": 3.0}}}},
            "overlap": {"size": 10, "sha256": "cd" * 32, "share_of_label_party": 0.5, "pairs": []},
            "metrics": {"roc_auc": 0.7, "test_customers": 3, "train_customers": 7},
            "noise_multipliers": {"embedding": 1.1}, "released_without_dp": ["x"], "scoring": "y"}
    paths: list[tuple[str, ...]] = [(k,) for k in good] + [("parties", "bank"), *(("parties", "bank", k) for k in good["parties"]["bank"])]
    paths += [("overlap", k) for k in good["overlap"]] + [("metrics", k) for k in good["metrics"]]
    paths += [("parties", "bank", "budget", "spent_after"), ("parties", "bank", "budget", "cap")]
    for path in paths:
        card = json.loads(json.dumps(good))
        holder: Any = card
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = value
        item = Artifact(Path("/run/bank/card.json"), "0" * 64, card, {"seq": 3, "action": "vertical.train"})
        section = vertical_section(item)
        assert section.title.startswith("Vertical model") and len(section.tables) == 2
        evidence = Evidence(Path("/run"), [], vertical=[item])
        assert all(isinstance(line, str) for line in costs(evidence))
        summarise(evidence)
