"""The HTML report: evidence checks, the failure banner, bad input, and a real browser render."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from privmodel.audit import Ledger, artifact
from privmodel.keys import init_keys, load_signer
from tests.conftest import run_cli

CHROMIUM = Path("/usr/bin/chromium")


def make_run(root: Path) -> Path:
    """A small run directory: a release report and a model card, each recorded in the ledger."""
    init_keys(root / "keys", actor="bank-a")
    ledger = Ledger(root / "ledger.jsonl", load_signer(root / "keys"))
    raw = root / "customers.csv"
    raw.write_text("id,age\n1,30\n")
    release_dir = root / "release"
    release_dir.mkdir()
    (release_dir / "release.csv").write_text("age\n[30, 39]\n")
    (release_dir / "report.json").write_text(json.dumps({
        "partner": "bank-a",
        "rows": {"input": 120, "released": 100},
        "privacy": {"algorithm": "mondrian", "required": {"k": 10},
                    "achieved": {"k": 12, "l": {"occupation": {"distinct": 3}},
                                 "class_size_histogram": {"10-19": 5, "20-49": 1}}},
        "risk": {"prosecutor_max": 1 / 12, "prosecutor_avg": 0.05, "risk_histogram": {"(0.05, 0.1]": 100}},
        "counts": {"consent_filtered": 7, "dropped_columns": ["email", "phone"]},
        "utility": {"ncp": 0.11},
    }))
    ledger.append("anonymize", inputs=[artifact(raw)],
                  outputs=[artifact(release_dir / "release.csv"), artifact(release_dir / "report.json")],
                  params={"k": 12})
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "model_card.json").write_text(json.dumps({
        "model": {"type": "logreg", "label": "churn"},
        "privacy": {"epsilon": 1.0, "delta": 1e-6, "accountant": "prv"},
        "metrics": {"comparison": {"roc_auc": {"private": 0.81, "baseline": 0.83, "difference": -0.02}},
                    "lift": [{"decile": d, "lift": 2.0 - d / 10, "cumulative_gain": min(1.0, d * 0.2)} for d in (1, 2, 3, 4, 5)],
                    "roc_curve": {"private": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]}}},
        "epsilon_history": [{"epoch": 1, "epsilon": 0.4}, {"epoch": 2, "epsilon": 0.7}, {"epoch": 3, "epsilon": 1.0}],
        "membership_inference": {"attack_auc": 0.52, "epsilon_lower_bound": 0.0, "consistent": True},
    }))
    ledger.append("budget.charge", inputs=[artifact(release_dir / "release.csv")],
                  outputs=[artifact(model_dir / "model_card.json")], privacy_cost={"epsilon": 1.0, "delta": 1e-6})
    shutil.rmtree(root / "keys")
    return root


def test_report_shows_verified_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    result = run_cli("report", str(run), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    assert '<header class="ok" id="status"><h1>All ledgers verified' in html
    assert "<tr><td>k-anonymity</td><td>10</td><td>12</td></tr>" in html
    assert "<tr><td>roc_auc</td><td>0.81</td><td>0.83</td><td>-0.02</td></tr>" in html
    assert "attack ROC-AUC (0.5 = guessing)</td><td>0.52" in html
    assert "achieved k = 12" in html and "email, phone" in html and "rows removed for missing consent: 7" in html
    # class sizes, risk bands, ROC, lift, cumulative gain, ε over training
    assert html.count("data:image/png;base64,") == 6
    assert 'alt="cumulative gain by decile"' in html
    assert "http://" not in html and "https://" not in html


def test_tampered_ledger_fails_at_the_top(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    lines = (run / "ledger.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"k":12', '"k":50')
    (run / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    result = run_cli("report", str(run / "ledger.jsonl"), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 0
    html = (tmp_path / "r.html").read_text()
    assert html.index('<header class="fail" id="status"><h1>LEDGER VERIFICATION FAILED') < html.index("<main>")
    assert "line 2 (seq 1): content does not match its hash" in html


@pytest.mark.parametrize("case", ["no ledger", "empty ledger", "other run", "missing"])
def test_bad_input_exits_2(tmp_path: Path, case: str) -> None:
    run = tmp_path / "run"
    if case == "no ledger":
        run.mkdir()
        expected = f"{run}: run directory holds no ledger.jsonl"
    elif case == "empty ledger":
        run.mkdir()
        (run / "ledger.jsonl").write_text("")
        expected = f"{run / 'ledger.jsonl'}: ledger is empty"
    elif case == "other run":
        make_run(run)
        other = make_run(tmp_path / "other")
        shutil.copy(other / "ledger.jsonl", run / "ledger.jsonl")
        shutil.copy(other / "ledger.jsonl.head", run / "ledger.jsonl.head")
        (run / "release" / "report.json").write_text('{"privacy": {"k": 99}}')
        expected = f"{run / 'release' / 'report.json'}: not recorded in any ledger under {run}"
    else:
        expected = f"{run}: no such ledger or run directory"
    result = run_cli("report", str(run), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {expected}")
    assert not (tmp_path / "r.html").exists()


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """No console errors, no network request, and a screenshot kept under the test's tmp dir."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian chromium is required (make test installs it)"
    run = make_run(tmp_path / "run")
    assert run_cli("report", str(run), "--out", str(tmp_path / "r.html")).returncode == 0
    page_url = (tmp_path / "r.html").resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_url)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            heading = page.locator("header h1").inner_text()
            images = page.locator("img").count()
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        finally:
            browser.close()
    assert errors == []
    assert requests == [page_url]
    assert heading.startswith("All ledgers verified")
    assert images >= 3 and broken == 0
    assert (tmp_path / "report.png").stat().st_size > 10_000
