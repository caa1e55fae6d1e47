"""How politely hpcjob talks to Slurm (issue 4): scheduler commands per `status` refresh with 1, 50
and 500 tracked unfinished jobs, commands per minute while waiting, and `submit --wait` of a
trivial job against plain `sbatch --wait`.

Needs the test cluster (`sudo tests/cluster/start.sh`) and runs as root with the Slurm on this
machine. One command: `.venv/bin/python bench/slurm.py`. Writes "## Slurm polling (issue 4)"
into bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import machine, write_section

HEADING = "## Slurm polling (issue 4)"
COMMANDS = ("sbatch", "squeue", "sacct", "sinfo", "scancel")


class Bench:
    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.shims = root / "shims"
        self.log = root / "calls.log"
        self.shims.mkdir()
        for command in COMMANDS:
            shim = self.shims / command
            real = subprocess.run(["which", command], capture_output=True, text=True).stdout
            shim.write_text(
                f'#!/bin/sh\necho "$(date +%s.%N) {command}" >> "{self.log}"\n'
                f'exec {real.strip()} "$@"\n'
            )
            shim.chmod(0o755)
        (self.home / "templates").mkdir(parents=True)
        self.env = {
            **os.environ,
            "HPCJOB_HOME": str(self.home),
            "HPCJOB_PROFILE": "slurm",
            "HPCJOB_PYTHON": sys.executable,
            "PATH": f"{self.shims}:{os.environ['PATH']}",
        }

    def template(self, command: str) -> None:
        (self.home / "templates" / "gpu-check.sbatch.j2").write_text(
            '{% extends "base.sbatch.j2" %}{% block command %}' + command + "\n{% endblock %}"
        )

    def hpcjob(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcjob", *args], env=self.env, capture_output=True, text=True
        )

    def calls(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        if not self.log.exists():
            return Counter()
        found: Counter[str] = Counter()
        for line in self.log.read_text().splitlines():
            stamp, command = line.split()
            if since <= float(stamp) < until:
                found[command] += 1
        return found

    def status_cost(self, repeats: int = 5) -> tuple[Counter[str], float, int]:
        times, counts, tracked = [], Counter[str](), 0
        for _ in range(repeats):
            start = time.time()
            done = self.hpcjob("status", "--json", "--limit", "0")
            times.append(time.time() - start)
            counts = self.calls(since=start)
            tracked = len(json.loads(done.stdout))
        return counts, statistics.median(times), tracked

    def submit(self, *args: str) -> dict[str, str]:
        done = self.hpcjob("submit", "gpu-check", "--partition", "rome", "--json", *args)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        return dict(json.loads(done.stdout))

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "--user", "root"], check=False)


def main() -> None:
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        bench.cancel_all()
        bench.template("sleep 900")
        blocker = bench.submit()
        bench.template("true")
        for target, how in ((1, "1 job"), (50, "50 jobs"), (500, "an array of 500 tasks")):
            if target == 500:
                bench.submit("--after", blocker["job_id"], "--array", "0-499")
            else:
                have = len(json.loads(bench.hpcjob("runs", "--json", "--limit", "1000").stdout))
                for _ in range(target - (have - 1)):
                    bench.submit("--after", blocker["job_id"])
            counts, median, tracked = bench.status_cost()
            rows.append(
                f"| {how} ({tracked} unfinished runs) | {counts['squeue']} | {counts['sacct']} | "
                f"{sum(counts.values())} | {median * 1000:.0f} |"
            )
            print(rows[-1], flush=True)
        waiting = bench.hpcjob("runs", "--json", "--limit", "1000")
        some = next(r for r in json.loads(waiting.stdout) if r["state"] == "PENDING")
        start = time.time()
        waiter = subprocess.Popen(
            [sys.executable, "-m", "hpcjob", "wait", some["run_id"]], env=bench.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        window = float(os.environ.get("BENCH_WAIT_S", "150"))
        time.sleep(window)
        waiter.terminate()
        minute = bench.calls(since=start + window - 60, until=start + window)
        total = bench.calls(since=start, until=start + window)
        bench.cancel_all()
        trivial = compare_wait(bench)
    lines = [
        HEADING,
        "",
        f"Machine: {machine()}; the test cluster (Slurm 22.05, one host, 3 slurmd).",
        "Command: `.venv/bin/python bench/slurm.py` (as root, cluster running). Scheduler commands"
        " are counted by PATH shims around sbatch/squeue/sacct/sinfo/scancel.",
        "",
        "| tracked unfinished | squeue | sacct | all commands | `status` median (ms) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"Waiting on one run among 550 pending (`hpcjob wait`, backoff 2 s doubling to 30 s): "
        f"{sum(total.values())} commands in {window:.0f} s, {sum(minute.values())} in its last "
        f"minute ({dict(minute)}). Goal: ≤ 2 a minute once backed off.",
        "",
        trivial,
        "",
    ]
    body = "\n".join(lines)
    print(body)
    write_section(body, HEADING)


def compare_wait(bench: Bench, repeats: int = 5) -> str:
    """`hpcjob submit --wait` (a new process each time) against `sbatch --wait` of the same
    script, interleaved."""
    bench.template("true")
    rendered = bench.hpcjob("render", "gpu-check", "--partition", "rome").stdout
    folder = bench.home / "plain"
    folder.mkdir()
    ours, theirs = [], []
    for i in range(repeats):
        script = folder / f"job{i}.sh"
        run_dir = rendered.split("HPCJOB_RUN_DIR=", 1)[1].split("\n", 1)[0].strip("'")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        script.write_text(rendered)
        start = time.perf_counter()
        subprocess.run(["sbatch", "--wait", "--quiet", str(script)], check=True, cwd=folder)
        theirs.append(time.perf_counter() - start)
        start = time.perf_counter()
        done = bench.hpcjob("submit", "gpu-check", "--partition", "rome", "--wait", "--json")
        ours.append(time.perf_counter() - start)
        assert json.loads(done.stdout)["state"] == "COMPLETED", done.stderr
    a, b = statistics.median(ours), statistics.median(theirs)
    return (
        f"Trivial job, submit and wait ({repeats} each, interleaved, medians): "
        f"`hpcjob submit --wait` {a:.2f} s, `sbatch --wait` {b:.2f} s → {a / b:.2f}× "
        "(goal ≤ 0.7×). hpcjob ends the wait when the job's exit-status file appears and "
        "squeue shows the end; sacct's record (CPU time, memory) is fetched on a later refresh."
    )


if __name__ == "__main__":
    main()
