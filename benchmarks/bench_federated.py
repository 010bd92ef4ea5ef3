"""Federated vs centralized on synthetic non-IID silos; prints tables (run: python benchmarks/bench_federated.py).

Rows: centralized non-private, FedAvg non-private, centralized DP at ε, FedAvg with local DP at ε per
partner (every partner's ε accounted over all rounds). The centralized baselines train on the pooled
anonymized releases of the same silos with the same DP-SGD code (`privmodel.dpsgd.train_dp`) and the
same number of steps per sample; all AUCs are on the same pooled held-out set. Also: the per-round
global AUC curve and the per-silo AUC of the final federated models, and the simulation wall time
(Ray start-up included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def centralized(specs, config, policy, holdout, coord_keys, epsilon: float) -> float:
    """Pooled training with the same encoder, model, optimizer and DP-SGD as the partners."""
    import numpy as np
    import torch

    from anonymize.policy import load_policy
    from federated.server_app import ServerSettings, _build_model, _Evaluator
    from federated.worker import PartnerWorker
    from privmodel.accounting import noise_for
    from privmodel.dpsgd import train_dp

    parts = [PartnerWorker(s)._prepare(config) for s in specs]
    x_num = np.concatenate([p["train"][0] for p in parts])
    x_cat = np.concatenate([p["train"][1] for p in parts])
    y = np.concatenate([p["train"][2] for p in parts])
    n = len(y)
    batch = config.batch_size * len(specs)  # same sampling rate per step as the silos
    q = min(1.0, batch / n)
    steps = config.rounds * config.local_steps
    sigma = noise_for(epsilon, 1e-6, q, steps) if epsilon > 0 else 0.0

    class Data:
        pass

    data = Data()
    data.x_num, data.x_cat = x_num, x_cat
    model = _build_model(config, parts[0]["n_num"], parts[0]["cards"])
    torch.manual_seed(config.seed)
    train_dp(model, data, y, noise_multiplier=sigma, sample_rate=q, steps=steps,
             max_grad_norm=config.max_grad_norm if epsilon > 0 else None, lr=config.lr, seed=config.seed)
    settings = ServerSettings(config, str(policy), "", str(coord_keys), str(holdout))
    return _Evaluator(settings, load_policy(policy), coord_keys)(model)["auc"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--heterogeneity", type=float, default=0.6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from federated.config import FedConfig
    from federated.simulate import partner_specs, run_simulation, synth_silos
    from privmodel.keys import init_keys

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-fed-"))
    paths, holdout, policy = synth_silos(out, args.silos, args.customers, args.heterogeneity, 0, holdout=args.customers // 10)
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
    for eps in (0.0, args.epsilon):
        tag = "non-private" if eps == 0 else f"ε={eps:g}"
        config = FedConfig(rounds=args.rounds, epsilon=eps, local_steps=args.local_steps, batch_size=args.batch_size,
                           min_partners=2, round_timeout=600)
        run_dir = out / f"run-{tag}"
        run_policy = open_policy if eps == 0 else policy
        specs = partner_specs(run_dir, paths, run_policy)
        started = time.monotonic()
        outcome = run_simulation(run_dir, specs, config, run_policy, eval_data=holdout)
        wall = time.monotonic() - started
        fed = outcome.rounds[-1]["global"]["auc"]
        central = centralized(partner_specs(out / f"central-{tag}", paths, run_policy), config, run_policy, holdout, coord_keys, eps)
        rows.append((tag, central, fed, fed - central, wall))
        curves[tag] = [r["global"]["auc"] for r in outcome.rounds]
        silo_auc[tag] = {k: v["auc"] for k, v in outcome.rounds[-1]["per_silo"].items()}

    print(f"\n{args.silos} non-IID silos (h={args.heterogeneity}), {args.customers} customers, {args.rounds} rounds, "
          f"{args.local_steps} local steps, batch {args.batch_size}")
    print(f"{'setting':<14}{'centralized AUC':>16}{'FedAvg AUC':>12}{'gap':>9}{'sim wall s':>12}")
    for tag, central, fed, gap, wall in rows:
        print(f"{tag:<14}{central:>16.4f}{fed:>12.4f}{gap:>+9.4f}{wall:>12.1f}")
    print("\nglobal AUC per round")
    for tag, curve in curves.items():
        print(f"{tag:<14}" + " ".join(f"{a:.4f}" for a in curve))
    print("\nfinal per-silo AUC")
    for tag, silos in silo_auc.items():
        print(f"{tag:<14}" + " ".join(f"{k}={v:.4f}" for k, v in sorted(silos.items())))


if __name__ == "__main__":
    main()
