"""The HTML report: evidence checks, the failure banner, bad input, and a real browser render."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from privmodel.artifacts.ledger import Ledger, artifact
from privmodel.core.keys import init_keys, load_signer
from tests.conftest import run_cli

CHROMIUM = Path("/usr/bin/chromium")


def trusted_key(run: Path) -> Path:
    """The run's public key, kept beside (not inside) the run directory: what an auditor trusts."""
    return run.with_name(run.name + ".pub")


def make_run(root: Path) -> Path:
    """A small run directory: a release report and a model card, each recorded in the ledger."""
    init_keys(root / "keys", actor="bank-a")
    shutil.copy(root / "keys" / "signing.pub", trusted_key(root))
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
                  outputs=[artifact(model_dir / "model_card.json")],
                  params={"dataset_sha256": artifact(raw)["sha256"], "cap": {"epsilon": 3.0, "delta": 1e-5}},
                  privacy_cost={"epsilon": 0.99, "delta": 1e-6, "spent_after": {"epsilon": 0.99, "delta": 1e-6}})
    shutil.rmtree(root / "keys")
    return root


def report(run: Path, out: Path, *flags: str):
    return run_cli("report", str(run), "--out", str(out), *flags)


def controls(html: str) -> dict[str, str]:
    """control name -> 'STATUS: details' from the summary table (tags stripped)."""
    import re

    table = html[html.index('<table id="controls">'):]
    table = table[:table.index("</table>")]
    rows = {}
    for row in re.findall(r"<tr><td>(.*?)</td><td class=\"\w+\">(.*?)</td>\s*<td>(.*?)</td>", table, re.S):
        rows[row[0]] = f"{row[1]}: {row[2]}"
    return rows


def test_report_shows_verified_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    result = report(run, tmp_path / "r.html", "--trust", str(trusted_key(run)))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    assert '<header class="ok" id="status"><h1>All ledgers verified against trusted keys' in html
    # the compliance summary is the first thing under the banner
    assert html.index('<section id="summary">') < html.index("<h2>Ledger verification</h2>")
    assert "<tr><td>k-anonymity</td><td>10</td><td>12</td></tr>" in html
    assert "<tr><td>roc_auc</td><td>0.81</td><td>0.83</td><td>-0.02</td></tr>" in html
    assert "attack ROC-AUC (0.5 = guessing)</td><td>0.52" in html
    budget = f"dataset with SHA-256 {artifact(run / 'customers.csv')['sha256'][:12]}… (bank-a): ε 0.99 of 3.0 spent"
    assert budget in html
    shown = controls(html)
    assert shown["k-anonymity / l-diversity / t-closeness on quasi-identifiers"] == (
        "PASSED: bank-a: k 12 (required 10) — computed on the released data")
    assert shown["Data minimisation"] == "PASSED: bank-a: columns dropped for the purpose: email, phone"
    assert shown["Consent filter for the purpose"] == "PASSED: bank-a: rows removed for missing consent: 7"
    assert shown["Differential privacy budget"].startswith(f"PASSED: {budget}")
    assert shown["Tamper-evident audit trail"].startswith("PASSED: 1 ledger(s) verified against trusted key(s) ")
    # the release report of make_run does not say how identifiers were treated: not shown as passed
    assert shown["Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)"].startswith("NOT EVIDENCED")
    # class sizes, risk bands, ROC, lift, cumulative gain, ε over training
    assert html.count("data:image/png;base64,") == 6
    assert 'alt="cumulative gain by decile"' in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html


def test_trust_on_first_use_is_never_green(tmp_path: Path) -> None:
    """--tofu: intact, but authorship unchecked (amber); no trust at all: the ledgers fail (exit 2)."""
    run = make_run(tmp_path / "run")
    tofu = report(run, tmp_path / "tofu.html", "--tofu")
    assert tofu.returncode == 0, tofu.stderr
    html = (tmp_path / "tofu.html").read_text()
    assert '<header class="tofu" id="status"><h1>All ledgers verified against their own keys only' in html
    assert controls(html)["Tamper-evident audit trail"].startswith("NOT VERIFIED AGAINST TRUSTED KEYS: 1 ledger(s)")
    none = report(run, tmp_path / "none.html")
    assert none.returncode == 2
    assert none.stderr.count("\n") == 1 and "ledger verification failed" in none.stderr
    html = (tmp_path / "none.html").read_text()
    assert '<header class="fail" id="status"><h1>LEDGER VERIFICATION FAILED' in html
    both = report(run, tmp_path / "both.html", "--tofu", "--trust", str(trusted_key(run)))
    assert both.returncode == 2 and both.stderr == "error: give either --trust KEYS or --tofu, not both\n"


