"""Slurm through a Shell (this machine's, or a login node's over SSH): sbatch, one squeue and at
most one sacct per poll, scancel, sinfo. Everything above the seam only sees `JobInfo`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

from hpcjob import slurm
from hpcjob.clock import iso_utc, utc_now
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import CANCELLED_PENDING_REASON, JobInfo, JobState
from hpcjob.shell import Shell, command_error


class SlurmScheduler:
    """Slurm through a Shell: sbatch, one squeue + at most one sacct per poll, scancel, sinfo.

    squeue (with `--states=all`, which keeps ended jobs for a few minutes) answers for live jobs;
    sacct is asked only about jobs squeue no longer shows or shows as ended. sacct's interim
    `allocation` records are ignored until the real one arrives. Where accounting is off, sacct
    errors are remembered (`accounting_off`) and the caller falls back to the exit-status file.
    """

    name = "slurm"
    poll_start_s = 2.0
    poll_cap_s = 30.0
    jobs_run_here = False

    def __init__(self, shell: Shell, address: str) -> None:
        self.shell = shell
        self.address = address
        self.accounting_off: str | None = None  # why sacct does not answer, while it does not
        self.last_submit_ambiguous = False  # the last submit failed without a clear yes or no

    def submit(self, script_path: str, *, token: str, workdir: str) -> str:
        argv = slurm.sbatch_argv(script_path, comment=token, extra=[f"--chdir={workdir}"])
        # Until sbatch says clearly yes or no, the job may or may not be queued (the caller then
        # looks it up by token instead of guessing).
        self.last_submit_ambiguous = True
        result = self.shell.run(argv, check=False, timeout=120)
        if result.returncode != 0:
            kind = slurm.parse_slurm_error(result.stderr).kind
            self.last_submit_ambiguous = kind.value not in _REJECTIONS
            message, hint = slurm.parse_sbatch_error(result.stderr)
            raise HpcjobError(message, hint=hint)
        job_id = slurm.parse_sbatch_job_id(result.stdout).job_id
        self.last_submit_ambiguous = False
        return job_id

    def poll(self, job_ids: Sequence[str], ended: Collection[str] = ()) -> dict[str, JobInfo]:
        if not job_ids:
            return {}
        live: dict[str, slurm.SqueueRow] = {}
        rows = self._squeue(job_ids)
        for row in rows:
            for task in row.task_ids() if row.is_array_rest else [row.job_id]:
                live[task] = row
            live.setdefault(row.raw_job_id, row)
        gone = [j for j in job_ids if j not in live or live[j].state.is_final]
        # A job squeue shows ended whose script is known to have ended needs no sacct now: its
        # record lags seconds behind and costs a slurmdbd query; a later poll fetches it.
        asked = [j for j in gone if not (j in ended and j in live)]
        accounted = self._accounted(asked)
        # Array tasks cancelled while pending have no record of their own (slurm.py says why).
        unstarted = slurm.cancelled_before_start(
            [j for j in asked if "_" in j],
            rows,
            list(accounted.values()),
            sacct_answered=bool(asked) and not self.accounting_off,
        )
        infos: dict[str, JobInfo] = {}
        for job_id in job_ids:
            record, row = accounted.get(job_id), live.get(job_id)
            if record is not None and (record.state.is_final or row is None):
                infos[job_id] = _from_sacct(record)
            elif row is not None and row.state.is_final and not self.accounting_off:
                # Ended, but sacct's record (exit code, CPU time, memory) lags a few seconds.
                infos[job_id] = replace(_from_squeue(job_id, row), accounting_pending=True)
            elif row is not None:
                infos[job_id] = _from_squeue(job_id, row)
        for job_id in unstarted:
            known = infos.get(job_id) or JobInfo(job_id, JobState.CANCELLED)
            infos[job_id] = replace(
                known,
                job_id=job_id,
                state=JobState.CANCELLED,
                exit_code=None,  # it never ran (sacct's `0:0` on the array's record is no code)
                signal=None,
                started_at=None,
                ended_at=known.ended_at or utc_now(),
                reason=CANCELLED_PENDING_REASON,
                # It never ran: nothing more will come from accounting (stop asking for it).
                facts={**known.facts, "sacct_elapsed_s": 0},
                accounting_pending=False,
            )
        return infos

    def _accounted(self, job_ids: Sequence[str]) -> dict[str, Any]:
        """sacct's final word on these jobs, by job id. Array tasks are asked for by their
        array's id too: tasks cancelled before they started exist in sacct only inside a
        `123_[4-9]` row, never under their own id."""
        bases = {j.split("_", 1)[0] for j in job_ids if "_" in j} - set(job_ids)
        records = [r for r in self._sacct([*job_ids, *sorted(bases)]) if not r.is_interim]
        accounted = {r.job_id: r for r in records if "[" not in r.job_id}
        for record in records:
            if "[" in record.job_id:
                for task in slurm.expand_array_ids(record.job_id):
                    accounted.setdefault(task, record)
        return accounted

    def _squeue(self, job_ids: Sequence[str]) -> list[Any]:
        result = self.shell.run(
            slurm.squeue_argv(job_ids), check=False, timeout=60, idempotent=True
        )
        if result.returncode != 0:
            # squeue -j with one id it no longer knows exits 1: that is "no rows", not a failure.
            if slurm.parse_slurm_error(result.stderr).kind is slurm.SlurmErrorKind.UNKNOWN_JOB:
                return []
            raise command_error(result, "Asking Slurm about jobs (squeue)")
        return slurm.parse_squeue(result.stdout)

    def _sacct(self, job_ids: Sequence[str]) -> list[Any]:
        if not job_ids:
            return []
        result = self.shell.run(slurm.sacct_argv(job_ids), check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            self.accounting_off = slurm.parse_slurm_error(result.stderr).message
            return []
        self.accounting_off = None
        return slurm.parse_sacct(result.stdout)

    def step_usage(self, job_id: str) -> list[slurm.StepUsage]:
        argv = slurm.sacct_steps_argv(job_id)
        result = self.shell.run(argv, check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            self.accounting_off = slurm.parse_slurm_error(result.stderr).message
            return []
        self.accounting_off = None
        return slurm.parse_sacct_steps(result.stdout)

    def cancel(self, job_ids: Sequence[str]) -> None:
        result = self.shell.run(
            slurm.scancel_argv(job_ids), check=False, timeout=60, idempotent=True
        )
        if result.returncode != 0:
            failures = slurm.parse_scancel_errors(result.stderr)
            detail = "; ".join(f"job {f.job_id}: {f.reason}" for f in failures)
            raise HpcjobError(
                f"scancel failed: {detail or slurm.parse_slurm_error(result.stderr).message}",
                hint="You can only cancel your own jobs; `hpcjob status` shows their states.",
            )

    def find_by_token(self, token: str) -> str | None:
        # squeue must answer: "not found" from a controller that is down would be a guess. sacct
        # (jobs squeue has forgotten) may be off; that is remembered in `accounting_off`.
        result = self.shell.run(slurm.squeue_mine_argv(), check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            raise command_error(result, "Looking for a job by its token (squeue)")
        for row in slurm.parse_squeue(result.stdout):
            if row.comment == token:
                return str(row.array_job_id or row.job_id)
        result = self.shell.run(slurm.sacct_recent_argv(), check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            self.accounting_off = slurm.parse_slurm_error(result.stderr).message
            return None
        for record in slurm.parse_sacct(result.stdout):
            if record.comment == token:
                return str(record.array_job_id or record.job_id)
        return None

    def close(self) -> None:
        self.shell.close()  # the one SSH connection of this invocation, if any

    def cluster_name(self) -> str:
        argv = slurm.scontrol_config_argv()
        result = self.shell.run(argv, check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            raise command_error(
                result, "Asking Slurm for its cluster's name (scontrol show config)"
            )
        return slurm.parse_cluster_name(result.stdout)

    def partitions(self) -> list[slurm.Partition]:
        result = self.shell.run(slurm.sinfo_argv(), check=False, timeout=60, idempotent=True)
        if result.returncode != 0:
            raise command_error(result, "Asking Slurm for its partitions (sinfo)")
        return slurm.parse_sinfo(result.stdout)

    def account_access(self) -> slurm.AccountAccess:
        """One command for the user's associations, default account, groups and the partitions'
        access lists; a part that fails (sacctmgr with accounting off) is `unknown`, never an
        error: a submit does not wait on it."""
        try:
            result = self.shell.run(slurm.access_argv(), check=False, timeout=60, idempotent=True)
        except HpcjobError as exc:  # the command timed out, or the connection broke
            timed_out = "did not answer within" in exc.message  # its argv is the whole script
            why = "no answer within 60 s" if timed_out else exc.message.splitlines()[0][:200]
            return slurm.AccountAccess("", None, unknown=f"the accounts query failed: {why}")
        return slurm.parse_access(result.stdout)


# sbatch's clear "no": nothing was queued (anything else may have been, see submit()).
_REJECTIONS = frozenset(
    {
        "invalid_partition",
        "time_limit",
        "invalid_time",
        "invalid_account",
        "qos_policy",
        "invalid_gres",
        "script_unreadable",
        "permission_denied",
        "node_config",
    }
)


def _from_squeue(job_id: str, row: Any) -> JobInfo:
    running = row.state not in (JobState.PENDING, JobState.REQUEUED)
    return JobInfo(
        job_id=job_id,
        state=row.state,
        node=row.nodes,
        started_at=iso_utc(row.start_time) if running else None,
        reason=row.reason if row.state == JobState.PENDING else None,
    )


def _from_sacct(record: Any) -> JobInfo:
    facts = {
        "elapsed_s": record.elapsed_s,
        "cpu_time_s": record.cpu_time_s,
        "total_cpu_s": record.total_cpu_s,
        "max_rss_bytes": record.max_rss_bytes,
        "req_mem_mb": record.req_mem_mb,
        "alloc_cpus": record.alloc_cpus,
        "alloc_gpus": record.gpus,
        "alloc_tres": record.alloc_tres or None,
        "time_limit_s": record.time_limit_s,
    }
    return JobInfo(
        job_id=record.job_id,
        state=record.state,
        exit_code=record.exit_code,
        signal=record.signal,
        node=record.nodes,
        submitted_at=iso_utc(record.submit),
        started_at=iso_utc(record.start),
        ended_at=iso_utc(record.end) if record.state.is_final else None,
        reason=record.reason if record.state == JobState.PENDING else None,
        facts={f"sacct_{k}": v for k, v in facts.items() if v is not None},
    )
