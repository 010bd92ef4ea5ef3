"""How much can a feature party's per-customer message carry at epsilon per customer? An oracle bound.

Run: `python benchmarks/vertical_ldp_bound.py` (defaults: 200,000 people, as `bench_vertical.py`).

Why: in vertical split learning the bank sees every message about a shared customer and knows the batch
schedule, so the retailer's per-customer messages are local DP (docs/vertical.md). This script asks
what the BEST such message could give, with everything else in the bank's favour:

* the retailer releases its exact part of the ground-truth churn logit (`vertical_logits`: a model it
  could never learn perfectly), ONCE (one release, no composition over epochs);
* the bank knows its own part of the logit exactly, without noise;
* the bank combines the two with a logistic fit on half of the shared customers; the AUC is on the
  other half.

Releases compared: the retailer's part clipped to [-R, R] with Gaussian noise (replace-one
sensitivity 2R, sigma calibrated with dp-accounting's PLD accountant at delta), and k-ary randomized
response on the part's quantile bin (exactly epsilon-LDP, delta 0). Rows "bank part only" and "both
parts exact" are the floor and the ceiling (the Bayes AUC of the ground truth on these customers).

The shared customers are joined here by national id (the truth is known in a synthetic population);
the workflow joins them by PSI.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def shared_parts(people: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bank part, retailer part, churn) of the ground-truth logit for the customers in both tables."""
    from privmodel.data.synth.vertical import generate_vertical, vertical_logits

    data = generate_vertical(people, seed=seed)
    bank, retail = data.bank, data.retailer
    bank_ids = pc.replace_substring(bank.column("national_id"), "-", "").to_numpy(zero_copy_only=False)
    retail_ids = retail.column("national_id").to_numpy(zero_copy_only=False)
    _, b_idx, r_idx = np.intersect1d(bank_ids, retail_ids, assume_unique=True, return_indices=True)
    cols = {c: bank.column(c).to_numpy()[b_idx] for c in ("age", "tenure_months", "complaints_12m", "num_products")}
    for c in ("recency_days", "baskets_12m"):
        cols[c] = retail.column(c).to_numpy()[r_idx]
    channel = pc.index_in(retail.column("channel"), pa.array(["store", "app", "web"])).to_numpy()
    cols["channel"] = channel[r_idx]
    bank_z, retail_z = vertical_logits(cols)
    return bank_z, retail_z, bank.column("churn").to_numpy()[b_idx]


def gaussian_sigma(epsilon: float, delta: float) -> float:
    """Noise multiplier of one Gaussian release at (epsilon, delta), by bisection on dp-accounting's PLD."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    def eps_of(mult: float) -> float:
        acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(dp_accounting.GaussianDpEvent(mult))
        return float(acc.get_epsilon(delta))

    lo, hi = 0.05, 200.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps_of(mid) > epsilon else (lo, mid)
    return hi


def combined_auc(bank_z: np.ndarray, signal: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """Fit the bank's combination on one half, AUC on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = np.column_stack([bank_z, signal])
    fit = rng.random(len(y)) < 0.5
    model = LogisticRegression(C=1e4, max_iter=1000).fit(x[fit], y[fit])
    return float(roc_auc_score(y[~fit], model.decision_function(x[~fit])))


def randomized_response(part: np.ndarray, k: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """One-hot of the part's quantile bin after k-ary randomized response (epsilon-LDP)."""
    bins = np.searchsorted(np.quantile(part, np.linspace(0, 1, k + 1)[1:-1]), part)
    keep = rng.random(len(bins)) < math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    told = np.where(keep, bins, (bins + rng.integers(1, k, len(bins))) % k)
    return np.eye(k)[told][:, 1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=200_000)
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bank_z, retail_z, y = shared_parts(args.people, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    print(f"{len(y):,} shared customers; delta {args.delta:g}; AUC on a held-out half")
    print(f"{'release of the retailer part':44s} {'epsilon':>7s}  ROC-AUC")
    print(f"{'none (bank part only)':44s} {'-':>7s}  {combined_auc(bank_z, np.zeros_like(bank_z), y, rng):.4f}")
    print(f"{'exact (both parts, the Bayes AUC)':44s} {'-':>7s}  {combined_auc(bank_z, retail_z, y, rng):.4f}")
    centred = retail_z - np.median(retail_z)
    for eps in args.epsilons:
        mult = gaussian_sigma(eps, args.delta)
        for clip in (1.0, 3.0):
            noisy = np.clip(centred, -clip, clip) + rng.normal(0.0, mult * 2 * clip, len(y))
            label = f"Gaussian, clip {clip:g}, sigma {mult * 2 * clip:.1f}"
            print(f"{label:44s} {eps:7g}  {combined_auc(bank_z, noisy, y, rng):.4f}")
        for k in (2, 4):
            told = randomized_response(retail_z, k, eps, rng)
            print(f"{f'randomized response, {k} quantile bins':44s} {eps:7g}  {combined_auc(bank_z, told, y, rng):.4f}")


if __name__ == "__main__":
    main()
