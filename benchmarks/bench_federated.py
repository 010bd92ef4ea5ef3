"""Federated vs centralized on synthetic non-IID silos; prints tables (run: python benchmarks/bench_federated.py).

Rows: centralized non-private, FedAvg non-private, centralized DP at ε, FedAvg with local DP at ε per
partner (every partner's ε accounted over all rounds). All AUCs are on the same pooled held-out set,
minimised (consent-filtered, identifiers dropped) and encoded with the run's policy.

Section "raw-vs-release" (issue 10): FedAvg with local DP at ε on the same silos, once with every
partner training on its own minimised raw rows (what partners do now: ε per customer) and once on its
anonymized Mondrian release with ranges as midpoints (the old path, `PartnerSpec.training_rows =
"release"`, kept for this measurement only: ε per release row). Same learning-rate grid, picked per
path on its partners' local held-out splits; AUC on the same pooled held-out rows.
Run only it: `python benchmarks/bench_federated.py --only raw-vs-release`.

Why the baselines look the way they do (a comparison is only honest when both sides are trained
well and tuned with the same effort):

* Same records: the centralized baselines train on the pooled training splits of exactly the
  minimised rows the partners trained on (made the same way, same split seed), with the same
  encoder and model type.
* Same engine as a data owner would use alone: `privmodel.dp.training.fit` (Adam, Poisson sampling,
  tail averaging, batch 1024 by default); non-private = `epsilon=None` (no clipping, no noise) on
  the same code path; DP = ε with the accountant's δ rule, min(1e-5, 1/(10 n)), which for the pooled
  n is slightly *stricter* than the partners' policy δ.
* Compute: the centralized run gets at least the federation's total number of gradient steps
  (partners × rounds × local steps), at its own (larger) batch: epochs = ceil(steps × batch / n).
* Same tuning effort: both sides pick their learning rate from the same grid (`--lrs`), by AUC on a
  validation set that is neither the training data nor the reported held-out set: the pooled local
  held-out splits of the partners (`eval_fraction`). Everything else stays at each engine's default.
  (The tuning runs are not charged to any privacy budget; that holds for both sides alike.)

Also printed: the chosen settings of each row, the per-round global AUC curve and the per-silo AUC of
the chosen federated models, and the simulation wall time (Ray start-up included).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from federated.runtime.config import FedConfig


@dataclass
class Pooled:
    """The partners' encoded data, pooled: training splits (to train on) and held-out splits (to tune on)."""

    train: Any  # privmodel.data.features.EncodedData
    y_train: Any
    valid: Any
    y_valid: Any


@dataclass
class Trial:
    """One trained candidate: its settings, validation AUC and held-out AUC."""

    lr: float
    valid_auc: float
    holdout_auc: float
    settings: str
    extra: dict[str, Any]


def pooled_data(specs: list[Any], config: Any) -> Pooled:
    """Pool the partners' encoded splits exactly as `PartnerWorker` makes them for a run."""
    import numpy as np

    from federated.partner.worker import PartnerWorker
    from privmodel.data.features import EncodedData

    parts = [PartnerWorker(s)._prepare(config) for s in specs]
    first = parts[0].train

    def pool(datas: list[Any], labels: list[Any]) -> tuple[Any, Any]:
        x_num = np.concatenate([d.x_num for d in datas])
        x_cat = np.concatenate([d.x_cat for d in datas])
        return EncodedData(x_num, x_cat, list(first.cat_cardinalities), first.num_names, first.cat_names), np.concatenate(labels)

    train, y_train = pool([p.train for p in parts], [p.y_train for p in parts])
    valid, y_valid = pool([p.test for p in parts], [p.y_test for p in parts])
    return Pooled(train, y_train, valid, y_valid)


def model_auc(model: Any, data: Any, y: Any) -> float:
    """ROC-AUC of a torch model on encoded data."""
    from privmodel.dp.dpsgd import predict_proba
    from privmodel.evaluation.metrics import roc_auc

    auc = roc_auc(y, predict_proba(model, data))
    return float(auc) if auc is not None else float("nan")


