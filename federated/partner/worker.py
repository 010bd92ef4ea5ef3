"""A partner's local training worker: its data, policy, keys, privacy budget and ledger.

Why a separate long-lived object: the data, the minimised rows, the encoder and torch are loaded
once per partner, not once per Flower message. In simulation the worker lives inside the Ray actor
that runs the ClientApp (cached per partition); in a deployment `privmodel federate join` starts it
as its own process and the lean ClientApp talks to it over an authenticated local socket
(`federated.runtime.messages`).

The customer is the unit of privacy: a partner trains on its own MINIMISED rows
(`anonymize.pipeline.minimise`: validated, consent-filtered, identifiers dropped or keyed, no
data-dependent generalization), never on a Mondrian / lattice release, whose generalizations depend
on other customers (DP-SGD on it would protect release rows, not customers). The release path
survives only behind `PartnerSpec.training_rows = "release"`, for the benchmark that measures what
it costs; the coordinator's card then says that ε is per release row for that partner.

Training goes through the one DP core (`privmodel.dp.training.fit_round`). A train reply carries the DP
update, the FedAvg weight (the training row count declared at hello), the run's ε and the metrics of
the INCOMING global model on the partner's held-out rows; nothing computed on its training rows.

Privacy accounting is per partner and per run: each round adds `local_steps` DP-SGD steps at the
partner's own noise multiplier; the ε of the run so far comes from `privmodel.dp.accounting.epsilon_for`
(PRV) over all steps of all rounds the partner joined. Before a round trains, its increment of ε (and
the run's δ, on the run's first round) is charged to the partner's budget with `privmodel.dp.budget`:
the same signed `budget.charge` entries, keyed by the SHA-256 of the partner's data file, that
`privmodel train` charges. So centralized and federated training of one table share one budget, and
the charges of a run add up to its ε exactly. A round that would pass the cap is refused before any
training happens. The run's progress (steps, noise multiplier, rounds) lives in a state file beside
the ledger, because in simulation successive rounds of one partner may run in different Ray actors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from anonymize.errors import InputError
from federated.runtime.config import TRAINING_ROWS, FedConfig
from federated.runtime.messages import WireError, accept_authenticated, arrays_hash, read_token, recv_frame, send_frame

if TYPE_CHECKING:
    import pandas as pd
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from torch.nn import Module

    from anonymize.policy.schema import Policy
    from privmodel.data.features import EncodedData, TabularEncoder
    from privmodel.dp.training import TrainConfig

STATE_FILE = "federated-state.json"
T = TypeVar("T")


class Refused(Exception):
    """The partner declines this round (its privacy budget would be exceeded)."""


class Unauthorized(Exception):
    """The run is not signed by the coordinator key this partner pinned at join: refused before anything."""


AUTH_KIND = "privmodel.federate.run/1"
AUTH_FUTURE_SKEW_S = 300.0


def policy_hash(policy: Policy) -> str:
    """Hash of the validated policy content, so partners compare meaning, not file formatting."""
    from privmodel.artifacts.ledger import canonical_json
    from privmodel.core.fileio import sha256_bytes

    return sha256_bytes(canonical_json(policy.model_dump(mode="json")))


@dataclass
class PartnerSpec:
    """What a partner supplies: its name, data file, policy, keys and working directory."""

    name: str
    data: str
    policy: str
    keys: str
    workdir: str
    epsilon_cap: float = 0.0  # 0 = the policy's budget cap
    # "minimised" (always, in the commands): the partner's own consent-filtered, minimised rows.
    # "release": its anonymized release, as before issue 10 -- benchmarks only, to measure the cost.
    training_rows: str = "minimised"
    # TEST ONLY: accept a coordinator's request for reproducible noise (FedConfig.insecure_seed).
    # Off by default, so no coordinator can make a partner's noise predictable.
    insecure_noise: bool = False
    # The coordinator's Ed25519 public key (PEM file or key directory) pinned at `federate join
    # --coordinator-key`: every request must carry a run authorization signed by it. "" = simulation
    # (in-process partners, no SuperLink between them and the coordinator).
    coordinator_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Prepared:
    """A partner's encoded rows for one (label, model, seed, eval share): training and held-out."""

    key: str
    encoder: TabularEncoder
    train: EncodedData
    y_train: np.ndarray
    test: EncodedData
    y_test: np.ndarray
    removed: dict[str, int]


