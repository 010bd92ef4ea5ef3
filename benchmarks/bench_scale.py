"""Benchmark of what a user runs at scale: `privmodel anonymize` end to end beside the kernel it wraps.

Run from the project root:  .venv/bin/python benchmarks/bench_scale.py [--rows 1000000]

Makes N synthetic customers with `privmodel synth` (starter policy), then times the command a user
types, `privmodel anonymize`, as a child process: wall seconds, CPU seconds (user + system, its
worker processes included) and peak RSS (the child's own `wait4` resource usage). Beside it: the
Mondrian kernel on N customers as `bench_anonymize.py` measures it (k=10, distinct l=2, in a child
process of its own), and the figures issue 13 measured before its work as the anchor. The machine's
load average is printed with each run: on a shared machine wall time is CPU time / the share of
cores the run got, so CPU seconds are the figure to compare between busy runs.
`--engines local,ray` (the default) times both engines on the same data: `--engine ray` is Ray Data in
local mode with 2 workers. A Ray run is a tree of processes (driver, GCS, raylet, workers, a shared
object store), so beside wait4's peak RSS (the largest single process) the table gives the peak of the
process tree's summed PSS, sampled every 0.5 s; CPU seconds count only the processes that were reaped.
Prints ONE table, then each engine's per-stage wall times from its report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
# issue 13, measured on this 2-core machine before the work (quiet machine), 1M customers
BEFORE = {"wall_s": 50.0, "rss_mib": 3.1 * 1024, "note": "issue 13 anchor: before, quiet machine"}
TARGET = "target <= 10 s wall, <= 1.5 GB (1536 MiB) peak RSS"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic customers")
    parser.add_argument("--skip-kernel", action="store_true", help="skip the Mondrian kernel run")
    parser.add_argument("--engines", default="local,ray",
                        help="engines of `privmodel anonymize` to time, comma-separated: local, ray (Ray Data, "
                             "local mode with 2 workers)")
    args = parser.parse_args()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    rows: list[tuple[str, str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        run_child([*PRIVMODEL, "keys", "init", str(work / "keys")], ROOT)
        data = work / "data"
        run_child([*PRIVMODEL, "synth", "--customers", str(args.rows), "--silos", "1", "--format", "parquet",
                   "--out", str(data), "--keys", str(work / "keys")], ROOT)
        reports: dict[str, dict[str, object]] = {}
        for engine in engines:
            out = work / f"release_{engine}"
            cli = [*PRIVMODEL, "anonymize", str(data / "silo_0.parquet"), "--policy", str(data / "policy.yaml"),
                   "--keys", str(work / "keys"), "--out", str(out), "--engine", engine]
            got = run_child(cli, ROOT)
            report = reports[engine] = json.loads((out / "report.json").read_text())
            released = int(report["rows"]["released"])  # type: ignore[index]
            what = "2 local Ray workers" if engine == "ray" else "this process"
            rows.append((f"privmodel anonymize --engine {engine} {args.rows:,} customers", f"{got['wall_s']:.1f}",
                         f"{got['cpu_s']:.1f}", f"{got['rss_mib']:.0f}", f"{got['tree_mib']:.0f}",
                         f"{what}; {released:,} rows released; ncp {report['utility']['ncp']:.4f}; "  # type: ignore[index]
                         f"load {got['load']}" + (f"; {TARGET}" if engine == "local" else "")))
        if args.rows == 1_000_000:
            rows.append(("privmodel anonymize 1,000,000 (before)", f"{BEFORE['wall_s']:.0f}", "-",
                         f"{BEFORE['rss_mib']:.0f}", "-", str(BEFORE["note"])))
        if not args.skip_kernel:
            code = KERNEL.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), rows=args.rows)
            kern = run_child([sys.executable, "-c", code], ROOT)
            seconds, cpu, classes = str(kern["stdout"]).split()[-3:]
            rows.append((f"kernel: Mondrian {args.rows:,} k=10 l=2", f"{float(seconds):.1f}", f"{float(cpu):.1f}",
                         f"{kern['rss_mib']:.0f}", f"{kern['tree_mib']:.0f}", f"generalize() only ({classes} classes); process peak RSS "
                         f"includes generating the data; load {kern['load']}"))
    head = ("what", "wall s", "CPU s", "peak RSS MiB", "tree PSS MiB", "note")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    for engine, report in reports.items():
        timings = report.get("timings") or {}
        print(f"per-stage wall s, --engine {engine} (report.json timings): "
              + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timings.items()))  # type: ignore[union-attr]
    for report in reports.values():
        utility = report.get("model_utility") or {}
        sample = next((u.get("sample") for u in utility.values() if u.get("sample")), None)  # type: ignore[union-attr]
        if sample:
            print(f"utility check: logistic fits on a random sample of {sample['rows']:,} of {sample['of']:,} released rows")
            break


if __name__ == "__main__":
    main()
