"""Hostile inputs per command and the data-loss scenarios of issue 11, as tables for the closing note.

Runs tests/test_fuzz_cli.py (hypothesis; each command tried with at least 15 bad inputs, counted)
and tests/test_outputs_safety.py (every data-loss scenario: refused, exit 2, one line, bytes and
modes unchanged), then prints what they measured. Nothing here is asserted by hand: the numbers
come from the tests' own counters and pytest's results.

Run: .venv/bin/python benchmarks/hostile_inputs.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATA_LOSS = {
    "test_failed_rotate_keys_leaves_release_and_escrow": "rotate-keys over its own release / via a symlink / escrow",
    "test_rotate_keys_failing_after_staging_leaves_the_earlier_rotation": "failed rotate-keys keeps the earlier rotation",
    "test_failed_anonymize_into_existing_release_keeps_the_old_release": "failed anonymize into a release dir",
    "test_anonymize_with_a_bad_ledger_leaves_the_input_and_the_output_dir": "anonymize X --out DIR, bad --ledger",
    "test_anonymize_refuses_an_input_inside_its_outputs": "anonymize input inside --out / --ledger = input",
    "test_anonymize_refuses_to_overwrite_a_file_it_did_not_write": "anonymize over a user's file",
    "test_failed_reidentify_leaves_notes": "failed reidentify --out notes.txt / notes.csv",
    "test_reidentify_never_replaces_the_release": "reidentify --out = release (path, symlink, hard link, ..)",
    "test_reidentified_ids_are_0600_from_the_first_byte": "re-identified IDs 0600 from the first byte",
    "test_escrow_is_0600_from_the_first_byte": "escrow 0600 from the first byte",
    "test_keys_tls_keeps_an_existing_directory_mode": "keys tls keeps an existing dir's 1777 mode",
    "test_publish_is_all_or_nothing": "a failed publish restores what it replaced",
    "test_failure_removes_only_what_the_run_created": "failure cleanup removes only this run's files",
    "test_a_fifo_as_ledger_or_output_is_refused_not_waited_on": "a FIFO as --ledger: refused, never read (no hang)",
}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "fuzz.jsonl"
        junit = Path(tmp) / "safety.xml"
        env = {**os.environ, "PRIVMODEL_FUZZ_REPORT": str(counts)}
        pytest = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]
        fuzz = subprocess.run([*pytest, "tests/test_fuzz_cli.py", "tests/test_fuzz_model_cli.py"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        safety = subprocess.run([*pytest, "tests/test_outputs_safety.py", f"--junitxml={junit}"], cwd=ROOT,
                                capture_output=True, text=True)
        rows = [json.loads(line) for line in counts.read_text().splitlines()] if counts.exists() else []
        results: dict[str, str] = {}
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                failed = case.find("failure") is not None or case.find("error") is not None
                results[case.get("name", "")] = "FAILED" if failed else "holds (test passed)"

    print("| command | bad inputs tried | handled cleanly (exit 2, one line, nothing changed) | valid among them | distinct refusals |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['command']} | {row['tried'] - row['accepted']} | {row['clean'] - row['accepted']} | "
              f"{row['accepted']} | {row['distinct_refusals']} |")
    total = sum(r["tried"] - r["accepted"] for r in rows)
    print(f"\n{total} bad inputs over {len(rows)} commands; fuzz suite exit code {fuzz.returncode}\n")
    print("| data-loss scenario (issue 11, finding 1): exit 2, one line, bytes and modes unchanged | result |")
    print("|---|---|")
    for name, label in DATA_LOSS.items():
        print(f"| {label} | {results.get(name, 'not run')} |")
    ok = fuzz.returncode == 0 and safety.returncode == 0 and all(results.get(n, "").startswith("holds") for n in DATA_LOSS)
    if not ok:
        print(fuzz.stdout[-3000:] + safety.stdout[-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
