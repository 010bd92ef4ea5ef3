"""The label party's Flower ServerApp in a vertical deployment (`privmodel federate vertical run`).

The label party is the coordinator: its SuperLink, its run, its ServerApp; the ServerApp process runs on
its machine with its table, keys, ledger and budget. It plays the label party's side of the
simulation (`federated.vertical.workflow.simulate`) step for step, with the same messages and the
same functions; the one difference is the transport. `GridLink` carries each message as a Flower
query to the feature party's SuperNode and returns that party's next message (its node answers in
the simulation's order: see `federated.vertical.node`).

Signed runs: `vertical run` signs the run's spec (parties, join keys, configuration, held-out share,
the SuperLink's run id, the time) with the label party's key once the SuperLink gave the run its id,
and writes it to `authorization.json`; this ServerApp waits for it, checks it signs exactly the run it
was given, and sends it as the `vertical.run` message. The feature party verifies it against the key
it pinned at join before it reads or spends anything.

Progress goes to `progress.jsonl` in the label party's output directory (`deployment.submit` follows
it): an event per epoch with its seconds and seconds per round (one batch: embeddings up, gradients
down), then `done` or `failed` with the reason's one line, the feature party named when it dropped out.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from anonymize.errors import InputError
from federated.vertical.channel import PartyDropped
from federated.vertical.split import SplitConfig

if TYPE_CHECKING:
    from federated.vertical.workflow import PartySide

AUTH_WAIT_S = 60.0
INVALID_FAB = 7  # flwr.common.constant.ErrorCode.INVALID_FAB
SPLIT_FIELDS = [f.name for f in fields(SplitConfig) if f.name != "insecure_seed"]
OPTIONAL = ("epsilon", "label_epsilon", "bins")  # None travels as 0 (Flower's run config holds no None)
OPTIONAL_KIND: dict[str, Any] = {"epsilon": float, "label_epsilon": float, "bins": int}


@dataclass
class VerticalSettings:
    """What the label party's run needs besides the configuration (paths on the label party's machine)."""

    config: SplitConfig
    label_party: str
    label_data: str
    label_keys: str
    out_dir: str
    feature_party: str
    feature_node: int
    authorization: str
    test_size: float = 0.2
    psi_workers: int = 1
    wait_timeout: float = 120.0
    message_timeout: float = 300.0
    mode: str = "train"  # or "score": new customers scored with a trained model, both parties online
    model_dir: str = ""  # scoring: the label party's part (its `model.pt`) from the training run
    model_hash: str = ""  # scoring: the model both parties' ledgers recorded

    def to_record(self) -> dict[str, Any]:
        """Flat scalars for the app's run config."""
        cfg = {k: v for k, v in asdict(self.config).items() if k in SPLIT_FIELDS}
        cfg.update({k: cfg[k] or OPTIONAL_KIND[k](0) for k in OPTIONAL})
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        own["feature_node"] = str(self.feature_node)  # a node id may not fit TOML's 64-bit integers
        return {**cfg, **own}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> VerticalSettings:
        rec = {str(k).replace("-", "_"): v for k, v in record.items()}
        defaults = SplitConfig()
        cfg: dict[str, Any] = {}
        for name in SPLIT_FIELDS:
            default = getattr(defaults, name)
            kind = OPTIONAL_KIND[name] if name in OPTIONAL else type(default)
            cfg[name] = kind(rec[name]) if name in rec else default
        for name in OPTIONAL:
            cfg[name] = cfg[name] or None
        kinds: dict[str, Any] = {"int": int, "float": float}
        values = {f.name: kinds.get(str(f.type), str)(rec[f.name]) for f in fields(cls) if f.name in rec}
        return cls(config=SplitConfig(**cfg), **values)


def expected_spec(label: Any, settings: VerticalSettings, key_id: str) -> dict[str, Any]:
    """The spec `vertical run` must have signed for these settings (the run id and time aside)."""
    from federated.vertical.node import RUN_KIND
    from federated.vertical.workflow import run_spec

    return {**run_spec(label, settings.feature_party, settings.config, key_id), "kind": RUN_KIND,
            "test_size": settings.test_size, "feature_node": settings.feature_node, "mode": settings.mode,
            "model_hash": settings.model_hash}


