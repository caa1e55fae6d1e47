"""Job states (Slurm's words, plus those hpcjob needs before a job reaches a scheduler) and
`JobInfo`, what a scheduler knows of one job: vocabulary both schedulers and the ledger share."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class JobState(str, Enum):
    """A job's state: Slurm's names, plus hpcjob's SUBMITTING, UNSUBMITTED and UNKNOWN."""

    # hpcjob's own: recorded before sbatch returns / a submission that never reached the scheduler /
    # a job neither squeue nor sacct knows (yet) — never taken for "done".
    SUBMITTING = "SUBMITTING"
    UNSUBMITTED = "UNSUBMITTED"
    UNKNOWN = "UNKNOWN"
    # Slurm's.
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REVOKED = "REVOKED"
    SPECIAL_EXIT = "SPECIAL_EXIT"

    @property
    def is_final(self) -> bool:
        """True when the job will never change state again (the ledger stops asking)."""
        return self in _FINAL

    @property
    def is_active(self) -> bool:
        """True while the job is queued or running on the scheduler."""
        return not self.is_final and self not in (JobState.UNSUBMITTED,)

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Read a state as squeue/sacct print it: `CANCELLED by 0`, `CANCELLED+`, `CD`, `OOM`."""
        word = text.strip().split(" ", 1)[0].rstrip("+").upper() if text.strip() else ""
        word = _SHORT.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN


_FINAL = frozenset(
    {
        JobState.UNSUBMITTED,
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.REVOKED,
        JobState.SPECIAL_EXIT,
    }
)

# squeue's compact codes (`%t`) and sacct's abbreviations.
_SHORT = {
    "PD": "PENDING",
    "CF": "CONFIGURING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "S": "SUSPENDED",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "ST": "STOPPED",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "RV": "REVOKED",
    "SE": "SPECIAL_EXIT",
}

# The reason of an array task cancelled before it started (Slurm keeps no record of its own).
CANCELLED_PENDING_REASON = "cancelled before it started"


@dataclass(frozen=True)
class JobInfo:
    """What the scheduler knows of one job right now."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    reason: str | None = None
    # What the scheduler's accounting adds (elapsed, CPU time, peak memory, GPUs); into the ledger.
    facts: dict[str, Any] = field(default_factory=dict)
    # Ended, but the accounting record with the exit code is not there yet (sacct lags).
    accounting_pending: bool = False
