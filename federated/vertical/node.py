"""A feature party's long-lived node in a vertical deployment (`privmodel federate vertical join`).

Why a node of its own: the party's table, its consent-filtered rows and normalised join keys are
loaded once (`workflow.open_side`, the simulation's own path), and its keys, ledger and budget stay
on its machine. The lean ClientApp (`federated.vertical.client_app`) hands it each message of the
label party's run; it answers with its own next message. Messages are the simulation's RecordDicts
and every step calls the simulation's functions: `verify_run` (the pinned label key), `charge_party`
(`privmodel.dp.budget.check` / `charge`), `PsiSide` (PSI), `split.FeatureSide` (clipped, noised
embeddings; DP-SGD bottom model), `publish_side` (model part and `vertical.train` ledger entry).

The order of one run, label party -> this node (answer):

    vertical.run   signed spec            -> vertical.ready     (signature, run id, names, budget checked)
    psi.request    label's request        -> psi.request        (this party's request)
    psi.tokens     tokens of ours         -> psi.tokens         (tokens of the label's keys)
    psi.done       size, digest           -> psi.done           (checked; `vertical.psi` entry)
    split.start    -                      -> split.embedding    (budget charged; first batch)
    split.gradient gradients of batch b   -> split.embedding | split.score (next batch, or scoring)
    split.next     -                      -> split.score | split.done (bottom part's hash)
    split.done     top part's hash        -> vertical.published (model hash; model part published)
    vertical.abort reason                 -> vertical.aborted   (the label party failed: `failed` entry)

A one-shot release run (`protocol: release`, `federated.vertical.release`) replaces the split.* rounds:

    release.labels released labels        -> release.bins       (budget charged; every shared customer's
                                                                   released bin and the bottom part's hash)
    split.done     top part's hash        -> vertical.published

An encrypted run (`protocol: encrypted`, `federated.vertical.encrypted`; its messages are listed there):

    he.keys        its public context     -> he.keys            (budget charged; this party's public context)
    he.residual / he.gradient, per step   -> he.residual / gradient (`encrypted.feature_steps`)
    score.request  -                      -> score.partial      (held-out customers' score parts, part hash)
    split.done     top part's hash        -> vertical.published

A scoring run (`mode: score`, `privmodel federate vertical score`) has the same order without training
batches: the node refuses unless the run names the model whose part it published last, charges one
embedding release per shared customer (`split.score_epsilon`), embeds every shared customer with its saved
part, and records `vertical.score` instead of publishing.

A message out of this order, a refused signature or overlap, a budget that cannot pay: one line back
to the label party and, once a run was accepted, a `failed` entry in this party's ledger. A run left
open by a label party that vanished is recorded as failed when the next run starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anonymize.errors import InputError

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from federated.vertical.encrypted import Party as EncryptedParty
    from federated.vertical.psi import Pool, PsiSide
    from federated.vertical.release import FeatureRelease
    from federated.vertical.split import FeatureSide, Noise, SplitConfig
    from federated.vertical.workflow import PartySide, PrivacyPlan

RUN_KIND = "privmodel.vertical.run/1"
FUTURE_SKEW_S = 300.0
REFUSED_ACTION = "vertical.run_refused"
Steps = Generator[tuple[str, "RecordDict"], "np.ndarray | None", None]


class Refused(InputError):
    """This party declines the run (signature, run id, names): nothing read, nothing spent."""


@dataclass
class PartyNodeSpec:
    """What a vertical party brings to `join`: its party file, table, keys, workdir and the label
    party's public key it pinned (PEM or key directory)."""

    name: str
    party_file: str
    data: str
    keys: str
    workdir: str
    coordinator_key: str
    psi_workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def signed_spec(body: bytes, run_id: str, own: str, join: list[str]) -> dict[str, Any]:
    """The run a correctly signed body describes, if it is this run and names this party; else Refused.

    Checked after the signature: the kind, the run id the SuperLink gave this run (a signature for
    another run cannot be replayed), the time (not in the future), this party as the feature party and
    its join keys."""
    try:
        spec = json.loads(body)
        if not isinstance(spec, dict) or spec.get("kind") != RUN_KIND or not isinstance(spec.get("config"), dict):
            raise ValueError
        skew = (dt.datetime.fromisoformat(str(spec.get("time"))) - dt.datetime.now(dt.UTC)).total_seconds()
    except (ValueError, TypeError):
        raise Refused(f"vertical: {own} refused the run: its signed description is malformed") from None
    if str(spec.get("run_id")) != run_id:
        raise Refused(f"vertical: {own} refused the run: the signature is for run {str(spec.get('run_id'))[:24]}, "
                      "not this run")
    if skew > FUTURE_SKEW_S:
        raise Refused(f"vertical: {own} refused the run: its signature is dated in the future")
    if "feature_parties" in spec:  # several feature parties run in `federate vertical simulate` only
        raise Refused(f"vertical: {own} refused the run: a deployment trains with one feature party; this run names "
                      f"{len(spec['feature_parties']) if isinstance(spec['feature_parties'], list) else 'several'}")
    if spec.get("feature_party") != own or spec.get("label_party") == own:
        raise Refused(f"vertical: {own} refused the run: it names another feature party")
    if spec.get("join") != join:
        raise Refused(f"vertical: {own} refused the run: it joins on other keys than this party's "
                      f"({', '.join(join)})")
    return spec