class Link(Protocol):
    """The label party's transport to the feature party: `exchange` one message for its answer."""

    bytes_by_sender: dict[str, int]
    messages: int

    def exchange(self, kind: str, content: RecordDict, expect: str | tuple[str, ...]) -> tuple[str, RecordDict]: ...

    def wait(self, timeout: float) -> None: ...

    def abort(self, reason: str) -> None: ...


class GridLink:
    """The deployment's transport: a message to the feature party is a Flower query to its node; the
    reply is that party's next message. Bytes are counted as `Channel` counts them (the protocol's
    RecordDict, serialised with Flower's protobuf)."""

    def __init__(self, grid: Grid, label: str, feature: str, node: int, timeout: float) -> None:
        self.grid, self.label, self.feature, self.node, self.timeout = grid, label, feature, node, timeout
        self.bytes_by_sender: dict[str, int] = {label: 0, feature: 0}
        self.messages = 0

    def exchange(self, kind: str, content: RecordDict, expect: str | tuple[str, ...]) -> tuple[str, RecordDict]:
        """Send `kind`; return the answer's kind and records. A silent or unreachable party is
        PartyDropped (named); its refusal or failure is its own one line."""
        from federated.coordinator.server_app import exchange
        from federated.vertical.client_app import KIND_CODES, to_bytes, unwrap, wrap

        # seq: the node answers a message it has already answered from its record (at-least-once delivery)
        msg = Message(content=wrap(kind, content, timeout=int(self.timeout), seq=self.messages + 1),
                      message_type=MessageType.QUERY, dst_node_id=self.node)
        replies = exchange(self.grid, [msg], self.timeout, poll=0.02)
        self.messages += 1
        self.bytes_by_sender[self.label] += len(to_bytes(content))
        if not replies:
            print(f"vertical: {kind} to {self.feature}: no answer within {self.timeout:.0f} s", flush=True)
            raise PartyDropped(self.feature, kind)
        reply = replies[0]
        if reply.has_error():
            if reply.error.code == INVALID_FAB:  # its SuperNode's gate: not privmodel's app
                raise InputError(f"vertical: {self.feature} refused the run's app ({str(reply.error.reason)[:160]})")
            if reply.error.code not in KIND_CODES.values():  # unreachable node, or the SuperLink's own error
                print(f"vertical: {kind} to {self.feature}: error {reply.error.code} "  # the ServerApp's log
                      f"({str(reply.error.reason)[:200]})", flush=True)
                raise PartyDropped(self.feature, kind)
            raise InputError(str(reply.error.reason).splitlines()[0])
        got_kind, got = unwrap(reply.content)
        self.bytes_by_sender[self.feature] += len(to_bytes(got))
        wanted = (expect,) if isinstance(expect, str) else expect
        if got_kind not in wanted:
            raise InputError(f"vertical: {self.feature} answered {got_kind[:24] or 'nothing'} where "
                             f"{' or '.join(wanted)} was due")
        return got_kind, got

    def wait(self, timeout: float) -> None:
        """Until the feature party's node is connected to the SuperLink, or PartyDropped."""
        deadline = time.monotonic() + timeout
        while self.node not in set(self.grid.get_node_ids()):
            if time.monotonic() > deadline:
                raise PartyDropped(self.feature, "the wait for its node (did it run `privmodel federate vertical join`?)")
            time.sleep(0.2)

    def abort(self, reason: str) -> None:
        """Tell the feature party the run ended (it records the failure); best effort."""
        from flwr.app import ConfigRecord

        from federated.coordinator.server_app import exchange
        from federated.vertical.client_app import wrap

        msg = Message(content=wrap("vertical.abort", RecordDict({"abort": ConfigRecord({"reason": reason[:300]})})),
                      message_type=MessageType.QUERY, dst_node_id=self.node)
        exchange(self.grid, [msg], min(self.timeout, 30.0), poll=0.05)


