"""Membership-inference audit: attack the trained model and turn the attack into an ε lower bound.

Differential privacy promises that no test can tell "this row was in training" from "it was not"
much better than chance: for every attack, TPR <= e^ε · FPR + δ and (1 - FPR) <= e^ε · (1 - TPR) + δ.
The audit measures how well two attacks do, with training rows as members and held-out rows as
non-members:

- **loss** attack (Yeom et al. 2018): members have lower loss; score = -cross-entropy.
- **calibrated** attack (difficulty calibration, Watson et al. 2022; the offline, fixed-variance
  form of LiRA, Carlini et al. 2022): score = φ_target(x) - mean_k φ_ref_k(x), with φ = log(p_y /
  (1 - p_y)) the logit of the true label's probability and ref_k reference models trained on a
  population disjoint from every audited row. An example that is easy for every model no longer
  looks like a member just because its loss is low.

For each attack the report has the attack ROC-AUC, TPR at 1 % and 10 % FPR (Carlini et al. 2022:
the low-FPR regime is where leaks show) and an **empirical ε lower bound** with Clopper-Pearson
confidence bounds (Jagielski et al. 2020, Nasr et al. 2021):

    ε_lb = max( log((TPR_low - δ) / FPR_high), log((1 - FPR_high - δ) / (1 - TPR_low)) ),

where TPR_low and FPR_high are one-sided Clopper-Pearson bounds. The threshold and the form are
chosen on a random half of the rows ("selection") and the bound is computed on the other half
("evaluation"), so choosing the best threshold does not inflate the bound. The two one-sided
bounds get α/2 each, and the attacks share α (Bonferroni), so the reported figure — the largest
bound over attacks — holds with the stated confidence. Rows are treated as independent trials;
with a random member/non-member split this is the one-training-run setting of Steinke, Nasr &
Jagielski (2023). The bound from natural rows of one model is loose by design: it catches gross
failures (a bug that skips the noise), it does not measure how tight the accountant is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict, TypeVar, cast

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

#: What the audited rows are: whatever `predict_proba` accepts (a DataFrame, an array, a mapping of arrays).
RowsT = TypeVar("RowsT")

_P_CLIP = 1e-7
REFERENCES = [
    "Yeom et al. 2018, Privacy risk in machine learning (loss attack)",
    "Watson et al. 2022, On the importance of difficulty calibration in membership inference attacks",
    "Carlini et al. 2022, Membership inference attacks from first principles (LiRA; TPR at low FPR)",
    "Jagielski et al. 2020, Auditing differentially private machine learning",
    "Nasr et al. 2021, Adversary instantiation: lower bounds for differentially private machine learning",
    "Steinke, Nasr & Jagielski 2023, Privacy auditing with one (1) training run",
]


class EpsilonBound(TypedDict):
    """The ε lower bound of one attack and the figures behind it (`epsilon_lower_bound`)."""

    epsilon_lower_bound: float
    confidence: float
    threshold: float
    form: str
    tpr: float
    fpr: float
    tpr_lower: float
    fpr_upper: float
    members_evaluated: int
    non_members_evaluated: int


class AttackReport(TypedDict):
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_10pct_fpr: float
    epsilon_lower_bound: EpsilonBound


class MembershipAudit(TypedDict):
    """What `audit` finds: every attack's report and the headline figures (JSON-ready)."""

    members: int
    non_members: int
    reference_models: int
    attacks: dict[str, AttackReport]
    strongest_attack: str
    attack_auc: float
    epsilon_lower_bound: float
    confidence: float
    delta: float
    epsilon_guarantee: float | None
    consistent: bool | None
    method: str
    references: list[str]


def _labels_probs(y: ArrayLike, p: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=float).ravel()
    p_arr = np.asarray(p, dtype=float)
    if p_arr.shape[-1] != y_arr.size:
        raise InputError(f"membership audit: {what} has {p_arr.shape[-1]} scores for {y_arr.size} labels")
    if not np.isin(y_arr, (0.0, 1.0)).all():
        raise InputError(f"membership audit: {what} labels are not 0/1")
    if not np.isfinite(p_arr).all() or (p_arr < 0).any() or (p_arr > 1).any():
        raise InputError(f"membership audit: {what} scores are not probabilities")
    return y_arr, p_arr