def config_of(spec: dict[str, Any]) -> SplitConfig:
    """The signed configuration as a SplitConfig (one line when it is not one)."""
    from federated.vertical.split import SplitConfig

    try:
        config = SplitConfig(**spec["config"])
    except TypeError:
        raise InputError("vertical: the signed configuration has unknown settings") from None
    config.check()
    return config


@dataclass
class _Run:
    """One accepted run at this node: where it stands and what the next message needs."""

    run_id: str
    spec: dict[str, Any]
    run_sha256: str
    config: SplitConfig
    noise: Noise | None  # split learning's multipliers (None for the one-shot release)
    eps: dict[str, float]
    plan: PrivacyPlan
    stage: str = "vertical.ready"
    pool: Pool | None = None
    psi: PsiSide | None = None
    request_in: bytes = b""
    rows: np.ndarray | None = None
    digest: str = ""
    size: int = 0
    overlap: dict[str, Any] = field(default_factory=dict)
    f_side: FeatureSide | FeatureRelease | EncryptedParty | None = None
    steps: Steps | None = None
    he_steps: Generator[tuple[str, RecordDict], RecordDict, None] | None = None  # the encrypted protocol's

    def close(self) -> None:
        if self.pool is not None:
            self.pool.__exit__(None, None, None)
            self.pool = None


# kind of message -> the stage the run must be at (what this node last answered)
EXPECTS = {
    "psi.request": ("vertical.ready",), "psi.tokens": ("psi.request",), "psi.done": ("psi.tokens",),
    "split.start": ("psi.done",), "split.gradient": ("split.embedding",), "split.next": ("split.score",),
    "split.done": ("split.done", "release.bins", "score.partial"), "release.labels": ("psi.done",),
    "he.keys": ("psi.done",), "he.residual": ("he.keys", "gradient"), "he.gradient": ("he.residual",),
    "score.request": ("gradient",),
}