def _authorization(path: Path, run_id: str, label: PartySide, settings: VerticalSettings) -> tuple[bytes, str]:
    """Wait for `vertical run`'s signature of THIS run and check that it signs these settings."""
    from cryptography.exceptions import InvalidSignature

    from privmodel.artifacts.ledger import canonical_json
    from privmodel.core.keys import load_public_key

    deadline = time.monotonic() + min(settings.wait_timeout, AUTH_WAIT_S)
    while True:
        try:
            auth = json.loads(path.read_text())
            body = json.loads(auth["body"])
            if str(body.get("run_id")) == run_id:
                break
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            raise InputError(f"vertical: run {run_id} has no signed authorization from the label party in {path}")
        time.sleep(0.1)
    expected = json.loads(canonical_json(expected_spec(label.party, settings, label.signer.key_id)))
    if {k: body.get(k) for k in expected} != expected:
        raise InputError(f"vertical: run {run_id}: the signed run differs from the submitted one")
    try:
        load_public_key(settings.label_keys).verify(base64.b64decode(auth["signature"]), auth["body"].encode())
    except (InvalidSignature, ValueError):
        raise InputError(f"vertical: run {run_id}: the authorization is not signed by the label party's key") from None
    return auth["body"].encode(), str(auth["signature"])


@dataclass
class _Clock:
    start: float
    psi: float = 0.0
    rounds: list[float] | None = None

    def summary(self) -> dict[str, float]:
        rounds = self.rounds or []
        return {"psi": round(self.psi, 3), "train": round(sum(rounds), 3),
                "per_round": round(float(np.mean(rounds)), 4) if rounds else 0.0,
                "rounds": len(rounds), "total": round(time.perf_counter() - self.start, 3)}


