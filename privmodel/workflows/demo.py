"""`privmodel demo`: the whole framework on synthetic partners, through the workflows the commands call.

Each step calls the workflow behind the command a user would type (synth, anonymize, train,
federate simulate, report), with that command's defaults, ledgers and outputs. Layout of --out:

    keys/<actor>/                 signing key + pseudonymization secret per organisation
    data/                         synthetic silos (one per partner) and the starter policy
    partners/<partner>/release/   each partner's anonymized release, report.json, its own ledger
    central/                      pooled release, DP model + non-private baseline, coordinator ledger
    federated/                    federated DP model across the partners (coordinator ledger)
    report.html                   the self-contained report
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anonymize.errors import InputError

MARKER = ".privmodel-demo"
COORDINATOR = "coordinator"


@dataclass
class DemoSettings:
    out: Path
    customers: int = 30_000
    partners: int = 3
    seed: int = 0
    epsilon: float = 1.0
    epochs: int = 10
    rounds: int = 5
    model: str = "logreg"


@dataclass
class DemoResult:
    out: Path
    headline: dict[str, Any] = field(default_factory=dict)
    ledgers_ok: bool = False
    seconds: float = 0.0


def stage_count(settings: DemoSettings) -> int:
    """Stages announced through `step` (synth, one per partner, pool, central, curve, federated, report)."""
    return settings.partners + 6


def prepare_out(out: Path) -> None:
    """A fresh output directory; only a previous demo's directory (marked) is ever cleared."""
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out}: exists and is not a directory")
        if any(out.iterdir()):
            if not (out / MARKER).exists():
                raise InputError(f"{out}: directory is not empty and was not made by `privmodel demo`; choose another --out")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by privmodel demo; cleared on the next run\n")


def partner_names(n: int) -> list[str]:
    return [f"partner_{i}" for i in range(n)]


def run_demo(settings: DemoSettings, step: Callable[[str], None]) -> DemoResult:
    """Run every stage; `step(description)` is called as each stage starts (progress display)."""
    from federated.runtime.config import FedConfig
    from privmodel.core.keys import init_keys
    from privmodel.workflows.federation import FederationRequest, simulate
    from privmodel.workflows.release import ReleaseRequest, release
    from privmodel.workflows.report import write_report
    from privmodel.workflows.synthesize import SynthRequest, synthesize

    started = time.perf_counter()
    out = settings.out
    prepare_out(out)
    partners = partner_names(settings.partners)
    for actor in (COORDINATOR, *partners):
        init_keys(out / "keys" / actor, actor=actor)
    coordinator_keys = out / "keys" / COORDINATOR
    central = out / "central"
    central.mkdir()
    central_ledger = central / "ledger.jsonl"

    step(f"synthesizing {settings.customers:,} customers over {settings.partners} partner silos")
    synthesize(SynthRequest(out=out / "data", customers=settings.customers, silos=settings.partners,
                            seed=settings.seed, ledger=central_ledger, keys=coordinator_keys))
    policy = out / "data" / "policy.yaml"

    releases = []
    for i, partner in enumerate(partners):
        step(f"{partner}: validating, pseudonymizing and k-anonymizing its silo under the policy")
        partner_dir = out / "partners" / partner
        partner_dir.mkdir(parents=True)
        release(ReleaseRequest(input=out / "data" / f"silo_{i}.parquet", policy=policy, keys=out / "keys" / partner,
                               out=partner_dir / "release", partner=partner, ledger=partner_dir / "ledger.jsonl"))
        releases.append(partner_dir / "release" / "release.parquet")

    step("pooling the partners' releases for centralized training")
    (central / "pooled").mkdir()
    pooled = pool_releases(releases, central / "pooled" / "pooled_release.parquet", central_ledger, coordinator_keys)

    step(f"training a centralized DP model (ε={settings.epsilon}) on the pooled releases, beside a non-private baseline")
    central_model(settings, pooled, policy, central, central_ledger, coordinator_keys)

    step(f"federated DP training across the {settings.partners} partners ({settings.rounds} rounds, Flower + Ray)")
    config = FedConfig(rounds=settings.rounds, epsilon=settings.epsilon, model=settings.model,
                       seed=settings.seed).validate()
    simulate(FederationRequest(out=out / "federated", config=config, policy=policy, names=partners,
                               data=[out / "data" / f"silo_{i}.parquet" for i in range(len(partners))]))

    step("verifying every ledger and writing the HTML report")
    evidence = write_report(out, out / "report.html", demo_key_dirs(out))
    if evidence.status == "fail":
        raise InputError(f"{out / 'report.html'}: a ledger failed verification (see the report's banner)")
    result = DemoResult(out=out, seconds=time.perf_counter() - started)
    result.headline, result.ledgers_ok = headline(out, partners)
    return result