def true_label_logit(y: ArrayLike, p: ArrayLike) -> np.ndarray:
    """φ = log(p_y / (1 - p_y)): LiRA's scaled confidence, near-Gaussian across models."""
    y_arr, p_arr = _labels_probs(y, p, "rows")
    p_true = np.clip(np.where(y_arr == 1, p_arr, 1.0 - p_arr), _P_CLIP, 1.0 - _P_CLIP)
    return np.log(p_true) - np.log1p(-p_true)


def loss_scores(y: ArrayLike, p: ArrayLike) -> np.ndarray:
    """Negative cross-entropy per row: higher means "more likely a member"."""
    y_arr, p_arr = _labels_probs(y, p, "rows")
    p_true = np.clip(np.where(y_arr == 1, p_arr, 1.0 - p_arr), _P_CLIP, 1.0)
    return np.log(p_true)


def calibrated_scores(y: ArrayLike, p: ArrayLike, reference_p: ArrayLike) -> np.ndarray:
    """Difficulty-calibrated score φ_target - mean over reference models of φ_ref (shape [k, n] in)."""
    ref = np.atleast_2d(np.asarray(reference_p, dtype=float))
    target = true_label_logit(y, p)
    refs = np.stack([true_label_logit(y, r) for r in ref])
    return target - refs.mean(axis=0)


def attack_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """ROC-AUC of telling members (label 1) from non-members by score; 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    m, n = np.asarray(member_scores, float).ravel(), np.asarray(nonmember_scores, float).ravel()
    return float(roc_auc_score(np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n]))


def tpr_at_fpr(member_scores: ArrayLike, nonmember_scores: ArrayLike, fpr: float) -> float:
    """Largest TPR whose FPR does not exceed `fpr` on the ROC curve (no interpolation)."""
    from sklearn.metrics import roc_curve

    m, n = np.asarray(member_scores, float).ravel(), np.asarray(nonmember_scores, float).ravel()
    fprs, tprs, _ = roc_curve(np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n])
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion k / n."""
    from scipy.stats import beta

    k_arr, n_arr = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore"):
        low = beta.ppf(alpha, k_arr, n_arr - k_arr + 1)
    return np.where(k_arr <= 0, 0.0, low)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound of a binomial proportion k / n."""
    from scipy.stats import beta

    k_arr, n_arr = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore"):
        high = beta.ppf(1.0 - alpha, k_arr + 1, n_arr - k_arr)
    return np.where(k_arr >= n_arr, 1.0, high)


def _epsilon_forms(tpr_low: np.ndarray, fpr_high: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Both DP inequalities solved for ε (−inf where the bound says nothing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        num_a, den_a = tpr_low - delta, fpr_high
        form_a = np.where((num_a > 0) & (den_a > 0), np.log(np.maximum(num_a, 1e-300) / np.maximum(den_a, 1e-300)), -np.inf)
        num_b, den_b = 1.0 - fpr_high - delta, 1.0 - tpr_low
        form_b = np.where((num_b > 0) & (den_b > 0), np.log(np.maximum(num_b, 1e-300) / np.maximum(den_b, 1e-300)), -np.inf)
    return form_a, form_b


def _counts_at(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many scores are >= each threshold (scores need not be sorted)."""
    ordered = np.sort(scores)
    return scores.size - np.searchsorted(ordered, thresholds, side="left")


