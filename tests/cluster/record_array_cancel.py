#!/usr/bin/env python3
"""Record what Slurm reports of array tasks cancelled while still PENDING (session 4).

Run as root where tests/cluster/start.sh has brought the test cluster up, under the cluster lock:

    flock /tmp/hpcjob-cluster.lock python3 tests/cluster/record_array_cancel.py

Two arrays whose tasks cannot start: one behind a held blocker (`--dependency=afterok:HELD`), one
throttled to `%1` with task 0 running. In each, one pending task is cancelled (`scancel A_4`),
then the whole array (`scancel A`). After each step it records the squeue and sacct calls hpcjob
makes (the tasks' ids; sacct also gets the array's id), plus squeue of task 1 alone, sacct of the
cancelled task alone and with `--duplicates`, into tests/fixtures/slurm/*_array_cancel_*.json.
Takes about 40 s. Stdlib only; the recording helpers are record_fixtures.py's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record_fixtures as rf

SETTLE_S = 6.0  # sacct lags a few seconds behind scancel


def _wait_in_sacct(job: str, timeout: float = 30) -> None:
    """Until sacct has the array's pending record (it lags a few seconds behind sbatch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out, _ = rf.run(["sacct", "-n", "-X", "-P", "-o", "JobID", "-j", job])
        if any(line.startswith(f"{job}_") for line in out.split()):
            return
        time.sleep(0.5)
    sys.exit(f"sacct never showed array {job}")


def _views(prefix: str, job: str, tasks: list[str], note: str, jobs: dict[str, str]) -> None:
    """What hpcjob's poll asks (squeue of the tasks, sacct of tasks + array) and the details."""
    rf.record(f"squeue_{prefix}", rf.squeue_argv(tasks), note, jobs=jobs)
    # Asked about one task alone, squeue prints the array's record as that task's own row.
    one = [tasks[1]]
    rf.record(
        f"squeue_{prefix}_one", rf.squeue_argv(one), f"{note}; squeue of {one[0]} alone", jobs=jobs
    )
    rf.record(f"sacct_{prefix}", rf.sacct_argv([*tasks, job]), note, jobs=jobs)
    argv = rf.sacct_argv([jobs["cancelled_task"]])
    rf.record(f"sacct_{prefix}_task", argv, f"{note}; sacct of the cancelled task alone", jobs=jobs)
    # Not a query hpcjob makes (so `-j`, not hpcjob's `--jobs=`): does -D show more? It does not.
    argv = [*rf.sacct_argv([job])[:-1], "--duplicates", "-j", job]
    rf.record(f"sacct_{prefix}_dup", argv, f"{note}; sacct --duplicates of the array", jobs=jobs)


def _scenario(name: str, job: str, tasks: list[str], why: str, jobs: dict[str, str]) -> None:
    _wait_in_sacct(job)
    rf.record(
        f"squeue_{name}_before", rf.squeue_argv(tasks), f"{why}, before any scancel", jobs=jobs
    )
    rf.record(
        f"scancel_{name}_task", ["scancel", jobs["cancelled_task"]], f"{why}: one pending task"
    )
    time.sleep(SETTLE_S)
    _views(f"{name}_task", job, tasks, f"{why}: task {jobs['cancelled_task']} cancelled", jobs)
    rf.record(f"scancel_{name}_all", ["scancel", job], f"{why}: the whole array")
    time.sleep(SETTLE_S)
    _views(f"{name}_all", job, tasks, f"{why}: then the whole array cancelled", jobs)


def main() -> None:
    import os
    import shutil

    if os.geteuid() != 0:
        sys.exit("run as root (it runs commands as the test user)")
    rf.load_env()
    rf.VERSION = rf.ENV["HPCJOB_TEST_SLURM_VERSION"]
    rf.WORK = Path(rf.ENV["HPCJOB_TEST_SCRATCH"]) / f"fixtures-cancel-{int(time.time())}"
    rf.WORK.mkdir(parents=True)
    shutil.chown(rf.WORK, rf.ENV["HPCJOB_TEST_USER"], rf.ENV["HPCJOB_TEST_USER"])

    # 1. Behind a held blocker: every task pends (Dependency) in one record A_[0-5].
    blocker = rf.sbatch("--hold", rf.script("fx-blocker", "true", partition="rome", time="1"))
    body = rf.script("fx-arrdep", "sleep 1", partition="rome", time="1")
    array = rf.sbatch(f"--dependency=afterok:{blocker}", "--array=0-5", body)
    tasks = [f"{array}_{i}" for i in range(6)]
    jobs = {"array": array, "blocker": blocker, "cancelled_task": f"{array}_4"}
    try:
        _scenario("array_cancel_dependency", array, tasks, "array 0-5 behind a held job", jobs)
    finally:
        rf.run(["scancel", blocker, array])

    # 2. Throttled to one task at a time: task 0 runs, 1-3 pend (JobArrayTaskLimit).
    body = rf.script("fx-arrthr", "sleep 60", partition="staging", time="2")
    array = rf.sbatch("--array=0-3%1", body)
    tasks = [f"{array}_{i}" for i in range(4)]
    jobs = {"array": array, "cancelled_task": f"{array}_2"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, out, _ = rf.run(["squeue", "-h", "-t", "R", "-o", "%i", "-j", array])
        if f"{array}_0" in out.split():
            break
        time.sleep(0.3)
    try:
        _scenario("array_cancel_throttled", array, tasks, "array 0-3%1, task 0 running", jobs)
    finally:
        rf.run(["scancel", array])
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
