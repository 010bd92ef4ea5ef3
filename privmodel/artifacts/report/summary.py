"""The compliance summary on the report's first screen: policy, budget per dataset, privacy costs in
words, and each control as passed / failed / not applicable / not evidenced.

A control is "passed" only when this run's evidence shows it ran and met its requirement. A control
that did not apply (no identifier declared, no consent column, no quasi-identifier released, no DP
training) reads "not applicable" with the reason; one the evidence cannot show reads "not
evidenced". Neither is ever shown as passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from privmodel.artifacts.report.evidence import Artifact, Evidence
from privmodel.artifacts.report.sections import (
    as_dict,
    as_list,
    as_number,
    eps_text,
    party_privacy_words,
    privacy_words,
    text,
)

PASSED = "passed"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"
NOT_EVIDENCED = "not evidenced"
UNVERIFIED = "not verified against trusted keys"
STATUS_CLASS = {PASSED: "good", FAILED: "bad", NOT_APPLICABLE: "na", NOT_EVIDENCED: "na", UNVERIFIED: "warn"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Control:
    name: str
    requirement: str
    status: str
    details: list[str] = field(default_factory=list)

    @property
    def css(self) -> str:
        return STATUS_CLASS[self.status]


@dataclass
class Budget:
    actor: str
    dataset: str
    spent_epsilon: float = 0.0
    spent_delta: float = 0.0
    cap_epsilon: float | None = None
    cap_delta: float | None = None
    charges: int = 0
    refused: int = 0

    @property
    def over(self) -> bool:
        return self.cap_epsilon is not None and self.spent_epsilon > self.cap_epsilon + 1e-12

    def words(self) -> str:
        cap_eps = "no recorded cap" if self.cap_epsilon is None else eps_text(self.cap_epsilon)
        cap_delta = "no recorded cap" if self.cap_delta is None else eps_text(self.cap_delta)
        refused = f", {self.refused} refused at the cap" if self.refused else ""
        return (f"{dataset_words(self.dataset)} ({self.actor}): ε {eps_text(self.spent_epsilon)} of {cap_eps} spent, "
                f"δ {eps_text(self.spent_delta)} of {cap_delta} ({self.charges} charge(s){refused})")


@dataclass
class Summary:
    policies: list[str]
    budgets: list[Budget]
    costs: list[str]
    controls: list[Control]


def dataset_words(dataset: str) -> str:
    return f"dataset with SHA-256 {dataset[:12]}…" if _HEX64.fullmatch(dataset) else f"dataset “{dataset}”"


def _who(artifact: Artifact) -> str:
    return text(artifact.data.get("partner") or artifact.path.parent.name)


def policies(evidence: Evidence) -> list[str]:
    """Each distinct (policy name, purpose) the run's artifacts and ledger entries name."""
    found: dict[tuple[str, str], None] = {}
    caps: dict[tuple[str, str], str] = {}
    for release in evidence.releases:
        p = as_dict(release.data.get("policy"))
        if p:
            key = (text(p.get("name")), text(p.get("purpose")))
            found[key] = None
            cap = as_dict(release.data.get("budget"))
            if as_number(cap.get("epsilon")) is not None:
                caps[key] = (f"; budget cap per dataset ε {eps_text(cap.get('epsilon'))}, "
                             f"δ {eps_text(cap.get('delta'))}")
    for model in evidence.models:
        d = as_dict(model.data.get("data"))
        if d.get("policy_name") is not None or d.get("purpose") is not None:
            found[(text(d.get("policy_name")), text(d.get("purpose")))] = None
    for le in evidence.ledgers:
        for entry in le.entries:
            p = as_dict(as_dict(entry.get("params")).get("policy"))
            if p and (p.get("name") is not None or p.get("purpose") is not None):
                found[(text(p.get("name")), text(p.get("purpose")))] = None
    return [f"Policy “{name}”, purpose “{purpose}”{caps.get((name, purpose), '')}" for name, purpose in found]


