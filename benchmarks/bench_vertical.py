"""Vertical federation on synthetic partners: AUC against centralized and label-party-alone; PSI at 1M x 1M.

Run: `python benchmarks/bench_vertical.py` (defaults: 200,000 people, epsilon 1 per party, PSI 1M x 1M);
`--only deploy` for the deployment section alone.

Same records everywhere: the parties' consenting rows (`minimise`), the intersection from the real PSI,
the held-out shared customers from the workflow's own split. Rows of the utility table:

* centralized, non-private: `privmodel.dp.training.fit` (MLP, no noise) on the joined columns of the
  shared training customers (what one firm holding both tables would train);
* vertical split learning, non-private and at epsilon per party (`federated.vertical.split`, the
  workflow's code), on the same customers; with label DP "gradient" (the label party's columns and
  labels protected) and "labels" (randomized response: labels only);
* vertical one-shot release (`federated.vertical.release`, `--protocol release`): non-private, and at
  epsilon per party the mean of `--release-repeats` runs with fresh secret randomness (min and max in
  the note);
* vertical encrypted gradient descent (`federated.vertical.encrypted`, `--protocol encrypted`): one
  run each, non-private and at each epsilon per party (`encrypted.train`, the kernel), then the
  `federate vertical simulate --protocol encrypted` command end to end at the first epsilon (a
  subprocess, its own PSI) on the same parties;
* the label party alone: `privmodel.dp.training.fit` on ALL its consenting rows except the held-out
  shared customers, non-private and DP at epsilon (logreg and MLP; the better is its "best DP model",
  picked on the held-out set, which flatters the baseline, not the vertical model).

`--feature-parties 2` adds the telco (a third party; the synthetic truth then needs its columns too):
the shared customers are then those of all three parties (`workflow.psi_common`), and the table adds
centralized and vertical rows for the bank and retailer alone on the same customers (2-party vs 3-party).

AUCs are on the held-out shared customers. PSI section: two random sets of `--psi-n` keys with half
in common, `federated.vertical.psi` over `--psi-workers` processes; the reference is the issue's
265 s single-threaded (openmined-psi's own one-sided protocol, another machine), and this machine's
single-process rate measured on a sample and scaled linearly.

Deployment section (`--deploy-customers`, default 10,000 people; `--deploy-epochs`; for the encrypted
protocol `--deploy-encrypted-steps`, a round there being one step): seconds per round
(one batch: embeddings up, gradients down) of the split-learning kernel in one process, the
`privmodel federate vertical simulate` command end to end (a subprocess, as a user runs it), and the
loopback deployment over Flower (the bank's TLS SuperLink, the retailer's node joined with its own node
key, a signed `vertical run`), on the same parties and configuration.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np


def _write_parties(root: Path, customers: int, seed: int, feature_parties: int = 1) -> list[Any]:
    import pyarrow.parquet as pq
    import yaml

    from federated.vertical.workflow import PartyInput
    from privmodel.core.keys import init_keys
    from privmodel.data.synth.vertical import generate_vertical, party_policies

    data = generate_vertical(customers, seed=seed, feature_parties=feature_parties)
    for name, doc in party_policies(1000, feature_parties).items():
        (root / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    inputs = []
    for name, table in data.tables().items():
        pq.write_table(table, root / f"{name}.parquet")
        init_keys(root / f"keys-{name}", actor=name)
        inputs.append(PartyInput(root / f"{name}.party.yaml", root / f"{name}.parquet", root / f"keys-{name}"))
    return inputs


def _fit_auc(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, model: Literal["logreg", "mlp"],
             epsilon: float | None, delta: float, epochs: int) -> float:
    import torch
    from sklearn.metrics import roc_auc_score

    from federated.vertical.release import dense_data
    from privmodel.dp.training import TrainConfig, fit

    res = fit(dense_data(x_tr), y_tr, TrainConfig(model=model, epsilon=epsilon, delta=delta if epsilon else None,
                                                 epochs=epochs))
    with torch.no_grad():
        enc = dense_data(x_te)
        logits = res.model(torch.from_numpy(enc.x_num), torch.from_numpy(enc.x_cat))
    return float(roc_auc_score(y_te, logits.numpy().ravel()))


def _split_auc(xf: np.ndarray | list[np.ndarray], xl: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
               config: Any) -> tuple[float, dict[str, float], float, int]:
    from sklearn.metrics import roc_auc_score

    from federated.vertical import split
    from federated.vertical.channel import Channel

    noise = split.calibrate(config)
    xfs = xf if isinstance(xf, list) else [xf]
    f_side = [split.FeatureSide(name, x, config, noise, index=i)
              for i, (name, x) in enumerate(zip(("retailer", "telco"), xfs, strict=False))]
    l_side = split.LabelSide("bank", xl, y, config, noise, feature_parties=len(xfs))
    channel = Channel(keep=False)
    t0 = time.perf_counter()
    split.train(f_side, l_side, train, channel)
    seconds = time.perf_counter() - t0
    p = split.score(f_side, l_side, test, channel)
    eps = {role: split.party_epsilon(noise, config.epochs, role, config.delta) for role in ("feature", "label")}
    return float(roc_auc_score(y[test], p)), eps, seconds, channel.total_bytes


def _release_auc(xfs: list[np.ndarray], xl: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 epsilon: float | None, epochs: int, repeats: int) -> tuple[list[float], dict[str, float | None], float]:
    """The one-shot release (`federated.vertical.release`, the workflow's code) `repeats` times with fresh
    secret randomness: (AUCs, epsilon spent per role, seconds per run)."""
    from sklearn.metrics import roc_auc_score

    from federated.vertical import release
    from federated.vertical.channel import Channel

    config = release.ReleaseConfig(epsilon=epsilon, epochs=epochs)
    aucs, spent, seconds = [], {}, 0.0
    for _ in range(repeats if epsilon is not None else 1):
        features = [release.FeatureRelease(f"feature{i}", x, config) for i, x in enumerate(xfs)]
        label = release.LabelRelease("bank", xl, y, config)
        t0 = time.perf_counter()
        release.train(features, label, train, Channel(keep=False))
        seconds += time.perf_counter() - t0
        aucs.append(float(roc_auc_score(y[test], label.score(test))))
        spent = {"feature": features[0].epsilon_spent, "label": label.epsilon_spent}
    return aucs, spent, seconds / len(aucs)


def _encrypted_auc(feature: Any, label: Any, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                   epsilon: float | None, args: argparse.Namespace) -> tuple[float, dict[str, float | None], float, int]:
    """The encrypted protocol (`federated.vertical.encrypted`, the workflow's code) once, fresh secret
    noise: (AUC, epsilon per role, seconds of `encrypted.train` with the held-out scoring, bytes sent)."""
    from sklearn.metrics import roc_auc_score

    from federated.vertical import encrypted
    from federated.vertical.channel import Channel

    config = encrypted.EncryptedConfig(epsilon=epsilon, delta=args.delta, steps=args.encrypted_steps)
    f_side = encrypted.Party("retailer", encrypted.feature_map(feature.x, feature.n_num), config, "feature")
    l_side = encrypted.Party("bank", encrypted.feature_map(label.x, label.n_num, intercept=True), config, "label",
                             y=y.astype(np.float64))
    channel = Channel(keep=False)
    t0 = time.perf_counter()
    scores, _bottom = encrypted.train(f_side, l_side, train, test, channel)
    seconds = time.perf_counter() - t0
    auc = float(roc_auc_score(y[test], scores))
    return auc, {"feature": f_side.epsilon_spent, "label": l_side.epsilon_spent}, seconds, channel.total_bytes


def _encrypted_rows(args: argparse.Namespace, root: Path, inputs: list[Any], label: Any, features: list[Any],
                    y: np.ndarray, train: np.ndarray, test: np.ndarray, central: float,
                    best: dict[float, float]) -> list[tuple[str, str, str, str]]:
    """The encrypted protocol's rows: non-private and at each epsilon (the kernel), then the
    `simulate --protocol encrypted` command end to end at the first epsilon, on the same parties."""
    import re

    from federated.vertical.split import SplitConfig

    rows = []
    for eps in [None, *args.epsilons]:
        runs = [_encrypted_auc(features[0], label, y, train, test, eps, args)
                for _ in range(1 if eps is None else args.encrypted_repeats)]
        aucs = [r[0] for r in runs]
        auc, spent, sec, nbytes = float(np.mean(aucs)), runs[0][1], float(np.mean([r[2] for r in runs])), runs[0][3]
        gaps = (f"gap to centralized {auc - central:+.4f}" if eps is None else
                f"vs centralized {auc - central:+.4f} (target >= -0.02); vs label party's best DP "
                f"{auc - best[eps]:+.4f} (target >= +0.02); {_spread(aucs)}")
        rows.append(("vertical encrypted gradient descent" + (", DP" if eps is not None else ""),
                     "-" if eps is None else f"{spent['feature']:.3f} / {spent['label']:.3f}", f"{auc:.4f}",
                     f"{gaps}; encrypted.train {sec:.0f} s a run, {nbytes / 1e6:.0f} MB"))
        print(rows[-1], flush=True)
    eps = args.epsilons[0] if args.epsilons else None
    config = SplitConfig(epsilon=eps, delta=args.delta, epochs=args.encrypted_steps, protocol="encrypted", seed=args.seed)
    wall, text = _simulate_cli(root, inputs[0], inputs[1], config)
    auc_cli, total = re.search(r"test ROC-AUC ([0-9.]+)", text), re.search(r"total ([0-9.]+) s", text)
    psi = re.search(r"PSI ([0-9.]+) s", text)
    rows.append(("`federate vertical simulate --protocol encrypted`, end to end", "-" if eps is None else f"{eps:g}",
                 auc_cli.group(1) if auc_cli else "?",
                 f"{wall:.0f} s wall (the workflow's total {total.group(1) if total else '?'} s, PSI "
                 f"{psi.group(1) if psi else '?'} s, 1 process); the kernel row above: encrypted.train alone"))
    print(rows[-1], flush=True)
    return rows


def _spread(aucs: list[float]) -> str:
    return f"mean of {len(aucs)} (min {min(aucs):.4f}, max {max(aucs):.4f})" if len(aucs) > 1 else "one run"


def utility(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """The utility table's rows: (what, epsilon per party, AUC, note)."""
    from federated.vertical import workflow as wf
    from federated.vertical.channel import Channel
    from federated.vertical.split import RR_MAX_EPSILON, SplitConfig
    from privmodel.data.features import TabularEncoder, encode_labels

    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = _write_parties(root, args.customers, args.seed, args.feature_parties)
        label = wf.open_side(inputs[0], root / "out")
        features = [wf.open_side(inp, root / "out") for inp in inputs[1:]]
        t0 = time.perf_counter()
        rows_l, rows_fs, overlap = wf.psi_common(label, features, Channel(keep=False), args.psi_workers)
        psi_s = time.perf_counter() - t0
        for side, rows_f in zip(features, rows_fs, strict=True):
            wf.encode_feature(side, rows_f)
        y = wf.encode_label(label, rows_l)
        train, test = wf.split_shared(len(y), 0.2, args.seed)
        assert label.x is not None and all(f.x is not None for f in features)
        xl, xfs = label.x, [f.x for f in features if f.x is not None]
        xf = xfs if len(xfs) > 1 else xfs[0]
        joined = np.concatenate([xl, *xfs], axis=1)
        rows_of = ", ".join(f"{overlap[f'{n}_rows']:,} {n}" for n in ("bank", *(f.name for f in features)))
        print(f"shared {overlap['size']:,} of {rows_of} consenting rows; PSI {psi_s:.1f} s; "
              f"train {len(train):,}, test {len(test):,}", flush=True)
        base = {"delta": args.delta, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed}
        central = _fit_auc(joined[train], y[train], joined[test], y[test], "mlp", None, args.delta, args.central_epochs)
        rows.append(("centralized MLP, joined columns", "-", f"{central:.4f}", "privmodel.dp.training.fit, non-private"))
        protocols = set(args.protocols)
        if "split" in protocols:
            auc, _eps, sec, nbytes = _split_auc(xf, xl, y, train, test, SplitConfig(epsilon=None, **base))
            rows.append(("vertical split learning" + (f", {len(inputs)} parties" if len(xfs) > 1 else ""), "-",
                         f"{auc:.4f}", f"gap to centralized {auc - central:+.4f} (target >= -0.005); {sec:.0f} s, "
                         f"{nbytes / 1e6:.0f} MB"))
            print(rows[-1], flush=True)
        if "release" in protocols:
            aucs, _spent, sec = _release_auc(xfs, xl, y, train, test, None, args.release_epochs, 1)
            rows.append(("vertical one-shot release", "-", f"{aucs[0]:.4f}",
                         f"gap to centralized {aucs[0] - central:+.4f}; {sec:.1f} s"))
            print(rows[-1], flush=True)
        if len(xfs) > 1 and "split" in protocols:  # the bank and the retailer alone, on the same customers: what the telco adds
            pair = np.concatenate([xl, xfs[0]], axis=1)
            central2 = _fit_auc(pair[train], y[train], pair[test], y[test], "mlp", None, args.delta, args.central_epochs)
            rows.append(("centralized MLP, bank + retailer columns only", "-", f"{central2:.4f}",
                         f"same customers; the telco adds {central - central2:+.4f}"))
            auc2, _eps, _sec, _n = _split_auc(xfs[0], xl, y, train, test, SplitConfig(epsilon=None, **base))
            rows.append(("vertical split learning, bank + retailer only", "-", f"{auc2:.4f}",
                         f"same customers; 3 parties {auc - auc2:+.4f}"))
            print(rows[-2], rows[-1], flush=True)
        # the label party alone: all its consenting rows except the held-out shared customers
        enc_b = TabularEncoder.from_policy(label.party.policy, label="churn")
        held = np.zeros(len(label.rows), dtype=bool)
        held[rows_l[test]] = True
        xb = wf.dense(enc_b.transform(label.rows))
        yb = encode_labels(label.rows["churn"], "churn")
        kinds: tuple[Literal["logreg", "mlp"], ...] = ("logreg", "mlp")
        alone = {m: _fit_auc(xb[~held], yb[~held], xl[test], y[test], m, None, args.delta, args.central_epochs)
                 for m in kinds}
        rows.append(("label party alone (best of logreg/MLP)", "-", f"{max(alone.values()):.4f}",
                     f"logreg {alone['logreg']:.4f}, MLP {alone['mlp']:.4f}; {int((~held).sum()):,} rows"))
        best_at: dict[float, float] = {}
        for eps in args.epsilons:
            alone_dp = {m: _fit_auc(xb[~held], yb[~held], xl[test], y[test], m, eps, args.delta, args.central_epochs)
                        for m in kinds}
            best = best_at[eps] = max(alone_dp.values())
            rows.append(("label party alone, DP (best of logreg/MLP)", f"{eps:g}", f"{best:.4f}",
                         f"logreg {alone_dp['logreg']:.4f}, MLP {alone_dp['mlp']:.4f}"))
            print(rows[-1], flush=True)
            if "release" not in protocols:
                continue
            aucs, spent, sec = _release_auc(xfs, xl, y, train, test, eps, args.release_epochs, args.release_repeats)
            mean = float(np.mean(aucs))
            rows.append(("vertical one-shot release, DP" + (f", {len(inputs)} parties" if len(xfs) > 1 else ""),
                         f"{spent['feature']:.3f} / {spent['label']:.3f}", f"{mean:.4f}",
                         f"vs centralized {mean - central:+.4f} (target >= -0.02); vs label party's best DP "
                         f"{mean - best:+.4f} (target >= +0.02); {_spread(aucs)}; {sec:.1f} s a run"))
            print(rows[-1], flush=True)
            if "split" not in protocols:
                continue
            auc, got, sec, nbytes = _split_auc(xf, xl, y, train, test, SplitConfig(epsilon=eps, **base))
            rows.append(("vertical split learning, DP" + (f", {len(inputs)} parties" if len(xfs) > 1 else ""),
                         f"{got['feature']:.3f} / {got['label']:.3f}", f"{auc:.4f}",
                         f"vs centralized {auc - central:+.4f} (target >= -0.02); vs label party's best DP "
                         f"{auc - best:+.4f} (target >= +0.02); {sec:.0f} s"))
            if len(xfs) > 1:
                auc2, _got, _sec, _n = _split_auc(xfs[0], xl, y, train, test, SplitConfig(epsilon=eps, **base))
                rows.append(("vertical split learning, DP, bank + retailer only", f"{got['feature']:.3f} / "
                             f"{got['label']:.3f}", f"{auc2:.4f}", f"same customers; 3 parties {auc - auc2:+.4f}"))
                print(rows[-1], flush=True)
            if eps > RR_MAX_EPSILON:
                print(rows[-2], rows[-1], flush=True)
                continue
            auc, got, sec, nbytes = _split_auc(xf, xl, y, train, test,
                                               SplitConfig(epsilon=eps, label_dp="labels", **base))
            rows.append(("vertical, label DP by randomized response", f"{got['feature']:.3f} / {got['label']:.3f}",
                         f"{auc:.4f}", f"vs centralized {auc - central:+.4f}; vs label party's best DP "
                         f"{auc - best:+.4f}; label ε covers labels only"))
            print(rows[-3], rows[-2], rows[-1], flush=True)
        if "encrypted" in protocols and len(features) == 1:
            rows += _encrypted_rows(args, root, inputs, label, features, y, train, test, central, best_at)
    return rows


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the PSI worker processes)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def psi_bench(n: int, workers: int, sample: int) -> list[tuple[str, str, str, str]]:
    """PSI of two n-key sets (half shared): wall and CPU time, bytes per party; 1 process on a sample.

    CPU seconds are printed beside wall seconds because a shared machine's wall time says more about
    the other tenants than about PSI (load average in the note)."""
    from federated.vertical.channel import Channel
    from federated.vertical.psi import Pool, PsiSide, intersect

    def keys(lo: int, hi: int) -> list[str]:
        return [f"customer{i:09d}@example.test" for i in range(lo, hi)]

    out = []
    a, b = keys(0, sample), keys(sample // 2, sample // 2 + sample)
    with Pool(workers=1) as pool:
        ch = Channel(keep=False)
        t0, c0 = time.perf_counter(), _cpu()
        intersect(PsiSide("bank", a, 1, pool), PsiSide("retailer", b, 1, pool), ch)
        one, one_cpu = time.perf_counter() - t0, _cpu() - c0
    scale = (n / sample)
    out.append((f"PSI {sample:,} x {sample:,}, 1 process", f"{one:.1f} (CPU {one_cpu:.1f})", f"{ch.total_bytes / 1e6:.1f}",
                f"scaled to {n:,} x {n:,}: {one * scale:.0f} s wall, {one_cpu * scale:.0f} CPU s (both parties); "
                f"load {os.getloadavg()[0]:.1f}"))
    print(out[-1], flush=True)
    a, b = keys(0, n), keys(n // 2, n // 2 + n)
    with Pool(workers=workers, batch=max(10_000, n // (4 * workers))) as pool:
        ch = Channel(keep=False)
        t0, c0 = time.perf_counter(), _cpu()
        res, _ = intersect(PsiSide("bank", a, 1, pool), PsiSide("retailer", b, 1, pool), ch)
        wall = time.perf_counter() - t0
    cpu = _cpu() - c0
    assert res.size == n // 2
    per = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in ch.bytes_by_sender.items())
    out.append((f"PSI {n:,} x {n:,}, {workers} processes", f"{wall:.1f} (CPU {cpu:.0f})", f"{ch.total_bytes / 1e6:.0f}",
                f"{per}; reference 265 s single-threaded (issue); wall vs 1 process here x{one * scale / wall:.1f}; "
                f"load {os.getloadavg()[0]:.1f}"))
    print(out[-1], flush=True)
    return out


def _simulate_cli(root: Path, bank: Any, shop: Any, config: Any) -> tuple[float, str]:
    """`privmodel federate vertical simulate` as a user runs it: wall seconds and its last lines."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "privmodel.cli", "federate", "vertical", "simulate",
           "--label", str(bank.party_file), "--label-data", str(bank.data), "--label-keys", str(bank.keys),
           "--feature", str(shop.party_file), "--feature-data", str(shop.data), "--feature-keys", str(shop.keys),
           "--out", str(root / "sim"), "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
           "--lr", str(config.lr), "--epsilon", str(config.epsilon or 0), "--psi-workers", "1", "--seed", str(config.seed),
           "--protocol", config.protocol]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"simulate failed: {done.stderr.strip().splitlines()[-1:]}")
    return wall, " ".join(done.stdout.split())


def _loopback(root: Path, bank: Any, shop: Any, config: Any) -> tuple[float, dict[str, Any]]:
    """Two organisations on loopback: the bank's TLS SuperLink with the retailer's node key registered,
    the retailer's node joined (pinning the bank's key), a signed `vertical run`; every process stopped."""
    from federated.runtime import deployment as dep
    from federated.runtime.tls import make_node_key, make_tls
    from federated.vertical import deploy
    from federated.vertical.node import PartyNodeSpec

    make_tls(root / "tls")
    make_node_key(root / "node-retailer")
    with dep.tracked() as items:
        link = dep.start_superlink(root / "tls", root / "link")
        items.append(link)
        link.register(root / "node-retailer" / "auth.pub", "retailer")
        spec = PartyNodeSpec(name="retailer", party_file=str(shop.party_file), data=str(shop.data), keys=str(shop.keys),
                             workdir=str(root / "retailer-node"), coordinator_key=str(bank.keys))
        items.append(deploy.join(spec, link.address, root / "tls" / "ca.crt", root / "node-retailer" / "auth.key"))
        t0 = time.perf_counter()
        result = deploy.run(deploy.RunRequest(
            superlink=link.control_address, ca=root / "tls" / "ca.crt", registry=link.registry_path,
            label_party=bank.party_file, label_data=bank.data, label_keys=bank.keys, feature_party="retailer",
            out=root / "bank-run", config=config, timeout=3600))
        wall = time.perf_counter() - t0
    done: dict[str, Any] = result["done"]
    return wall, done


def deploy_bench(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Seconds per round (one batch: embeddings up, gradients down) of the split-learning kernel in one
    process, of the `simulate` command end to end, and of the loopback deployment over Flower (TLS, two
    organisations, a signed run), on the same parties and configuration."""
    import re

    from federated.vertical import workflow as wf
    from federated.vertical.channel import Channel
    from federated.vertical.split import SplitConfig

    rows: list[tuple[str, str, str, str]] = []
    eps = args.epsilons[0] if args.epsilons else None
    config = SplitConfig(epsilon=eps, delta=args.delta, epochs=args.deploy_epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["FLWR_HOME"] = str(root / "flwr-home")
        os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
        os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        bank, shop = _write_parties(root, args.deploy_customers, args.seed)
        label, feature = wf.open_side(bank, root / "kernel"), wf.open_side(shop, root / "kernel")
        rows_l, rows_f, overlap = wf._psi(label, feature, Channel(keep=False), 1)
        y = wf._encode(label, feature, rows_l, rows_f)
        train, test = wf.split_shared(len(y), 0.2, args.seed)
        assert label.x is not None and feature.x is not None
        _auc, _eps, kernel_s, _bytes = _split_auc(feature.x, label.x, y, train, test, config)
        n_rounds = config.epochs * -(-len(train) // config.batch_size)
        rows.append(("split learning kernel, one process (split.train)", f"{kernel_s:.1f}",
                     f"{kernel_s / n_rounds:.3f}", f"{n_rounds} rounds, {overlap['size']:,} shared customers, "
                     f"batch {config.batch_size}, ε {eps or '-'} per party"))
        print(rows[-1], flush=True)
        wall, text = _simulate_cli(root, bank, shop, config)
        total = re.search(r"total ([0-9.]+) s", text)
        psi = re.search(r"PSI ([0-9.]+) s", text)
        rows.append(("`privmodel federate vertical simulate`, end to end", f"{wall:.1f}", "-",
                     f"the workflow's own total {total.group(1) if total else '?'} s (PSI {psi.group(1) if psi else '?'} s, "
                     "1 process); the rest is the interpreter, imports and the CLI"))
        print(rows[-1], flush=True)
        wall, done = _loopback(root, bank, shop, config)
        sec = done["seconds"]
        rows.append(("loopback deployment: TLS SuperLink, 2 organisations, signed run", f"{wall:.1f}",
                     f"{sec['per_round']:.2f}", f"{sec['rounds']} rounds, {done['messages']} Flower messages; "
                     f"PSI {sec['psi']:.1f} s, training {sec['train']:.1f} s, ServerApp total {sec['total']:.1f} s; "
                     f"AUC {done['metrics']['roc_auc']:.4f}; load {os.getloadavg()[0]:.1f}"))
        print(rows[-1], flush=True)
        rows += _encrypted_deploy(args, root, bank, shop, label, feature, y, train, test, eps)
    return rows


def _encrypted_deploy(args: argparse.Namespace, root: Path, bank: Any, shop: Any, label: Any, feature: Any,
                      y: np.ndarray, train: np.ndarray, test: np.ndarray,
                      eps: float | None) -> list[tuple[str, str, str, str]]:
    """The encrypted protocol's kernel in one process and its loopback deployment, `--deploy-encrypted-steps`
    steps on the same parties: a round is one step (two messages each way)."""
    from federated.vertical.split import SplitConfig

    steps = args.deploy_encrypted_steps
    args_k = argparse.Namespace(**{**vars(args), "encrypted_steps": steps})
    auc, _spent, kernel_s, nbytes = _encrypted_auc(feature, label, y, train, test, eps, args_k)
    rows = [("encrypted kernel, one process (encrypted.train)", f"{kernel_s:.1f}", f"{kernel_s / steps:.2f}",
             f"{steps} steps, ε {eps or '-'} per party; {nbytes / 1e6:.0f} MB (both public contexts included)")]
    print(rows[-1], flush=True)
    config = SplitConfig(epsilon=eps, delta=args.delta, epochs=steps, protocol="encrypted", seed=args.seed)
    (root / "encrypted").mkdir()
    wall, done = _loopback(root / "encrypted", bank, shop, config)
    sec = done["seconds"]
    rows.append(("loopback deployment, --protocol encrypted", f"{wall:.1f}", f"{sec['per_round']:.2f}",
                 f"{sec['rounds']} steps, {done['messages']} Flower messages, "
                 f"{sum(done['bytes'].values()) / 1e6:.0f} MB; PSI {sec['psi']:.1f} s, training {sec['train']:.1f} s; "
                 f"AUC {done['metrics']['roc_auc']:.4f}; load {os.getloadavg()[0]:.1f}"))
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0])
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--central-epochs", type=int, default=8)
    parser.add_argument("--release-epochs", type=int, default=30, help="the one-shot release's two fits")
    parser.add_argument("--release-repeats", type=int, default=5, help="private one-shot runs per epsilon (fresh noise)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psi-n", type=int, default=1_000_000)
    parser.add_argument("--psi-sample", type=int, default=20_000)
    parser.add_argument("--psi-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--deploy-customers", type=int, default=10_000, help="people for the deployment section")
    parser.add_argument("--deploy-epochs", type=int, default=2)
    parser.add_argument("--deploy-encrypted-steps", type=int, default=5, help="the encrypted loopback run's steps")
    parser.add_argument("--feature-parties", type=int, choices=[1, 2], default=1,
                        help="utility section: 2 adds the telco (3 parties; 2-party rows on the same customers)")
    parser.add_argument("--only", choices=["utility", "psi", "deploy"], default=None)
    parser.add_argument("--protocols", nargs="*", choices=["split", "release", "encrypted"],
                        default=["split", "release", "encrypted"], help="utility section: the vertical protocols to run")
    parser.add_argument("--encrypted-steps", type=int, default=50, help="the encrypted protocol's gradient steps")
    parser.add_argument("--encrypted-repeats", type=int, default=1, help="private encrypted runs per epsilon (fresh noise)")
    args = parser.parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(1)  # small tensors: intra-op threads only spin on a shared machine
    console = Console(width=200)
    if args.only in (None, "utility"):
        table = Table(title=f"vertical: {args.customers:,} people, AUC on held-out shared customers")
        for col in ("model", "ε per party (feature / label)", "ROC-AUC", "note"):
            table.add_column(col)
        for row in utility(args):
            table.add_row(*row)
        console.print(table)
    if args.only in (None, "deploy"):
        table = Table(title=f"vertical deployment: {args.deploy_customers:,} people, {args.deploy_epochs} epochs; a round "
                            "is one batch (embeddings up, gradients down)")
        for col in ("what", "wall s", "s per round", "note"):
            table.add_column(col)
        for row in deploy_bench(args):
            table.add_row(*row)
        console.print(table)
    if args.only in (None, "psi") and args.psi_n > 0:
        table = Table(title=f"PSI (ECDH P-256, openmined-psi), {os.cpu_count()} CPUs")
        for col in ("what", "wall s", "MB sent (both)", "note"):
            table.add_column(col)
        for row in psi_bench(args.psi_n, args.psi_workers, args.psi_sample):
            table.add_row(*row)
        console.print(table)


if __name__ == "__main__":
    main()