def epsilon_lower_bound(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
    max_thresholds: int = 256,
) -> EpsilonBound:
    """Empirical ε lower bound of one attack, valid with probability `confidence`.

    The decision rule is "member when score >= t". On the selection half every candidate t
    (score quantiles) and both DP inequalities are tried and the one with the largest
    Clopper-Pearson bound wins; on the evaluation half that single (t, form) gets the reported
    bound, so it is not inflated by the search. ε_lb is 0 when the evidence shows no leak.
    """
    if not 0.0 < confidence < 1.0:
        raise InputError("membership audit: confidence must be in (0, 1)")
    if not 0.0 <= delta < 1.0:
        raise InputError("membership audit: delta must be in [0, 1)")
    m = np.asarray(member_scores, float).ravel()
    n = np.asarray(nonmember_scores, float).ravel()
    if m.size < 4 or n.size < 4:
        raise InputError("membership audit: needs at least 4 members and 4 non-members")
    rng = np.random.default_rng(seed)
    m_perm, n_perm = rng.permutation(m), rng.permutation(n)
    m_sel, m_eval = m_perm[: m.size // 2], m_perm[m.size // 2:]
    n_sel, n_eval = n_perm[: n.size // 2], n_perm[n.size // 2:]
    alpha = (1.0 - confidence) / 2.0  # one-sided TPR and FPR bounds share the error rate

    pooled = np.unique(np.r_[m_sel, n_sel])
    candidates = pooled if pooled.size <= max_thresholds else np.unique(
        np.quantile(pooled, np.linspace(0.0, 1.0, max_thresholds))
    )
    tp = _counts_at(m_sel, candidates)
    fp = _counts_at(n_sel, candidates)
    form_a, form_b = _epsilon_forms(
        clopper_pearson_lower(tp, m_sel.size, alpha), clopper_pearson_upper(fp, n_sel.size, alpha), delta
    )
    best_a, best_b = int(np.argmax(form_a)), int(np.argmax(form_b))
    if form_a[best_a] >= form_b[best_b]:
        threshold, form = float(candidates[best_a]), "tpr_over_fpr"
    else:
        threshold, form = float(candidates[best_b]), "tnr_over_fnr"

    tp_e = int(_counts_at(m_eval, np.array([threshold]))[0])
    fp_e = int(_counts_at(n_eval, np.array([threshold]))[0])
    tpr_low = float(clopper_pearson_lower(tp_e, m_eval.size, alpha))
    fpr_high = float(clopper_pearson_upper(fp_e, n_eval.size, alpha))
    eval_a, eval_b = _epsilon_forms(np.array(tpr_low), np.array(fpr_high), delta)
    value = float(eval_a if form == "tpr_over_fpr" else eval_b)
    return {
        "epsilon_lower_bound": max(0.0, value) if math.isfinite(value) else 0.0,
        "confidence": confidence,
        "threshold": threshold,
        "form": form,
        "tpr": tp_e / m_eval.size,
        "fpr": fp_e / n_eval.size,
        "tpr_lower": tpr_low,
        "fpr_upper": fpr_high,
        "members_evaluated": int(m_eval.size),
        "non_members_evaluated": int(n_eval.size),
    }


def attack_report(member_scores: ArrayLike, nonmember_scores: ArrayLike, delta: float, confidence: float, seed: int) -> AttackReport:
    """AUC, TPR at low FPR and the ε lower bound of one attack's scores."""
    return {
        "auc": attack_auc(member_scores, nonmember_scores),
        "tpr_at_1pct_fpr": tpr_at_fpr(member_scores, nonmember_scores, 0.01),
        "tpr_at_10pct_fpr": tpr_at_fpr(member_scores, nonmember_scores, 0.10),
        "epsilon_lower_bound": epsilon_lower_bound(member_scores, nonmember_scores, delta, confidence, seed),
    }


def audit(
    y_members: ArrayLike,
    p_members: ArrayLike,
    y_nonmembers: ArrayLike,
    p_nonmembers: ArrayLike,
    *,
    delta: float,
    reference_p_members: ArrayLike | None = None,
    reference_p_nonmembers: ArrayLike | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    epsilon_guarantee: float | None = None,
) -> MembershipAudit:
    """Run the loss attack (and the calibrated one when reference predictions are given).

    `p_*` are the target model's probabilities of label 1; `reference_p_*` have shape [k, n]: k
    reference models trained on rows that are neither these members nor these non-members.
    The headline `epsilon_lower_bound` is the largest per-attack bound, each computed at
    confidence 1 - (1 - confidence) / n_attacks so that the maximum holds at `confidence`.
    `consistent` says whether it stays at or below the claimed guarantee (None when there is none,
    e.g. a non-private model).
    """
    ym, pm = _labels_probs(y_members, p_members, "members")
    yn, pn = _labels_probs(y_nonmembers, p_nonmembers, "non-members")
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {"loss": (loss_scores(ym, pm), loss_scores(yn, pn))}
    if (reference_p_members is None) != (reference_p_nonmembers is None):
        raise InputError("membership audit: reference predictions are needed for members and non-members")
    n_reference = 0
    if reference_p_members is not None:
        ref_m = np.atleast_2d(np.asarray(reference_p_members, float))
        ref_n = np.atleast_2d(np.asarray(reference_p_nonmembers, float))
        n_reference = ref_m.shape[0]
        scores["calibrated"] = (calibrated_scores(ym, pm, ref_m), calibrated_scores(yn, pn, ref_n))
    per_attack_conf = 1.0 - (1.0 - confidence) / len(scores)
    attacks = {
        name: attack_report(mem, non, delta, per_attack_conf, seed) for name, (mem, non) in scores.items()
    }
    strongest = max(attacks, key=lambda a: attacks[a]["auc"])
    eps_lb = max(a["epsilon_lower_bound"]["epsilon_lower_bound"] for a in attacks.values())
    return {
        "members": int(ym.size),
        "non_members": int(yn.size),
        "reference_models": n_reference,
        "attacks": attacks,
        "strongest_attack": strongest,
        "attack_auc": attacks[strongest]["auc"],
        "epsilon_lower_bound": eps_lb,
        "confidence": confidence,
        "delta": delta,
        "epsilon_guarantee": epsilon_guarantee,
        "consistent": None if epsilon_guarantee is None or not math.isfinite(epsilon_guarantee)
        else bool(eps_lb <= epsilon_guarantee),
        "method": "loss threshold attack"
        + (f" and difficulty-calibrated attack ({n_reference} reference models)" if n_reference else "")
        + "; ε lower bound from Clopper-Pearson bounds on TPR/FPR, threshold chosen on a disjoint half",
        "references": REFERENCES,
    }


def audit_model(
    predict_proba: Callable[[RowsT], np.ndarray],
    members: RowsT,
    y_members: ArrayLike,
    nonmembers: RowsT,
    y_nonmembers: ArrayLike,
    *,
    delta: float,
    reference_fit: Callable[[RowsT, np.ndarray, int], Callable[[RowsT], np.ndarray]] | None = None,
    reference_pool: tuple[RowsT, ArrayLike] | None = None,
    n_reference: int = 2,
    confidence: float = 0.95,
    seed: int = 0,
    epsilon_guarantee: float | None = None,
) -> MembershipAudit:
    """Audit a fitted model given its predict function and the member / non-member rows.

    With `reference_fit(rows, y, seed) -> predict` and a `reference_pool` (rows, labels) disjoint
    from both audited sets, `n_reference` reference models are trained, each on a seeded random
    half of the pool, for the calibrated attack. Rows are anything `predict_proba` and
    `_take(rows, index)` accept (a DataFrame, or an array).
    """
    p_m = np.asarray(predict_proba(members), float)
    p_n = np.asarray(predict_proba(nonmembers), float)
    ref_m = ref_n = None
    if reference_fit is not None and reference_pool is not None and n_reference > 0:
        pool_x, pool_y = reference_pool
        pool_y = np.asarray(pool_y, float).ravel()
        rng = np.random.default_rng(seed + 7919)
        preds_m, preds_n = [], []
        for k in range(n_reference):
            idx = np.sort(rng.permutation(pool_y.size)[: max(2, pool_y.size // 2)])
            if pool_y[idx].min() == pool_y[idx].max():
                continue  # a one-class half cannot train a reference model
            predict = reference_fit(_take(pool_x, idx), pool_y[idx], seed + 1000 + k)
            preds_m.append(np.asarray(predict(members), float))
            preds_n.append(np.asarray(predict(nonmembers), float))
        if preds_m:
            ref_m, ref_n = np.stack(preds_m), np.stack(preds_n)
    return audit(
        y_members, p_m, y_nonmembers, p_n, delta=delta, reference_p_members=ref_m,
        reference_p_nonmembers=ref_n, confidence=confidence, seed=seed, epsilon_guarantee=epsilon_guarantee,
    )


def _take(rows: RowsT, index: Sequence[int] | np.ndarray) -> RowsT:
    """Row subset of a DataFrame (positional), an array, or a mapping of arrays (same kind as `rows`)."""
    if hasattr(rows, "iloc"):
        return cast(RowsT, rows.iloc[np.asarray(index)].reset_index(drop=True))
    if isinstance(rows, Mapping):
        return cast(RowsT, {k: _take(v, index) for k, v in rows.items()})
    return cast(RowsT, np.asarray(rows)[np.asarray(index)])