def budgets(evidence: Evidence) -> list[Budget]:
    """Spent / cap per (organisation, dataset) from the signed budget.charge entries."""
    out: dict[tuple[str, str], Budget] = {}
    for le in evidence.ledgers:
        for entry in le.entries:
            if entry.get("action") != "budget.charge":
                continue
            params = as_dict(entry.get("params"))
            dataset = next((name for k in ("dataset", "dataset_id", "dataset_sha256")
                            if isinstance(name := params.get(k), str)), "unnamed")
            actor = text(entry.get("actor"))
            budget = out.setdefault((actor, dataset), Budget(actor, dataset))
            cap = as_dict(params.get("cap"))
            if as_number(cap.get("epsilon")) is not None:
                budget.cap_epsilon = as_number(cap.get("epsilon"))
            if as_number(cap.get("delta")) is not None:
                budget.cap_delta = as_number(cap.get("delta"))
            if entry.get("outcome") != "ok":
                budget.refused += 1
                continue
            cost = as_dict(entry.get("privacy_cost"))
            budget.charges += 1
            after = as_dict(cost.get("spent_after"))
            eps, delta = as_number(after.get("epsilon")), as_number(after.get("delta"))
            budget.spent_epsilon = max(budget.spent_epsilon, eps) if eps is not None else \
                budget.spent_epsilon + (as_number(cost.get("epsilon")) or 0.0)
            budget.spent_delta = max(budget.spent_delta, delta) if delta is not None else \
                budget.spent_delta + (as_number(cost.get("delta")) or 0.0)
    return list(out.values())


def costs(evidence: Evidence) -> list[str]:
    """Every step that spent privacy budget, in words (budget.charge entries are the budget's own)."""
    lines = []
    for le in evidence.ledgers:
        for entry in le.entries:
            cost = as_dict(entry.get("privacy_cost"))
            if entry.get("action") == "budget.charge" or entry.get("outcome") != "ok" or not cost:
                continue
            if as_number(cost.get("epsilon")) is None:
                continue
            how = f", {text(cost['accountant'])} accountant" if cost.get("accountant") is not None else ""
            lines.append(f"{text(entry.get('action'))} by {text(entry.get('actor'))} (seq {text(entry.get('seq'))}): "
                         f"ε {eps_text(cost.get('epsilon'))}, δ {eps_text(cost.get('delta'))}{how}")
    for model in evidence.models:
        lines.append(f"model “{model.path.parent.name}”: {privacy_words(as_dict(model.data.get('privacy')))}")
    for fed in evidence.federated:
        for name, partner in as_dict(fed.data.get("partners")).items():
            lines.append(f"federated partner {name}: ε {eps_text(as_dict(partner).get('epsilon'))} spent (local DP)")
    for card in evidence.vertical:
        for name, party in as_dict(card.data.get("parties")).items():
            lines.append(f"vertical party {name}: {party_privacy_words(card.data, party)}")
    return lines


def _combine(name: str, requirement: str, results: list[tuple[str, str]], none: str) -> Control:
    """One control from per-artifact (status, detail): any failure fails, any gap in the evidence
    leaves it not evidenced; passed needs every applicable part passed and at least one."""
    if not results:
        return Control(name, requirement, NOT_EVIDENCED, [none])
    statuses = {s for s, _ in results}
    if FAILED in statuses:
        status = FAILED
    elif NOT_EVIDENCED in statuses:
        status = NOT_EVIDENCED
    elif PASSED in statuses:
        status = PASSED
    else:
        status = NOT_APPLICABLE
    return Control(name, requirement, status, [d for _, d in results])


