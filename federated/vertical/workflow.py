"""The vertical run, end to end, as each party would do it; `simulate` plays every party in one process.

One label party and N >= 1 feature parties (N = 1 is the two-party run, unchanged). With several, the
label party runs PSI with each feature party (`psi_common`: see federated/vertical/psi.py) and the
training set is the common set C, the customers of every party; a feature party learns C and nothing
about another feature party's members beyond it. Every feature party has its own bottom model, epsilon
and budget charge; the label party's epsilon does not grow with N (federated/vertical/split.py).

Per party, in this order: its rows through the ONE consent rule (`minimise`, via `minimised_rows`),
its join keys normalised as its party file says; the label party signs the run (config, parties,
join keys) and the feature party checks that signature against the label party's pinned public key;
each party checks its budget (`budget.check`), then PSI (size and digest to both ledgers); each
party charges its own dataset's budget through `privmodel.dp.budget.charge` before any training
message leaves it; split learning; the label party
scores its held-out shared customers; both parties exchange their part's hash and record the same
model hash; outputs are published atomically after each party's ledger entry.

What each party writes under `out/<party>/`: its model part (`model.pt`), its ledger (`ledger.jsonl`),
and, for the label party, `card.json` and `card.md` naming every party's epsilon and the overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError
from federated.vertical.channel import Channel
from federated.vertical.party import Party, load_party, normalised_keys

if TYPE_CHECKING:
    import pandas as pd
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from flwr.app import RecordDict

    from federated.vertical.psi import PsiResult
    from federated.vertical.split import SplitConfig
    from privmodel.artifacts.ledger import Ledger
    from privmodel.core.keys import Signer
    from privmodel.data.features import EncodedData

RUN_ACTION = "vertical.train"
SCORE_ACTION = "vertical.score"
PSI_ACTION = "vertical.psi"


@dataclass(frozen=True)
class PartyInput:
    """What one party brings: its party file, its table and its keys (its organisation and budget)."""

    party_file: Path
    data: Path
    keys: Path | None


@dataclass
class PartySide:
    """One party's state during a run (never shared with the other side)."""

    party: Party
    inp: PartyInput
    rows: pd.DataFrame
    join: list[str]
    book: Ledger
    signer: Signer
    out: Path
    x: np.ndarray | None = None
    charge: dict[str, Any] | None = None
    positions: np.ndarray | None = None  # each kept (consenting) row's position in the party's table
    n_num: int = 0  # how many of x's leading columns are numeric (the rest one-hot): the encrypted feature map

    @property
    def name(self) -> str:
        return self.party.name


@dataclass
class VerticalResult:
    """What the run reports: per-party epsilon and delta, the overlap, the AUC and the shared model hash."""

    parties: dict[str, dict[str, Any]]
    overlap: dict[str, Any]
    metrics: dict[str, Any]
    model_hash: str
    noise: dict[str, float]
    config: dict[str, Any]
    bytes_sent: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def dense(data: EncodedData) -> np.ndarray:
    """Numeric columns and one-hot categoricals as one float32 matrix (public encoding, no statistics)."""
    parts = [data.x_num.astype(np.float32)]
    for j, card in enumerate(data.cat_cardinalities):
        parts.append(np.eye(card, dtype=np.float32)[data.x_cat[:, j]])
    return np.concatenate(parts, axis=1).astype(np.float32)


def open_side(inp: PartyInput, out: Path) -> PartySide:
    from privmodel.artifacts.ledger import Ledger
    from privmodel.core.fileio import read_table
    from privmodel.core.keys import ensure_keys, load_signer
    from privmodel.workflows.rows import minimised_rows, text_columns

    party = load_party(inp.party_file)
    frame = read_table(inp.data, text_columns=[*text_columns(party.policy), *party.join_names])
    rows = minimised_rows(frame, party.policy, inp.keys, source=str(inp.data), partner=party.name)
    join = normalised_keys(frame.iloc[rows.positions].reset_index(drop=True), party)
    signer = load_signer(ensure_keys(inp.keys))
    side_out = out / party.name
    side_out.mkdir(parents=True, exist_ok=True)
    return PartySide(party, inp, rows.frame, join, Ledger(side_out / "ledger.jsonl", signer), signer, side_out,
                 positions=np.asarray(rows.positions))


