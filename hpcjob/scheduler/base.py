"""The Scheduler protocol: what every scheduler does and what it can tell about itself.

Callers ask these capabilities, never the scheduler's name: whether jobs run on this machine
(`jobs_run_here`: the embedded scheduler, whose files are cheap to read on every refresh), why
accounting does not answer (`accounting_off`), whether the last failed submit may have queued
the job after all (`last_submit_ambiguous`), the name all of a cluster's addresses share
(`cluster_name`), and which partitions the user's accounts may use (`account_access`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from hpcjob.jobstate import JobInfo
from hpcjob.shell import Shell

if TYPE_CHECKING:
    from hpcjob.slurm import AccountAccess, Partition, StepUsage


class Scheduler(Protocol):
    """Submit, watch and cancel jobs; `shell` reaches the files of the scheduler's machine."""

    name: str  # recorded with each run: "slurm" or "local"
    # How this invocation reaches the scheduler: "slurm:int5" (on a login node), "slurm:<host>"
    # (over SSH), "local:<hostname>". Several addresses may reach one cluster (the ledger keys runs
    # by the cluster: run/context.py's `cluster_key`).
    address: str
    shell: Shell
    # Seconds between polls while waiting: first interval, doubling up to the cap.
    poll_start_s: float
    poll_cap_s: float
    jobs_run_here: bool
    # Why the scheduler's accounting (sacct) does not answer, as of the last query; None when it
    # does. States then come from the live queue and the jobs' exit-status files.
    accounting_off: str | None
    # The last submit failed without a clear yes or no: the job may be queued (look by token).
    last_submit_ambiguous: bool

    def submit(self, script_path: str, *, token: str, workdir: str) -> str:
        """Submit a staged script; return the job id."""
        ...

    def poll(self, job_ids: Sequence[str], ended: Collection[str] = ()) -> dict[str, JobInfo]:
        """The state of many jobs in one query; jobs the scheduler does not know are left out.
        `ended`: jobs whose script is known to have ended (their exit-status file is there):
        the scheduler's quick word on them suffices, a slower record may come on a later poll."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None: ...

    def find_by_token(self, token: str) -> str | None:
        """The job id submitted with this token, if the scheduler has one."""
        ...

    def partitions(self) -> list[Partition] | None:
        """The partitions requests are checked against; None when any name runs (embedded)."""
        ...

    def cluster_name(self) -> str | None:
        """The name every address of this cluster shares (Slurm's ClusterName, the same on each
        login node), asked of the scheduler; None where the address is the cluster itself (the
        embedded scheduler runs jobs on this machine). HpcjobError when it cannot be asked."""
        ...

    def account_access(self) -> AccountAccess | None:
        """Which partitions each of the user's accounts may use (one query); None where there
        are no accounts (embedded: any partition, any account). Where accounting cannot answer,
        an `AccountAccess` whose `unknown` says why."""
        ...

    def step_usage(self, job_id: str) -> list[StepUsage] | None:
        """What each step of a job used, per task and where (one query): the per-node numbers
        of a job over several nodes. None where the scheduler keeps no accounting per step (the
        embedded one); [] where it has none for the job (yet, or accounting is off:
        `accounting_off` says why)."""
        ...

    def close(self) -> None:
        """Let go of what the scheduler holds open (the SSH connection of this invocation)."""
        ...
