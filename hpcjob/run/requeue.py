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
sbatch is completed by the next refresh like any submission (recovery.py).
"""

from __future__ import annotations

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context, cluster_key, cluster_key_resolved
from hpcjob.run.lock import SubmitterLock

EXIT_CHECKPOINTED = 75  # workloads/train.py: stopped by SIGUSR1/SIGTERM after a checkpoint
MAX_REQUEUES = 20


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
    return wants_requeue(run, len(ctx.ledger.attempts(run.run_id)))


def requeue(ctx: Context) -> dict[str, Run]:
    """Refresh's requeue step: resubmit every run of the profile on this cluster that ended in a
    way a resubmission fixes and has requeues left — whether it ended in this very refresh or
    earlier without being resubmitted (another process held its lock, a crash in between).
    Returns the runs it touched, by run id, as the ledger now has them."""
    touched: dict[str, Run] = {}
    due = ctx.ledger.requeue_due(ctx.profile.name, EXIT_CHECKPOINTED)
    if due and not cluster_key_resolved(ctx):
        cluster_key(ctx)  # learning it may move these runs to the cluster's name: read again
        due = ctx.ledger.requeue_due(ctx.profile.name, EXIT_CHECKPOINTED)
    for run in due:
        used = len(ctx.ledger.attempts(run.run_id))
        if run.cluster == cluster_key(ctx) and wants_requeue(run, used):
            touched[run.run_id] = resubmit(ctx, run, used + 1)
    return touched


def resubmit(ctx: Context, run: Run, attempt: int) -> Run:
    """Record attempt `attempt` as ended, submit the same script again, record the new job.

    The submission itself is submit.py's (exactly once, by token, under the run's submitter
    lock); a failure is said once on stderr and leaves the run as the ledger then shows it.
    """
    from hpcjob.run.rundir import exit_status_path
    from hpcjob.run.submit import hand_over  # the submit path loads only when one is due

    earlier = ctx.ledger.attempts(run.run_id)
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
            ["mv", "-f", "--", status, f"{status}.attempt{attempt}"], check=False, idempotent=True
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


def _lock(ctx: Context, run: Run, tries: int = 20) -> SubmitterLock | None:
    """The run's submitter lock; while another hpcjob process holds it (requeuing this very run),
    wait a moment so the caller then sees the run resubmitted, not ended. None if never free."""
    for _ in range(tries):
        try:
            return SubmitterLock(ctx.settings.home, run.run_id).__enter__()
        except HpcjobError:
            ctx.clock.sleep(0.25)
    return None
