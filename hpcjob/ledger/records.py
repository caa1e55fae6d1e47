"""The ledger's values: a run about to be recorded (`NewRun`), a recorded one (`Run`), a state
change, an attempt of an auto-requeued run."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState


def new_run_id(nbytes: int = 3) -> str:
    """Short, typeable, never all digits (so it cannot be mistaken for a job id): `r` and six hex
    digits, more when the ledger asks for them (`fresh_run_id`)."""
    return "r" + os.urandom(nbytes).hex()  # secrets.token_hex, without loading OpenSSL


# Tries per id length before a longer one: six hex digits are 16.7 M ids, so a ledger must be
# millions of runs big before even one try in a few fails; then 8, 10 … 16 digits.
_TRIES_PER_LENGTH = 8
_LENGTHS = (3, 4, 5, 6, 7, 8)  # bytes


def fresh_run_id(taken: Callable[[str], bool]) -> str:
    """A run id that `taken` says is free: short while the short ones are mostly free, longer as
    they fill up. Every id stays a prefix-typeable `r…` (a longer id whose first digits equal a
    shorter one's is still reached by typing more of it; an exact id always wins)."""
    for nbytes in _LENGTHS:
        for _ in range(_TRIES_PER_LENGTH):
            run_id = new_run_id(nbytes)
            if not taken(run_id):
                return run_id
    raise HpcjobError(
        f"No free run id was found in {_TRIES_PER_LENGTH * len(_LENGTHS)} tries.",
        hint="This should not happen with a random source: `hpcjob ledger check`.",
    )


def new_token() -> str:
    """The run's token: in sbatch's --comment, so a job is found by it after a crash."""
    return "hpcjob-" + os.urandom(16).hex()


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