def _pseudonymisation(release: Artifact) -> tuple[str, str]:
    who = _who(release)
    summary = release.data.get("pseudonymization")
    if not isinstance(summary, dict):
        return NOT_EVIDENCED, f"{who}: the release report does not say how identifiers were treated"
    if not summary:
        return NOT_APPLICABLE, f"{who}: not applicable — the policy declares no identifier"
    released = {str(c) for c in as_list(release.data.get("columns"))}
    methods = {str(col): text(as_dict(info).get("method")) for col, info in summary.items()}
    leaked = [c for c, m in methods.items() if m == "drop" and c in released]
    if leaked:
        return FAILED, f"{who}: identifier(s) meant to be dropped are in the release: {', '.join(leaked)}"
    words = {"drop": "dropped", "token": "keyed token", "encrypt": "encrypted"}
    return PASSED, f"{who}: " + ", ".join(f"{c} ({words.get(m, m)})" for c, m in methods.items())


def _privacy_model(release: Artifact) -> tuple[str, str]:
    who = _who(release)
    privacy = as_dict(release.data.get("privacy"))
    if privacy.get("applicable") is False:
        return NOT_APPLICABLE, f"{who}: not applicable — {text(privacy.get('note') or 'no quasi-identifier is released')}"
    required, achieved = as_dict(privacy.get("required")), as_dict(privacy.get("achieved"))
    k_req, k_got = as_number(required.get("k")), as_number(achieved.get("k"))
    if k_req is None or k_got is None:
        return NOT_EVIDENCED, f"{who}: the release report does not state required and achieved k"
    checks = [(k_got >= k_req, f"k {text(achieved.get('k'))} (required {text(required.get('k'))})")]
    l_req = as_dict(required.get("l"))
    l_value = as_number(l_req.get("value"))
    if l_value is not None and l_req.get("variant") != "recursive":
        variant = text(l_req.get("variant") or "distinct")
        values = [as_number(as_dict(v).get(variant)) for v in as_dict(achieved.get("l")).values()]
        got = min((v for v in values if v is not None), default=None)
        checks.append((got is not None and got >= l_value,
                       f"{variant} l {text(got)} (required {text(l_req['value'])})"))
    t_req = as_number(required.get("t"))
    if t_req is not None:
        values = [as_number(v) for v in as_dict(achieved.get("t")).values()]
        got = max((v for v in values if v is not None), default=None)
        checks.append((got is not None and got <= t_req + 1e-12, f"t {text(got)} (required at most {text(t_req)})"))
    failed = [d for ok, d in checks if not ok]
    if failed:
        return FAILED, f"{who}: NOT MET: " + ", ".join(failed)
    return PASSED, f"{who}: " + ", ".join(d for _, d in checks) + " — computed on the released data"


def _minimisation(release: Artifact) -> tuple[str, str]:
    who = _who(release)
    dropped = as_dict(release.data.get("counts")).get("dropped_columns")
    if not isinstance(dropped, list):
        return NOT_EVIDENCED, f"{who}: the release report does not list dropped columns"
    if not dropped:
        return PASSED, f"{who}: every column of the input is declared for the purpose; none needed dropping"
    return PASSED, f"{who}: columns dropped for the purpose: {text(dropped)}"


def _consent_release(release: Artifact) -> tuple[str, str]:
    who = _who(release)
    steps = [as_dict(s) for s in as_list(release.data.get("steps"))]
    purpose = next((s for s in steps if s.get("step") == "purpose"), None)
    removed = as_number(as_dict(release.data.get("counts")).get("consent_filtered"))
    if purpose is not None and "consent_column" in purpose:
        if purpose.get("consent_column") is None:
            return NOT_APPLICABLE, f"{who}: not applicable — no consent column (the policy's purpose declares none)"
        return PASSED, (f"{who}: rows removed for missing consent: {text(removed)} "
                        f"(column {text(purpose['consent_column'])})")
    if removed:
        return PASSED, f"{who}: rows removed for missing consent: {text(removed)}"
    return NOT_EVIDENCED, f"{who}: the release report does not say whether a consent column was declared"


def _consent_model(model: Artifact) -> tuple[str, str] | None:
    data = as_dict(model.data.get("data"))
    if "consent_column" not in data:
        return None
    who = f"model “{model.path.parent.name}”"
    if data.get("consent_column") is None:
        return NOT_APPLICABLE, f"{who}: not applicable — no consent column"
    removed = as_dict(data.get("removed"))
    n = sum(as_number(removed.get(k)) or 0 for k in ("no_consent", "consent_missing"))
    return PASSED, f"{who}: rows removed for missing consent: {int(n)} (column {text(data['consent_column'])})"