def _release_midpoints(frame: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Released numeric ranges ("[30, 39]") as their midpoints (the old release path; benchmarks only)."""
    import pandas as pd

    from anonymize.generalization.hierarchies import parse_range

    out = frame.copy()
    for name, col in policy.columns.items():
        if name not in out.columns or col.type not in ("integer", "float") or pd.api.types.is_numeric_dtype(out[name].dtype):
            continue
        raw_bounds = getattr(col, "bounds", None)
        bounds: tuple[float, float] | None = (raw_bounds[0], raw_bounds[1]) if raw_bounds else None
        cache: dict[str, float] = {}

        def mid(value: Any, _bounds: tuple[float, float] | None = bounds, _cache: dict[str, float] = cache) -> float:
            text = str(value).strip()
            if text not in _cache:
                try:
                    _cache[text] = float(text)
                except ValueError:
                    lo, hi = parse_range(text, default=_bounds)
                    _cache[text] = (lo + hi) / 2.0
            return _cache[text]

        out[name] = out[name].map(mid).astype("float64")
    return out


class PartnerWorker:
    """Loads the partner's data once; answers hello / train / evaluate / final requests."""

    def __init__(self, spec: PartnerSpec) -> None:
        from anonymize.policy.schema import load_policy
        from privmodel.artifacts.ledger import Ledger
        from privmodel.core.keys import load_signer

        self.spec = spec
        self.name = spec.name
        self.workdir = Path(spec.workdir)
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"partner {self.name}: cannot create {self.workdir} ({exc.strerror})") from None
        self.policy = _named(self.name, load_policy, spec.policy)
        self.policy_hash = policy_hash(self.policy)
        signer = _named(self.name, load_signer, spec.keys)
        self.ledger = Ledger(self.workdir / "ledger.jsonl", signer)
        if spec.training_rows not in TRAINING_ROWS:
            raise InputError(f"partner {self.name}: training_rows must be one of {', '.join(TRAINING_ROWS)}")
        self._prepared: Prepared | None = None
        self._lock = threading.Lock()
        self._pinned = None
        if spec.coordinator_key:
            from privmodel.core.keys import load_public_key

            self._pinned = _named(self.name, load_public_key, spec.coordinator_key)
        self._refused_runs: set[str] = set()
        self._submitter: str | None = None  # key id of the coordinator key that signed the current run

    # --- run authorization ---------------------------------------------------------------------

    def authorize(self, op: str, header: dict[str, Any]) -> str | None:
        """Check the coordinator's signature on this run (before any data is read, any ε spent).

        The signed body binds the run id (assigned by the SuperLink, given to the ClientApp by the
        SuperNode), the whole FedConfig and the registry; a refusal is recorded once per run in the
        partner's ledger. Returns the signer's key id (None without a pinned key: simulation)."""
        if self._pinned is None:
            return None
        from privmodel.core.keys import key_id_of

        pinned_id = key_id_of(self._pinned)
        config: dict[str, Any] = header["config"] if isinstance(header.get("config"), dict) else {}
        run_id = str(header.get("run_id", ""))
        body, problem = _signed_body(self._pinned, pinned_id, config)
        if problem is None:
            problem = _body_problem(body, run_id, config)
        if problem is not None:
            if run_id not in self._refused_runs:
                self._refused_runs.add(run_id)
                self.ledger.append(
                    "federate.run_refused", params={"run_id": run_id, "request": op[:16], "pinned_key_id": pinned_id},
                    outcome="failed", reason=f"run {run_id} refused: {problem}",
                )
            raise Unauthorized(f"partner {self.name} refused run {run_id}: {problem}")
        return str(body.get("key_id") or pinned_id)

    def _who(self) -> dict[str, Any]:
        """Recorded in every ledger entry of a run: who submitted it (the signing coordinator key id)."""
        return {"submitter": self._submitter or "none (no coordinator key pinned)"}

    # --- data ----------------------------------------------------------------------------------

    def _prepare(self, config: FedConfig) -> Prepared:
        """Read, minimise (consent, identifiers), encode and split the partner's data, once per config."""
        key = f"{config.label}:{config.model}:{config.seed}:{config.eval_fraction}"
        if self._prepared is not None and self._prepared.key == key:
            return self._prepared
        from privmodel.workflows.prepare import prepare, split

        rows, removed = self._rows()
        # the one prepare / split path of every model workflow: labels, the policy's encoder, checks,
        # a stratified split seeded by the public seed (a data-independent choice)
        ready = _named(self.name, prepare, rows, self.policy, config.label, "its minimised rows")
        train, test = _named(self.name, split, ready.y, config.eval_fraction, config.seed)
        encoder, y = ready.encoder, ready.y
        encoded = _named(self.name, encoder.transform, rows)
        self._prepared = Prepared(key, encoder, encoded.take(train), y[train], encoded.take(test), y[test], removed)
        return self._prepared

    def _rows(self) -> tuple[pd.DataFrame, dict[str, int]]:
        """The partner's training table: its minimised rows (or, benchmarks only, its release),
        and the rows removed by reason; the counts go to the partner's own ledger, never out."""
        from anonymize.pipeline import minimise
        from privmodel.artifacts.ledger import artifact
        from privmodel.core.fileio import read_table
        from privmodel.core.keys import load_pseudonym_secret

        data = Path(self.spec.data)
        frame = _named(self.name, read_table, data)
        secret = _named(self.name, load_pseudonym_secret, self.spec.keys)
        action = "federate.minimise" if self.spec.training_rows == "minimised" else "federate.anonymize"
        try:
            if self.spec.training_rows == "release":
                rows, removed = self._release(frame, secret)
            else:
                done = minimise(frame, self.policy, secret, source=data.name, partner=self.name)
                rows, removed = done.data, {k: int(v) for k, v in done.removed.items()}
        except InputError as exc:
            self.ledger.append(action, inputs=[artifact(data)], params=self._who(), outcome="failed", reason=str(exc))
            raise InputError(f"partner {self.name}: {exc}") from None
        self.ledger.append(
            action, inputs=[artifact(data)],
            params={"policy_hash": self.policy_hash, "rows_in": int(len(frame)), "rows_out": int(len(rows)),
                    "removed": removed, "training_rows": self.spec.training_rows, **self._who()},
        )
        return rows, removed

    def _release(self, frame: pd.DataFrame, secret: bytes) -> tuple[pd.DataFrame, dict[str, int]]:
        """The old path (benchmarks only): the partner's Mondrian / lattice release, ranges as midpoints."""
        from anonymize.pipeline import run as anonymize_run

        release = anonymize_run(frame, self.policy, secret, partner=self.name)
        removed: dict[str, int] = {}
        for step in release.report.get("steps", []):
            for reason, count in (step.get("removed") or {}).items():
                removed[reason] = removed.get(reason, 0) + int(count)
        return _release_midpoints(release.data, self.policy), removed

    # --- model ---------------------------------------------------------------------------------

    def _model(self, config: FedConfig, prep: Prepared) -> Module:
        from privmodel.dp.networks import build_model

        return build_model(config.model, prep.train.x_num.shape[1], prep.encoder.cat_cardinalities)

    # --- privacy state -------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        path = self._state_path()
        if not path.is_file():
            return {}
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        except ValueError:
            raise InputError(f"partner {self.name}: {path} is corrupt") from None

    def _write_state(self, state: dict[str, Any]) -> None:
        from privmodel.core.fileio import atomic_write_text

        atomic_write_text(self._state_path(), json.dumps(state, indent=1, sort_keys=True) + "\n")

    def cap(self) -> tuple[float, float]:
        """(ε cap, δ cap) of this partner's data: its own ε cap if given, else the policy's budget
        (0 = none set)."""
        budget = self.policy.budget
        cap = self.spec.epsilon_cap or (budget.epsilon if budget is not None else 0.0)
        cap_delta = budget.delta if budget is not None else 0.0
        return float(cap), float(cap_delta)

    def spent(self) -> float:
        """ε charged so far to this partner's dataset in its organisation's budget store (beside its
        keys): shared by centralized training, every federated run and every workdir."""
        from privmodel.dp import budget

        if getattr(self, "_budget_dataset", None) is None:  # the policy's dataset id, lineage root, or content hash
            self._budget_dataset = _named(self.name, budget.dataset_of, self.policy, Path(self.spec.data), Path(self.spec.keys))
        return _named(self.name, budget.spent, self._budget_dataset, Path(self.spec.keys)).epsilon

    # --- requests ------------------------------------------------------------------------------

    def hello(self, config: FedConfig) -> dict[str, Any]:
        """Who this partner is and what it will contribute; `n_train` bounds its FedAvg weight."""
        prep = self._prepare(config)
        cap, _ = self.cap()
        return {
            "partner": self.name,
            "policy_hash": self.policy_hash,
            "n_train": len(prep.y_train),
            "n_test": len(prep.y_test),
            "epsilon_cap": cap,
            "epsilon_spent": self.spent(),
            "n_num": int(prep.train.x_num.shape[1]),
            "cards": ",".join(str(c) for c in prep.encoder.cat_cardinalities),
            "training_rows": self.spec.training_rows,
        }

    def train(self, arrays: dict[str, np.ndarray], config: FedConfig, run_id: str, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One round of local DP-SGD from the global model (`privmodel.dp.training.fit_round`); refuses
        past the partner's ε cap, before any training row is touched."""
        from privmodel.core.fileio import file_lock
        from privmodel.dp.training import fit_round

        with self._lock:
            prep = self._prepare(config)
            cap, cap_delta = self.cap()
            if not config.private and cap > 0:
                reason = f"non-private training refused: ε cap {cap:.3f} is set"
                self.ledger.append(
                    "federate.round", params={"run_id": run_id, "round": server_round, **self._who()},
                    outcome="failed", reason=reason,
                )
                raise Refused(f"partner {self.name} refused: {reason}")
            model = self._model(config, prep)
            _load_arrays(model, arrays)
            # Evaluate the incoming global model first (held-out rows): one message per round instead of two.
            incoming = self._evaluate_model(model, prep)
            on_step = None
            if config.strategy == "fedprox" and config.proximal_mu > 0:
                on_step = _proximal_step(model, {k: v.copy() for k, v in arrays.items()}, config.proximal_mu * config.lr)
            with file_lock(self._state_path().with_name(STATE_FILE + ".lock")):
                state = self._read_state()
                run = state.setdefault("runs", {}).setdefault(run_id, {"steps": 0, "epsilon": 0.0, "rounds": []})

                def charge(privacy: dict[str, Any]) -> None:
                    """Charged before training: the budget is spent once the round may release an update."""
                    if config.private:
                        # without a δ cap in the policy, one run's δ is the cap
                        self._charge(privacy["epsilon"] - float(run["epsilon"]), config.delta if run["steps"] == 0 else 0.0,
                                     cap, cap_delta or config.delta,
                                     {"command": "federate", "run_id": run_id, "round": server_round, "accountant": "prv",
                                      "noise_multiplier": privacy["noise_multiplier"], "sample_rate": privacy["sample_rate"],
                                      "steps": config.local_steps, "target_epsilon": config.epsilon,
                                      "epsilon_run": privacy["epsilon"], **self._who()})
                        run.update(epsilon=privacy["epsilon"], noise_multiplier=privacy["noise_multiplier"])
                    run["steps"] += config.local_steps
                    self._write_state(state)

                result = fit_round(
                    model, prep.train, prep.y_train, self._train_config(config, server_round), steps=config.local_steps,
                    run_steps=config.rounds * config.local_steps, done_steps=int(run["steps"]),
                    noise_multiplier=run.get("noise_multiplier"), before_training=charge, on_step=on_step,
                )
                run["rounds"].append(server_round)
                self._write_state(state)
            new = _model_arrays(model)
            privacy = result.privacy
            self.ledger.append(
                "federate.round",
                params={
                    "run_id": run_id, "round": server_round, "steps": config.local_steps,
                    "sample_rate": privacy["sample_rate"], "noise_multiplier": privacy["noise_multiplier"],
                    "max_grad_norm": privacy["max_grad_norm"], "epsilon_run": privacy["epsilon"],
                    "noise": privacy.get("noise"), "model_in": arrays_hash(arrays), "update_out": arrays_hash(new),
                    **self._who(),
                },
            )
            # The DP update and its FedAvg weight; the held-out metrics are of the INCOMING model.
            metrics = {
                "num-examples": len(prep.y_train),
                "epsilon": privacy["epsilon"] if config.private else 0.0,
                "eval_auc": incoming["auc"],
                "eval_loss": incoming["loss"],
                "eval_n": incoming["num-examples"],
            }
            return new, metrics

    def _charge(self, epsilon: float, delta: float, cap: float, cap_delta: float, params: dict[str, Any]) -> None:
        """Charge one round to the partner's dataset budget (`privmodel.dp.budget.charge`, the store beside
        its keys); past the cap the round is Refused (recorded in the store and as a failed
        `budget.charge` entry in the partner's ledger)."""
        from privmodel.dp import budget

        if cap <= 0:
            raise InputError(f"partner {self.name}: DP training needs a privacy budget cap "
                             "(a budget in the policy, or the partner's epsilon cap)")
        if getattr(self, "_budget_dataset", None) is None:
            self._budget_dataset = _named(self.name, budget.dataset_of, self.policy, Path(self.spec.data), Path(self.spec.keys))
        try:
            budget.charge(self._budget_dataset, epsilon, delta, budget.Cap(cap, cap_delta), keys=Path(self.spec.keys),
                          ledger=self.ledger, params=params)
        except budget.BudgetExceeded as exc:
            raise Refused(f"partner {self.name} refused: {exc}") from None
        except InputError as exc:
            raise InputError(f"partner {self.name}: {exc}") from None

    def _train_config(self, config: FedConfig, server_round: int) -> TrainConfig:
        """The federation's local-training settings as the one training core's config. Noise is
        secret unless the coordinator asks for the test-only insecure seed AND this partner allows it."""
        import zlib

        from privmodel.dp.training import TrainConfig

        insecure = None
        if config.insecure_seed >= 0:
            if not self.spec.insecure_noise:
                raise InputError(f"partner {self.name}: refuses reproducible (insecure) noise asked by the coordinator")
            insecure = (config.insecure_seed * 1_000_003 + server_round * 7919 + zlib.crc32(self.name.encode())) % 2**31
        return TrainConfig.model_validate({  # validated: model and optimizer are checked names, not free text
            "model": config.model, "epsilon": config.epsilon if config.private else None,
            "delta": config.delta if config.private else None, "batch_size": config.batch_size, "lr": config.lr,
            "max_grad_norm": config.max_grad_norm, "optimizer": config.optimizer, "seed": config.seed,
            "insecure_seed": insecure,
        })

    def evaluate(self, arrays: dict[str, np.ndarray], config: FedConfig) -> dict[str, Any]:
        """Loss and ROC-AUC of the global model on the partner's local held-out split."""
        with self._lock:
            prep = self._prepare(config)
            model = self._model(config, prep)
            _load_arrays(model, arrays)
            return self._evaluate_model(model, prep)

    def _evaluate_model(self, model: Module, prep: Prepared) -> dict[str, Any]:
        """Held-out rows only (never the training rows): listed on the card as released without DP."""
        return evaluate_model(model, prep.test, prep.y_test)

    def final(self, arrays: dict[str, np.ndarray], config: FedConfig, run_id: str,
              coordinator_head: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record the final global model's hash in the partner's ledger (both sides must agree) with the
        coordinator's ledger head, evaluate it on the local held-out split, and return this ledger's
        head for the coordinator to record (each side records the other's head: issue 11)."""
        digest = arrays_hash(arrays)
        metrics = self.evaluate(arrays, config)
        run = self._read_state().get("runs", {}).get(run_id, {})
        cap, _ = self.cap()
        self.ledger.append(
            "federate.final_model",
            params={
                "run_id": run_id, "model_hash": digest, "rounds": run.get("rounds", []),
                "epsilon_run": run.get("epsilon", 0.0), "delta": config.delta if config.private else None,
                "epsilon_cap": cap, "coordinator_head": coordinator_head, **self._who(),
            },
        )
        from privmodel.artifacts.ledger import ledger_head
        from privmodel.core.keys import load_public_key

        head = _named(self.name, ledger_head, self.ledger.path, [load_public_key(self.spec.keys)])
        return {
            "partner": self.name, "model_hash": digest, "epsilon": float(run.get("epsilon", 0.0)),
            "eval_auc": metrics["auc"], "eval_loss": metrics["loss"], "eval_n": metrics["num-examples"],
            "head_ledger_id": head["ledger_id"] or "", "head_entries": int(head["entries"]),
            "head_last_hash": head["last_hash"] or "",
        }

    def handle(self, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Dispatch one request; every failure becomes a reply naming the partner, never a crash."""
        config = FedConfig.from_record(header.get("config", {}))
        run_id = str(header.get("run_id", "0"))
        if op == "refuse_run":  # the SuperNode's app gate refused a run's FAB (federated.partner.supernode)
            self._record_app_refusal(run_id, header)
            return {"ok": True, "info": {}}, {}
        try:
            self._submitter = self.authorize(op, header)  # before anything is read or spent
            return self._dispatch(op, header, arrays, config, run_id)
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator by kind, never by raw message
            return self._failure_reply(op, exc), {}

    def _record_app_refusal(self, run_id: str, header: dict[str, Any]) -> None:
        if run_id not in self._refused_runs:
            self._refused_runs.add(run_id)
            self.ledger.append("federate.run_refused", params={"run_id": run_id, "request": "app"}, outcome="failed",
                               reason=f"run {run_id} refused: {str(header.get('reason', ''))[:200]}")

    def _dispatch(self, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray], config: FedConfig,
                  run_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if op == "hello":
            return {"ok": True, "info": self.hello(config)}, {}
        if op == "train":
            new, metrics = self.train(arrays, config, run_id, int(header.get("round", 0)))
            return {"ok": True, "metrics": metrics, "partner": self.name}, new
        if op == "evaluate":
            return {"ok": True, "metrics": self.evaluate(arrays, config), "partner": self.name}, {}
        if op == "final":
            return {"ok": True, "info": self.final(arrays, config, run_id, _coordinator_head(header))}, {}
        return {"ok": False, "kind": "failed", "error": f"partner {self.name}: unknown request {op!r}"}, {}

    def _failure_reply(self, op: str, exc: Exception) -> dict[str, Any]:
        """A refusal, an unauthorized run, bad input (its one line) or a crash (its type only)."""
        if isinstance(exc, Refused):
            return {"ok": False, "kind": "refused", "error": str(exc)}
        if isinstance(exc, Unauthorized):
            return {"ok": False, "kind": "unauthorized", "error": str(exc)}
        if isinstance(exc, InputError):
            msg = str(exc)
            if not msg.startswith(f"partner {self.name}"):
                msg = f"partner {self.name}: {msg}"
            return {"ok": False, "kind": "input", "error": msg}
        if os.environ.get("PRIVMODEL_DEBUG") == "1":
            import traceback

            traceback.print_exception(exc)
        return {"ok": False, "kind": "failed", "error": f"partner {self.name}: local {op} failed ({type(exc).__name__})"}


# --- torch helpers (imported lazily: only the worker pays for torch) ------------------------------


def evaluate_model(model: Module, data: EncodedData, y: np.ndarray) -> dict[str, Any]:
    """ROC-AUC and log-loss of a model on encoded rows (the project's one predict / metric path)."""
    from privmodel.dp.dpsgd import predict_proba
    from privmodel.evaluation.metrics import log_loss, roc_auc

    p = predict_proba(model, data)
    auc = roc_auc(y, p)
    return {"num-examples": int(len(y)), "loss": log_loss(y, p), "auc": float(auc) if auc is not None else float("nan")}


def _coordinator_head(header: dict[str, Any]) -> dict[str, Any] | None:
    """The coordinator's ledger head sent with the final query (None when absent or malformed)."""
    config: dict[str, Any] = header["config"] if isinstance(header.get("config"), dict) else {}
    lid, entries, last = (config.get(f"coordinator_{k}") for k in ("ledger_id", "entries", "last_hash"))
    if not isinstance(lid, str) or not isinstance(last, str) or isinstance(entries, bool) or not isinstance(entries, int):
        return None
    return {"ledger_id": lid[:128] or None, "entries": entries, "last_hash": last[:128] or None}


def _named(partner: str, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except InputError as exc:
        raise InputError(f"partner {partner}: {exc}") from None


def _model_arrays(model: Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def _proximal_step(model: Module, global_params: dict[str, np.ndarray], rate: float) -> Callable[[int, Module], None]:
    """FedProx's proximal term as a step after each DP-SGD step: w -= rate * (w - w_global).

    It depends only on the partner's own weights and the public global model, never on a record,
    so it is post-processing of the DP update and costs no privacy; with SGD it is exactly the
    gradient of (mu / 2) * ||w - w_global||^2, with Adam it is the decoupled form (as AdamW does for
    weight decay).
    """
    import torch

    anchors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in global_params.items()}
    named = dict(model.named_parameters())

    def step(_step: int, _model: Module) -> None:
        with torch.no_grad():
            for key, param in named.items():
                if key in anchors:
                    param.sub_(rate * (param - anchors[key]))

    return step


def _load_arrays(model: Module, arrays: dict[str, np.ndarray]) -> None:
    import torch

    state = model.state_dict()
    if set(state) != set(arrays):
        raise InputError("global model does not match the local model (different policy or model kind?)")
    new_state = {}
    for key, value in state.items():
        arr = np.asarray(arrays[key])
        if tuple(arr.shape) != tuple(value.shape):
            raise InputError(f"global model parameter {key} has shape {arr.shape}, expected {tuple(value.shape)}")
        new_state[key] = torch.from_numpy(arr.astype(np.float32)).to(value.dtype)
    model.load_state_dict(new_state)


# --- the deployment worker process ----------------------------------------------------------------


def serve(spec: Any, address: str, token_file: str, parent_pid: int | None = None, ready_file: str | None = None,
          make: Callable[[Any], Any] | None = None) -> None:
    """Serve requests on a Unix socket until SIGTERM, or until the parent (`federate join`) dies.

    Data is loaded before the socket opens, so a bad data file or policy fails the join at once with
    a line naming the partner, rather than in the middle of a round. `make(spec)` builds the worker
    (default `PartnerWorker`; a vertical party's node has the same `name` and `handle`).
    """
    token = read_token(token_file)
    worker = (make or PartnerWorker)(spec)
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if os.path.exists(address):
        os.unlink(address)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(address)
    finally:
        os.umask(old_umask)
    server.listen(8)
    server.settimeout(0.5)
    if ready_file:
        Path(ready_file).write_text(json.dumps({"pid": os.getpid(), "partner": worker.name}))
    try:
        while not stop.is_set():
            if parent_pid and not _alive(parent_pid):
                break
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    break
                raise
            with conn:
                try:
                    if not accept_authenticated(conn, token):
                        print("worker: a caller failed the token handshake; connection closed", file=sys.stderr, flush=True)
                        continue
                    conn.settimeout(None)
                    header, arrays = recv_frame(conn)
                    reply, out = worker.handle(str(header.get("op", "")), header, arrays)
                    send_frame(conn, reply, out)
                except (WireError, OSError) as exc:  # the caller's side is gone or broke the framing
                    print(f"worker: connection dropped ({type(exc).__name__}: {str(exc)[:120]})", file=sys.stderr, flush=True)
                    continue
    finally:
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(address)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None, spec_type: Callable[..., Any] = PartnerSpec,
         make: Callable[[Any], Any] | None = None) -> int:
    """Entry point of the worker process started by `privmodel federate join` (and, with its own
    `spec_type` and `make`, by `privmodel federate vertical join`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m federated.partner.worker")
    parser.add_argument("--spec", required=True, help="JSON file with the partner spec")
    parser.add_argument("--address", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    spec = spec_type(**json.loads(Path(args.spec).read_text()))
    try:
        serve(spec, args.address, args.token_file, args.parent_pid, args.ready_file, make)
    except InputError as exc:
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"error": str(exc).splitlines()[0]}))
        print(f"error: {str(exc).splitlines()[0]}", flush=True)
        return 2
    return 0


def _signed_body(pinned: Ed25519PublicKey, pinned_id: str, config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The run authorization's body if the pinned coordinator key signed it, else why not."""
    import base64

    from cryptography.exceptions import InvalidSignature

    body_text, signature = config.get("auth_body"), config.get("auth_sig")
    if not isinstance(body_text, str) or not isinstance(signature, str):
        return {}, "it carries no coordinator signature"
    body: Any = {}
    try:
        pinned.verify(base64.b64decode(signature, validate=True), body_text.encode())
        body = json.loads(body_text)
        if not isinstance(body, dict) or body.get("kind") != AUTH_KIND:
            raise ValueError
    except InvalidSignature:
        return {}, f"its configuration is not signed by the pinned coordinator key {pinned_id}"
    except (ValueError, TypeError):
        return {}, "its authorization is malformed"
    return body, None


def _body_problem(body: dict[str, Any], run_id: str, config: dict[str, Any]) -> str | None:
    """Why a validly signed body does not authorize this run (other run, other config, future date)."""
    import datetime as dt

    signed_config: dict[str, Any] = body["config"] if isinstance(body.get("config"), dict) else {}
    signed_time = str(body.get("time", ""))
    try:
        skew = (dt.datetime.fromisoformat(signed_time) - dt.datetime.now(dt.UTC)).total_seconds()
    except (ValueError, TypeError):
        skew = float("inf")
    if str(body.get("run_id")) != run_id:
        return f"the signature is for run {str(body.get('run_id'))[:24]}, not this run"
    if FedConfig.from_record(signed_config).to_record() != FedConfig.from_record(config).to_record():
        return "its configuration differs from the one the coordinator signed"
    if skew > AUTH_FUTURE_SKEW_S:
        return "its authorization is dated in the future"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
