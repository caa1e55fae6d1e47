"""Nothing gets slower as the ledger grows (issue 19): `runs`, `runs --json`, `status` and
`show last` on a ledger of 1,000 runs against one of 100,000, each a fresh `hpcjob` process on
the embedded scheduler (profile `local`, so no Slurm is asked). Target: 100k within 1.3× of 1k.

One command: `.venv/bin/python bench/ledger_growth.py` (about a minute). The ledgers are real:
two runs are submitted and waited for through the CLI (a `gpu-check` and a two-epoch `train` on
a tiny synthetic data set, so they carry their history, facts and metrics), then copied into the
ledger in bulk (one transaction, the same rows the ledger's API wrote, each copy with its own run
id, token, job id and an older creation time) until it holds 1,000 or 100,000 runs; the two real
runs stay the newest. The commands run interleaved (both sizes take the machine's load alike),
medians are compared, and the table goes into bench/RESULTS.md.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from startup import ROOT, load_average, machine, write_section

from hpcjob.ledger.store import Ledger

HEADING = "### A growing ledger"
SIZES = (1_000, 100_000)
TARGET = 1.3
REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))
HPCJOB = str(Path(sys.executable).parent / "hpcjob")
COMMANDS = {
    "hpcjob runs": ["runs"],
    "hpcjob runs --json": ["runs", "--json"],
    "hpcjob status": ["status"],
    "hpcjob show last": ["show", "last"],
}


def run_cli(home: Path, *args: str) -> None:
    env = {**os.environ, "HPCJOB_HOME": str(home), "HPCJOB_PROFILE": "local"}
    subprocess.run([HPCJOB, *args], env=env, capture_output=True, check=True)


def template(home: Path) -> None:
    """Two real runs, submitted and waited for through the CLI."""
    data = home / "data"
    sizes = ["--train", "256", "--valid", "64", "--test", "64", "--seed", "0"]
    synth = [sys.executable, str(ROOT / "workloads" / "synth.py"), str(data), *sizes]
    subprocess.run(synth, check=True, capture_output=True)
    run_cli(home, "submit", "gpu-check", "--wait")
    run_cli(home, "submit", "train", "--epochs", "2", "--data-dir", str(data), "--wait")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def grow(path: Path, total: int) -> None:
    """Copy the ledger's runs (with their history, metrics, facts) until it holds `total` runs;
    the copies are older than the originals, one a minute back from them."""
    Ledger(path).close()  # opened (and migrated) by the ledger itself first
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    originals = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY created_at")]
    children = {
        table: {
            o["run_id"]: [
                dict(r)
                for r in db.execute(f"SELECT * FROM {table} WHERE run_id = ?", (o["run_id"],))
            ]
            for o in originals
        }
        for table in ("state_history", "metrics", "facts")
    }
    oldest = datetime.fromisoformat(originals[0]["created_at"].replace("Z", "+00:00"))
    columns = list(originals[0])
    db.execute("BEGIN IMMEDIATE")
    for n in range(total - len(originals)):
        source = originals[n % len(originals)]
        run_id = f"r{n:07x}0"  # `r` + hex like every run id; never a prefix of the originals'
        shift = oldest - timedelta(minutes=total - n)
        row = {
            **source,
            "run_id": run_id,
            "token": f"hpcjob-bench-{n}",
            "job_id": str(10_000 + n),
            "created_at": _iso(shift),
            "submitted_at": _iso(shift),
            "started_at": _iso(shift + timedelta(seconds=5)),
            "ended_at": _iso(shift + timedelta(seconds=50)),
            "updated_at": _iso(shift + timedelta(seconds=50)),
        }
        if "listed_at" in row:  # the sort key of `runs` (ledger migration 5)
            row["listed_at"] = row["created_at"]
        marks = ",".join("?" * len(columns))
        db.execute(f"INSERT INTO runs ({','.join(columns)}) VALUES ({marks})", list(row.values()))
        for table, rows in children.items():
            for child in rows[source["run_id"]]:
                child = {k: v for k, v in child.items() if k != "id"}
                child["run_id"] = run_id
                keys = ",".join(child)
                db.execute(
                    f"INSERT INTO {table} ({keys}) VALUES ({','.join('?' * len(child))})",
                    list(child.values()),
                )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def build(base: Path) -> dict[int, Path]:
    started = time.perf_counter()
    seed = base / "seed"
    template(seed)
    homes = {}
    for size in SIZES:
        home = base / f"ledger-{size}"
        shutil.copytree(seed, home, ignore=shutil.ignore_patterns("data"))
        grow(home / "ledger.db", size)
        homes[size] = home
    print(f"Built the ledgers in {time.perf_counter() - started:.0f} s.", file=sys.stderr)
    return homes


def measure(homes: dict[int, Path]) -> dict[tuple[str, int], list[float]]:
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(REPEATS):
        for name, args in COMMANDS.items():
            for size, home in homes.items():
                started = time.perf_counter()
                run_cli(home, *args)
                times.setdefault((name, size), []).append(time.perf_counter() - started)
    return times


def report(times: dict[tuple[str, int], list[float]], load: str) -> str:
    small, large = SIZES
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; load average before the run {load}. {REPEATS} runs of each "
        "command at each size, interleaved, a fresh process each; medians.",
        "Command: `.venv/bin/python bench/ledger_growth.py`.",
        "",
        f"| command | {small:,} runs (ms) | {large:,} runs (ms) | × | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name in COMMANDS:
        a = statistics.median(times[(name, small)])
        b = statistics.median(times[(name, large)])
        ratio = b / a
        met = "met" if ratio <= TARGET else "NOT met"
        lines.append(
            f"| `{name}` | {a * 1000:.0f} | {b * 1000:.0f} | {ratio:.2f} | ≤ {TARGET}×: {met} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    # Fresh byte-code, as bench/startup.py does: the compiler is not what is measured.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "hpcjob")], check=True)
    load = load_average()
    with tempfile.TemporaryDirectory() as base:
        homes = build(Path(base))
        times = measure(homes)
    body = report(times, load)
    print(body)
    write_section(body, HEADING)


if __name__ == "__main__":
    main()
