"""The Scheduler seam: how a staged job script becomes a running job, and how it is watched.

`LocalScheduler` (hpcjob/localsched.py) runs scripts on this machine; `SlurmScheduler` drives
sbatch/squeue/sacct through a Shell. Everything above this seam only sees `JobInfo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState

if TYPE_CHECKING:
    from hpcjob.config import Profile, Settings
    from hpcjob.shell import Shell


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


class Scheduler(Protocol):
    """Submit, watch and cancel jobs; `shell` reaches the files of the scheduler's machine."""

    name: str
    cluster: str
    shell: Shell
    # Seconds between polls while waiting: first interval, doubling up to the cap.
    poll_start_s: float
    poll_cap_s: float

    def submit(self, script_path: str, *, token: str, workdir: str) -> str:
        """Submit a staged script; return the job id."""
        ...

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """The state of many jobs in one query; jobs the scheduler does not know are left out."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def find_by_token(self, token: str) -> str | None:
        """The job id submitted with this token, if the scheduler has one."""
        ...


def scheduler_for(profile: Profile, settings: Settings) -> Scheduler:
    """The scheduler a profile names."""
    if profile.scheduler == "local":
        from hpcjob.localsched import LocalScheduler

        return LocalScheduler(settings.local_dir, max_jobs=int(profile.get("max_local_jobs") or 2))
    raise HpcjobError(
        f"Profile {profile.name!r} uses the Slurm scheduler, which this version of hpcjob cannot "
        "drive yet.",
        hint='Use the embedded scheduler: --profile local (or scheduler = "local").',
    )
