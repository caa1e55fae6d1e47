"""Auto-requeue: a run that hit its time limit is resubmitted, up to `--auto-requeue N` times.

A run qualifies when its job ended TIMEOUT, or FAILED with exit status 75 (the training workload
saved a checkpoint on Slurm's warning signal and stopped: EX_TEMPFAIL, "try again"). The same
script is submitted again in the same run directory, so `--resume auto` finds the checkpoint; this
works the same on Slurm and on the embedded scheduler (`scontrol requeue` would keep the job id
but holds the job for ~2 minutes with reason BeginTime and does not exist on the embedded one).

The ledger keeps ONE run: each ended job becomes a row of the `attempts` table (migration 3) and
the run takes the new job id. The claim of an ended job for a requeue (`Ledger.claim_requeue`) is
one `BEGIN IMMEDIATE` transaction that only changes the run while it still holds the ended job, so
two hpcjob processes refreshing at once never both resubmit.
Each attempt has its own token (`<token>-a2` …) in `--comment`, so a crash between the claim and
sbatch is completed by the next refresh like any submission (app._complete_submission).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobState

if TYPE_CHECKING:
    from hpcjob.app import Context
    from hpcjob.ledger import Ledger, Run

EXIT_CHECKPOINTED = 75  # workloads/train.py: stopped by SIGUSR1/SIGTERM after a checkpoint
MAX_REQUEUES = 20


@dataclass(frozen=True)
class Attempt:
    """One scheduler job of a run."""

    attempt: int
    job_id: str | None
    token: str | None
    state: str
    exit_code: int | None
    started_at: str | None
    ended_at: str | None
    reason: str | None


def check_limit(value: int | None, *, is_array: bool) -> int:
    """`--auto-requeue N` validated: 0 ≤ N ≤ 20, and not for job arrays (exit 2 otherwise)."""
    if value is None:
        return 0
    if not 0 <= value <= MAX_REQUEUES:
        raise HpcjobError(
            f"--auto-requeue must be between 0 and {MAX_REQUEUES}, got {value}.",
            hint="It is how many times a run that hits its time limit is resubmitted.",
            exit_code=EXIT_USAGE,
        )
    if value and is_array:
        raise HpcjobError(
            "--auto-requeue does not apply to job arrays.",
            hint="Resubmit the tasks that timed out with a new array.",
            exit_code=EXIT_USAGE,
        )
    return value


def set_limit(ledger: Ledger, run_id: str, limit: int) -> None:
    ledger.set_max_requeues(run_id, limit)


def attempts(ledger: Ledger, run_id: str) -> list[Attempt]:
    """The run's ended attempts, oldest first (the current job is not among them)."""
    rows = ledger.db.execute(
        "SELECT attempt, job_id, token, state, exit_code, started_at, ended_at, reason "
        "FROM attempts WHERE run_id = ? ORDER BY attempt",
        (run_id,),
    ).fetchall()
    return [Attempt(*tuple(r)) for r in rows]


def attempt_rows(ledger: Ledger, run: Run) -> list[dict[str, Any]]:
    """Every attempt of a run for `show` (table and --json): the ended ones, then the current."""
    past = attempts(ledger, run.run_id)
    rows = [a.__dict__.copy() for a in past]
    rows.append(
        {
            "attempt": len(past) + 1,
            "job_id": run.job_id,
            "token": run.token,
            "state": run.state.value,
            "exit_code": run.exit_code,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "reason": run.reason,
        }
    )
    return rows


def wants_requeue(run: Run, used: int) -> bool:
    """Did this run end in a way a resubmission fixes, with requeues left?"""
    if run.max_requeues <= used or not run.job_id or run.is_array or run.parent_run_id:
        return False
    if run.state == JobState.TIMEOUT:
        return True
    return run.state == JobState.FAILED and run.exit_code == EXIT_CHECKPOINTED