def _dp_budget(evidence: Evidence, spent: list[Budget]) -> Control:
    name = "Differential privacy budget"
    requirement = "Accountability for model training on personal data (per-dataset cap)"
    results: list[tuple[str, str]] = []
    for b in spent:
        if b.cap_epsilon is None:
            results.append((NOT_EVIDENCED, f"{b.words()} — no cap is recorded, so its enforcement is not shown"))
        else:
            results.append((FAILED if b.over else PASSED, b.words()))
    for model in evidence.models:
        words = privacy_words(as_dict(model.data.get("privacy")))
        if words.startswith("NOT"):
            results.append((FAILED, f"model “{model.path.parent.name}”: {words}"))
    results += [(FAILED, f"vertical party {party}: {words}") for card in evidence.vertical
                for party, p in as_dict(card.data.get("parties")).items()
                if (words := party_privacy_words(card.data, p)).startswith("NOT")]
    trained = evidence.models or evidence.federated or evidence.vertical
    if not results and not trained:
        return Control(name, requirement, NOT_APPLICABLE,
                       ["not applicable — no model was trained with differential privacy in this run"])
    if not spent and trained:
        results.append((NOT_EVIDENCED, "a model is present but no budget charge is recorded in these ledgers"))
    return _combine(name, requirement, results, "")


def _audit_trail(evidence: Evidence) -> Control:
    name = "Tamper-evident audit trail"
    requirement = "GDPR Art. 5(2) accountability, Art. 30 records of processing"
    if evidence.status == "fail":
        details = [f"{le.path}: {text(str(le.verification.first_problem))}" for le in evidence.ledgers
                   if not le.verification.ok]
        return Control(name, requirement, FAILED, ["ledger verification FAILED", *details])
    n = len(evidence.ledgers)
    if evidence.status == "tofu":
        return Control(name, requirement, UNVERIFIED, [
            f"{n} ledger(s) intact, checked only against the key each ledger carries (trust on first use): "
            "a ledger re-signed by someone else would pass too; run `privmodel report --trust KEYS`"])
    return Control(name, requirement, PASSED, [
        f"{n} ledger(s) verified against trusted key(s) {', '.join(evidence.trusted_key_ids)}"])


def summarise(evidence: Evidence) -> Summary:
    """The first screen: what policy governed the run, what it spent, and what each control shows."""
    spent = budgets(evidence)
    releases = evidence.releases
    anonymized = any(str(e.get("action", "")).startswith("anonymize") for le in evidence.ledgers for e in le.entries)
    no_release = ("an anonymize step is recorded but its release report is not part of this evidence "
                  "(report on the run directory)" if anonymized else "no release in this run")
    consent = [_consent_release(r) for r in releases] + [c for m in evidence.models if (c := _consent_model(m))]
    controls = [
        _combine("Pseudonymisation of direct identifiers (keyed HMAC tokens, AES-SIV)",
                 "GDPR Art. 4(5), Art. 32; PIPL Art. 73 (de-identification, which is not anonymization)",
                 [_pseudonymisation(r) for r in releases], no_release),
        _combine("k-anonymity / l-diversity / t-closeness on quasi-identifiers",
                 "GDPR Recital 26 (means reasonably likely to identify); re-identification risk",
                 [_privacy_model(r) for r in releases], no_release),
        _combine("Data minimisation", "GDPR Art. 5(1)(c)", [_minimisation(r) for r in releases], no_release),
        _combine("Consent filter for the purpose", "GDPR Art. 5(1)(b) purpose limitation, Art. 6(1)(a)", consent,
                 no_release),
        _dp_budget(evidence, spent),
        _audit_trail(evidence),
    ]
    return Summary(policies(evidence), spent, costs(evidence), controls)