def centralized(pooled: Pooled, evaluator: Any, model: str, epsilon: float, lr: float, batch: int, min_steps: int) -> Trial:
    """One `privmodel.dp.training.fit` run on the pooled training splits with at least `min_steps` steps."""
    from privmodel.dp.training import TrainConfig, fit

    n = len(pooled.y_train)
    epochs = max(1, math.ceil(min_steps * batch / n))
    config = TrainConfig(model=model, epsilon=epsilon if epsilon > 0 else None, batch_size=batch, lr=lr, epochs=epochs)
    result = fit(pooled.train, pooled.y_train, config)
    p = result.privacy
    settings = f"fit: batch {batch}, lr {lr:g}, {epochs} epochs = {p['steps']} steps"
    if p["private"]:
        settings += f", σ {p['noise_multiplier']:.2f}, δ {p['delta']:.1e}, ε {p['epsilon']:.3f}"
    return Trial(lr, model_auc(result.model, pooled.valid, pooled.y_valid), evaluator(result.model)["auc"], settings,
                 {"steps": p["steps"]})


def federated(out: Path, paths: list[Path], policy: Path, holdout: Path, config: Any,
              training_rows: str = "minimised") -> tuple[Trial, Any, float]:
    """One simulated FedAvg run; its final model is also scored on the pooled local held-out splits.
    `training_rows="release"` reproduces the old path (partners train on their anonymized release)."""
    import numpy as np

    from federated.coordinator.server_app import _build_model
    from federated.partner.worker import _load_arrays
    from federated.runtime.simulate import partner_specs, run_simulation

    specs = partner_specs(out, paths, policy)
    for spec in specs:
        spec.training_rows = training_rows
    started = time.monotonic()
    outcome = run_simulation(out, specs, config, policy, eval_data=holdout)
    wall = time.monotonic() - started
    pooled = pooled_data(specs, config)
    meta = json.loads((out / "coordinator" / "model.json").read_text())
    with np.load(out / "coordinator" / "model.npz") as npz:
        arrays = {k.replace("__", "."): npz[k] for k in npz.files}
    model = _build_model(config, meta["n_num"], meta["cat_cardinalities"])
    _load_arrays(model, arrays)
    settings = (f"FedAvg: batch {config.batch_size}/partner, lr {config.lr:g}, "
                f"{config.rounds}×{config.local_steps} steps/partner")
    if config.private:
        sigmas = []
        for spec in specs:
            state = json.loads((Path(spec.workdir) / "federated-state.json").read_text())
            sigmas += [r["noise_multiplier"] for r in state["runs"].values() if "noise_multiplier" in r]
        eps = [v["epsilon"] for v in outcome.partners.values()]
        settings += f", σ {min(sigmas):.2f}-{max(sigmas):.2f}, δ {config.delta:.0e}, ε ≤ {max(eps):.3f}/partner"
    trial = Trial(config.lr, model_auc(model, pooled.valid, pooled.y_valid), outcome.rounds[-1]["global"]["auc"], settings,
                  {"steps": len(specs) * config.rounds * config.local_steps})
    return trial, outcome, wall


