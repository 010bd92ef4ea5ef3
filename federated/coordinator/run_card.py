"""Model card of a federated run (JSON + Markdown): every partner's ε, the rounds, the metrics.

Written by the coordinator from what the run computed: ε figures are the partners' own accountant
outputs as reported in their train replies (each partner's ledger holds the signed per-round
charges), never a number the coordinator assumes.

Its first lines say what ε protects: per customer when every partner trained on its own minimised
rows (what partners do), per release row for any partner that trained on an anonymized release
(the benchmark's old path). Every figure computed from private rows without DP is named in a
"released without differential privacy" section; nothing computed on training rows is on the card.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from federated.runtime.config import FedConfig

CARD_JSON = "federated_card.json"
CARD_MD = "federated_card.md"
CAVEAT = (
    "Per-silo metrics are computed by each partner on a local held-out split and are not "
    "differentially private; the ε figures cover the model parameters each partner sent."
)
PER_CUSTOMER = "ε is per customer: partners trained on their own consent-filtered, minimised rows"


def privacy_unit(config: FedConfig, declared: dict[str, dict[str, Any]]) -> str:
    """The card's first statement: what one unit of ε protects in this run."""
    from privmodel.dp.secure_noise import INSECURE_WARNING

    if config.private and config.insecure_seed >= 0:
        return f"{INSECURE_WARNING} (partners used the test-only insecure seed)"
    if not config.private:
        return "No differential privacy: partners trained without noise (non-private baseline)"
    release = sorted(name for name, info in declared.items() if info.get("training_rows") == "release")
    if not release:
        return PER_CUSTOMER
    return (
        f"ε is per release row, NOT per customer, for {', '.join(release)}: they trained on their anonymized "
        "release (Mondrian / lattice generalization chosen from the data), whose rows change when one "
        "customer is removed"
        + ("" if len(release) == len(declared) else "; for the other partners " + PER_CUSTOMER)
    )


def released_without_dp(declared: dict[str, dict[str, Any]], eval_data: str | None) -> list[str]:
    """Every figure on this card that comes from private rows without differential privacy."""
    items = [
        "per-silo ROC-AUC, log-loss and row count of each round's incoming global model and of the final model, "
        "computed by each partner on its local held-out rows (never trained on)",
        "each partner's training and held-out row counts, declared at hello (the FedAvg weights)",
    ]
    if eval_data:
        items.append("global ROC-AUC and log-loss per round, computed by the coordinator on its own evaluation table")
    else:
        items.append("global ROC-AUC and log-loss per round: the row-weighted mean of the per-silo figures")
    return items


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def build_card(
    *, config: FedConfig, policy_hash: str, model_hash: str, partners: dict[str, dict[str, Any]],
    rounds: list[dict[str, Any]], rejected: list[dict[str, Any]], delta: float, run_id: str, seconds: float,
    declared: dict[str, dict[str, Any]], eval_data: str | None = None, secure_aggregation: str | None = None,
) -> dict[str, Any]:
    """The card as a dict. `declared`: each partner's hello (row counts, training rows);
    `secure_aggregation` describes the SecAgg+ parameters when the run used it."""
    last = rounds[-1] if rounds else {}
    dp = config.private
    return {
        "kind": "federated",
        "privacy_unit": privacy_unit(config, declared),
        "run_id": run_id,
        "model": {"kind": config.model, "label": config.label, "hash": model_hash},
        "policy_hash": policy_hash,
        "strategy": config.strategy,
        "rounds": config.rounds,
        "privacy": {
            "local_dp": dp,
            "unit": "sample-level DP-SGD at each partner, accounted over every round it joined (PRV accountant)",
            "training_rows": {name: info.get("training_rows") for name, info in sorted(declared.items())},
            "target_epsilon_per_partner": config.epsilon if dp else None,
            "delta": delta,
            "max_grad_norm": config.max_grad_norm if dp else None,
            "client_level_dp": (
                {"noise_multiplier": config.client_dp_noise, "clipping_norm": config.client_dp_clip}
                if config.client_dp_noise > 0 else None
            ),
            "secure_aggregation": secure_aggregation or ("SecAgg+" if config.secagg else None),
        },
        "partners": {
            name: {**info, "declared_train_rows": int(declared.get(name, {}).get("n_train", 0)),
                   "declared_test_rows": int(declared.get(name, {}).get("n_test", 0))}
            for name, info in partners.items()
        },
        "final_metrics": {"global": last.get("global"), "per_silo": last.get("per_silo")},
        "rounds_detail": [
            {k: r.get(k) for k in ("round", "seconds", "accepted", "rejected", "failed", "global", "per_silo")}
            for r in rounds
        ],
        "rejected_updates": rejected,
        "released_without_dp": released_without_dp(declared, eval_data),
        "seconds": round(seconds, 2),
        "caveat": CAVEAT,
    }


def render_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Federated model card ({card['model']['kind']}, label `{card['model']['label']}`)",
        "",
        f"**{card['privacy_unit']}.**",
        "",
        f"- strategy: {card['strategy']}, rounds: {card['rounds']}, run id: {card['run_id']}",
        f"- model hash: `{card['model']['hash']}`",
        f"- policy hash: `{card['policy_hash']}`",
        f"- local DP: {'yes' if card['privacy']['local_dp'] else 'no (non-private baseline)'}; δ = {card['privacy']['delta']:g}",
        f"- secure aggregation: {card['privacy'].get('secure_aggregation') or 'no (the coordinator sees each update)'}",
        "",
        "## Partners",
        "",
        "| partner | trained on | rounds joined | ε spent (this run) | confirmed model hash |",
        "|---|---|---|---|---|",
    ]
    trained_on = card["privacy"].get("training_rows") or {}
    for name, info in card["partners"].items():
        lines.append(
            f"| {name} | {trained_on.get(name) or '-'} rows | {','.join(str(r) for r in info['rounds']) or '-'} | "
            f"{_num(info['epsilon'], 3)} | "
            f"{'yes' if info['confirmed_hash'] else 'no'} |"
        )
    lines += ["", "## Rounds", "", "| round | accepted | global AUC | global loss | rejected | failed |", "|---|---|---|---|---|---|"]
    for r in card["rounds_detail"]:
        g = r.get("global") or {}
        lines.append(
            f"| {r['round']} | {len(r['accepted'])} | {_num(g.get('auc'))} | {_num(g.get('loss'))} | "
            f"{', '.join(i['partner'] for i in r['rejected']) or '-'} | {', '.join(i['partner'] for i in r['failed']) or '-'} |"
        )
    silos = (card["final_metrics"] or {}).get("per_silo") or {}
    if silos:
        lines += ["", "## Final per-silo metrics", "", "| partner | AUC | loss | n |", "|---|---|---|---|"]
        for name, m in silos.items():
            lines.append(f"| {name} | {_num(m['auc'])} | {_num(m['loss'])} | {m['n']} |")
    lines += ["", "## Released without differential privacy", ""]
    lines += [f"- {item}" for item in card["released_without_dp"]]
    lines += ["", card["caveat"], ""]
    return "\n".join(lines)


def write_card(directory: Path, **kwargs: Any) -> list[Path]:
    from privmodel.core.fileio import atomic_write_text

    card = build_card(**kwargs)
    paths = [directory / CARD_JSON, directory / CARD_MD]
    atomic_write_text(paths[0], json.dumps(card, indent=2, default=str) + "\n")
    atomic_write_text(paths[1], render_markdown(card))
    return paths
