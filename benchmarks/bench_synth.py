"""Benchmark `privmodel.data.synth` against a row-by-row Faker generator.

Every measurement runs in its own subprocess so peak memory (ru_maxrss) is not mixed between
sizes. Ours: generate all columns and write one file (1 silo). Baseline: Faker for every value of
every row, then pandas to Parquet, timed on a sample and extrapolated linearly (it makes ~2,000
rows/s, so 1M rows would take minutes). Run: .venv/bin/python benchmarks/bench_synth.py [--sizes ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_SAMPLE = 3000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child_ours(n: int, fmt: str, out: Path) -> dict:
    """Generate n customers (all columns, one silo) and write them; wall time includes imports."""
    start = time.perf_counter()
    from privmodel.data.synth import generate_data
    from privmodel.data.synth.output import write_outputs

    data = generate_data(n, 1, seed=0)
    t_gen = time.perf_counter() - start
    write_outputs(data, out, fmt, one_file=True)
    wall = time.perf_counter() - start
    return {"wall": wall, "generate": t_gen, "rss": _rss_mb(), "bytes": (out / f"customers.{fmt}").stat().st_size}


def child_baseline(sample: int, out: Path) -> dict:
    """Row-by-row Faker (same columns), then pandas -> Parquet; timed on `sample` rows."""
    import random

    start = time.perf_counter()
    import pandas as pd
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(0)
    rnd = random.Random(0)
    rss0 = _rss_mb()
    rows = []
    for i in range(sample):
        birth = fake.date_of_birth(minimum_age=18, maximum_age=95)
        income = round(rnd.lognormvariate(10.8, 0.5), -2)
        freq = rnd.randint(0, 120)
        rows.append(
            {
                "customer_id": f"C{i:09d}",
                "full_name": fake.name(),
                "email": fake.email(),
                "phone": fake.phone_number(),
                "national_id": fake.ssn(),
                "street_address": fake.street_address(),
                "birth_date": birth,
                "age": 2025 - birth.year,
                "gender": rnd.choice("FMX"),
                "zip_code": fake.zipcode(),
                "city": fake.city(),
                "occupation": fake.job(),
                "marital_status": rnd.choice(["single", "married", "divorced", "widowed"]),
                "annual_income": income,
                "tenure_months": rnd.randint(0, 480),
                "recency_days": rnd.randint(0, 365),
                "frequency": freq,
                "monetary": round(freq * rnd.lognormvariate(3.5, 0.5), 2),
                "num_products": rnd.randint(1, 8),
                "channel": rnd.choice(["branch", "app", "web"]),
                "complaints_12m": rnd.randint(0, 3),
                "monthly_balance": round(income / 12 * rnd.random(), 2),
                "consent_marketing": fake.boolean(),
                "consent_analytics": fake.boolean(85),
                "churn": int(rnd.random() < 0.25),
                "will_purchase": int(rnd.random() < 0.2),
            }
        )
    rss1 = _rss_mb()
    frame = pd.DataFrame(rows)
    frame.to_parquet(out / "baseline.parquet", index=False)
    wall = time.perf_counter() - start
    return {"wall": wall, "rss": _rss_mb(), "rows_mb": rss1 - rss0}


def _child(kind: str, n: int, fmt: str = "parquet") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", kind, str(n), fmt, tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise SystemExit(f"benchmark child failed: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=BASELINE_SAMPLE, help="baseline rows actually generated")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, fmt, out = args.child
        result = child_ours(int(n), fmt, Path(out)) if kind == "ours" else child_baseline(int(n), Path(out))
        print(json.dumps(result))
        return

    from rich.console import Console
    from rich.table import Table

    base = _child("baseline", args.sample)
    per_row = base["wall"] / args.sample
    mem_per_row = max(base["rows_mb"], 0.0) / args.sample  # the list of row dicts grows linearly
    table = Table(title=f"privmodel.data.synth vs row-by-row Faker ({os.cpu_count()} CPU cores; one silo, all columns)")
    for col in ("rows", "generator", "output", "wall s", "rows/s", "peak RSS MB", "speed-up"):
        table.add_column(col, justify="left" if col in ("generator", "output") else "right")
    for n in args.sizes:
        runs = [("parquet", _child("ours", n, "parquet"))]
        if n == max(args.sizes):
            runs.append(("csv", _child("ours", n, "csv")))
        base_wall = per_row * n
        for fmt, ours in runs:
            table.add_row(
                f"{n:,}",
                "privmodel.data.synth",
                f"{fmt} ({ours['bytes'] / 2**20:.0f} MB)",
                f"{ours['wall']:.2f} (gen {ours['generate']:.2f})",
                f"{n / ours['wall']:,.0f}",
                f"{ours['rss']:,.0f}",
                f"{base_wall / ours['wall']:,.0f}x",
            )
        table.add_row(
            f"{n:,}",
            "Faker per row*",
            "parquet (pandas)",
            f"{base_wall:,.1f}",
            f"{1 / per_row:,.0f}",
            f"~{base['rss'] + mem_per_row * (n - args.sample):,.0f} (est.)",
            "1x",
        )
    Console(width=160).print(table)
    print("wall s includes Python imports and the file write; peak RSS is ru_maxrss of a fresh process per run.")
    print(f"* Faker per row: {args.sample:,} rows generated, time and memory extrapolated linearly to the size.")


if __name__ == "__main__":
    main()
