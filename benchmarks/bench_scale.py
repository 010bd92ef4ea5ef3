"""Benchmark of what a user runs at scale: `privmodel anonymize` end to end beside the kernel it wraps.

Run from the project root:  .venv/bin/python benchmarks/bench_scale.py [--rows 1000000 4000000]

Makes N synthetic customers with `privmodel synth` (starter policy), then times the command a user
types, `privmodel anonymize`, as a child process: wall seconds, CPU seconds (user + system, its
worker processes included) and peak RSS (the child's own `wait4` resource usage). Beside it: the
Mondrian kernel on N customers as `bench_anonymize.py` measures it (k=10, distinct l=2, in a child
process of its own), and the figures issue 13 measured before its work as the anchor. The machine's
load average is printed with each run: on a shared machine wall time is CPU time / the share of
cores the run got, so CPU seconds are the figure to compare between busy runs.
Then `privmodel train --model logreg --epsilon 1 --baseline --mia` on the same customers (--only
anonymize | train times one of them). `--rows 1000000 4000000` measures each size in turn. Prints ONE table (with the
figures issue 13 measured before its work beside the new ones), then each command's per-stage wall
times (report.json, model_card.json). `--engines local,ray` times `privmodel anonymize` and `privmodel
train` (its data preparation) on each engine (`--engine ray` is Ray Data in local mode with 2 workers, a
tree of processes: the note gives the peak of the process tree's summed PSS beside wait4's peak RSS of
the largest single process).
`--tile 1000000` makes each larger size from copies of one 1M `privmodel synth` output (customer ids
suffixed per copy), for sizes whose synth run does not fit the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the console script a user types, from this interpreter's environment (else the module)
_SCRIPT = Path(sys.executable).parent / "privmodel"
PRIVMODEL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "privmodel.cli"]
# issue 13, measured on this 2-core machine before the work: (command, rows) -> wall s, peak RSS MiB, note
BEFORE = {
    ("anonymize", 1_000_000): (50.0, 3.1 * 1024, "issue 13 anchor: before, quiet machine"),
    ("anonymize", 4_000_000): (290.0, 10.9 * 1024, "issue 13 anchor: before, busy machine"),
    ("train", 1_000_000): (298.0, 3.3 * 1024, "issue 13 anchor: before"),
}
TARGET = {"anonymize": "target at 1M: <= 10 s wall, <= 1536 MiB peak RSS",
          "train": "target at 1M: <= 30 s wall with --baseline --mia and the card"}

KERNEL = """
import resource, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from bench_anonymize import synthetic
from anonymize.generalization.generalize import generalize
from anonymize.policy.spec import LDiversity, PrivacyModel
df, qis = synthetic({rows})
cpu0 = time.process_time(); t0 = time.perf_counter()
g = generalize(df, qis, PrivacyModel(k=10, l=LDiversity(value=2, variant="distinct")), sensitive=["income_band"])
print(time.perf_counter() - t0, time.process_time() - cpu0, g.classes)
"""


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _tree_pss_mib(root: int) -> float:
    """Summed proportional set size (PSS: shared pages split between their users) of `root` and all
    its descendants, from /proc. A Ray run is many processes (driver, raylet, GCS, workers, the shared
    object store): wait4's peak RSS is only the largest one of them."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024


def _sample_tree(pid: int, peak: list[float], done: threading.Event) -> None:
    while not done.wait(0.5):
        peak[0] = max(peak[0], _tree_pss_mib(pid))


def run_child(cmd: list[str], cwd: Path) -> dict[str, object]:
    """Wall, CPU, peak RSS of one child (os.wait4 gives this child's own rusage, its children included),
    and the peak summed PSS of its process tree (sampled every 0.5 s)."""
    before = load()
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        peak, done = [0.0], threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peak, done), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "tree_mib": peak[0],
        "stdout": stdout,
        "load": f"{before} -> {load()}",
    }