def _check_parties(label: PartySide, features: list[PartySide]) -> None:
    if label.party.spec.role != "label" or any(f.party.spec.role != "feature" for f in features):
        raise InputError("vertical: give one label party (role: label) and feature parties (role: feature)")
    names = [label.name, *(f.name for f in features)]
    if len(set(names)) != len(names):
        raise InputError("vertical: the parties must have different names")
    for feature in features:
        if label.party.join_names != feature.party.join_names:
            raise InputError(f"vertical: {feature.name} declares other join keys than {label.name} "
                             f"({', '.join(label.party.join_names)} vs {', '.join(feature.party.join_names)}); "
                             "every party must name the same keys in the same order")


def run_spec(label: Party, feature_name: str | Sequence[str], config: SplitConfig, label_key_id: str) -> dict[str, Any]:
    """What the label party signs: every party, the join keys and the whole configuration (never the
    test-only insecure seed). A deployment adds the run id, the held-out share and the time. One
    feature party is named by `feature_party` (as a deployment expects), several by `feature_parties`."""
    from dataclasses import asdict

    cfg = {k: v for k, v in asdict(config).items() if k != "insecure_seed"}
    names = [feature_name] if isinstance(feature_name, str) else list(feature_name)
    who: dict[str, Any] = {"feature_party": names[0]} if len(names) == 1 else {"feature_parties": names}
    return {"label_party": label.name, **who, "join": label.join_names, "config": cfg, "label_key_id": label_key_id}


def _run_spec(label: PartySide, features: list[PartySide], config: SplitConfig) -> dict[str, Any]:
    return run_spec(label.party, [f.name for f in features], config, label.signer.key_id)


def sign_run(signer: Signer, spec: dict[str, Any]) -> RecordDict:
    """The `vertical.run` message: the spec as canonical JSON and the label party's signature of it."""
    import base64

    from privmodel.artifacts.ledger import canonical_json

    body = canonical_json(spec)
    return run_message(body, base64.b64encode(signer.sign(body)).decode())


def run_message(body: bytes, signature: str) -> RecordDict:
    """The `vertical.run` message of a signed spec (a deployment's signature comes from `vertical run`)."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({"run": ConfigRecord({"spec": body, "signature": signature})})


def verify_run(got: RecordDict, pinned: Ed25519PublicKey, feature_name: str, label_name: str) -> bytes:
    """The feature party's check of a `vertical.run` message against the label party's key it pinned;
    returns the signed spec's bytes, or refuses with one line."""
    import base64

    from cryptography.exceptions import InvalidSignature

    try:
        body = bytes(got["run"]["spec"])  # type: ignore[arg-type]
        pinned.verify(base64.b64decode(str(got["run"]["signature"]), validate=True), body)
    except (InvalidSignature, ValueError, TypeError, KeyError):
        raise InputError(f"vertical: {feature_name} refused the run: not signed by {label_name}'s pinned key") from None
    return body


def _signed_run(label: PartySide, features: list[PartySide], config: SplitConfig, channel: Channel,
                pinned_key: Path | None) -> dict[str, Any]:
    """The label party signs the run; each feature party checks it against the label party's key it
    pinned (`pinned_key`: a key directory or public key file it got out of band; in a simulation, by
    default, the label party's own keys directory)."""
    from privmodel.core.keys import load_public_key

    message = sign_run(label.signer, _run_spec(label, features, config))
    pinned = load_public_key(pinned_key if pinned_key is not None else _keys_dir(label.inp.keys))
    for feature in features:
        body = verify_run(channel.send(label.name, feature.name, "vertical.run", message), pinned, feature.name,
                          label.name)
    return {"run_sha256": hashlib.sha256(body).hexdigest(), "signed_by": label.signer.key_id}


def _keys_dir(keys: Path | None) -> Path:
    from privmodel.core.keys import ensure_keys

    return ensure_keys(keys)