def raw_vs_release(out: Path, paths: list[Path], policy: Path, holdout: Path, args: argparse.Namespace,
                   lrs: list[float]) -> None:
    """Issue 10: FedAvg with local DP at ε on the partners' minimised raw rows vs on their anonymized
    release (the old path), same silos, same grid; prints the table."""
    from federated.runtime.config import FedConfig

    chosen: dict[str, tuple[Trial, int, float]] = {}
    for rows in ("release", "minimised"):
        trials = []
        for lr in lrs:
            config = FedConfig(rounds=args.rounds, epsilon=args.epsilon, local_steps=args.local_steps,
                               batch_size=args.batch_size, lr=lr, model=args.model, min_partners=2, round_timeout=600)
            run_dir = out / f"rows-{rows}-lr{lr:g}"
            trial, _, wall = federated(run_dir, paths, policy, holdout, config, training_rows=rows)
            card = json.loads((run_dir / "coordinator" / "federated_card.json").read_text())
            n_train = sum(int(p["declared_train_rows"]) for p in card["partners"].values())
            trials.append((trial, n_train, wall))
            print(f"[{rows} rows, ε={args.epsilon:g}] FedAvg lr {lr:g}: valid {trial.valid_auc:.4f} "
                  f"held-out {trial.holdout_auc:.4f} ({wall:.0f} s)", flush=True)
        chosen[rows] = max(trials, key=lambda t: t[0].valid_auc)
    print(f"\nFedAvg with local DP, ε={args.epsilon:g} per partner: what partners train on "
          f"({args.silos} silos, {args.customers} customers, {args.rounds}x{args.local_steps} steps; "
          "AUC on the same pooled held-out rows, minimised)")
    print(f"{'partners train on':<44}{'rows':>8}{'lr':>6}{'valid AUC':>11}{'held-out AUC':>14}  ε unit")
    labels = {"release": "anonymized release (Mondrian k=10, midpoints)", "minimised": "own minimised raw rows"}
    units = {"release": "per release row", "minimised": "per customer"}
    for rows in ("release", "minimised"):
        trial, n_train, _ = chosen[rows]
        print(f"{labels[rows]:<44}{n_train:>8}{trial.lr:>6g}{trial.valid_auc:>11.4f}{trial.holdout_auc:>14.4f}  {units[rows]}")
    gain = chosen["minimised"][0].holdout_auc - chosen["release"][0].holdout_auc
    print(f"gain from training on minimised raw rows: {gain:+.4f} AUC (held-out)")


def simulation_wall(out: Path, paths: list[Path], policy: Path, holdout: Path, rounds: int) -> float:
    """The issue's simulation figure: 5 silos x 10 rounds, wall time including Ray start-up."""
    from federated.runtime.config import FedConfig

    config = FedConfig(rounds=rounds, epsilon=1.0, local_steps=20, batch_size=256, min_partners=2, round_timeout=600)
    _, _, wall = federated(out, paths, policy, holdout, config)
    return wall


