"""A partner's local training worker: its data, policy, keys, privacy budget and ledger.

Why a separate long-lived object: the data, the anonymized release, the encoder and torch are loaded
once per partner, not once per Flower message. In simulation the worker lives inside the Ray actor
that runs the ClientApp (cached per partition); in a deployment `privmodel federate join` starts it
as its own process and the lean ClientApp talks to it over an authenticated local socket
(`federated.wire`).

Privacy accounting is per partner and per run: each round adds `local_steps` DP-SGD steps at the
partner's own noise multiplier; the ε of the run so far comes from `privmodel.accounting.epsilon_for`
(PRV) over all steps of all rounds the partner joined. Before a round trains, its increment of ε (and
the run's δ, on the run's first round) is charged to the partner's budget with `privmodel.budget`:
the same signed `budget.charge` entries, keyed by the SHA-256 of the partner's data file, that
`privmodel train` charges. So centralized and federated training of one table share one budget, and
the charges of a run add up to its ε exactly. A round that would pass the cap is refused before any
training happens. The run's progress (steps, noise multiplier, rounds) lives in a state file beside
the ledger, because in simulation successive rounds of one partner may run in different Ray actors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anonymize.errors import InputError
from federated.config import FedConfig
from federated.wire import WireError, accept_authenticated, arrays_hash, read_token, recv_frame, send_frame

STATE_FILE = "federated-state.json"


class Refused(Exception):
    """The partner declines this round (its privacy budget would be exceeded)."""


def policy_hash(policy: Any) -> str:
    """Hash of the validated policy content, so partners compare meaning, not file formatting."""
    from privmodel.audit import canonical_json
    from privmodel.fileio import sha256_bytes

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def midpoints(frame, policy: Any):  # -> pandas.DataFrame
    """Released numeric ranges ("[30, 39]") as their midpoints, as the DP encoder reads them.

    The encoder does the same; doing it here first keeps the federated path independent of how the
    encoder handles pandas copy-on-write arrays.
    """
    import pandas as pd

    from anonymize.hierarchies import parse_range

    out = frame.copy()
    for name, col in policy.columns.items():
        if name not in out.columns or col.type not in ("integer", "float") or pd.api.types.is_numeric_dtype(out[name].dtype):
            continue
        bounds = tuple(col.bounds) if getattr(col, "bounds", None) else None
        cache: dict[str, float] = {}

        def mid(value: Any, _bounds=bounds, _cache=cache) -> float:
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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class PartnerWorker:
    """Loads the partner's data once; answers hello / train / evaluate / final requests."""

    def __init__(self, spec: PartnerSpec) -> None:
        from anonymize.policy import load_policy
        from privmodel.audit import Ledger
        from privmodel.keys import load_signer

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
        self._prepared: dict[str, Any] | None = None
        self._data_sha256: str | None = None
        self._lock = threading.Lock()

    # --- data ----------------------------------------------------------------------------------

    def _prepare(self, config: FedConfig) -> dict[str, Any]:
        """Read, anonymize (cached per data+policy hash), encode and split the partner's data."""
        key = f"{config.label}:{config.model}:{config.seed}:{config.eval_fraction}"
        if self._prepared is not None and self._prepared["key"] == key:
            return self._prepared
        from privmodel.features import TabularEncoder, encode_labels

        release = self._release()
        if config.label not in release.columns:
            raise InputError(f"partner {self.name}: label column {config.label!r} is not in the released data")
        encoder = TabularEncoder.from_policy(self.policy, label=config.label)
        encoded = encoder.transform(midpoints(release, self.policy))
        y = encode_labels(release[config.label], config.label)
        n = len(y)
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(n)
        n_test = max(1, int(round(n * config.eval_fraction)))
        test, train = order[:n_test], order[n_test:]
        self._prepared = {
            "key": key,
            "encoder": encoder,
            "train": (encoded.x_num[train], encoded.x_cat[train], y[train]),
            "test": (encoded.x_num[test], encoded.x_cat[test], y[test]),
            "cards": list(encoded.cat_cardinalities),
            "n_num": int(encoded.x_num.shape[1]),
        }
        return self._prepared

    def _release(self):  # -> pandas.DataFrame
        """The anonymized release of the partner's table, made once and reused across runs."""
        import pandas as pd

        from anonymize.pipeline import run as anonymize_run
        from privmodel.audit import artifact
        from privmodel.fileio import read_table, sha256_file, write_table
        from privmodel.keys import load_pseudonym_secret

        data = Path(self.spec.data)
        try:
            frame = read_table(data)
        except InputError as exc:
            raise InputError(f"partner {self.name}: {exc}") from None
        self._data_sha256 = sha256_file(data)
        cache = self.workdir / f"release-{self._data_sha256[:16]}-{self.policy_hash[:16]}.parquet"
        with _locked(cache):
            if cache.is_file():
                return pd.read_parquet(cache)
            secret = _named(self.name, load_pseudonym_secret, self.spec.keys)
            try:
                release = anonymize_run(frame, self.policy, secret)
            except InputError as exc:
                self.ledger.append("federate.anonymize", inputs=[artifact(data)], outcome="failed", reason=str(exc))
                raise InputError(f"partner {self.name}: {exc}") from None
            write_table(release.data, cache)
            self.ledger.append(
                "federate.anonymize",
                inputs=[artifact(data)],
                outputs=[artifact(cache)],
                params={"policy_hash": self.policy_hash, "rows_in": int(len(frame)), "rows_out": int(len(release.data))},
            )
            return release.data

    # --- model ---------------------------------------------------------------------------------

    def _model(self, config: FedConfig, prep: dict[str, Any]):
        from privmodel.models import build_model

        return build_model(config.model, prep["n_num"], prep["cards"])

    # --- privacy state -------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.workdir / STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        path = self._state_path()
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise InputError(f"partner {self.name}: {path} is corrupt") from None

    def _write_state(self, state: dict[str, Any]) -> None:
        from privmodel.fileio import atomic_write_text

        atomic_write_text(self._state_path(), json.dumps(state, indent=1, sort_keys=True) + "\n")

    def cap(self) -> tuple[float, float]:
        """(ε cap, δ cap) of this partner's data: its own ε cap if given, else the policy's budget
        (0 = none set)."""
        budget = self.policy.budget
        cap = self.spec.epsilon_cap or (budget.epsilon if budget is not None else 0.0)
        cap_delta = budget.delta if budget is not None else 0.0
        return float(cap), float(cap_delta)

    def spent(self) -> float:
        """ε charged so far to this partner's data file in its ledger (federated and centralized)."""
        from privmodel import budget

        if self._data_sha256 is None:
            return 0.0
        return budget.spent(self.ledger.path, self._data_sha256).epsilon

    # --- requests ------------------------------------------------------------------------------

    def hello(self, config: FedConfig) -> dict[str, Any]:
        prep = self._prepare(config)
        cap, _ = self.cap()
        return {
            "partner": self.name,
            "policy_hash": self.policy_hash,
            "n_train": int(len(prep["train"][2])),
            "n_test": int(len(prep["test"][2])),
            "epsilon_cap": cap,
            "epsilon_spent": self.spent(),
            "n_num": prep["n_num"],
            "cards": ",".join(str(c) for c in prep["cards"]),
        }

    def train(self, arrays: dict[str, np.ndarray], config: FedConfig, run_id: str, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One round of local DP-SGD from the global model; refuses past the partner's ε cap."""
        from privmodel.accounting import epsilon_for, noise_for
        from privmodel.dpsgd import train_dp

        with self._lock:
            prep = self._prepare(config)
            x_num, x_cat, y = prep["train"]
            n = len(y)
            sample_rate = min(1.0, config.batch_size / n)
            total_steps = config.rounds * config.local_steps
            cap, cap_delta = self.cap()
            with _locked(self._state_path()):
                state = self._read_state()
                run = state.setdefault("runs", {}).setdefault(run_id, {"steps": 0, "epsilon": 0.0, "rounds": []})
                if config.private:
                    if config.delta >= 1.0 / n:
                        raise InputError(f"partner {self.name}: δ {config.delta:g} is not below 1/n = {1.0 / n:.3g} "
                                         "for its training rows")
                    sigma = float(run.get("noise_multiplier") or noise_for(config.epsilon, config.delta, sample_rate, total_steps))
                    eps_before = float(run["epsilon"])
                    eps_after = float(epsilon_for(sigma, sample_rate, run["steps"] + config.local_steps, config.delta))
                    # without a δ cap in the policy, one run's δ is the cap
                    self._charge(eps_after - eps_before, config.delta if run["steps"] == 0 else 0.0, cap, cap_delta or config.delta,
                                 {"command": "federate", "run_id": run_id, "round": server_round, "accountant": "prv",
                                  "noise_multiplier": sigma, "sample_rate": sample_rate, "steps": config.local_steps,
                                  "target_epsilon": config.epsilon, "epsilon_run": eps_after})
                    # charged before training: the budget is spent once the round may release an update
                    run.update(steps=run["steps"] + config.local_steps, epsilon=eps_after, noise_multiplier=sigma)
                    self._write_state(state)
                elif cap > 0:
                    reason = f"non-private training refused: ε cap {cap:.3f} is set"
                    self.ledger.append(
                        "federate.round", params={"run_id": run_id, "round": server_round}, outcome="failed", reason=reason
                    )
                    raise Refused(f"partner {self.name} refused: {reason}")
                else:
                    sigma, eps_after = 0.0, math.inf

            model = self._model(config, prep)
            _load_arrays(model, arrays)
            # Evaluate the incoming global model first: one message per round instead of two.
            incoming = self._evaluate_model(model, prep)
            global_params = {k: v.copy() for k, v in arrays.items()}
            data = _Encoded(x_num, x_cat, prep["cards"])
            seed = (config.seed * 1_000_003 + server_round * 7919 + _stable(self.name)) % (2**31)
            on_step = None
            if config.strategy == "fedprox" and config.proximal_mu > 0:
                on_step = _proximal_step(model, global_params, config.proximal_mu * config.lr)
            train_dp(
                model, data, y,
                noise_multiplier=sigma, sample_rate=sample_rate, steps=config.local_steps,
                max_grad_norm=config.max_grad_norm if config.private else None,
                lr=config.lr, seed=seed, optimizer=config.optimizer, on_step=on_step,
            )
            new = _model_arrays(model)
            loss = _loss(model, x_num, x_cat, y)
            with _locked(self._state_path()):
                state = self._read_state()
                run = state.setdefault("runs", {}).setdefault(run_id, {"steps": 0, "epsilon": 0.0, "rounds": []})
                run["rounds"].append(server_round)
                if not config.private:
                    run["steps"] += config.local_steps
                self._write_state(state)
            self.ledger.append(
                "federate.round",
                params={
                    "run_id": run_id, "round": server_round, "steps": config.local_steps,
                    "sample_rate": sample_rate, "noise_multiplier": sigma,
                    "max_grad_norm": config.max_grad_norm if config.private else None,
                    "epsilon_run": eps_after if config.private else None,
                    "model_in": arrays_hash(arrays), "update_out": arrays_hash(new),
                },
            )
            metrics = {
                "num-examples": n,
                "train_loss": loss,
                "epsilon": eps_after if config.private else 0.0,
                "noise_multiplier": sigma,
                "eval_auc": incoming["auc"],
                "eval_loss": incoming["loss"],
                "eval_n": incoming["num-examples"],
            }
            return new, metrics

    def _charge(self, epsilon: float, delta: float, cap: float, cap_delta: float, params: dict[str, Any]) -> None:
        """Charge one round to the partner's data budget; past the cap the round is Refused (the
        refusal is a failed `budget.charge` entry)."""
        from privmodel import budget

        if cap <= 0:
            raise InputError(f"partner {self.name}: DP training needs a privacy budget cap "
                             "(a budget in the policy, or the partner's epsilon cap)")
        if self._data_sha256 is None:
            raise InputError(f"partner {self.name}: data not loaded")
        try:
            budget.charge(self.ledger, self._data_sha256, epsilon, delta, cap, cap_delta, params)
        except InputError as exc:
            if "privacy budget exceeded" not in str(exc):
                raise InputError(f"partner {self.name}: {exc}") from None
            raise Refused(f"partner {self.name} refused: {exc}") from None

    def evaluate(self, arrays: dict[str, np.ndarray], config: FedConfig) -> dict[str, Any]:
        """Loss and ROC-AUC of the global model on the partner's local held-out split."""
        with self._lock:
            prep = self._prepare(config)
            model = self._model(config, prep)
            _load_arrays(model, arrays)
            return self._evaluate_model(model, prep)

    def _evaluate_model(self, model, prep: dict[str, Any]) -> dict[str, Any]:
        from privmodel.metrics import roc_auc

        x_num, x_cat, y = prep["test"]
        p = _predict(model, x_num, x_cat)
        auc = roc_auc(y, p)
        return {"num-examples": int(len(y)), "loss": _logloss(y, p), "auc": float(auc) if auc is not None else float("nan")}

    def final(self, arrays: dict[str, np.ndarray], config: FedConfig, run_id: str) -> dict[str, Any]:
        """Record the final global model's hash in the partner's ledger (both sides must agree),
        and evaluate it on the local held-out split."""
        digest = arrays_hash(arrays)
        metrics = self.evaluate(arrays, config)
        run = self._read_state().get("runs", {}).get(run_id, {})
        cap, _ = self.cap()
        self.ledger.append(
            "federate.final_model",
            params={
                "run_id": run_id, "model_hash": digest, "rounds": run.get("rounds", []),
                "epsilon_run": run.get("epsilon", 0.0), "delta": config.delta if config.private else None,
                "epsilon_cap": cap,
            },
        )
        return {
            "partner": self.name, "model_hash": digest, "epsilon": float(run.get("epsilon", 0.0)),
            "eval_auc": metrics["auc"], "eval_loss": metrics["loss"], "eval_n": metrics["num-examples"],
        }

    def handle(self, op: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Dispatch one request; every failure becomes a reply naming the partner, never a crash."""
        config = FedConfig.from_record(header.get("config", {}))
        run_id = str(header.get("run_id", "0"))
        try:
            if op == "hello":
                return {"ok": True, "info": self.hello(config)}, {}
            if op == "train":
                new, metrics = self.train(arrays, config, run_id, int(header.get("round", 0)))
                return {"ok": True, "metrics": metrics, "partner": self.name}, new
            if op == "evaluate":
                return {"ok": True, "metrics": self.evaluate(arrays, config), "partner": self.name}, {}
            if op == "final":
                return {"ok": True, "info": self.final(arrays, config, run_id)}, {}
            return {"ok": False, "kind": "failed", "error": f"partner {self.name}: unknown request {op!r}"}, {}
        except Refused as exc:
            return {"ok": False, "kind": "refused", "error": str(exc)}, {}
        except InputError as exc:
            msg = str(exc)
            if not msg.startswith(f"partner {self.name}"):
                msg = f"partner {self.name}: {msg}"
            return {"ok": False, "kind": "input", "error": msg}, {}
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator by type, never by raw message
            if os.environ.get("PRIVMODEL_DEBUG") == "1":
                import traceback

                traceback.print_exc()
            return {"ok": False, "kind": "failed", "error": f"partner {self.name}: local {op} failed ({type(exc).__name__})"}, {}


# --- torch helpers (imported lazily: only the worker pays for torch) ------------------------------


@dataclass
class _Encoded:
    x_num: np.ndarray
    x_cat: np.ndarray
    cat_cardinalities: list[int]


def _stable(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode("utf-8"))


def _named(partner: str, fn, *args):
    try:
        return fn(*args)
    except InputError as exc:
        raise InputError(f"partner {partner}: {exc}") from None


def _model_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def _proximal_step(model, global_params: dict[str, np.ndarray], rate: float):
    """FedProx's proximal term as a step after each DP-SGD step: w -= rate * (w - w_global).

    It depends only on the partner's own weights and the public global model, never on a record,
    so it is post-processing of the DP update and costs no privacy; with SGD it is exactly the
    gradient of (mu / 2) * ||w - w_global||^2, with Adam it is the decoupled form (as AdamW does for
    weight decay).
    """
    import torch

    anchors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in global_params.items()}
    named = dict(model.named_parameters())

    def step(_step: int, _model) -> None:
        with torch.no_grad():
            for key, param in named.items():
                if key in anchors:
                    param.sub_(rate * (param - anchors[key]))

    return step


def _load_arrays(model, arrays: dict[str, np.ndarray]) -> None:
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


def _predict(model, x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(x_num, dtype=np.float32)), torch.from_numpy(np.asarray(x_cat, dtype=np.int64)))
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64)


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _loss(model, x_num: np.ndarray, x_cat: np.ndarray, y: np.ndarray) -> float:
    return _logloss(y, _predict(model, x_num, x_cat))


# --- the deployment worker process ----------------------------------------------------------------


def serve(spec: PartnerSpec, address: str, token_file: str, parent_pid: int | None = None, ready_file: str | None = None) -> None:
    """Serve requests on a Unix socket until SIGTERM, or until the parent (`federate join`) dies.

    Data is loaded before the socket opens, so a bad data file or policy fails the join at once with
    a line naming the partner, rather than in the middle of a round.
    """
    token = read_token(token_file)
    worker = PartnerWorker(spec)
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
                        continue
                    conn.settimeout(None)
                    header, arrays = recv_frame(conn)
                    reply, out = worker.handle(str(header.get("op", "")), header, arrays)
                    send_frame(conn, reply, out)
                except (WireError, OSError):
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process started by `privmodel federate join`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m federated.worker")
    parser.add_argument("--spec", required=True, help="JSON file with the partner spec")
    parser.add_argument("--address", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    spec = PartnerSpec(**json.loads(Path(args.spec).read_text()))
    try:
        serve(spec, args.address, args.token_file, args.parent_pid, args.ready_file)
    except InputError as exc:
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps({"error": str(exc).splitlines()[0]}))
        print(f"error: {str(exc).splitlines()[0]}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

