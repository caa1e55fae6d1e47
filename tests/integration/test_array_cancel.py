"""Array tasks cancelled while still PENDING end CANCELLED in the ledger (real Slurm 22.05).

Slurm keeps such tasks in the array's own record (`123_[0-5]`) and, when one is cancelled,
leaves no record of it anywhere; hpcjob reads the array's record instead (hpcjob/slurm.py,
`cancelled_before_start`). Tasks are kept pending by a held job they depend on (`--after`), or by
a `%1` throttle behind a running task.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.support import UserSession, wait_until

pytestmark = pytest.mark.slurm

REASON = "cancelled before it started"


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.stderr
    return result.json()


def tasks_of(user: UserSession, job: str) -> dict[str, dict[str, Any]]:
    rows = ok(user.hpcjob("status", "--limit", "50", "--json"))
    return {r["job_id"]: r for r in rows if r["job_id"] and r["job_id"].startswith(job)}


def held_job(user: UserSession) -> str:
    held = user.as_user(
        "sbatch", "--parsable", "--hold", "--partition=rome", "--time=1", "--output=/dev/null",
        "--wrap=true",
    )  # fmt: skip
    assert held.returncode == 0, held.stderr
    return held.stdout.strip().split(";")[0]


def test_pending_tasks_cancelled_one_then_all_end_cancelled(user: UserSession) -> None:
    user.template("gpu-check", "echo task $SLURM_ARRAY_TASK_ID")
    blocker = held_job(user)
    try:
        parent = ok(user.hpcjob(
            "submit", "gpu-check", "--partition", "rome", "--time", "1", "--array", "0-5",
            "--after", blocker, "--json",
        ))  # fmt: skip
        job = parent["job_id"]
        rows = tasks_of(user, job)
        assert {rows[f"{job}_{i}"]["state"] for i in range(6)} == {"PENDING"}

        cancelled = user.hpcjob("cancel", f"{job}_4", "--json")  # one task, by its job id
        assert cancelled.exit_code == 0, cancelled.stderr
        squeue = user.as_user("squeue", "-h", "-o", "%i", "-j", job).stdout.split()
        assert squeue == [f"{job}_[0-3,5]"]  # Slurm took task 4 out of the array's record
        rows = tasks_of(user, job)
        assert rows[f"{job}_4"]["state"] == "CANCELLED", rows[f"{job}_4"]
        assert rows[f"{job}_4"]["reason"] == REASON
        assert [rows[f"{job}_{i}"]["state"] for i in (0, 1, 2, 3, 5)] == ["PENDING"] * 5
        assert rows[job]["state"] == "PENDING"  # the array itself still waits

        ok(user.hpcjob("cancel", parent["run_id"], "--json"))  # the whole array
        rows = tasks_of(user, job)
        for i in range(6):
            assert rows[f"{job}_{i}"]["state"] == "CANCELLED", rows[f"{job}_{i}"]
            assert rows[f"{job}_{i}"]["reason"] == REASON
        assert rows[job]["state"] == "CANCELLED"
        assert user.hpcjob("status", "--check").exit_code == 3
    finally:
        user.as_user("scancel", blocker)


def test_throttled_array_cancelled_while_task_0_runs(user: UserSession) -> None:
    # Task 0 runs until cancelled; the throttle keeps the others pending behind it.
    user.template("gpu-check", "echo task $SLURM_ARRAY_TASK_ID; sleep infinity")
    parent = ok(user.hpcjob(
        "submit", "gpu-check", "--partition", "staging", "--time", "2", "--array", "0-3%1",
        "--json",
    ))  # fmt: skip
    job = parent["job_id"]
    wait_until(lambda: tasks_of(user, job)[f"{job}_0"]["state"] == "RUNNING", "task 0 running")
    ok(user.hpcjob("cancel", f"{job}_2", "--json"))
    rows = tasks_of(user, job)
    assert (rows[f"{job}_2"]["state"], rows[f"{job}_2"]["reason"]) == ("CANCELLED", REASON)
    assert [rows[f"{job}_{i}"]["state"] for i in (0, 1, 3)] == ["RUNNING", "PENDING", "PENDING"]

    ok(user.hpcjob("cancel", parent["run_id"], "--json"))

    def all_cancelled() -> dict[str, dict[str, Any]] | None:
        rows = tasks_of(user, job)
        return rows if all(r["state"] == "CANCELLED" for r in rows.values()) else None

    rows = wait_until(all_cancelled, "every task CANCELLED", tick_s=1)
    assert rows[f"{job}_0"]["reason"] != REASON  # it ran: Slurm's own record says so
    assert rows[f"{job}_0"]["started_at"] is not None
    assert [rows[f"{job}_{i}"]["reason"] for i in (1, 3)] == [REASON, REASON]