def central_model(settings: DemoSettings, pooled: Path, policy: Path, central: Path, ledger_path: Path,
                  keys: Path) -> None:
    """The coordinator's DP model and privacy-utility curve, through the same workflows as `privmodel train`.

    The coordinator only holds releases, so its ε is per release row (its card says so). The demo
    opts in to the non-private baseline and MIA audit (synthetic data): the card lists them as
    released without DP. The curve's grid fits in what the budget has left after training.
    """
    from privmodel.workflows import curve, train
    from privmodel.workflows.run_ledger import open_ledger

    book = open_ledger(ledger_path, central, keys)
    base = train.TrainRequest(data=pooled, label="churn", policy=policy, out=central / "model",
                              epsilon=settings.epsilon, model=settings.model, epochs=settings.epochs,
                              seed=settings.seed, baseline=True, mia=True)
    train.train(base, book, keys)
    curve_req = train.TrainRequest(data=pooled, label="churn", policy=policy, out=central / "curve",
                                   model=settings.model, epochs=settings.epochs, seed=settings.seed)
    curve.curve(curve_req, [0.25, 0.5, 1.0, float("inf")], 1, book, keys)


def demo_key_dirs(out: Path) -> list[Path]:
    """Every organisation's key directory this demo made (its own, and the federated simulation's):
    the trust anchors its report verifies the ledgers against."""
    from privmodel.core.keys import PUBLIC_KEY

    return sorted(p.parent for p in out.rglob(PUBLIC_KEY))


def pool_releases(releases: list[Path], target: Path, ledger_path: Path, keys: Path) -> Path:
    """Concatenate releases (the coordinator's pooled training set) and record the step."""
    import pandas as pd

    from privmodel.artifacts.ledger import artifact
    from privmodel.core.fileio import atomic_write_text, write_table
    from privmodel.workflows.run_ledger import open_ledger

    frames = [pd.read_parquet(p).assign(partner=i) for i, p in enumerate(releases)]
    pooled = pd.concat(frames, ignore_index=True)
    write_table(pooled, target)
    # the pooled table is a release (consent applied, generalized): say so as the release path does,
    # so a model trained on it states that its ε is per release row
    reports = [json.loads((p.parent / "report.json").read_text()) for p in releases]
    report = target.parent / "report.json"
    atomic_write_text(report, json.dumps({
        "format": reports[0]["format"], "policy": reports[0]["policy"],
        "rows": {"input": sum(r["rows"]["input"] for r in reports), "released": int(len(pooled))},
        "privacy": {"algorithm": reports[0]["privacy"].get("algorithm"),
                    "achieved": {"k": min(r["privacy"]["achieved"]["k"] for r in reports)}},
        "pooled_from": [p.parent.parent.name for p in releases]}, indent=2) + "\n")
    open_ledger(ledger_path, target.parent, keys).append(
        "release.pool", inputs=[artifact(p, f"{p.parent.parent.name}/{p.name}") for p in releases],
        outputs=[artifact(target), artifact(report)], params={"releases": len(releases)},
    )
    return target


def headline(out: Path, partners: list[str]) -> tuple[dict[str, Any], bool]:
    """The figures the demo prints, read back from the artifacts it wrote."""
    from privmodel.artifacts.report.evidence import collect, load_trusted_keys

    evidence = collect(out, load_trusted_keys(demo_key_dirs(out)))
    figures: dict[str, Any] = {"partners": {}}
    for partner in partners:
        report = json.loads((out / "partners" / partner / "release" / "report.json").read_text())
        figures["partners"][partner] = {
            "k": report["privacy"]["achieved"]["k"],
            "prosecutor_max": report["risk"]["prosecutor_max"],
            "rows_released": report["rows"]["released"],
        }
    card = json.loads((out / "central" / "model" / "model_card.json").read_text())
    auc = card["metrics"]["comparison"]["roc_auc"]
    figures["central"] = {
        "epsilon": card["privacy"]["epsilon"],
        "roc_auc_private": auc["private"],
        "roc_auc_baseline": auc["baseline"],
        "mia_auc": (card.get("membership_inference") or {}).get("attack_auc"),
    }
    fed = json.loads((out / "federated" / "coordinator" / "federated_card.json").read_text())
    figures["federated"] = {
        "roc_auc": fed["final_metrics"]["global"]["auc"],
        "epsilon_per_partner": {name: p["epsilon"] for name, p in fed["partners"].items()},
    }
    return figures, evidence.verified
