"""model_card.md carries no raw HTML, link or table break from names in the data or the policy."""

from __future__ import annotations

import re

from privmodel.artifacts import model_card as card

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</td><script>alert(1)</script>",
    "[click](javascript:alert(1))",
    "a|b`c",
    "line\nbreak",
]


def _hostile_card() -> dict:
    h = HOSTILE
    privacy = {"epsilon": 1.0, "delta": 1e-6, "accountant": h[0], "noise_multiplier": 1.1, "max_grad_norm": 1.0,
               "clipping": "flat", "sample_rate": 0.01, "steps": 100}
    metrics = {"roc_auc": 0.8, "fairness": {
        "decision_rule": "top 10%", "threshold": 0.5, "min_group_size": 10,
        "columns": {h[1]: {"demographic_parity_difference": 0.1, "equal_opportunity_difference": 0.2,
                           "groups": {h[2]: {"n": 50, "base_rate": 0.2, "selection_rate": 0.1,
                                             "true_positive_rate": 0.5}}}}}}
    return card.build_card(
        model_type=h[3], label=h[0], data={h[1]: h[2], "policy_name": h[4], "purpose": h[0]},
        features=[{"name": h[1], "type": h[2], "preprocessing": h[3]}], privacy=privacy, training={"epochs": 1},
        metrics=metrics, baseline_metrics=None, comparison={h[0]: {"private": 0.8, "baseline": None,
                                                                   "difference": None}},
        mia=None, public_categories={h[1]: [h[2]]},
    )


def test_markdown_has_no_raw_markup_from_names() -> None:
    md = card.render_markdown(_hostile_card())
    assert "<img" not in md and "<script" not in md and "</td>" not in md
    assert "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "\\[click\\](javascript:alert(1))" in md  # not a link
    assert "a\\|b\\`c" in md  # no table break, no code span
    assert re.search(r"<[a-zA-Z/]", md) is None
    for line in md.splitlines():  # every table row keeps its column count
        if line.startswith("| ") and "---" not in line:
            assert line.count("|") - line.count("\\|") in {3, 4, 5, 6, 7}, line
    assert "line break" in md
