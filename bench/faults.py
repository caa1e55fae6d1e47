"""Faults and concurrency (issue 7): runs the fault-injection suite on the real test cluster and
reports its figures — kill points tested with zero lost and zero duplicate jobs, concurrent hpcjob
processes held without error, faults survived.

Needs the test cluster (`sudo tests/cluster/start.sh`), as root, under the cluster lock (it stops
and restarts daemons). One command:

    flock /tmp/hpcjob-cluster.lock .venv/bin/python bench/faults.py [--concurrency 16,32]

Writes "## Faults and concurrency (issue 7)" into bench/RESULTS.md (`--no-write` to only print).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import machine, write_section

HEADING = "## Faults and concurrency (issue 7)"
REPO = Path(__file__).resolve().parent.parent
SUITE = [
    "tests/integration/test_exactly_once.py",
    "tests/integration/test_concurrency.py",
    "tests/integration/test_faults.py",
]
SIDE_PROCESSES = 3  # two `status --json` loops and one `logs --follow` beside the submits


def run_pytest(files: list[str], env: dict[str, str], *extra: str) -> list[tuple[str, str, float]]:
    """(test id, outcome, seconds) of each test."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "pytest"), *files, "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", *extra],
            cwd=REPO, env=env, check=False,
        )  # fmt: skip
        if not report.exists():
            return []
        cases = []
        for case in ET.parse(report).iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                if case.find(tag) is not None:
                    outcome = "failed" if tag != "skipped" else "skipped"
            cases.append((case.get("name", "?"), outcome, float(case.get("time", 0))))
        return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="16", help="parallel submits to try, e.g. 16,32")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    env = {**os.environ, "HPCJOB_REQUIRE_CLUSTER": "1"}
    started = time.monotonic()
    cases = run_pytest(SUITE, env)
    if not cases:
        sys.exit("the suite did not run (is the test cluster up? `sudo tests/cluster/start.sh`)")
    kills = [c for c in cases if c[0].startswith("test_kill_point")]
    faults = [c for c in cases if c[0] not in {k[0] for k in kills} and "parallel" not in c[0]]
    held: dict[int, bool] = {}
    for level in sorted({int(n) for n in args.concurrency.split(",")}):
        if level == 16:
            runs = [c for c in cases if "parallel_submits_on_slurm" in c[0]]
        else:
            runs = run_pytest(
                ["tests/integration/test_concurrency.py"],
                {**env, "HPCJOB_TEST_CONCURRENCY": str(level)},
                "-k", "on_slurm",
            )  # fmt: skip
        held[level] = bool(runs) and all(outcome == "passed" for _n, outcome, _s in runs)
    best = max((n for n, ok in held.items() if ok), default=0)
    passed = [c for c in cases if c[1] == "passed"]
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; the test cluster (Slurm 22.05, one host, 3 slurmd, sshd on "
        "127.0.0.1:2222). Other suites may share the machine while this runs.",
        "Command: `flock /tmp/hpcjob-cluster.lock .venv/bin/python bench/faults.py "
        f"--concurrency {args.concurrency}` (as root, cluster running).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| kill points tested with zero lost and zero duplicate jobs (login node + SSH) | "
        f"{sum(c[1] == 'passed' for c in kills)} of {len(kills)} |",
        f"| concurrent hpcjob processes held without error (submits + {SIDE_PROCESSES} beside) | "
        f"{best + SIDE_PROCESSES if best else 0} |",
        f"| faults survived (tests in test_faults.py) | "
        f"{sum(c[1] == 'passed' for c in faults)} of {len(faults)} |",
        f"| suite | {len(passed)} of {len(cases)} tests passed in "
        f"{time.monotonic() - started:.0f} s |",
        "",
        "Parallel submits tried on Slurm: "
        + ", ".join(f"{n} {'held' if ok else 'FAILED'}" for n, ok in sorted(held.items()))
        + " (each: one ledger row per job, distinct job ids, exactly one Slurm job per token, no "
        '"database is locked", no traceback, every `status --json` parsed and complete).',
        "",
        "| test | outcome | s |",
        "|---|---|---:|",
        *(f"| {name} | {outcome} | {secs:.1f} |" for name, outcome, secs in cases),
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(body, HEADING)
    if len(passed) != len(cases):
        sys.exit(1)


if __name__ == "__main__":
    main()