class LabelRun:
    """The label party's side of one deployed run."""

    def __init__(self, settings: VerticalSettings, run_id: str, connect: Callable[[str], Link]) -> None:
        """`connect(label party's name)` gives the link to the feature party (`GridLink` in a deployment;
        tests join the two sides in one process)."""
        from federated.vertical.workflow import PartyInput, open_side
        from privmodel.core.fileio import ensure_output_dir

        self.settings, self.config, self.run_id = settings, settings.config, run_id
        self.out = ensure_output_dir(settings.out_dir)
        self.progress = self.out / "progress.jsonl"
        self.progress.write_text("")
        self.clock = _Clock(time.perf_counter(), rounds=[])
        self.label = open_side(PartyInput(Path(settings.label_party), Path(settings.label_data),
                                           Path(settings.label_keys)), self.out)
        self.link = connect(self.label.name)

    def emit(self, event: dict[str, Any]) -> None:
        from federated.coordinator.server_app import _emit

        _emit(self.progress, None, event)

    def run(self) -> dict[str, Any]:
        """The whole run; any failure: a `failed` entry in the label party's ledger, the feature party
        told (unless it dropped out), a `failed` event naming the cause, then raised."""
        from federated.vertical.workflow import RUN_ACTION, SCORE_ACTION, record_failures

        try:
            with record_failures(self.label, action=SCORE_ACTION if self.settings.mode == "score" else RUN_ACTION):
                return self._run()
        except Exception as exc:
            from privmodel.artifacts.ledger import failure_reason

            reason = str(exc).splitlines()[0] if isinstance(exc, InputError) else failure_reason(exc)
            if not isinstance(exc, PartyDropped):
                with contextlib.suppress(Exception):  # best effort: the party may be gone too
                    self.link.abort(reason)
            self.emit({"event": "failed", "reason": reason})
            raise

    def _run(self) -> dict[str, Any]:
        from federated.vertical.workflow import charge_party, privacy_plan, run_message

        label, config = self.label, self.config
        if label.party.spec.role != "label":
            raise InputError(f"vertical: {label.name} is not a label party (role: label); it cannot run")
        if self.settings.mode == "score" and config.protocol in ("release", "encrypted"):
            raise InputError(f"vertical: a model of --protocol {config.protocol} scores its run's customers only; scoring new "
                             "customers in a deployment needs --protocol split")
        body, signature = _authorization(Path(self.settings.authorization), self.run_id, label, self.settings)
        plan = privacy_plan(config)
        if config.epsilon is not None:
            charge_party(label, plan.eps["label"], plan.deltas["label"], plan.costs["label"], spend=False)
        self.link.wait(self.settings.wait_timeout)
        self.link.exchange("vertical.run", run_message(body, signature), "vertical.ready")
        self.emit({"event": "accepted", "party": self.settings.feature_party})
        rows_l, overlap = self._psi()
        self.clock.psi = time.perf_counter() - self.clock.start
        self.emit({"event": "psi", "overlap": overlap["size"], "seconds": round(self.clock.psi, 3)})
        signed = {"run_sha256": hashlib.sha256(body).hexdigest(), "signed_by": label.signer.key_id,
                  "run_id": self.run_id}
        if self.settings.mode == "score":
            return self._score(rows_l, overlap, plan.noise, signed)
        return self._train(rows_l, overlap, plan, signed)

    def _score(self, rows_l: np.ndarray, overlap: dict[str, Any], noise: Any, signed: dict[str, Any]) -> dict[str, Any]:
        """Score every shared new customer with the trained parts (the feature party sends one noised
        embedding each and charges its budget for it); `scores.parquet`: the row in the label party's
        table and its score, published with a `vertical.score` ledger entry."""
        from federated.vertical import split
        from federated.vertical.workflow import encode_label, model_hash, part_message

        label, config, link = self.label, self.config, self.link
        encode_label(label, rows_l, with_labels=False)
        assert label.x is not None and label.positions is not None
        l_side = split.LabelSide(label.name, label.x, np.zeros(len(rows_l), dtype=np.int64), config, noise)
        split.load_state(l_side.model, (Path(self.settings.model_dir) / "model.pt").read_bytes())
        kind, got = link.exchange("split.start", RecordDict({}), "split.score")
        scores = []
        for part in split.score_parts(np.arange(len(rows_l))):
            if kind != "split.score":
                raise InputError(f"vertical: {self.settings.feature_party} ended scoring early")
            scores.append(l_side.score(part, split.unpack(got)))
            kind, got = link.exchange("split.next", RecordDict({}), ("split.score", "split.done"))
        top = split.state_hash(l_side.model)
        digest = model_hash(top, str(got["h"]["part"]))
        if kind != "split.done" or digest != self.settings.model_hash:
            raise InputError("vertical: the parties' parts do not make the model the scoring run names")
        link.exchange("split.done", part_message(top), "vertical.published")
        files = self._publish_scores(label.positions[rows_l], np.concatenate(scores), {
            "model_hash": digest, "role": "label", "scored": int(len(rows_l)),
            "intersection_sha256": overlap["sha256"], **signed})
        feature_eps = split.score_epsilon(noise, config.delta, config.accountant) if config.epsilon is not None else None
        done = {"event": "done", "mode": "score", "model_hash": digest, "scored": int(len(rows_l)), "overlap": overlap,
                "parties": {self.settings.feature_party: {"role": "feature", "epsilon": feature_eps}},
                "seconds": self.clock.summary(), "bytes": dict(link.bytes_by_sender), "messages": link.messages,
                "files": [str(f) for f in files]}
        self.emit(done)
        return done

    def _publish_scores(self, rows: np.ndarray, scores: np.ndarray, params: dict[str, Any]) -> list[Path]:
        import pandas as pd

        from federated.vertical.workflow import SCORE_ACTION
        from privmodel.core.fileio import outputs

        label = self.label
        order = np.argsort(rows, kind="stable")
        target = label.out / "scores.parquet"
        with outputs([target], replace=True, ledger=label.book.path, action=SCORE_ACTION) as stage:
            stage.write_table(target, pd.DataFrame({"row": rows[order].astype(np.int64), "score": scores[order]}))
            label.book.append(SCORE_ACTION, outputs=stage.artifacts(), params=params)
            files: list[Path] = stage.publish()
        return files

    def _psi(self) -> tuple[np.ndarray, dict[str, Any]]:
        """The label party's PSI steps (`psi.intersect`'s, with the feature party answering remotely)."""
        from federated.vertical import psi
        from federated.vertical.workflow import overlap_of, record_psi

        label, link = self.label, self.link
        t0 = time.perf_counter()
        with psi.Pool(workers=max(1, self.settings.psi_workers)) as pool:
            side = psi.PsiSide(label.name, label.join, label.party.spec.min_overlap, pool)
            _, got = link.exchange("psi.request", psi.psi_message(side.request(), count=len(label.join)), "psi.request")
            request_f = psi.blob_of(got)
            _, got = link.exchange("psi.tokens", psi.psi_message(side.answer(request_f)), "psi.tokens")
            rows, digest = side.members(psi.blob_of(got))
        _, got = link.exchange("psi.done", psi.psi_message(b"", size=len(rows), digest=digest), "psi.done")
        psi.check_agreed(len(rows), digest, int(got["psi"]["size"]), str(got["psi"]["digest"]))  # type: ignore[arg-type]
        psi.check_overlap(side, len(rows))
        res = psi.PsiResult(label.name, rows, len(rows), digest, len(label.join), len(request_f) // psi.POINT_BYTES,
                            time.perf_counter() - t0, link.bytes_by_sender[label.name])
        record_psi(label, res, self.settings.feature_party)
        return rows, overlap_of(res, label.name, self.settings.feature_party)

    def _train(self, rows_l: np.ndarray, overlap: dict[str, Any], plan: Any, signed: dict[str, Any]) -> dict[str, Any]:
        """Encode, charge, train with the feature party (split learning or the one-shot release), score,
        agree on the hash, publish."""
        from federated.vertical import split
        from federated.vertical.workflow import (
            VerticalResult,
            _auc,
            card_json,
            charge_party,
            encode_label,
            model_hash,
            noise_record,
            part_message,
            parties_of,
            publish_side,
            split_shared,
        )

        label, config = self.label, self.config
        y = encode_label(label, rows_l)
        train_rows, test_rows = split_shared(len(y), self.settings.test_size, config.seed)
        if config.epsilon is not None:
            charge_party(label, plan.eps["label"], plan.deltas["label"], plan.costs["label"])
        trained = {"release": self._release, "encrypted": self._encrypted}.get(config.protocol, self._split)
        l_side, scores, bottom = trained(y, train_rows, test_rows, plan)
        top = split.state_hash(l_side.model)
        digest = model_hash(top, bottom)
        _, got = self.link.exchange("split.done", part_message(top), "vertical.published")
        if str(got["h"]["model_hash"]) != digest:
            raise InputError("vertical: the parties disagree on the model hash")
        auc = _auc(y[test_rows], scores) if len(scores) else None
        metrics = {"roc_auc": auc, "test_customers": int(len(test_rows)), "train_customers": int(len(train_rows))}
        parties = parties_of(label.name, self.settings.feature_party, plan.noise, plan.eps, config, label.charge, None)
        result = VerticalResult(parties, overlap, metrics, digest, noise_record(plan, config),
                                {**{k: v for k, v in asdict(config).items() if k != "insecure_seed"}, **signed},
                                dict(self.link.bytes_by_sender), self.clock.summary())
        files = publish_side(label, l_side, result, config)
        done = {"event": "done", "model_hash": digest, "metrics": metrics, "parties": parties,
                "overlap": overlap, "seconds": self.clock.summary(), "bytes": result.bytes_sent,
                "messages": self.link.messages, "files": [str(f) for f in files], "card": card_json(result, config)}
        self.emit(done)
        return done

    def _split(self, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
               plan: Any) -> tuple[Any, np.ndarray, str]:
        """Split learning's rounds, then the held-out customers' scores: (top side, scores, bottom part's hash)."""
        from federated.vertical import split

        assert self.label.x is not None
        l_side = split.LabelSide(self.label.name, self.label.x, y, self.config, plan.noise)
        kind, got = self._rounds(l_side, train_rows)
        scores = []
        for part in split.score_parts(test_rows):
            scores.append(l_side.score(part, split.unpack(got)))
            kind, got = self.link.exchange("split.next", RecordDict({}), ("split.score", "split.done"))
        if kind != "split.done":
            raise InputError(f"vertical: {self.settings.feature_party} sent more scoring messages than scheduled")
        return l_side, np.concatenate(scores) if scores else np.zeros(0), str(got["h"]["part"])

    def _release(self, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                 plan: Any) -> tuple[Any, np.ndarray, str]:
        """The one-shot release: released labels down, released bins (and the bottom part's hash) up."""
        from federated.vertical import release, split

        assert self.label.x is not None
        l_side = release.LabelRelease(self.label.name, self.label.x, y, release.ReleaseConfig.of(self.config))
        t0 = time.perf_counter()
        _, got = self.link.exchange("release.labels", split.pack(l_side.labels(train_rows).astype(np.int8)),
                                    "release.bins")
        assert self.clock.rounds is not None
        self.clock.rounds.append(time.perf_counter() - t0)
        l_side.fit(train_rows, [split.unpack(got).astype(np.int64)])
        self.emit({"event": "round", "round": 1, "rounds": 1, "seconds": round(self.clock.rounds[-1], 3),
                   "batches": 1, "per_round": round(self.clock.rounds[-1], 4)})
        return l_side, l_side.score(test_rows), str(got["h"]["part"])

    def _encrypted(self, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                   plan: Any) -> tuple[Any, np.ndarray, str]:
        """The encrypted gradient descent (`encrypted.label_rounds`): a round is one step (two messages)."""
        from federated.vertical import encrypted

        assert self.label.x is not None and self.clock.rounds is not None
        l_side = encrypted.Party.of(self.label.name, self.label.x, self.label.n_num, self.config, "label", y)
        rounds, steps = self.clock.rounds, l_side.config.steps
        marks = [time.perf_counter()]

        def on_step(step: int) -> None:
            marks.append(time.perf_counter())
            rounds.append(marks[-1] - marks[-2])
            self.emit({"event": "round", "round": step, "rounds": steps, "seconds": round(rounds[-1], 3),
                       "batches": 1, "per_round": round(rounds[-1], 4)})

        scores, bottom = encrypted.label_rounds(l_side, train_rows, test_rows, self.link.exchange, on_step)
        return l_side, scores, bottom

    def _rounds(self, l_side: Any, train_rows: np.ndarray) -> tuple[str, RecordDict]:
        """One round per batch of the public schedule: an embedding comes up with the answer to the
        previous gradients, the next gradients go down."""
        from federated.vertical import split

        cfg, link = self.config, self.link
        t0 = time.perf_counter()
        kind, got = link.exchange("split.start", RecordDict({}), "split.embedding")
        assert self.clock.rounds is not None
        for epoch in range(cfg.epochs):
            start = len(self.clock.rounds)
            for idx in split.batches(len(train_rows), cfg.batch_size, epoch, cfg.seed):
                grads = l_side.step(train_rows[idx], split.unpack(got))
                kind, got = link.exchange("split.gradient", split.pack(grads), ("split.embedding", "split.score",
                                                                                "split.done"))
                now = time.perf_counter()
                self.clock.rounds.append(now - t0)
                t0 = now
            per = self.clock.rounds[start:]
            self.emit({"event": "round", "round": epoch + 1, "rounds": cfg.epochs, "seconds": round(sum(per), 3),
                       "batches": len(per), "per_round": round(float(np.mean(per)), 4) if per else 0.0})
        return kind, got


def make_server_app() -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        settings = VerticalSettings.from_record(dict(context.run_config))
        LabelRun(settings, str(grid.run.run_id), lambda label: GridLink(
            grid, label, settings.feature_party, settings.feature_node, settings.message_timeout)).run()

    return server


# The deployment entry point (`serverapp = "federated.vertical.server_app:app"` in the app `vertical run` writes).
app = make_server_app()