class FeatureNode:
    """The feature party: loads its side once; answers the label party's messages, run by run."""

    def __init__(self, spec: PartyNodeSpec) -> None:
        from federated.vertical.workflow import PartyInput, open_side
        from privmodel.core.keys import load_public_key

        self.spec = spec
        self.side: PartySide = open_side(PartyInput(Path(spec.party_file), Path(spec.data), Path(spec.keys)),
                                      Path(spec.workdir))
        self.name = self.side.name
        if self.side.party.spec.role != "feature":
            raise InputError(f"party {self.name}: `vertical join` is for a feature party (role: feature); the label "
                             "party submits the run (`vertical run`)")
        if spec.name != self.name:
            raise InputError(f"party {self.name}: its party file names it {self.name}, not {spec.name}")
        try:
            self.pinned = load_public_key(spec.coordinator_key)
        except InputError as exc:
            raise InputError(f"party {self.name}: --label-key: {exc}") from None
        self.run: _Run | None = None
        # the last message answered ((run id, kind, seq), answer), kept to answer a repeated delivery
        self._answered: tuple[tuple[str, str, int], tuple[dict[str, Any], dict[str, np.ndarray]]] | None = None
        self._handlers: dict[str, Callable[[_Run, RecordDict], tuple[str, RecordDict]]] = {
            "psi.request": self._psi_request, "psi.tokens": self._psi_tokens, "psi.done": self._psi_done,
            "split.start": self._split_start, "split.gradient": self._split_step, "split.next": self._split_step,
            "split.done": self._split_done, "release.labels": self._release_labels,
            "he.keys": self._encrypted_start, "he.residual": self._encrypted_step, "he.gradient": self._encrypted_step,
            "score.request": self._encrypted_step,
        }

    # --- the local socket's requests -----------------------------------------------------------

    def handle(self, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One message in, this party's answer out; every failure is one line naming the party."""
        from federated.vertical.client_app import from_bytes, to_bytes

        if op == "refuse_run":  # the SuperNode's app gate refused a run's bundle
            self.side.book.append(REFUSED_ACTION, params={"run_id": str(header.get("run_id", ""))[:24], "request": "app"},
                                  outcome="failed", reason=f"run refused: {str(header.get('reason', ''))[:200]}")
            return {"ok": True}, {}
        if op != "vertical":
            return {"ok": False, "kind": "input", "error": f"party {self.name}: unknown request {op[:16]!r}"}, {}
        kind, run_id = str(header.get("kind", "")), str(header.get("run_id", ""))
        seq = (run_id, kind, int(header.get("seq", 0) or 0))
        if seq[2] and self._answered is not None and self._answered[0] == seq:
            return self._answered[1]  # delivered twice (a retried connection): the same answer, no second step
        try:
            content = from_bytes(arrays["payload"].tobytes() if "payload" in arrays else b"")
            reply_kind, reply = self.step(kind, run_id, content)
            answer: tuple[dict[str, Any], dict[str, np.ndarray]] = (
                {"ok": True, "kind": reply_kind}, {"payload": np.frombuffer(to_bytes(reply), dtype=np.uint8)})
        except Exception as exc:  # noqa: BLE001 - answered by kind and one line, never a raw message
            answer = self._failure(kind, exc, run_id), {}
        self._answered = (seq, answer) if seq[2] else None
        return answer

    def _failure(self, kind: str, exc: Exception, run_id: str) -> dict[str, Any]:
        """Close the run `run_id` with a `failed` entry (once), and say why in one line. A message for
        another run than the open one leaves the open one alone."""
        from federated.vertical.workflow import RUN_ACTION, SCORE_ACTION

        run = self.run
        if run is not None and run.run_id == run_id:
            self.run = None
            run.close()
            action = SCORE_ACTION if _scoring(run.spec) else RUN_ACTION
            with contextlib.suppress(Exception):
                self.side.book.record_failure(action, params={"run_id": run.run_id, "stage": kind[:24]}, exc=exc)
        if isinstance(exc, Refused):
            return {"ok": False, "kind": "refused", "error": str(exc)}
        if isinstance(exc, InputError):
            msg = str(exc).splitlines()[0]
            return {"ok": False, "kind": "input", "error": msg if self.name in msg else f"party {self.name}: {msg}"}
        if os.environ.get("PRIVMODEL_DEBUG") == "1":
            import traceback

            traceback.print_exception(exc)
        return {"ok": False, "kind": "failed", "error": f"party {self.name}: local {kind[:24]} failed ({type(exc).__name__})"}

    def step(self, kind: str, run_id: str, content: RecordDict) -> tuple[str, RecordDict]:
        """Dispatch one protocol message of run `run_id`."""
        from flwr.app import ConfigRecord, RecordDict

        if kind == "vertical.run":
            return self._start(run_id, content)
        run = self.run
        if kind == "vertical.abort":
            if run is not None and run.run_id == run_id:
                reason = str(content["abort"]["reason"])[:300] if "abort" in content else "no reason given"
                raise InputError(f"vertical: the label party ended run {run_id}: {reason}")
            return "vertical.aborted", RecordDict({"ok": ConfigRecord({"party": self.name})})
        if run is None or run.run_id != run_id:
            raise InputError(f"vertical: {kind[:24]} for run {run_id[:24]}, which this party has not accepted")
        if kind not in self._handlers or run.stage not in EXPECTS[kind]:
            raise InputError(f"vertical: {kind[:24]} out of order (after {run.stage})")
        reply_kind, reply = self._handlers[kind](run, content)
        run.stage = reply_kind
        return reply_kind, reply

    # --- the protocol's steps ------------------------------------------------------------------

    def _start(self, run_id: str, content: RecordDict) -> tuple[str, RecordDict]:
        """Check the label party's signature (pinned key), the run it names, then this party's budget."""
        from flwr.app import ConfigRecord, RecordDict

        from federated.vertical.workflow import charge_party, privacy_plan, verify_run

        try:
            body = verify_run(content, self.pinned, self.name, _claimed_label(content))
            spec = signed_spec(body, run_id, self.name, self.side.party.join_names)
            config = config_of(spec)
            if _scoring(spec):
                if config.protocol in ("release", "encrypted"):
                    raise InputError(f"vertical: a model of --protocol {config.protocol} scores its run's customers only")
                self._check_model(str(spec.get("model_hash", "")))
        except InputError as exc:
            self.side.book.append(REFUSED_ACTION, params={"run_id": run_id[:24], "request": "vertical.run"},
                                  outcome="failed", reason=str(exc).splitlines()[0])
            raise Refused(str(exc)) from None
        if self.run is not None:  # a new signed run: the previous run's label party vanished, that run failed
            self._failure(self.run.stage, InputError(f"vertical: the label party dropped out of run {self.run.run_id} "
                                                     f"after {self.run.stage}"), self.run.run_id)
        plan = privacy_plan(config)
        run = _Run(run_id, spec, hashlib.sha256(body).hexdigest(), config, plan.noise, plan.eps, plan)
        self.run = run
        if config.epsilon is not None:
            charge_party(self.side, *self._cost(run), spend=False)
        return "vertical.ready", RecordDict({"ready": ConfigRecord({"party": self.name})})

    def _cost(self, run: _Run) -> tuple[float, float, dict[str, Any]]:
        """(epsilon, delta, what the budget entry says) of this party in this run: training, or scoring
        (one noised embedding per scored customer: `split.score_epsilon`)."""
        from federated.vertical import split

        if _scoring(run.spec):
            assert run.noise is not None
            return (split.score_epsilon(run.noise, run.config.delta, run.config.accountant), run.config.delta,
                    {"mechanism": "vertical scoring (feature party): one embedding per scored customer",
                     "noise_multiplier": run.noise.embedding, "model_hash": str(run.spec["model_hash"])})
        return run.eps["feature"], run.plan.deltas["feature"], run.plan.costs["feature"]

    def _check_model(self, digest: str) -> None:
        """Scoring needs the model part this party published last, and the run must name that model."""
        from federated.vertical.workflow import RUN_ACTION
        from privmodel.artifacts.ledger import read_entries

        book = self.side.book.path
        trained = [e for e in read_entries(book) if e["action"] == RUN_ACTION and e["outcome"] != "failed"] \
            if book.exists() else []
        last = str(trained[-1]["params"].get("model_hash", "")) if trained else ""
        if not digest or last != digest or not (self.side.out / "model.pt").is_file():
            raise Refused(f"vertical: {self.name} refused to score: it does not hold the model part of "
                          f"{digest[:16] or '(none named)'} (its last trained model: {last[:16] or 'none'})")

    def _psi_request(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        from federated.vertical.psi import Pool, PsiSide, blob_of, psi_message

        run.pool = Pool(workers=max(1, self.spec.psi_workers)).__enter__()
        run.psi = PsiSide(self.name, self.side.join, self.side.party.spec.min_overlap, run.pool)
        run.request_in = blob_of(content)
        return "psi.request", psi_message(run.psi.request(), count=len(self.side.join))

    def _psi_tokens(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        from federated.vertical.psi import blob_of, psi_message

        assert run.psi is not None
        answer = run.psi.answer(run.request_in)  # tokens of the label party's keys (sets our copy of them)
        run.rows, run.digest = run.psi.members(blob_of(content))
        return "psi.tokens", psi_message(answer)

    def _psi_done(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        """Compare the label party's (size, digest) with ours, apply our minimum, record `vertical.psi`."""
        from federated.vertical.psi import TOKEN_BYTES, PsiResult, check_agreed, check_overlap, psi_message
        from federated.vertical.workflow import record_psi

        assert run.psi is not None and run.rows is not None
        got = content["psi"]
        check_agreed(len(run.rows), run.digest, int(got["size"]), str(got["digest"]))  # type: ignore[arg-type]
        check_overlap(run.psi, len(run.rows))
        run.size = len(run.rows)
        other = len(run.psi.other_tokens) // TOKEN_BYTES
        res = PsiResult(self.name, run.rows, run.size, run.digest, len(self.side.join), other, 0.0, 0)
        record_psi(self.side, res, str(run.spec["label_party"]))
        run.overlap = {"size": run.size, "sha256": run.digest}
        run.close()
        return "psi.done", psi_message(b"", size=run.size, digest=run.digest)

    def _split_start(self, run: _Run, _content: RecordDict) -> tuple[str, RecordDict]:
        """Encode the shared rows, charge this party's budget, then the first embedding."""
        from federated.vertical import split
        from federated.vertical.workflow import charge_party, encode_feature, split_shared

        assert run.rows is not None
        encode_feature(self.side, run.rows)
        if _scoring(run.spec):  # every shared customer is scored with the part this party trained
            train_rows, test_rows = np.zeros(0, dtype=np.int64), np.arange(run.size)
        else:
            train_rows, test_rows = split_shared(run.size, float(run.spec["test_size"]), run.config.seed)
        if run.config.epsilon is not None:
            charge_party(self.side, *self._cost(run))
        assert self.side.x is not None
        if run.noise is None:
            raise InputError(f"vertical: split.start in a {run.config.protocol} run")
        f_side = split.FeatureSide(self.name, self.side.x, run.config, run.noise)
        run.f_side = f_side
        if _scoring(run.spec):
            split.load_state(f_side.model, (self.side.out / "model.pt").read_bytes())
        run.steps = feature_steps(f_side, train_rows, test_rows)
        return next(run.steps)

    def _split_step(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        from federated.vertical import split

        assert run.steps is not None
        return run.steps.send(split.unpack(content) if run.stage == "split.embedding" else None)

    def _release_labels(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        """The one-shot release: charge, fit on the released labels, answer with every shared customer's
        released bin and this party's part's hash."""
        from flwr.app import ConfigRecord

        from federated.vertical import release, split
        from federated.vertical.workflow import charge_party, encode_feature, split_shared

        assert run.rows is not None
        if run.config.protocol != "release":
            raise InputError("vertical: release.labels in a split-learning run")
        encode_feature(self.side, run.rows)
        train_rows, _ = split_shared(run.size, float(run.spec["test_size"]), run.config.seed)
        if run.config.epsilon is not None:
            charge_party(self.side, *self._cost(run))
        assert self.side.x is not None
        f_side = release.FeatureRelease(self.name, self.side.x, release.ReleaseConfig.of(run.config))
        run.f_side = f_side
        reply = split.pack(f_side.bins(train_rows, split.unpack(content).astype(np.int64)).astype(np.int16))
        reply["h"] = ConfigRecord({"part": split.state_hash(f_side.model)})
        return "release.bins", reply

    def _encrypted_start(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        """The encrypted protocol: charge, map this party's shared rows, answer the label party's public
        context with its own; then `encrypted.feature_steps` answers every step."""
        from federated.vertical import encrypted
        from federated.vertical.workflow import charge_party, encode_feature, split_shared

        assert run.rows is not None
        if run.config.protocol != "encrypted":
            raise InputError(f"vertical: he.keys in a {run.config.protocol} run")
        encode_feature(self.side, run.rows)
        train_rows, test_rows = split_shared(run.size, float(run.spec["test_size"]), run.config.seed)
        if run.config.epsilon is not None:
            charge_party(self.side, *self._cost(run))
        assert self.side.x is not None
        f_side = encrypted.Party.of(self.name, self.side.x, self.side.n_num, run.config, "feature")
        run.f_side = f_side
        run.he_steps = encrypted.feature_steps(f_side, content, str(run.spec["label_party"]), train_rows, test_rows)
        return next(run.he_steps)

    def _encrypted_step(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        assert run.he_steps is not None
        return run.he_steps.send(content)

    def _split_done(self, run: _Run, content: RecordDict) -> tuple[str, RecordDict]:
        """Both parts' hashes give the model hash; publish this party's part with its ledger entry."""
        from flwr.app import ConfigRecord, RecordDict

        from federated.vertical import split
        from federated.vertical.workflow import VerticalResult, model_hash, noise_record, parties_of, publish_side

        assert run.f_side is not None
        digest = model_hash(str(content["h"]["part"]), split.state_hash(run.f_side.model))
        if _scoring(run.spec):
            return self._scored(run, digest)
        label = str(run.spec["label_party"])
        parties = parties_of(label, self.name, run.noise, run.eps, run.config, None, self.side.charge)
        result = VerticalResult(parties, run.overlap, {}, digest, noise_record(run.plan, run.config),
                                {**run.spec["config"], "run_sha256": run.run_sha256, "signed_by": run.spec["label_key_id"]}, {})
        publish_side(self.side, run.f_side, result, run.config)
        self.run = None
        return "vertical.published", RecordDict({"h": ConfigRecord({"model_hash": digest})})

    def _scored(self, run: _Run, digest: str) -> tuple[str, RecordDict]:
        """A scoring run: the parts must still make the model it named; `vertical.score` in the ledger."""
        from flwr.app import ConfigRecord, RecordDict

        from federated.vertical.workflow import SCORE_ACTION

        if digest != run.spec["model_hash"]:
            raise InputError("vertical: the parties' parts do not make the model the scoring run names")
        eps, delta, _ = self._cost(run)
        private = run.config.epsilon is not None
        self.side.book.append(SCORE_ACTION, params={
            "model_hash": digest, "role": "feature", "scored": run.size, "intersection_sha256": run.digest,
            "run_sha256": run.run_sha256, "run_id": run.run_id}, privacy_cost={"epsilon": eps, "delta": delta} if private else None)
        self.run = None
        return "vertical.published", RecordDict({"h": ConfigRecord({"model_hash": digest})})


def _scoring(spec: dict[str, Any]) -> bool:
    return spec.get("mode") == "score"


def feature_steps(f_side: FeatureSide, train_rows: np.ndarray, test_rows: np.ndarray) -> Steps:
    """This party's messages in the simulation's order (`split.train`, then `split.score`): an
    embedding per training batch of the public schedule (the answer is its gradients), one per scoring
    chunk, then the bottom part's hash."""
    from federated.vertical import split
    from federated.vertical.workflow import part_message

    cfg = f_side.config
    for epoch in range(cfg.epochs):
        for idx in split.batches(len(train_rows), cfg.batch_size, epoch, cfg.seed):
            rows = train_rows[idx]
            grads = yield "split.embedding", split.pack(f_side.embed(rows))
            if grads is None:
                raise InputError("vertical: a training batch got no gradients")
            f_side.backward(rows, grads)
    for part in split.score_parts(test_rows):
        yield "split.score", split.pack(f_side.embed(part))
    yield "split.done", part_message(split.state_hash(f_side.model))


def _claimed_label(content: RecordDict) -> str:
    """The label party's name as the (not yet verified) spec gives it: only for the refusal's line."""
    with contextlib.suppress(Exception):
        name = json.loads(bytes(content["run"]["spec"])).get("label_party")  # type: ignore[arg-type]
        if isinstance(name, str) and name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            return name[:64]
    return "the label party"


def main(argv: list[str] | None = None) -> int:
    """The node process `privmodel federate vertical join` starts (the horizontal worker's loop)."""
    from federated.partner.worker import main as serve_main

    return serve_main(argv, spec_type=PartyNodeSpec, make=FeatureNode)


if __name__ == "__main__":
    raise SystemExit(main())
