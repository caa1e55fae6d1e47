"""Runs a crash left SUBMITTING: what `refresh` (so `status`, `runs`, `show`, `wait`…) does with
them — find the job by its token and complete the record, or mark the run UNSUBMITTED once
nothing can still be on its way (then `hpcjob resubmit` submits it once)."""

from __future__ import annotations

import contextlib

from hpcjob.clock import parse_utc
from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.lock import submitter_alive
from hpcjob.run.rundir import output_path
from hpcjob.run.submit import AMBIGUOUS, add_array_tasks

# A SUBMITTING run whose submitter is gone is concluded after this long without its job showing
# up: an sbatch the dead process had started may still be on its way to the controller.
SETTLE_S = 10
# Without a lock file to ask (a ledger moved from another machine) or after a failure whose
# outcome is unknown, wait longer than sbatch's own timeout (120 s) before concluding.
GRACE_S = 300


def recover(ctx: Context, run: Run) -> Run:
    """Refresh's step for a run left SUBMITTING: completed (with an array's tasks), concluded
    UNSUBMITTED, or left as it is while its job may still be on its way."""
    if run.state != JobState.SUBMITTING or run.job_id:
        return run
    return add_array_tasks(ctx, complete_submission(ctx, run))


def complete_submission(ctx: Context, run: Run) -> Run:
    """A run left SUBMITTING (by a crash or an unclear failure): find its job by token and
    complete the record, or mark it UNSUBMITTED once nothing can still be on its way."""
    if run.state != JobState.SUBMITTING or run.job_id:
        return run
    alive = submitter_alive(ctx.settings.home, run.run_id)
    if alive:
        return run  # its own process is still at it
    scheduler = ctx.scheduler
    try:
        job_id = scheduler.find_by_token(run.token)
    except HpcjobError as exc:
        ctx.notes.append(
            f"Run {run.run_id} was left SUBMITTING and could not be looked up by its token "
            f"({exc.message}); hpcjob asks again on the next refresh."
        )
        return run
    if job_id is None and scheduler.accounting_off:
        job_id = _job_id_from_run_dir(ctx, run)  # squeue forgot it and sacct is not answering
    if job_id is not None:
        ctx.notes.append(
            f"Run {run.run_id} was left SUBMITTING by an interrupted hpcjob; found it by its "
            f"token as job {job_id}."
        )
        return ctx.ledger.complete_submission(
            run.run_id, job_id, output_path(run, job_id), source="found by token"
        )
    unclear = (run.reason or "").startswith(AMBIGUOUS)
    wait_s = SETTLE_S if alive is False and not unclear else GRACE_S
    age = (ctx.clock.now() - parse_utc(run.updated_at)).total_seconds()
    if age < wait_s:
        return run
    reason = "the submission never reached the scheduler (no job carries its token)"
    if ctx.ledger.mark_unsubmitted(run.run_id, reason, only_if_submitting=True):
        ctx.notes.append(
            f"Run {run.run_id} never reached the scheduler; `hpcjob resubmit {run.run_id}` "
            "submits it."
        )
    return ctx.ledger.get_run(run.run_id)


def _job_id_from_run_dir(ctx: Context, run: Run) -> str | None:
    """A job that started wrote `slurm-<id>.out` into the run directory."""
    shell = ctx.scheduler.shell
    with contextlib.suppress(HpcjobError, OSError):
        if shell.exists(run.run_dir):
            for name, _size in shell.list_files(run.run_dir, max_depth=1):
                if name.startswith("slurm-") and name.endswith(".out"):
                    job_id = name[len("slurm-") : -len(".out")]
                    if job_id.replace("_", "").isdigit():
                        return job_id.split("_", 1)[0]
    return None
