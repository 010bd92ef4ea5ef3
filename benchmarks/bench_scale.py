"""Benchmark of what a user runs at scale: `privmodel anonymize` end to end beside the kernel it wraps.

Run from the project root:  .venv/bin/python benchmarks/bench_scale.py [--rows 1000000]

Makes N synthetic customers with `privmodel synth` (starter policy), then times the command a user
types, `privmodel anonymize`, as a child process: wall seconds, CPU seconds (user + system, its
worker processes included) and peak RSS (the child's own `wait4` resource usage). Beside it: the
Mondrian kernel on N customers as `bench_anonymize.py` measures it (k=10, distinct l=2, in a child
process of its own), and the figures issue 13 measured before its work as the anchor. The machine's
load average is printed with each run: on a shared machine wall time is CPU time / the share of
cores the run got, so CPU seconds are the figure to compare between busy runs.
Prints ONE table, then the command's per-stage wall times from its report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
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


def run_child(cmd: list[str], cwd: Path) -> dict[str, object]:
    """Wall, CPU, peak RSS of one child (os.wait4 gives this child's own rusage, its children included)."""
    before = load()
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
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
        "stdout": stdout,
        "load": f"{before} -> {load()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic customers")
    parser.add_argument("--skip-kernel", action="store_true", help="skip the Mondrian kernel run")
    args = parser.parse_args()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    rows: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        run_child([*PRIVMODEL, "keys", "init", str(work / "keys")], ROOT)
        data = work / "data"
        run_child([*PRIVMODEL, "synth", "--customers", str(args.rows), "--silos", "1", "--format", "parquet",
                   "--out", str(data), "--keys", str(work / "keys")], ROOT)
        out = work / "release"
        cli = [*PRIVMODEL, "anonymize", str(data / "silo_0.parquet"), "--policy", str(data / "policy.yaml"),
               "--keys", str(work / "keys"), "--out", str(out)]
        got = run_child(cli, ROOT)
        report = json.loads((out / "report.json").read_text())
        released = report["rows"]["released"]
        rows.append((f"privmodel anonymize {args.rows:,} customers (now)", f"{got['wall_s']:.1f}",
                     f"{got['cpu_s']:.1f}", f"{got['rss_mib']:.0f}",
                     f"{released:,} rows released; load {got['load']}; {TARGET}"))
        if args.rows == 1_000_000:
            rows.append(("privmodel anonymize 1,000,000 (before)", f"{BEFORE['wall_s']:.0f}", "-",
                         f"{BEFORE['rss_mib']:.0f}", str(BEFORE["note"])))
        if not args.skip_kernel:
            code = KERNEL.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), rows=args.rows)
            kern = run_child([sys.executable, "-c", code], ROOT)
            seconds, cpu, classes = str(kern["stdout"]).split()[-3:]
            rows.append((f"kernel: Mondrian {args.rows:,} k=10 l=2", f"{float(seconds):.1f}", f"{float(cpu):.1f}",
                         f"{kern['rss_mib']:.0f}", f"generalize() only ({classes} classes); process peak RSS "
                         f"includes generating the data; load {kern['load']}"))
    head = ("what", "wall s", "CPU s", "peak RSS MiB", "note")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head))
    for r in rows:
        print(line.format(*r))
    timings = report.get("timings") or {}
    print("per-stage wall s (report.json timings): "
          + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timings.items()))
    sample = next((u.get("sample") for u in (report.get("model_utility") or {}).values() if u.get("sample")), None)
    if sample:
        print(f"utility check: logistic fits on a random sample of {sample['rows']:,} of {sample['of']:,} released rows")


if __name__ == "__main__":
    main()