def test_ledger_signed_by_another_key_fails_against_trusted_keys(tmp_path: Path) -> None:
    """A whole run re-made and re-signed by an attacker's key: red with --trust, at best amber with --tofu."""
    real = make_run(tmp_path / "real")
    forged = make_run(tmp_path / "forged")  # its own fresh key
    result = report(forged, tmp_path / "r.html", "--trust", str(trusted_key(real)))
    assert result.returncode == 2
    assert "signed by" in result.stderr or "untrusted" in result.stderr, result.stderr
    html = (tmp_path / "r.html").read_text()
    assert '<header class="fail" id="status">' in html and 'class="ok"' not in html
    assert controls(html)["Tamper-evident audit trail"].startswith("FAILED: ledger verification FAILED")
    tofu = report(forged, tmp_path / "t.html", "--tofu")
    assert tofu.returncode == 0 and '<header class="tofu" id="status">' in (tmp_path / "t.html").read_text()


def test_trust_accepts_a_keys_directory(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    keys = tmp_path / "auditor-keys"
    keys.mkdir()
    shutil.copy(trusted_key(run), keys / "signing.pub")
    result = report(run, tmp_path / "r.html", "--trust", str(keys))
    assert result.returncode == 0, result.stderr
    assert '<header class="ok" id="status">' in (tmp_path / "r.html").read_text()


def test_tampered_ledger_fails_at_the_top(tmp_path: Path) -> None:
    """Behaviour change (issue 11): the page is still written, and the command exits 2 with one line."""
    run = make_run(tmp_path / "run")
    lines = (run / "ledger.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"k":12', '"k":50')
    (run / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    result = report(run / "ledger.jsonl", tmp_path / "r.html", "--trust", str(trusted_key(run)))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {run / 'ledger.jsonl'}: ledger verification failed (line 2 (seq 1): ")
    assert result.stderr.count("\n") == 1
    html = (tmp_path / "r.html").read_text()
    assert html.index('<header class="fail" id="status"><h1>LEDGER VERIFICATION FAILED') < html.index("<main>")
    assert "line 2 (seq 1): content does not match its hash" in html


@pytest.mark.parametrize("case", ["no ledger", "empty ledger", "other run", "missing", "unreadable ledger",
                                  "bad keyring"])
def test_bad_input_exits_2(tmp_path: Path, case: str) -> None:
    run = tmp_path / "run"
    flags = ["--tofu"]
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
    elif case == "unreadable ledger":
        (run / "ledger.jsonl").mkdir(parents=True)  # root reads any mode: a directory is what cannot be read
        expected = f"{run / 'ledger.jsonl'}: is a directory, not a ledger"
    elif case == "bad keyring":
        make_run(run)
        (tmp_path / "keyring").write_text("not a key\n")
        flags = ["--trust", str(tmp_path / "keyring")]
        expected = f"{tmp_path / 'keyring'}: line 1"
    else:
        expected = f"{run}: no such ledger or run directory"
    result = report(run, tmp_path / "r.html", *flags)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {expected}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("target", ["ledger", "head", "artifact", "run dir", "symlink to ledger", "trusted key"])
def test_out_equal_to_an_input_is_refused(tmp_path: Path, target: str) -> None:
    run = make_run(tmp_path / "run")
    before = {p: p.read_bytes() for p in [run / "ledger.jsonl", run / "ledger.jsonl.head",
                                          run / "release" / "report.json", trusted_key(run)]}
    out = {"ledger": run / "ledger.jsonl", "head": run / "ledger.jsonl.head",
           "artifact": run / "release" / "report.json", "run dir": run,
           "symlink to ledger": tmp_path / "link.html", "trusted key": trusted_key(run)}[target]
    if target == "symlink to ledger":
        out.symlink_to(run / "ledger.jsonl")
    result = report(run, out, "--trust", str(trusted_key(run)))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert ("is one of the report's inputs" in result.stderr) or ("is a directory" in result.stderr), result.stderr
    assert {p: p.read_bytes() for p in before} == before


def _release(pseudonymization: object, consent_column: object, privacy: dict) -> dict:
    return {"partner": "bank-a", "rows": {"input": 50, "released": 50}, "columns": ["age", "churn"],
            "pseudonymization": pseudonymization, "privacy": privacy,
            "steps": [{"step": "purpose", "consent_column": consent_column, "removed": {}}],
            "counts": {"consent_filtered": 0, "dropped_columns": []}}


def _run_with(root: Path, release: dict, card: dict | None = None) -> Path:
    init_keys(root / "keys", actor="bank-a")
    shutil.copy(root / "keys" / "signing.pub", trusted_key(root))
    ledger = Ledger(root / "ledger.jsonl", load_signer(root / "keys"))
    (root / "release").mkdir()
    (root / "release" / "report.json").write_text(json.dumps(release))
    outputs = [artifact(root / "release" / "report.json")]
    if card is not None:
        (root / "model").mkdir()
        (root / "model" / "model_card.json").write_text(json.dumps(card))
        outputs.append(artifact(root / "model" / "model_card.json"))
    ledger.append("anonymize", outputs=outputs)
    shutil.rmtree(root / "keys")
    return root


def test_controls_that_did_not_run_read_not_applicable(tmp_path: Path) -> None:
    """Issue 10 finding 8: no identifier, no consent column, no quasi-identifier -> never 'passed'."""
    run = _run_with(tmp_path / "run", _release({}, None, {
        "applicable": False, "required": {"k": 5},
        "note": "no quasi-identifier is released: k-anonymity, l-diversity and t-closeness do not apply"}))
    result = report(run, tmp_path / "r.html", "--trust", str(trusted_key(run)))
    assert result.returncode == 0, result.stderr
    shown = controls((tmp_path / "r.html").read_text())
    assert shown["Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)"] == (
        "NOT APPLICABLE: bank-a: not applicable — the policy declares no identifier")
    assert shown["Consent filter for the purpose"] == (
        "NOT APPLICABLE: bank-a: not applicable — no consent column (the policy&#39;s purpose declares none)")
    assert shown["k-anonymity / l-diversity / t-closeness on quasi-identifiers"] == (
        "NOT APPLICABLE: bank-a: not applicable — no quasi-identifier is released: k-anonymity, l-diversity and "
        "t-closeness do not apply")
    assert shown["Differential privacy budget"] == (
        "NOT APPLICABLE: not applicable — no model was trained with differential privacy in this run")
    assert shown["Data minimisation"].startswith("PASSED: bank-a: every column of the input is declared")


def test_controls_that_ran_and_missed_read_failed(tmp_path: Path) -> None:
    """t = 0.302 against a required 0.3 (issue 10 finding 6) and a model that is not DP both fail."""
    privacy = {"applicable": True, "required": {"k": 10, "l": {"value": 2, "variant": "distinct"}, "t": 0.3},
               "achieved": {"k": 11, "l": {"occupation": {"distinct": 3, "entropy": 2.5}},
                            "t": {"occupation": 0.3019}}}
    card = {"model": {"type": "logreg", "label": "churn"}, "privacy": {"epsilon": None, "delta": 1e-6,
                                                                      "private": False}}
    run = _run_with(tmp_path / "run", _release({"customer_id": {"method": "token"}}, "consent_analytics", privacy),
                    card)
    result = report(run, tmp_path / "r.html", "--trust", str(trusted_key(run)))
    assert result.returncode == 0, result.stderr
    shown = controls((tmp_path / "r.html").read_text())
    assert shown["k-anonymity / l-diversity / t-closeness on quasi-identifiers"] == (
        "FAILED: bank-a: NOT MET: t 0.3019 (required at most 0.3)")
    assert shown["Differential privacy budget"].startswith(
        "FAILED: model “model”: NOT differentially private (no finite ε)")
    assert shown["Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)"] == (
        "PASSED: bank-a: customer_id (keyed token)")
    assert shown["Consent filter for the purpose"] == (
        "PASSED: bank-a: rows removed for missing consent: 0 (column consent_analytics)")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """No console errors, no network request, and a screenshot kept under the test's tmp dir."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian chromium is required (make test installs it)"
    run = make_run(tmp_path / "run")
    assert report(run, tmp_path / "r.html", "--trust", str(trusted_key(run))).returncode == 0
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
    assert heading.startswith("All ledgers verified against trusted keys")
    assert images >= 3 and broken == 0
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_budget_per_dataset_in_words(tmp_path: Path) -> None:
    """Two organisations' ledgers: spent / cap per dataset in words; a refused charge is counted; a
    charge with no recorded cap is not evidence that a cap was enforced."""
    run = tmp_path / "run"
    keyring = tmp_path / "keyring.pem"
    pems = []
    for org in ("bank-a", "bank-b"):
        init_keys(tmp_path / f"{org}-keys", actor=org)
        pems.append((tmp_path / f"{org}-keys" / "signing.pub").read_text())
        (run / org).mkdir(parents=True)
        book = Ledger(run / org / "ledger.jsonl", load_signer(tmp_path / f"{org}-keys"))
        if org == "bank-a":
            cap = {"epsilon": 3.0, "delta": 1e-5}
            for spent in (0.5, 0.99):
                book.append("budget.charge", params={"dataset": "retail-2026", "cap": cap},
                            privacy_cost={"epsilon": 0.5 if spent == 0.5 else 0.49, "delta": 1e-7,
                                          "spent_after": {"epsilon": spent, "delta": 2e-7}})
            book.append("budget.charge", params={"dataset": "retail-2026", "cap": cap}, outcome="failed",
                        reason="privacy budget exceeded for dataset retail-2026")
            book.append("model.train", privacy_cost={"epsilon": 0.49, "delta": 1e-7, "accountant": "prv"})
        else:
            book.append("budget.charge", params={"dataset_sha256": "ab" * 32},
                        privacy_cost={"epsilon": 1.0, "delta": 1e-6})
    keyring.write_text("".join(pems))
    result = report(run, tmp_path / "r.html", "--trust", str(keyring))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    a = "dataset “retail-2026” (bank-a): ε 0.99 of 3.0 spent, δ 2e-07 of 1e-05 (2 charge(s), 1 refused at the cap)"
    b = "dataset with SHA-256 abababababab… (bank-b): ε 1.0 of no recorded cap spent"
    assert f"<li>{a}</li>" in html and b in html
    assert "model.train by bank-a (seq 4): ε 0.49, δ 1e-07, prv accountant" in html
    assert controls(html)["Differential privacy budget"] == (
        f"NOT EVIDENCED: {a}<br>{b}, δ 1e-06 of no recorded cap (1 charge(s)) — no cap is recorded, "
        "so its enforcement is not shown")


def test_report_on_a_real_anonymize_run(tmp_path: Path) -> None:
    """The summary reads what `privmodel anonymize` really writes: policy, cap, each control's figures."""
    from tests.test_anonymize_pipeline import crafted

    keys = tmp_path / "keys"
    init_keys(keys, actor="bank-a")
    raw = tmp_path / "customers.csv"
    crafted().to_csv(raw, index=False)
    run = tmp_path / "run"
    policy = Path(__file__).parent / "fixtures" / "anonymize" / "policy.yaml"
    made = run_cli("anonymize", str(raw), "--policy", str(policy), "--keys", str(keys), "--out", str(run / "release"),
                   "--partner", "insurer", env={"PRIVMODEL_KEYS": str(keys)})
    assert made.returncode == 0, made.stderr
    release = json.loads((run / "release" / "report.json").read_text())
    result = report(run, tmp_path / "r.html", "--trust", str(keys))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    assert (f"Policy “{release['policy']['name']}”, purpose “{release['policy']['purpose']}”; "
            "budget cap per dataset ε 3.0, δ 1e-06") in html
    shown = controls(html)
    methods = {"token": "keyed token", "encrypt": "encrypted", "drop": "dropped"}
    assert shown["Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)"] == "PASSED: insurer: " + ", ".join(
        f"{c} ({methods[i['method']]})" for c, i in release["pseudonymization"].items())
    k = release["privacy"]["achieved"]["k"]
    assert shown["k-anonymity / l-diversity / t-closeness on quasi-identifiers"].startswith(
        f"PASSED: insurer: k {k} (required {release['privacy']['required']['k']})")
    assert shown["Consent filter for the purpose"] == (
        f"PASSED: insurer: rows removed for missing consent: {release['counts']['consent_filtered']} "
        "(column consent_analytics)")
    assert shown["Differential privacy budget"].startswith("NOT APPLICABLE")