def _timings(path: Path) -> str:
    timings = json.loads(path.read_text()).get("timings") or {}
    return ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timings.items())


def _tile(data: Path, rows: int, tile: int, work: Path, keys: Path) -> None:
    """`rows` customers in data/silo_0.parquet as copies of one `privmodel synth` output of `tile`
    customers (for sizes whose synth does not fit here): copy k gets the customer ids suffixed -k,
    so no row repeats another (exact duplicates would be removed); written one copy at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source = work / f"tile_{tile}"
    if not (source / "silo_0.parquet").exists():
        run_child([*PRIVMODEL, "synth", "--customers", str(tile), "--silos", "1", "--format", "parquet",
                   "--out", str(source), "--keys", str(keys)], ROOT)
    base = pq.read_table(source / "silo_0.parquet")
    ids = base.column_names.index("customer_id")
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "policy.yaml", data / "policy.yaml")
    with pq.ParquetWriter(data / "silo_0.parquet", base.schema) as writer:
        for k, start in enumerate(range(0, rows, tile)):
            part = base.slice(0, min(tile, rows - start))
            suffixed = pc.binary_join_element_wise(part.column(ids), pc.cast(str(k), base.schema.field(ids).type), "-")
            writer.write_table(part.set_column(ids, base.schema.field(ids), suffixed), row_group_size=262_144)


def _measure(rows: int, work: Path, commands: list[str], engines: list[str],
             tile: int | None = None) -> tuple[list[tuple[str, ...]], list[str]]:
    """synth, then `privmodel anonymize` and `privmodel train` on `rows` customers: table rows and stage lines."""
    table: list[tuple[str, ...]] = []
    stages: list[str] = []
    keys = work / "keys"
    if not keys.exists():
        run_child([*PRIVMODEL, "keys", "init", str(keys)], ROOT)
    data = work / f"data_{rows}"
    if tile is not None and rows > tile:
        _tile(data, rows, tile, work, keys)
        stages.append(f"{rows:,} customers: {-(-rows // tile)} copies of one synth output of {tile:,} "
                      "(customer ids suffixed per copy)")
    else:
        run_child([*PRIVMODEL, "synth", "--customers", str(rows), "--silos", "1", "--format", "parquet",
                   "--out", str(data), "--keys", str(keys)], ROOT)
    if "anonymize" in commands:
        for engine in engines:
            _anonymize(rows, data, keys, work, table, stages, engine)
        _before(table, "anonymize", rows)
    if "train" in commands:
        for engine in engines:
            _train(rows, data, keys, work, table, stages, engine)
        _before(table, "train", rows)
    return table, stages


def _anonymize(rows: int, data: Path, keys: Path, work: Path, table: list[tuple[str, ...]], stages: list[str],
               engine: str = "local") -> None:
    out = work / f"release_{rows}"
    shutil.rmtree(out, ignore_errors=True)  # one release directory per engine in turn
    got = run_child([*PRIVMODEL, "anonymize", str(data / "silo_0.parquet"), "--policy", str(data / "policy.yaml"),
                     "--keys", str(keys), "--out", str(out), "--engine", engine], ROOT)
    report = json.loads((out / "report.json").read_text())
    table.append((f"privmodel anonymize --engine {engine} {rows:,} (now)", f"{got['wall_s']:.1f}", f"{got['cpu_s']:.1f}",
                  f"{got['rss_mib']:.0f}", f"{report['rows']['released']:,} released; ncp {report['utility']['ncp']:.4f}; "
                                           f"tree PSS {got['tree_mib']:.0f} MiB; load {got['load']}"))
    stages.append(f"anonymize --engine {engine} {rows:,} per-stage wall s (report.json): {_timings(out / 'report.json')}")
    sample = next((u.get("sample") for u in (report.get("model_utility") or {}).values() if u.get("sample")), None)
    if sample:
        stages.append(f"  utility check: logistic fits on a random sample of {sample['rows']:,} of {sample['of']:,} rows")


def _train(rows: int, data: Path, keys: Path, work: Path, table: list[tuple[str, ...]], stages: list[str],
           engine: str = "local") -> None:
    model = work / f"model_{rows}"
    shutil.rmtree(model, ignore_errors=True)  # one model directory per engine in turn
    # no --delta: the default rule min(1e-6, 1/(10 n)) applies past 1M training rows too
    got = run_child([*PRIVMODEL, "train", str(data / "silo_0.parquet"), "--label", "churn", "--policy",
                     str(data / "policy.yaml"), "--keys", str(keys), "--out", str(model), "--model", "logreg",
                     "--epsilon", "1", "--baseline", "--mia", "--engine", engine,
                     "--ledger", str(work / f"ledger_{rows}_{engine}.jsonl")], ROOT)
    card = json.loads((model / "model_card.json").read_text())
    table.append((f"privmodel train --engine {engine} logreg eps 1 {rows:,} (now)", f"{got['wall_s']:.1f}", f"{got['cpu_s']:.1f}",
                  f"{got['rss_mib']:.0f}", f"--baseline --mia; ROC-AUC {card['metrics']['private']['roc_auc']:.4f}; "
                                           f"batch {card['training']['batch_size']:,}, {card['privacy']['steps']} steps; delta {card['privacy']['delta']:.2g}; "
                                           f"tree PSS {got['tree_mib']:.0f} MiB; load {got['load']}"))
    stages.append(f"train --engine {engine} {rows:,} per-stage wall s (model_card.json): "
                  f"{_timings(model / 'model_card.json')}")


def _before(table: list[tuple[str, ...]], command: str, rows: int) -> None:
    if (command, rows) in BEFORE:
        wall, rss, note = BEFORE[(command, rows)]
        table.append((f"privmodel {command} {rows:,} (before)", f"{wall:.0f}", "-", f"{rss:.0f}", note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="synthetic customers (one run each)")
    parser.add_argument("--skip-kernel", action="store_true", help="skip the Mondrian kernel run")
    parser.add_argument("--only", choices=["anonymize", "train"], help="time one command only")
    parser.add_argument("--engines", default="local", help="engines of `privmodel anonymize` and `privmodel train`, comma-separated: local, ray")
    parser.add_argument("--tile", type=int, help="make sizes above this many customers from copies of one synth "
                        "output of this size (customer ids made unique per copy) instead of one synth run")
    args = parser.parse_args()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; {TARGET['anonymize']}; {TARGET['train']}")
    rows: list[tuple[str, ...]] = []
    stages: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for n in args.rows:
            table, lines = _measure(n, Path(tmp), [args.only] if args.only else ["anonymize", "train"],
                                   [e.strip() for e in args.engines.split(",") if e.strip()], args.tile)
            rows += table
            stages += lines
            for row in table:  # as measured, so a later failure loses nothing
                print("measured:", " | ".join(row), flush=True)
            if not args.skip_kernel and args.only != "train" and n == args.rows[0]:
                code = KERNEL.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), rows=n)
                kern = run_child([sys.executable, "-c", code], ROOT)
                seconds, cpu, classes = str(kern["stdout"]).split()[-3:]
                rows.append((f"kernel: Mondrian {n:,} k=10 l=2", f"{float(seconds):.1f}", f"{float(cpu):.1f}",
                             f"{kern['rss_mib']:.0f}", f"generalize() only ({classes} classes); peak RSS "
                             f"includes generating the data; load {kern['load']}"))
            for name in ("data", "release", "model"):  # free the disk between sizes (a tile source is kept)
                shutil.rmtree(Path(tmp) / f"{name}_{n}", ignore_errors=True)
    head = ("what", "wall s", "CPU s", "peak RSS MiB", "note")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    for text in stages:
        print(text)


if __name__ == "__main__":
    main()