def deployment_round_seconds(out: Path, rounds: int = 4) -> list[float]:
    """Loopback deployment (SuperLink with TLS and node auth, 3 SuperNodes, lean ClientApps):
    seconds per round as the coordinator measured them."""
    from federated.coordinator.server_app import ServerSettings
    from federated.runtime import deployment as dep
    from federated.runtime.config import FedConfig
    from federated.runtime.simulate import partner_specs, synth_silos
    from federated.runtime.tls import make_node_key, make_tls
    from privmodel.core.keys import init_keys, load_signer

    paths, holdout, policy = synth_silos(out, silos=3, customers=6000, heterogeneity=0.5, seed=1, holdout=1000)
    specs = partner_specs(out, paths, policy)
    make_tls(out / "tls")
    coordinator = out / "coordinator"
    coordinator.mkdir(exist_ok=True)
    init_keys(coordinator / "keys", actor="coordinator")
    for spec in specs:  # partners' own node keys; each pins the coordinator's public key (issue 11)
        make_node_key(out / "nodekeys" / spec.name)
        spec.coordinator_key = str(coordinator / "keys")
    config = FedConfig(rounds=rounds, epsilon=1.0, local_steps=20, batch_size=256, min_partners=3, round_timeout=60)
    settings = ServerSettings(config, str(policy), str(coordinator), str(coordinator / "keys"), str(holdout),
                              expected_partners=3, wait_timeout=90, authorization=str(coordinator / dep.AUTHORIZATION_FILE))
    with dep.tracked() as items:
        link = dep.start_superlink(out / "tls", out / "link")
        items.append(link)
        for spec in specs:
            link.register(out / "nodekeys" / spec.name / "auth.pub", spec.name)
        for spec in specs:
            items.append(dep.join(spec, link.address, out / "tls" / "ca.crt", out / "nodekeys" / spec.name / "auth.key"))
        result = dep.submit(link.home, dep.write_app(out / "app", settings.to_record()), coordinator, timeout=400,
                            signer=load_signer(coordinator / "keys"), record=settings.to_record(),
                            registry=dep.read_registry(link.registry_path))
    if result["status"] != "finished:completed":
        raise SystemExit(f"deployment run failed: {result['status']}")
    return [e["seconds"] for e in result["events"] if e["event"] == "round"]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=512, help="expected batch per partner per local step")
    parser.add_argument("--central-batch", type=int, default=1024, help="expected batch of the centralized fit")
    parser.add_argument("--lrs", default="0.05,0.1,0.2", help="learning-rate grid, the same for both sides")
    parser.add_argument("--model", default="logreg", choices=("logreg", "mlp"))
    parser.add_argument("--heterogeneity", type=float, default=0.6)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-deployment", action="store_true", help="skip the loopback deployment timing")
    parser.add_argument("--only", choices=("raw-vs-release",), default=None, help="run only this section")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    lrs = [float(v) for v in args.lrs.split(",") if v.strip()]

    from anonymize.policy.schema import load_policy
    from federated.coordinator.server_app import ServerSettings, _Evaluator
    from federated.runtime.config import FedConfig
    from federated.runtime.simulate import partner_specs, synth_silos
    from privmodel.core.keys import init_keys

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-fed-"))
    paths, holdout, policy = synth_silos(out, args.silos, args.customers, args.heterogeneity, 0, holdout=args.customers // 10)
    if args.only == "raw-vs-release":
        raw_vs_release(out, paths, policy, holdout, args, lrs)
        return
    coord_keys = out / "bench-keys"
    if not coord_keys.exists():
        init_keys(coord_keys, actor="bench")
    # Partners whose policy sets a DP budget refuse non-private rounds; the non-private baseline
    # therefore runs under the same policy without the budget line (a different policy hash).
    open_policy = out / "policy-no-budget.yaml"
    open_policy.write_text("\n".join(line for line in policy.read_text().splitlines() if not line.startswith("budget:")) + "\n")
    rows = []
    curves: dict[str, list[float]] = {}
    silo_auc: dict[str, dict[str, float]] = {}
    grids: list[str] = []
    for eps in (0.0, args.epsilon):
        tag = "non-private" if eps == 0 else f"ε={eps:g}"
        run_policy = open_policy if eps == 0 else policy
        fed_trials = []
        for lr in lrs:
            config = FedConfig(rounds=args.rounds, epsilon=eps, local_steps=args.local_steps, batch_size=args.batch_size,
                               lr=lr, model=args.model, min_partners=2, round_timeout=600)
            trial, outcome, wall = federated(out / f"run-{tag}-lr{lr:g}", paths, run_policy, holdout, config)
            fed_trials.append((trial, outcome, wall))
            print(f"[{tag}] FedAvg lr {lr:g}: valid {trial.valid_auc:.4f} held-out {trial.holdout_auc:.4f} ({wall:.0f} s)", flush=True)
        fed, outcome, wall = max(fed_trials, key=lambda t: t[0].valid_auc)
        # the centralized side trains on the minimised rows of the chosen federated run (identical for every lr)
        specs = partner_specs(out / f"run-{tag}-lr{fed.lr:g}", paths, run_policy)
        pooled = pooled_data(specs, config)
        settings = ServerSettings(config, str(run_policy), "", str(coord_keys), str(holdout))
        evaluator = _Evaluator(settings, load_policy(run_policy), coord_keys)
        central_trials = []
        for lr in lrs:
            trial = centralized(pooled, evaluator, args.model, eps, lr, args.central_batch, fed.extra["steps"])
            central_trials.append(trial)
            print(f"[{tag}] centralized lr {lr:g}: valid {trial.valid_auc:.4f} held-out {trial.holdout_auc:.4f}", flush=True)
        central = max(central_trials, key=lambda t: t.valid_auc)
        rows.append((tag, central, fed, wall))
        curves[tag] = [r["global"]["auc"] for r in outcome.rounds]
        silo_auc[tag] = {k: v["auc"] for k, v in outcome.rounds[-1]["per_silo"].items()}
        for name, trials in (("centralized", central_trials), ("FedAvg", [t[0] for t in fed_trials])):
            grids.append(f"{tag:<14}{name:<13}" + "  ".join(f"lr {t.lr:g}: {t.valid_auc:.4f}/{t.holdout_auc:.4f}" for t in trials))

    _print_comparison(args, rows, len(pooled.y_train), config, curves, silo_auc, grids)
    print()
    raw_vs_release(out, paths, policy, holdout, args, lrs)
    _print_speed(args, out, paths, policy, holdout)


def _print_comparison(args: argparse.Namespace, rows: list[tuple[str, Trial, Trial, float]], n_train: int,
                      config: FedConfig,
                      curves: dict[str, list[float]], silo_auc: dict[str, dict[str, float]], grids: list[str]) -> None:
    """The centralized-vs-FedAvg table, the chosen settings, the lr grid, the AUC curves and per-silo AUC."""
    print(f"\n{args.silos} non-IID silos (h={args.heterogeneity}), {args.customers} customers "
          f"({n_train} pooled training rows: minimised rows less the partners' {config.eval_fraction:.0%} local "
          f"held-out splits), model {args.model}; AUC on the pooled held-out set ({args.customers // 10} customers)")
    print(f"{'setting':<14}{'centralized AUC':>16}{'FedAvg AUC':>12}{'gap':>9}{'sim wall s':>12}")
    for tag, central, fed, wall in rows:
        print(f"{tag:<14}{central.holdout_auc:>16.4f}{fed.holdout_auc:>12.4f}{fed.holdout_auc - central.holdout_auc:>+9.4f}{wall:>12.1f}")
    print("\nchosen settings (learning rate picked on the pooled local held-out splits, same grid both sides)")
    for tag, central, fed, _ in rows:
        print(f"{tag:<14}centralized  {central.settings}")
        print(f"{'':<14}federated    {fed.settings}")
    print("\nlearning-rate grid: validation AUC / held-out AUC")
    for line in grids:
        print(line)
    print("\nglobal AUC per round (chosen FedAvg run)")
    for tag, curve in curves.items():
        print(f"{tag:<14}" + " ".join(f"{a:.4f}" for a in curve))
    print("\nfinal per-silo AUC (chosen FedAvg run)")
    for tag, silos in silo_auc.items():
        print(f"{tag:<14}" + " ".join(f"{k}={v:.4f}" for k, v in sorted(silos.items())))


def _print_speed(args: argparse.Namespace, out: Path, paths: list[Path], policy: Path, holdout: Path) -> None:
    """Simulation wall time and, unless skipped, the deployment's seconds per round."""
    sim_wall = simulation_wall(out / "speed-sim", paths, policy, holdout, rounds=10)
    print("\nspeed                                            ours        target / anchor")
    print(f"simulation, {args.silos} silos x 10 rounds, wall incl. Ray start-up  {sim_wall:6.1f} s    <= 60 s")
    if not args.skip_deployment:
        seconds = deployment_round_seconds(out / "deployment")
        after_first = seconds[1:]
        print(f"deployment, 3 SuperNodes, TLS + node auth, s/round after the first  "
              f"{max(after_first):.1f} max ({', '.join(f'{t:.1f}' for t in after_first)})    "
              f"<= 5 s; a naive app took 57-72 s per round here")


if __name__ == "__main__":
    main()
