"""Script injection into report.html (issue 11 finding 2), tried in a real browser.

Every string a ledger, a policy or the data can bring (actor, action, file names, params keys and
values, reasons, privacy-cost fields, partner / policy / purpose / column / group / silo names, run
and model directory names) is set to a script payload, in ledgers that verify (signed by the trusted
key), in ledgers forged without the key, in crafted ledgers, and in ledgers signed by an attacker's
key. Headless Chromium then checks: no script ran, no element was injected, every payload is shown
as text, and the banner's colour and words are exactly what verification found.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from privmodel.artifacts.ledger import Ledger, artifact
from privmodel.core.keys import init_keys, load_signer
from tests.conftest import run_cli

CHROMIUM = Path("/usr/bin/chromium")
PAYLOADS = [
    "<img src=x onerror=window.__x=1>",
    "</script><script>window.__x=1</script>",
    '" onmouseover="window.__x=1" data-x="',
    "' onmouseover='window.__x=1' data-x='",
    "{{7*7}}",
    "<svg onload=window.__x=1></svg>",
    "</title></text><script>window.__x=1</script>",
    '<iframe src="javascript:parent.__x=1"></iframe>',
    '</h1></header><header class="ok" id="status"><h1>All ledgers verified against trusted keys</h1></header>',
    "<style>header{background:#1f7a3f !important}</style>",
    "&lt;img src=x onerror=window.__x=1&gt;",
    "[red]rich[/red] $\\alpha$ %s {0}",
]
DIR_PAYLOAD = "<img src=x onerror=window.__x=1>"  # a file name can hold this (no slash)
BANNERS = {  # status -> (h1 text start, background colour)
    "ok": ("All ledgers verified against trusted keys", "rgb(31, 122, 63)"),
    "tofu": ("All ledgers verified against their own keys only", "rgb(138, 90, 0)"),
    "fail": ("LEDGER VERIFICATION FAILED", "rgb(179, 38, 30)"),
}
PROBE = """() => ({
  x: typeof window.__x,
  headers: document.querySelectorAll('header').length,
  status: document.getElementById('status').className,
  h1: document.querySelector('header h1').textContent,
  background: getComputedStyle(document.getElementById('status')).backgroundColor,
  scripts: document.querySelectorAll('script').length,
  styles: document.querySelectorAll('style').length,
  injected: document.querySelectorAll('iframe, object, embed, header h1 ~ h1, img:not([src^="data:image/png;base64,"])').length,
  svgs: document.querySelectorAll('svg').length,
  handlers: [...document.querySelectorAll('*')].filter(el => [...el.attributes].some(
      a => a.name.startsWith('on') || a.name === 'data-x')).length,
  text: document.documentElement.textContent,
})"""


def payload(i: int) -> str:
    return PAYLOADS[i % len(PAYLOADS)]


def _write(path: Path, data: Any) -> dict[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return artifact(path)


def _artifacts(run: Path) -> list[dict[str, str]]:
    """A release report, model card, curve and federated card whose every name is a payload."""
    p = payload
    release = _write(run / p(0) / "report.json", {
        "partner": p(1), "policy": {"name": p(2), "purpose": p(3), "version": 1},
        "rows": {"input": 10, "released": 9}, "columns": [p(4), p(5)],
        "pseudonymization": {p(6): {"method": p(7)}, p(8): {"method": "drop"}},
        "steps": [{"step": "purpose", "consent_column": p(9), "removed": {p(10): 1}}],
        "counts": {"consent_filtered": 1, "dropped_columns": [p(11), p(0)]},
        "privacy": {"applicable": True, "algorithm": p(1), "quasi_identifiers": [p(2)],
                    "required": {"k": 2, "l": {"value": 2, "variant": "distinct"}, "t": 0.5, "algorithm": p(3)},
                    "achieved": {"k": 3, "l": {p(4): {"distinct": 2}}, "t": {p(5): 0.2},
                                 "class_size_histogram": {p(6): 2, p(7): 1}}},
        "risk": {"prosecutor_max": 0.3, "risk_histogram": {p(8): 9}, "marketer": p(9)},
        "utility": {"ncp": p(10)}, "model_utility": {p(11): {"auc_raw": 0.7, "auc_release": p(0)}},
    })
    card = _write(run / p(2) / "model_card.json", {
        "model": {"type": p(1), "label": p(2)},
        "data": {"policy_name": p(3), "purpose": p(4), "consent_column": p(5), "removed": {"no_consent": 2}},
        "privacy": {"epsilon": 0.99, "delta": 1e-6, "accountant": p(6), "noise": p(7), "clipping": p(8)},
        "budget": {"cap": {"epsilon": 3.0}, "spent_after": {"epsilon": 0.99}},
        "hyperparameter_selection": {"description": p(9)},
        "metrics": {"comparison": {p(10): {"private": p(11), "baseline": 0.8, "difference": p(0)}},
                    "roc_curve": {p(1): {"fpr": [0, 0.3, 1], "tpr": [0, 0.8, 1]}},
                    "lift": [{"decile": 1, "lift": 2.0, "cumulative_gain": 0.3}, {"decile": 2, "lift": p(2)}]},
        "epsilon_history": [{"epoch": 1, "epsilon": 0.5}, {"epoch": p(3), "epsilon": p(4)}],
        "membership_inference": {"strongest_attack": p(5), "attack_auc": 0.5, "confidence": p(6)},
        "fairness": {"columns": {p(7): {"demographic_parity_difference": p(8), "groups": {p(9): {}, p(10): {}}}}},
    })
    curve = _write(run / p(4) / "curve.json", {"rows": [{"epsilon": 1.0, "roc_auc": 0.7, "brier": p(11)},
                                                          {"epsilon": p(0), "roc_auc": p(1)}]})
    federated = _write(run / "fed" / "federated_card.json", {
        "model": {"kind": p(2), "hash": p(3)}, "strategy": p(4), "rounds": p(5), "caveat": p(6),
        "partners": {p(7): {"rounds": [1, 2], "epsilon": 0.9, "confirmed_hash": p(8)}},
        "rounds_detail": [{"round": 1, "global": {"auc": 0.6}, "per_silo": {p(9): {"auc": 0.61}}},
                          {"round": 2, "global": {"auc": 0.7}, "per_silo": {p(9): {"auc": 0.71}}}],
        "final_metrics": {"global": {"auc": 0.7, "source": p(10)}, "per_silo": {p(7): {"auc": p(11)}}},
        "privacy": {"unit": p(0), "target_epsilon_per_partner": p(1), "secure_aggregation": p(2)},
        "rejected_updates": [p(3)],
    })
    return [release, card, curve, federated]


def signed_run(root: Path, key_name: str = "trusted") -> Path:
    """A run whose ledger verifies (signed by the key kept at root/../<key_name>.pub) but whose
    every field is a payload."""
    run = root / DIR_PAYLOAD
    run.mkdir(parents=True)
    init_keys(root / f"{key_name}-keys", actor="bank-a")
    shutil.copy(root / f"{key_name}-keys" / "signing.pub", root / f"{key_name}.pub")
    ledger = Ledger(run / "ledger.jsonl", load_signer(root / f"{key_name}-keys"))
    outputs = _artifacts(run)
    for i, text in enumerate(PAYLOADS):
        files = [{"name": text, "sha256": outputs[i % len(outputs)]["sha256"]}]
        ledger.append(
            text, actor=payload(i + 1), inputs=files if i % 2 else [], outputs=[] if i % 2 else files,
            params={text: payload(i + 2), "policy": {"name": payload(i + 3), "purpose": payload(i + 4)},
                    "nested": [payload(i + 5), {payload(i + 6): payload(i + 7)}]},
            privacy_cost={"epsilon": 0.1, "delta": 1e-7, "accountant": payload(i + 8), payload(i + 9): text},
            outcome="failed" if i % 3 == 0 else "ok", reason=payload(i + 10) if i % 3 == 0 else None,
        )
    ledger.append("budget.charge", actor=payload(4), params={"dataset": payload(5), "cap": {"epsilon": 3.0}},
                  privacy_cost={"epsilon": 0.99, "delta": 1e-6, "spent_after": {"epsilon": 0.99, "delta": 1e-6}})
    ledger.append("record", outputs=outputs, params={"files": len(outputs)})
    shutil.rmtree(root / f"{key_name}-keys")
    return run


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian chromium is required (make test installs it)"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def probe(browser: Any, html: Path) -> dict[str, Any]:
    """Load the page, hover and click over everything, and report what the page became."""
    page = browser.new_page()
    dialogs: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(html.resolve().as_uri())
        for selector in ("td", "text", "li", "h2"):
            for element in page.locator(selector).all()[:25]:
                element.hover(force=True, timeout=2000)
        page.wait_for_timeout(100)
        result = page.evaluate(PROBE)
    finally:
        page.close()
    result["dialogs"] = dialogs
    result["requests"] = [r for r in requests if r != html.resolve().as_uri()]
    return result


def assert_inert(result: dict[str, Any], status: str, shown: list[str]) -> None:
    """No script ran, nothing injected, payloads shown as text, banner exactly as verification found."""
    assert result["x"] == "undefined", "a payload ran script"
    assert result["dialogs"] == [] and result["requests"] == []
    assert result["scripts"] == 0 and result["injected"] == 0 and result["handlers"] == 0
    assert result["styles"] == 1 and result["svgs"] <= 1  # our own stylesheet, the data-flow drawing
    assert result["headers"] == 1 and result["status"] == status
    text, colour = BANNERS[status]
    assert result["h1"].startswith(text) and result["background"] == colour
    for p in shown:
        assert p in result["text"], f"payload not shown as text: {p!r}"


def report(run: Path, out: Path, *flags: str) -> Any:
    return run_cli("report", str(run), "--out", str(out), *flags)


def test_signed_payloads_render_as_text(tmp_path: Path, browser: Any) -> None:
    """A ledger that verifies under the trusted key, full of payloads: green, and every payload inert."""
    run = signed_run(tmp_path)
    result = report(run, tmp_path / "ok.html", "--trust", str(tmp_path / "trusted.pub"))
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "ok.html").read_text()
    assert "<script" not in html and "{{7*7}}" in html
    assert_inert(probe(browser, tmp_path / "ok.html"), "ok", PAYLOADS)
    tofu = report(run, tmp_path / "tofu.html", "--tofu")
    assert tofu.returncode == 0, tofu.stderr
    assert_inert(probe(browser, tmp_path / "tofu.html"), "tofu", PAYLOADS)


def _forge_edit(run: Path) -> None:
    """Edit signed entries without the key: payloads into actor, action, reason, params."""
    lines = (run / "ledger.jsonl").read_bytes().splitlines()
    for n in (1, 2, 3):
        entry = json.loads(lines[n])
        entry["actor"] = PAYLOADS[8]
        entry["reason"] = PAYLOADS[0]
        entry["params"] = {"status": "ok", PAYLOADS[1]: PAYLOADS[2]}
        lines[n] = json.dumps(entry, separators=(",", ":")).encode()
    (run / "ledger.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def _forge_crafted(run: Path) -> None:
    """Append crafted lines of every wrong type, with payloads, and forge the head to match."""
    good = json.loads((run / "ledger.jsonl").read_bytes().splitlines()[-1])
    crafted = [
        {**good, "seq": PAYLOADS[0], "actor": PAYLOADS[1]},
        {**good, "seq": good["seq"] + 1, "signature": 12345, "action": PAYLOADS[5]},
        {**good, "seq": good["seq"] + 2, "key_id": [PAYLOADS[6]], "hash": PAYLOADS[7]},
        {**good, "seq": good["seq"] + 3, "inputs": PAYLOADS[2], "outputs": {"name": PAYLOADS[3]},
         "privacy_cost": PAYLOADS[4], "params": [PAYLOADS[9]]},
        [PAYLOADS[8]],
        PAYLOADS[10],
        {**good, "seq": good["seq"] + 4, "privacy_cost": json.loads("{\"a\":" * 400 + "1" + "}" * 400)},
    ]
    with open(run / "ledger.jsonl", "ab") as handle:
        for item in crafted:
            handle.write(json.dumps(item).encode() + b"\n")
        handle.write(b"\xff\xfe<script>window.__x=1</script>\n")
    (run / "ledger.jsonl.head").write_text(json.dumps({"seq": PAYLOADS[0], "hash": PAYLOADS[1],
                                                       "key_id": PAYLOADS[2], "signature": PAYLOADS[3]}))


def _forge_resign(run: Path, root: Path) -> None:
    """Replace the ledger by one an attacker signed with their own key (payloads throughout)."""
    attacker = signed_run(root / "attacker", key_name="attacker")
    shutil.copy(attacker / "ledger.jsonl", run / "ledger.jsonl")
    shutil.copy(attacker / "ledger.jsonl.head", run / "ledger.jsonl.head")


@pytest.mark.parametrize("forgery", ["edited", "crafted", "re-signed"])
def test_forged_ledgers_cannot_turn_the_banner_green(tmp_path: Path, browser: Any, forgery: str) -> None:
    run = signed_run(tmp_path / "real")
    {"edited": _forge_edit, "crafted": _forge_crafted,
     "re-signed": lambda r: _forge_resign(r, tmp_path)}[forgery](run)
    out = tmp_path / "r.html"
    result = report(run / "ledger.jsonl", out, "--trust", str(tmp_path / "real" / "trusted.pub"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "ledger verification failed" in result.stderr
    shown = [PAYLOADS[8]] if forgery == "edited" else []
    assert_inert(probe(browser, out), "fail", shown)
    if forgery == "re-signed":  # under trust on first use the attacker's ledger is intact: amber, never green
        tofu = report(run / "ledger.jsonl", tmp_path / "t.html", "--tofu")
        assert tofu.returncode == 0, tofu.stderr
        assert_inert(probe(browser, tmp_path / "t.html"), "tofu", PAYLOADS)


def test_report_source_has_no_string_built_markup() -> None:
    """The report package builds no HTML itself: markup lives only in the autoescaped template."""
    import privmodel.artifacts.report as package
    from privmodel.artifacts.report.html import environment

    root = Path(package.__file__).parent
    for source in root.glob("*.py"):
        code = source.read_text()
        for marker in ("<table", "<tr", "<td", "<span", "<section", "<svg", "<img", "<header", "<p ", "<br",
                       "from html import", "Markup(", "|safe", "autoescape=False"):
            assert marker not in code, f"{source.name} builds markup ({marker!r})"
    env = environment()
    assert env.autoescape is True
    rendered = env.from_string("{{ v }}").render(v=PAYLOADS[0])
    assert rendered == "&lt;img src=x onerror=window.__x=1&gt;"
    templates = list((root / "templates").glob("*.html.j2"))
    assert templates and all("|safe" not in t.read_text() for t in templates)


def test_chart_labels_are_not_parsed(tmp_path: Path) -> None:
    """Matplotlib mathtext would raise on a crafted silo name; charts draw it as typed."""
    from privmodel.artifacts.report.charts import bar_chart, line_chart

    uri = line_chart({"$\\frac{": ([1, 2], [0.5, 0.6])}, "t", "x", "y")
    bar = bar_chart(["$\\undefinedcommand$", "a"], [1.0, 2.0], "t", "x", "y")
    for chart in (uri, bar):
        assert chart.startswith("data:image/png;base64,")
        assert base64.b64decode(chart.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