def due(ctx: Context, run: Run) -> bool:
    """A run that ended in a way --auto-requeue fixes and has not been resubmitted yet."""
    if not run.max_requeues or not run.state.is_final:
        return False
    return wants_requeue(run, len(attempts(ctx.ledger, run.run_id)))


def requeue_left_behind(ctx: Context) -> None:
    """Runs of the profile that ended qualifying but were not resubmitted then (another process
    held the run's lock, a crash between the end and the resubmission): resubmit them now."""
    rows = ctx.ledger.db.execute(
        "SELECT run_id FROM runs WHERE profile = ? AND max_requeues > 0 AND job_id IS NOT NULL "
        "AND (state = 'TIMEOUT' OR (state = 'FAILED' AND exit_code = ?)) "
        "AND max_requeues > (SELECT COUNT(*) FROM attempts a WHERE a.run_id = runs.run_id)",
        (ctx.profile.name, EXIT_CHECKPOINTED),
    ).fetchall()
    for row in rows:
        run = ctx.ledger.get_run(row["run_id"])
        if run.cluster == ctx.scheduler.cluster:
            requeue_ended(ctx, [run])


def requeue_ended(ctx: Context, runs: list[Run]) -> list[Run]:
    """After a refresh: resubmit the runs that qualify; the others come back unchanged."""
    out = []
    for run in runs:
        if run.max_requeues and run.state.is_final:
            used = len(attempts(ctx.ledger, run.run_id))
            if wants_requeue(run, used):
                run = resubmit(ctx, run, used + 1)
        out.append(run)
    return out


def resubmit(ctx: Context, run: Run, attempt: int) -> Run:
    """Record attempt `attempt` as ended, submit the same script again, record the new job.

    The submission itself is submission.py's (exactly once, by token, under the run's submitter
    lock); a failure is said once on stderr and leaves the run as the ledger then shows it.
    """
    from hpcjob.app import exit_status_path
    from hpcjob.submission import hand_over

    earlier = attempts(ctx.ledger, run.run_id)
    base = earlier[0].token if earlier and earlier[0].token else run.token
    token = f"{base}-a{attempt + 1}"
    why = (
        f"auto-requeue {attempt} of {run.max_requeues}: job {run.job_id} ended {run.state.value}"
        + (f" (exit {run.exit_code})" if run.state == JobState.FAILED else "")
    )
    lock = _lock(ctx, run)
    if lock is None:
        ctx.notes.append(f"Run {run.run_id}: {why}; another hpcjob process is resubmitting it.")
        return ctx.ledger.get_run(run.run_id)
    try:
        if not ctx.ledger.claim_requeue(run, attempt, token, why):
            return ctx.ledger.get_run(run.run_id)  # another hpcjob process requeued it first
        status = exit_status_path(run)
        # The next job writes its own exit status; keep the old one beside it.
        ctx.scheduler.shell.run(
            ["mv", "-f", status, f"{status}.attempt{attempt}"], check=False, idempotent=True
        )
        try:
            fresh = hand_over(ctx, ctx.ledger.get_run(run.run_id))
        except HpcjobError as exc:
            ctx.notes.append(f"Run {run.run_id}: {why}, but resubmitting failed: {exc.message}")
            return ctx.ledger.get_run(run.run_id)
    finally:
        lock.__exit__(None, None, None)
    ctx.notes.append(f"Run {run.run_id}: {why}; resubmitted as job {fresh.job_id}.")
    return fresh


def _lock(ctx: Context, run: Run, tries: int = 20) -> Any:
    """The run's submitter lock; while another hpcjob process holds it (requeuing this very run),
    wait a moment so the caller then sees the run resubmitted, not ended. None if never free."""
    from hpcjob.submission import SubmitterLock

    for _ in range(tries):
        try:
            return SubmitterLock(ctx.settings.home, run.run_id).__enter__()
        except HpcjobError:
            time.sleep(0.25)
    return None
