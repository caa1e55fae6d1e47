"""The ledger's values: a run about to be recorded (`NewRun`), a recorded one (`Run`), a state
change, an attempt of an auto-requeued run."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from hpcjob.jobstate import JobState


def new_run_id() -> str:
    """Short, typeable, never all digits (so it cannot be mistaken for a job id)."""
    return "r" + secrets.token_hex(3)


def new_token() -> str:
    """The run's token: in sbatch's --comment, so a job is found by it after a crash."""
    return "hpcjob-" + secrets.token_hex(16)


@dataclass(frozen=True)
class NewRun:
    """What a run is before the scheduler sees it; every recorded `Run` has these fields too."""

    profile: str
    cluster: str
    scheduler: str
    workload: str
    spec: dict[str, Any]
    script: str
    script_hash: str
    run_dir: str
    run_id: str = field(default_factory=new_run_id)
    token: str = field(default_factory=new_token)


@dataclass(frozen=True, kw_only=True)
class Run(NewRun):
    """A run as the ledger holds it: a NewRun plus what the scheduler said of it."""

    job_id: str | None
    output_path: str | None
    state: JobState
    exit_code: int | None
    signal: int | None
    node: str | None
    reason: str | None
    created_at: str
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    updated_at: str
    parent_run_id: str | None = None
    array_task: int | None = None
    max_requeues: int = 0  # submit --auto-requeue N (migration 3)

    @property
    def is_array(self) -> bool:
        """The parent run of a job array (its state is its tasks')."""
        return self.parent_run_id is None and bool(self.spec.get("resources", {}).get("array"))

    @property
    def cancelled_before_start(self) -> bool:
        """Cancelled while still waiting in the queue: the user's decision, not a failure (an
        array's state and `status --check` leave it out; it never ran, so it has no exit code)."""
        return self.state == JobState.CANCELLED and not self.started_at


@dataclass(frozen=True)
class StateChange:
    state: JobState
    at: str
    source: str
    detail: str | None


@dataclass(frozen=True)
class Attempt:
    """One ended scheduler job of a run that `--auto-requeue` resubmitted."""

    attempt: int
    job_id: str | None
    token: str | None
    state: str
    exit_code: int | None
    started_at: str | None
    ended_at: str | None
    reason: str | None