def _psi(label: PartySide, feature: PartySide, channel: Channel, workers: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from federated.vertical.psi import Pool, PsiSide, intersect

    with Pool(workers=workers) as pool:
        res_l, res_f = intersect(PsiSide(label.name, label.join, label.party.spec.min_overlap, pool),
                                 PsiSide(feature.name, feature.join, feature.party.spec.min_overlap, pool), channel)
    record_psi(label, res_l, feature.name)
    record_psi(feature, res_f, label.name)
    return res_l.rows, res_f.rows, overlap_of(res_l, label.name, feature.name)


def record_psi(side: PartySide, res: PsiResult, other: str, phase: str | None = None) -> None:
    """A party's `vertical.psi` ledger entry: sizes and the intersection's digest, never a member."""
    extra = {} if phase is None else {"phase": phase}
    side.book.append(PSI_ACTION, params={**res.ledger_params(), "other_party": other,
                                         "min_overlap": side.party.spec.min_overlap, **extra})


PAIRWISE = "pairwise (only the label party learns it)"
COMMON = "common set (customers of every party)"


def psi_common(label: PartySide, features: list[PartySide], channel: Channel,
               workers: int) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """The label party's rows and each feature party's rows of the common set, in one training order,
    and the overlap for the card. One feature party: the two-party PSI (`_psi`). Several: the
    one-sided pass with each, C on the label party's side, the two-sided PSI on C's keys with each,
    and each feature party told the training order (federated/vertical/psi.py)."""
    from functools import reduce

    from federated.vertical.psi import Pool, PsiSide, intersect, label_learns, order_message, order_of

    if len(features) == 1:
        rows_l, rows_f, overlap = _psi(label, features[0], channel, workers)
        return rows_l, [rows_f], overlap
    t0 = time.perf_counter()
    l_min = label.party.spec.min_overlap
    with Pool(workers=workers) as pool:
        pairs = []
        for f in features:
            rows, digest = label_learns(PsiSide(label.name, label.join, l_min, pool),
                                        PsiSide(f.name, f.join, f.party.spec.min_overlap, pool), channel)
            label.book.append(PSI_ACTION, params={"phase": PAIRWISE, "intersection_size": len(rows),
                                                  "intersection_sha256": digest, "own_rows": len(label.join),
                                                  "other_rows": len(f.join), "other_party": f.name, "min_overlap": l_min})
            f.book.append(PSI_ACTION, params={"phase": PAIRWISE, "own_rows": len(f.join), "other_rows": len(label.join),
                                              "other_party": label.name})
            pairs.append(rows)
        common = reduce(np.intersect1d, pairs)
        keys = [label.join[i] for i in common]
        results = []
        for f in features:
            res_l, res_f = intersect(PsiSide(label.name, keys, l_min, pool),
                                     PsiSide(f.name, f.join, f.party.spec.min_overlap, pool), channel)
            record_psi(label, res_l, f.name, COMMON)
            record_psi(f, res_f, label.name, COMMON)
            results.append((common[res_l.rows], res_l, res_f))
    order = results[0][0]
    rows_fs = [results[0][2].rows]
    for f, (rows_l, _res_l, res_f) in zip(features[1:], results[1:], strict=True):
        by_row = np.argsort(rows_l)
        perm = by_row[np.searchsorted(rows_l[by_row], order)]  # pair order position of each training row
        got = channel.send(label.name, f.name, "psi.order", order_message(perm))
        rows_fs.append(res_f.rows[order_of(got, res_f.size)])
    return order, rows_fs, _common_overlap(label, features, results, time.perf_counter() - t0)


def _common_overlap(label: PartySide, features: list[PartySide], results: list[Any], seconds: float) -> dict[str, Any]:
    """The card's overlap of a run with several feature parties: C's size, each party's rows, each
    pair's digest of C (the one its ledgers record) and one digest over them; no pairwise size."""
    digests = {f.name: res_l.digest for f, (_r, res_l, _f) in zip(features, results, strict=True)}
    size = results[0][1].size
    combined = hashlib.sha256(("privmodel.psi common v1\x00" + ":".join(digests.values())).encode()).hexdigest()
    rows = {f"{f.name}_rows": res_l.other_size for f, (_r, res_l, _f) in zip(features, results, strict=True)}
    return {"size": size, "sha256": combined, f"{label.name}_rows": len(label.join), **rows,
            "share_of_label_party": size / max(1, len(label.join)), "seconds": round(seconds, 3),
            "pairs": {name: {"sha256": d} for name, d in digests.items()}}


def overlap_of(res_l: PsiResult, label: str, feature: str) -> dict[str, Any]:
    """The overlap as the card and the result report it (from the label party's PSI result)."""
    return {"size": res_l.size, "sha256": res_l.digest, f"{label}_rows": res_l.own_size,
            f"{feature}_rows": res_l.other_size, "share_of_label_party": res_l.size / max(1, res_l.own_size),
            "seconds": round(res_l.seconds, 3)}


def charge_party(side: PartySide, epsilon: float, delta: float, params: dict[str, Any], *, spend: bool = True) -> None:
    """Charge the party's own dataset (`privmodel.dp.budget.charge`); with spend=False only refuse early
    (`budget.check`, before PSI: a run that cannot be paid for reveals nothing)."""
    from privmodel.dp import budget

    policy = side.party.policy
    assert policy.budget is not None  # load_party refuses a policy without one
    dataset = budget.dataset_of_frame(policy, side.rows, side.inp.keys)
    cap = budget.Cap.of(policy.budget)
    if not spend:
        budget.check(dataset, epsilon, delta, cap, keys=side.inp.keys, ledger=side.book, params=params)
        return
    record = budget.charge(dataset, epsilon, delta, cap, keys=side.inp.keys, ledger=side.book, params=params)
    side.charge = record.as_dict()


def _encode(label: PartySide, feature: PartySide, rows_l: np.ndarray, rows_f: np.ndarray) -> np.ndarray:
    encode_feature(feature, rows_f)
    return encode_label(label, rows_l)


def encode_label(label: PartySide, rows_l: np.ndarray, *, with_labels: bool = True) -> np.ndarray:
    """The label party's shared rows (agreed order) as a dense matrix; returns their labels (zeros
    when scoring new customers, `with_labels` False: their label is what the score predicts)."""
    from privmodel.data.features import TabularEncoder, encode_labels

    label_col = label.party.policy.labels[0]
    shared_l = label.rows.iloc[rows_l].reset_index(drop=True)
    data = TabularEncoder.from_policy(label.party.policy, label=label_col).transform(shared_l)
    label.x, label.n_num = dense(data), int(data.x_num.shape[1])
    if not with_labels:
        return np.zeros(len(shared_l), dtype=np.int64)
    y: np.ndarray = encode_labels(shared_l[label_col], label_col)
    return y


def encode_feature(feature: PartySide, rows_f: np.ndarray) -> None:
    """The feature party's shared rows (agreed order) as a dense matrix."""
    from privmodel.data.features import TabularEncoder

    enc_f = TabularEncoder.from_policy(feature.party.policy, label="")
    data = enc_f.transform(feature.rows.iloc[rows_f].reset_index(drop=True))
    feature.x, feature.n_num = dense(data), int(data.x_num.shape[1])


def split_shared(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out shared customers by a seeded permutation of the agreed order (public, data-independent)."""
    if not 0.0 < test_size < 1.0:
        raise InputError("--test-size must be in (0, 1)")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x7E57])).permutation(n)
    cut = int(round(n * test_size))
    if cut < 1 or n - cut < 1:
        raise InputError("vertical: too few shared customers for a train / test split")
    return np.sort(order[cut:]), np.sort(order[:cut])


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


@contextlib.contextmanager
def record_failures(*sides: PartySide, action: str = RUN_ACTION) -> Iterator[None]:
    """A failed run leaves a `failed` entry in every party's ledger (the reason's one line), then re-raises."""
    try:
        yield
    except Exception as exc:
        for side in sides:
            with contextlib.suppress(Exception):
                side.book.record_failure(action, exc=exc)
        raise


def party_epsilons(config: SplitConfig) -> tuple[Any, dict[str, float]]:
    from federated.vertical import split

    noise = split.calibrate(config)
    eps = {role: split.party_epsilon(noise, config.epochs, role, config.delta, config.accountant)
           for role in ("feature", "label")}
    return noise, eps


@dataclass(frozen=True)
class PrivacyPlan:
    """Per role ("feature", "label"): the epsilon, delta and budget entry of a run's mechanisms, known
    before PSI (every party's budget is checked first; no entries when non-private); `noise`: split
    learning's multipliers (None for the one-shot release)."""

    noise: Any
    eps: dict[str, Any]
    deltas: dict[str, float]
    costs: dict[str, dict[str, Any]]


def noise_record(plan: PrivacyPlan, config: SplitConfig) -> dict[str, float]:
    """What the card and every ledger state about a run's noise: split learning's multipliers, the
    one-shot release's randomization, or the encrypted run's per-party multipliers and steps."""
    from federated.vertical import encrypted, release

    if plan.noise is not None:
        return dict(plan.noise.as_dict())
    if config.protocol == "encrypted":
        return encrypted.multipliers(encrypted.EncryptedConfig.of(config))
    return release.randomization(release.ReleaseConfig.of(config), plan.eps)


def privacy_plan(config: SplitConfig) -> PrivacyPlan:
    """The plan of any protocol: split learning (`split.calibrate`), the one-shot release (pure DP) or
    the encrypted gradient descent (Gaussian, full batch)."""
    from federated.vertical import encrypted, release, split

    roles = ("feature", "label")
    if config.protocol == "encrypted":
        ec = encrypted.EncryptedConfig.of(config)
        return PrivacyPlan(None, {r: encrypted.planned_epsilon(ec, r) for r in roles}, {r: config.delta for r in roles},
                           {r: encrypted.party_cost(ec, r) for r in roles} if config.epsilon is not None else {})
    if config.protocol == "release":
        rc = release.ReleaseConfig.of(config)
        return PrivacyPlan(None, release.planned_epsilons(rc), release.planned_deltas(rc),
                           {r: release.party_cost(rc, r) for r in roles} if config.epsilon is not None else {})
    noise, eps = party_epsilons(config)
    return PrivacyPlan(noise, eps, {r: split.party_delta(noise, r, config.delta) for r in roles},
                       {r: party_cost(noise, config, r) for r in roles} if noise.private else {})


def simulate(label_in: PartyInput, feature_in: PartyInput | Sequence[PartyInput], config: SplitConfig, out: Path, *,
             test_size: float = 0.2, workers: int = 1, offline: set[str] | None = None,
             progress: Callable[[str], None] | None = None, pinned_label_key: Path | None = None) -> VerticalResult:
    """Every party in one process over a recording channel (Flower RecordDicts); see the module doc.
    `feature_in`: one feature party, or several (the label party joins them on the common set)."""
    say = progress or (lambda _m: None)
    config.check()
    feature_ins = [feature_in] if isinstance(feature_in, PartyInput) else list(feature_in)
    if not feature_ins:
        raise InputError("vertical: give at least one feature party")
    if config.protocol == "encrypted" and len(feature_ins) > 1:
        raise InputError("vertical: --protocol encrypted takes one feature party (several are not built yet)")
    t0 = time.perf_counter()
    label = open_side(label_in, out)
    features = [open_side(f, out) for f in feature_ins]
    channel = Channel(keep=False, offline=set(offline or ()))
    with record_failures(label, *features):
        _check_parties(label, features)
        signed = _signed_run(label, features, config, channel, pinned_label_key)
        plan = privacy_plan(config)
        if config.epsilon is not None:
            for side, role in _roles(label, features):
                charge_party(side, plan.eps[role], plan.deltas[role], plan.costs[role], spend=False)
        say("private set intersection")
        rows_l, rows_fs, overlap = psi_common(label, features, channel, workers)
        t_psi = time.perf_counter()
        result = _train_and_publish(label, features, rows_l, rows_fs, config, plan, channel,
                                    test_size, say, signed, overlap)
    result.seconds = {"psi": round(t_psi - t0, 2), "total": round(time.perf_counter() - t0, 2)}
    return result


def _roles(label: PartySide, features: list[PartySide]) -> list[tuple[PartySide, str]]:
    """Every party with its role: the feature parties first, then the label party (charge order)."""
    return [*((f, "feature") for f in features), (label, "label")]


def _train_and_publish(label: PartySide, features: list[PartySide], rows_l: np.ndarray, rows_fs: list[np.ndarray],
                       config: SplitConfig, plan: PrivacyPlan, channel: Channel, test_size: float,
                       say: Callable[[str], None], signed: dict[str, Any], overlap: dict[str, Any]) -> VerticalResult:
    from federated.vertical import split

    for feature, rows_f in zip(features, rows_fs, strict=True):
        encode_feature(feature, rows_f)
    y = encode_label(label, rows_l)
    train_rows, test_rows = split_shared(len(y), test_size, config.seed)
    if config.epsilon is not None:
        for side, role in _roles(label, features):
            charge_party(side, plan.eps[role], plan.deltas[role], plan.costs[role])
    assert label.x is not None and all(f.x is not None for f in features)
    run = {"release": _released, "encrypted": _encrypted}.get(config.protocol, _split_learning)
    l_side, f_sides, scores, noise = run(label, features, y, train_rows, test_rows, config, plan, channel, say)
    auc = _auc(y[test_rows], scores)
    model_hash = _agree_hash(label, features, split.state_hash(l_side.model),
                             [split.state_hash(f.model) for f in f_sides], channel)
    parties = parties_of(label.name, [f.name for f in features], plan.noise, plan.eps, config, label.charge,
                         [f.charge for f in features])
    result = VerticalResult(parties, overlap, {"roc_auc": auc, "test_customers": int(len(test_rows)),
                                               "train_customers": int(len(train_rows))},
                            model_hash, noise, {**_run_spec(label, features, config)["config"], **signed},
                            dict(channel.bytes_by_sender))
    result.files = [p for f, part in zip(features, f_sides, strict=True) for p in publish_side(f, part, result, config)]
    result.files += publish_side(label, l_side, result, config)
    return result


Trained = tuple[Any, list[Any], np.ndarray, dict[str, float]]


def _split_learning(label: PartySide, features: list[PartySide], y: np.ndarray, train_rows: np.ndarray,
                    test_rows: np.ndarray, config: SplitConfig, plan: PrivacyPlan, channel: Channel,
                    say: Callable[[str], None]) -> Trained:
    """Split learning over the channel: (label side, feature sides, test scores, noise multipliers)."""
    from federated.vertical import split

    noise = plan.noise
    f_sides = [split.FeatureSide(f.name, f.x, config, noise, index=i) for i, f in enumerate(features)]  # type: ignore[arg-type]
    l_side = split.LabelSide(label.name, label.x, y, config, noise, feature_parties=len(features))  # type: ignore[arg-type]
    say("split learning")
    split.train(f_sides, l_side, train_rows, channel, on_epoch=lambda e: say(f"epoch {e}/{config.epochs}"))
    scores = split.score(f_sides, l_side, test_rows, channel)
    return l_side, f_sides, scores, noise.as_dict()


def _released(label: PartySide, features: list[PartySide], y: np.ndarray, train_rows: np.ndarray,
              test_rows: np.ndarray, config: SplitConfig, plan: PrivacyPlan, channel: Channel,
              say: Callable[[str], None]) -> Trained:
    """The one-shot release over the channel: (label side, feature sides, test scores, what was randomized)."""
    from federated.vertical import release

    rc = release.ReleaseConfig.of(config)
    f_sides = [release.FeatureRelease(f.name, f.x, rc) for f in features]  # type: ignore[arg-type]
    l_side = release.LabelRelease(label.name, label.x, y, rc)  # type: ignore[arg-type]
    say("one-shot release")
    release.train(f_sides, l_side, train_rows, channel)
    return l_side, f_sides, l_side.score(test_rows), noise_record(plan, config)


def _encrypted(label: PartySide, features: list[PartySide], y: np.ndarray, train_rows: np.ndarray,
               test_rows: np.ndarray, config: SplitConfig, plan: PrivacyPlan, channel: Channel,
               say: Callable[[str], None]) -> Trained:
    """The encrypted gradient descent over the channel: (label side, feature sides, test scores, noise)."""
    from federated.vertical import encrypted

    (feature,) = features
    assert feature.x is not None and label.x is not None
    f_side = encrypted.Party.of(feature.name, feature.x, feature.n_num, config, "feature")
    l_side = encrypted.Party.of(label.name, label.x, label.n_num, config, "label", y)
    say(f"encrypted gradient descent ({f_side.config.steps} steps)")
    scores, _bottom = encrypted.train(f_side, l_side, train_rows, test_rows, channel)
    return l_side, [f_side], scores, noise_record(plan, config)


def parties_of(label: str, feature: str | Sequence[str], noise: Any, eps: dict[str, float], config: SplitConfig,
               label_charge: dict[str, Any] | None,
               feature_charge: dict[str, Any] | None | Sequence[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Each party's role, epsilon, delta, budget charge and what its epsilon covers (card and ledgers);
    `feature`/`feature_charge`: one feature party's, or a list (one per feature party, same order)."""
    from federated.vertical import split

    names = [feature] if isinstance(feature, str) else list(feature)
    charges: list[dict[str, Any] | None] = (list(feature_charge) if isinstance(feature_charge, list | tuple)
                                            else [feature_charge])  # type: ignore[list-item]
    private = config.epsilon is not None
    if config.protocol == "release":
        label_delta, covers = 0.0, "columns and labels (its labels crossed once, by randomized response)"
    elif config.protocol == "encrypted":
        label_delta, covers = config.delta, "columns and labels (encrypted; noised gradient sums only)"
    else:
        label_delta = split.party_delta(noise, "label", config.delta)
        covers = "labels only (randomized response)" if noise.label_flip > 0 else "columns and labels"
    out = {
        label: {"role": "label", "epsilon": eps["label"] if private else None,
                "delta": label_delta if private else None, "budget": label_charge, "covers": covers},
    }
    for name, charge in zip(names, charges, strict=True):
        out[name] = {"role": "feature", "epsilon": eps["feature"] if private else None,
                     "delta": config.delta if private else None, "budget": charge, "covers": "columns"}
    return out


def party_cost(noise: Any, config: SplitConfig, role: str) -> dict[str, Any]:
    """What a party's budget entry says about its mechanism."""
    from federated.vertical import split

    if role == "label" and noise.label_flip > 0:
        return {"mechanism": "vertical split learning (label party): randomized response on the labels",
                "label_flip": noise.label_flip}
    return {"mechanism": f"vertical split learning ({role} party)", "accountant": config.accountant,
            "steps": config.epochs,
            "noise_multiplier": split.effective_sigma(split.party_sigmas(noise, config.epochs, role))}


def _agree_hash(label: PartySide, features: list[PartySide], top: str, bottoms: list[str], channel: Channel) -> str:
    """Each party sends its part's hash; every party computes sha256(top || bottom_1 || ... || bottom_N).
    With several feature parties the label party relays every bottom hash (hashes of model parts only)."""
    got = [str(channel.send(f.name, label.name, "split.done", part_message(b))["h"]["part"])
           for f, b in zip(features, bottoms, strict=True)]
    at_label = model_hash(top, *got)
    relay = got if len(features) > 1 else None
    for i, (f, own) in enumerate(zip(features, bottoms, strict=True)):
        back = channel.send(label.name, f.name, "split.done", part_message(top, relay))["h"]
        parts = str(back["bottoms"]).split(":") if relay is not None else [own]
        if parts[i] != own or model_hash(str(back["part"]), *parts) != at_label:
            raise InputError(f"vertical: {f.name} and {label.name} disagree on the model hash")
    return at_label


def part_message(part_hash: str, bottoms: list[str] | None = None) -> RecordDict:
    """The `split.done` message: the SHA-256 of the sender's model part (and, from the label party to
    one of several feature parties, every bottom part's hash in order)."""
    from flwr.app import ConfigRecord, RecordDict

    extra = {} if bottoms is None else {"bottoms": ":".join(bottoms)}
    return RecordDict({"h": ConfigRecord({"part": part_hash, **extra})})


def model_hash(top: str, *bottoms: str) -> str:
    """The model hash every ledger records: sha256(top || bottom_1 || ...) of the parts' hashes."""
    return hashlib.sha256(":".join([top, *bottoms]).encode()).hexdigest()


def publish_side(side: PartySide, part: Any, result: VerticalResult, config: SplitConfig) -> list[Path]:
    """One party publishes its model part (and, the label party, the card) atomically with its
    `vertical.train` ledger entry naming the model hash both parties agreed on."""
    from federated.vertical.card import card_markdown
    from federated.vertical.split import state_bytes
    from privmodel.core.fileio import outputs

    is_label = side.party.spec.role == "label"
    targets = [side.out / "model.pt"] + ([side.out / "card.json", side.out / "card.md"] if is_label else [])
    with outputs(targets, replace=True, ledger=side.book.path, action=RUN_ACTION) as stage:
        stage.write_bytes(side.out / "model.pt", state_bytes(part.model))
        if is_label:
            card = card_json(result, config)
            stage.write_text(side.out / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
            stage.write_text(side.out / "card.md", card_markdown(card))
        role = result.parties[side.name]
        side.book.append(RUN_ACTION, outputs=stage.artifacts(), params={
            "model_hash": result.model_hash, "role": role["role"], "overlap": result.overlap["size"],
            "intersection_sha256": result.overlap.get("pairs", {}).get(side.name, result.overlap)["sha256"], "run_sha256": result.config["run_sha256"],
            "noise": result.noise, "metrics": result.metrics if is_label else {},
        }, privacy_cost={"epsilon": role["epsilon"], "delta": role["delta"]} if role["epsilon"] is not None else None)
        files: list[Path] = stage.publish()
    return files


def card_json(result: VerticalResult, config: SplitConfig) -> dict[str, Any]:
    """The model card's facts: every party's epsilon, the overlap, what was released without DP."""
    noise_kind = "INSECURE-reproducible (NOT differentially private)" if config.insecure_seed is not None else "secure"
    eps = {name: p["epsilon"] for name, p in result.parties.items()}
    return {
        "kind": {"release": "vertical one-shot release", "encrypted": "vertical encrypted gradient descent"}.get(
            config.protocol, "vertical split learning"),
        "model_hash": result.model_hash,
        "parties": result.parties,
        "overlap": result.overlap,
        "metrics": result.metrics,
        "noise_multipliers": result.noise,
        "noise": noise_kind,
        "config": result.config,
        "private": all(e is not None and math.isfinite(e) for e in eps.values()),
        "released_without_dp": [
            "the intersection size (PSI reveals it to both parties)" if len(eps) == 2 else
            "the common set (each party learns which of its customers are customers of every party) and its size; "
            "the label party alone also learns each pairwise overlap",
            "the label party's test ROC-AUC on its held-out shared customers",
            *(["each scored (held-out) customer's feature-party score part, exactly (inference, as FATE's "
               "hetero-LR scores): epsilon covers training only"] if config.protocol == "encrypted" else []),
        ],
        "scoring": _scoring(config, len(eps) - 1),
    }


def _scoring(config: SplitConfig, feature_parties: int) -> str:
    """The card's sentence on what scoring a customer needs and costs."""
    every = "both parties" if feature_parties == 1 else "every party"
    if config.protocol == "encrypted":
        return ("the held-out customers were scored in the run: the feature party sent each one's score part "
                "(its columns times its weights) exactly; scoring new customers is not built for this protocol")
    if config.protocol == "release":
        return (f"the held-out customers were scored from the bins released for them in the run; scoring a new "
                f"customer needs {every} online and costs each feature party one more randomized-response release "
                "of that customer's bin at its epsilon")
    return (f"needs {every} online: " + ("the feature party sends" if feature_parties == 1 else "each feature party sends")
            + " one embedding per scored customer"
            + (", clipped and noised (accounted like a training release)" if config.epsilon is not None else ""))
