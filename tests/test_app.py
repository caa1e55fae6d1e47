"""The operations under the CLI that need no scheduler: array states, sorting, exit-status files."""

from __future__ import annotations

import dataclasses

from hpcjob.insight.rows import sort_runs
from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import Run
from hpcjob.ledger.store import Ledger
from hpcjob.run.refresh import array_info
from tests.helpers import new_run


def array_with(states: list[JobState]) -> tuple[Run, list[Run]]:
    ledger = Ledger(":memory:")
    parent = ledger.create_run(new_run(spec={"resources": {"array": "0-9"}}))
    parent = ledger.set_submitted(parent.run_id, "9", "o")
    tasks = ledger.create_array_tasks(parent, list(range(len(states))))
    done = []
    for task, state in zip(tasks, states, strict=True):
        started = f"2026-01-01T00:00:0{task.array_task}Z" if state != JobState.PENDING else None
        info = JobInfo(task.job_id or "", state, started_at=started)
        done.append(ledger.record_info(task, info, "test"))
    return parent, done


def test_array_state_follows_its_tasks() -> None:
    parent, tasks = array_with([JobState.PENDING, JobState.PENDING])
    assert array_info(parent, tasks).state == JobState.PENDING  # type: ignore[union-attr]
    parent, tasks = array_with([JobState.COMPLETED, JobState.PENDING])
    assert array_info(parent, tasks).state == JobState.RUNNING  # type: ignore[union-attr]
    parent, tasks = array_with([JobState.COMPLETED, JobState.COMPLETED])
    info = array_info(parent, tasks)
    assert info is not None and info.state == JobState.COMPLETED and info.reason is None
    parent, tasks = array_with([JobState.COMPLETED, JobState.FAILED, JobState.FAILED])
    info = array_info(parent, tasks)
    assert info is not None and info.state == JobState.FAILED
    assert info.reason == "1 of 3 tasks COMPLETED; 2 FAILED"
    assert info.started_at == "2026-01-01T00:00:00Z"


def test_sort_keeps_an_array_together() -> None:
    parent, tasks = array_with([JobState.PENDING] * 3)
    ordered = sort_runs([tasks[2], parent, tasks[0], tasks[1]])
    assert [r.job_id for r in ordered] == ["9", "9_0", "9_1", "9_2"]


def test_tasks_cancelled_before_they_started_do_not_fail_their_array() -> None:
    """A pending task cancelled is the user's decision: the array is COMPLETED when every task
    that ran completed (and one did), and its reason counts the cancelled ones."""
    ledger = Ledger(":memory:")
    parent = ledger.create_run(new_run(spec={"resources": {"array": "0-3"}}))
    parent = ledger.set_submitted(parent.run_id, "9", "o")
    tasks = ledger.create_array_tasks(parent, [0, 1, 2, 3])

    def end(task: Run, state: JobState, started: bool) -> Run:
        start = "2026-01-01T00:00:00Z" if started else None
        info = JobInfo(task.job_id or "", state, started_at=start, ended_at="2026-01-01T00:01:00Z")
        return ledger.record_info(task, info, "test")

    done = [end(t, JobState.COMPLETED, True) for t in tasks[:3]]
    unstarted = end(tasks[3], JobState.CANCELLED, False)
    info = array_info(parent, [*done, unstarted])
    assert info is not None and info.state == JobState.COMPLETED
    assert info.reason == "3 of 4 tasks COMPLETED; 1 cancelled before it started"
    # A task that ran and failed still fails the array, whatever was cancelled.
    info = array_info(parent, [*done[:2], end(tasks[2], JobState.FAILED, True), unstarted])
    assert info is not None and info.state == JobState.FAILED
    assert info.reason == "2 of 4 tasks COMPLETED; 1 FAILED; 1 cancelled before it started"
    # A task cancelled while it ran did not complete: the array is CANCELLED.
    info = array_info(parent, [*done[:2], end(tasks[2], JobState.CANCELLED, True), unstarted])
    assert info is not None and info.state == JobState.CANCELLED
    # Nothing ran at all: the array was cancelled.
    never = [dataclasses.replace(unstarted, job_id=t.job_id) for t in tasks]
    info = array_info(parent, never)
    assert info is not None and info.state == JobState.CANCELLED
    assert info.reason == "all 4 tasks cancelled before they started"
