"""Tamper classes the ledger verifier detects: one fresh signed ledger + witness per class, tampered
as tests/ledger_tamper.py describes, verified against the owner's key and the witness.

Prints a table (class / detected / first problem) and the count; exits 1 if any class passes.
Run: .venv/bin/python benchmarks/tamper_classes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ledger_tamper import CASES, build_scene, check  # noqa: E402


def main() -> int:
    rows = []
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            scene = build_scene(Path(tmp))
            if not check(scene).ok:
                raise SystemExit(f"{name}: the untouched ledger does not verify")
            case.tamper(scene)
            result = check(scene)
            detected = not result.ok and case.expected in str(result.first_problem)
            problem = str(result.first_problem).replace(tmp, "<tmp>") if result.first_problem else "-"
            rows.append((name, "yes" if detected else "NO", problem[:90]))
    width = max(len(r[0]) for r in rows)
    print(f"| {'tamper class':<{width}} | detected | first problem reported")
    print(f"|{'-' * (width + 2)}|----------|{'-' * 40}")
    for name, detected, problem in rows:
        print(f"| {name:<{width}} | {detected:<8} | {problem}")
    caught = sum(r[1] == "yes" for r in rows)
    print(f"\n{caught} of {len(rows)} tamper classes detected")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
