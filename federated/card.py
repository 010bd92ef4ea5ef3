"""Model card of a federated run (JSON + Markdown): every partner's ε, the rounds, the metrics.

Written by the coordinator from what the run computed: ε figures are the partners' own accountant
outputs as reported in their train replies (each partner's ledger holds the signed per-round
charges), never a number the coordinator assumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from federated.config import FedConfig

CARD_JSON = "federated_card.json"
CARD_MD = "federated_card.md"
CAVEAT = (
    "Per-silo metrics are computed by each partner on a local held-out split and are not "
    "differentially private; the ε figures cover the model parameters each partner sent."
)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def build_card(
    *, config: FedConfig, policy_hash: str, model_hash: str, partners: dict[str, dict[str, Any]],
    rounds: list[dict[str, Any]], rejected: list[dict[str, Any]], delta: float, run_id: str, seconds: float,
    secure_aggregation: str | None = None,
) -> dict[str, Any]:
    """The card as a dict; `secure_aggregation` describes the SecAgg+ parameters when the run used it."""
    last = rounds[-1] if rounds else {}
    dp = config.private
    return {
        "kind": "federated",
        "run_id": run_id,
        "model": {"kind": config.model, "label": config.label, "hash": model_hash},
        "policy_hash": policy_hash,
        "strategy": config.strategy,
        "rounds": config.rounds,
        "privacy": {
            "local_dp": dp,
            "unit": "sample-level DP-SGD at each partner, accounted over every round it joined (PRV accountant)",
            "target_epsilon_per_partner": config.epsilon if dp else None,
            "delta": delta,
            "max_grad_norm": config.max_grad_norm if dp else None,
            "client_level_dp": (
                {"noise_multiplier": config.client_dp_noise, "clipping_norm": config.client_dp_clip}
                if config.client_dp_noise > 0 else None
            ),
            "secure_aggregation": secure_aggregation or ("SecAgg+" if config.secagg else None),
        },
        "partners": partners,
        "final_metrics": {"global": last.get("global"), "per_silo": last.get("per_silo")},
        "rounds_detail": [
            {k: r.get(k) for k in ("round", "seconds", "accepted", "rejected", "failed", "train_loss", "global", "per_silo")}
            for r in rounds
        ],
        "rejected_updates": rejected,
        "seconds": round(seconds, 2),
        "caveat": CAVEAT,
    }


def render_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Federated model card ({card['model']['kind']}, label `{card['model']['label']}`)",
        "",
        f"- strategy: {card['strategy']}, rounds: {card['rounds']}, run id: {card['run_id']}",
        f"- model hash: `{card['model']['hash']}`",
        f"- policy hash: `{card['policy_hash']}`",
        f"- local DP: {'yes' if card['privacy']['local_dp'] else 'no (non-private baseline)'}; δ = {card['privacy']['delta']:g}",
        f"- secure aggregation: {card['privacy'].get('secure_aggregation') or 'no (the coordinator sees each update)'}",
        "",
        "## Partners",
        "",
        "| partner | rounds joined | ε spent (this run) | confirmed model hash |",
        "|---|---|---|---|",
    ]
    for name, info in card["partners"].items():
        lines.append(
            f"| {name} | {','.join(str(r) for r in info['rounds']) or '-'} | {_num(info['epsilon'], 3)} | "
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
    lines += ["", card["caveat"], ""]
    return "\n".join(lines)


def write_card(directory: Path, **kwargs: Any) -> list[Path]:
    from privmodel.fileio import atomic_write_text

    card = build_card(**kwargs)
    paths = [directory / CARD_JSON, directory / CARD_MD]
    atomic_write_text(paths[0], json.dumps(card, indent=2, default=str) + "\n")
    atomic_write_text(paths[1], render_markdown(card))
    return paths
