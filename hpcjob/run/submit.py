"""Submit exactly once: the run is in the ledger (SUBMITTING, with its token) before the scheduler
sees it, and every path out of that state is here or in `recovery`.

- `submit`: record the run under its submitter lock (`lock`), stage its directory, hand it over.
- `hand_over`: sbatch (or the embedded scheduler) with the token; after a failure whose outcome is
  not known (a timeout, a dropped connection) the token is looked up before anything is decided.
- `resubmit`: submit an UNSUBMITTED run again — same run, same token — after checking the token.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hpcjob.clock import utc_now
from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.ledger.records import Run
from hpcjob.render import SNAPSHOT_MARKER, snapshot_dir
from hpcjob.resources import workload_files
from hpcjob.run.context import Context, cluster_key, profile_error
from hpcjob.run.lock import SubmitterLock
from hpcjob.run.origin import record_origin, run_files
from hpcjob.run.prepare import Prepared
from hpcjob.run.rundir import Files, code_files, output_path, staging
from hpcjob.spec import array_task_ids
from hpcjob.sweep import task_specs

AMBIGUOUS = "outcome unknown"  # reason prefix of a run left SUBMITTING after an unclear failure


def submit(
    ctx: Context, prepared: Prepared, auto_requeue: int = 0, project: Path | None = None
) -> Run:
    """Record the run, stage its directory, hand it to the scheduler, record the job id.

    The run is in the ledger (SUBMITTING, with its token) before the scheduler sees it, so a
    crash in between is found and completed by the next refresh.
    """
    new = dataclasses.replace(prepared.new_run, cluster=cluster_key(ctx))
    # The lock says "a live process is submitting this run" to any other hpcjob (lock.py).
    with SubmitterLock(ctx.settings.home, new.run_id):
        run = ctx.ledger.create_run(new)
        if auto_requeue:
            ctx.ledger.set_max_requeues(run.run_id, auto_requeue)
        with staging(ctx, run):
            origin = record_origin(ctx, run, prepared, project)  # provenance, SBU estimate
            # Before submitting: Slurm fails a job whose output directory is missing.
            _stage(ctx, run, prepared, run_files(ctx, prepared, origin))
        run = hand_over(ctx, run)  # sbatch with the token; unclear failures checked by token
        return add_array_tasks(ctx, run)


def _stage(ctx: Context, run: Run, prepared: Prepared, files: Files) -> None:
    """Write the run directory in one go (over SSH one command instead of ~5 round trips per
    file). A program's code snapshot is stored once per content beside the run directories: it
    is uploaded only when it is not there yet, and its marker goes with the run's files."""
    shell = ctx.scheduler.shell
    program = prepared.spec.program
    if program is None or not program.snapshot or prepared.snapshot is None:
        shell.write_files(run.run_dir, files)
        return
    folder = snapshot_dir(run.run_dir, program.snapshot)
    if not shell.exists(f"{folder}/{SNAPSHOT_MARKER}"):
        shell.write_files(folder, prepared.snapshot)
    root, name = run.run_dir.rstrip("/").rsplit("/", 1)
    marker = {"sha256": program.snapshot, "files": len(prepared.snapshot), "run_id": run.run_id}
    together: Files = {f"{name}/{path}": value for path, value in files.items()}
    together[f".snapshots/{program.snapshot}/{SNAPSHOT_MARKER}"] = (
        json.dumps(marker).encode(),
        0o644,
    )
    shell.write_files(root, together)


def hand_over(ctx: Context, run: Run) -> Run:
    """Submit a recorded, staged SUBMITTING run with its token; record the job id.

    A rejection (Slurm said no) marks the run UNSUBMITTED once the token lookup confirms no job
    carries it. A failure whose outcome is unknown (sbatch timed out, the connection dropped while
    it ran), or a lookup that itself fails, is never retried blindly: the run stays SUBMITTING
    (reason "outcome unknown") for the next refresh to settle by its token.
    """
    scheduler = ctx.scheduler
    try:
        job_id = scheduler.submit(f"{run.run_dir}/job.sh", token=run.token, workdir=run.run_dir)
    except HpcjobError as exc:
        ambiguous = scheduler.last_submit_ambiguous
        try:
            found = scheduler.find_by_token(run.token)
        except HpcjobError:
            found, ambiguous = None, True  # cannot look: not known either way
        if found is None:
            if not ambiguous:
                ctx.ledger.mark_unsubmitted(run.run_id, exc.message)
                raise profile_error(ctx, exc) from exc  # Slurm said no: to this profile's job
            ctx.ledger.note_submitting(run.run_id, f"{AMBIGUOUS}: {exc.message}")
            raise HpcjobError(
                f"{exc.message}\nIt is not known whether the scheduler queued run {run.run_id}; "
                "hpcjob did not submit it again.",
                hint="The next `hpcjob status` looks for it by its token and completes the record; "
                f"if it never arrived, `hpcjob resubmit {run.run_id}` submits it once.",
            ) from exc
        job_id = found
    return ctx.ledger.complete_submission(run.run_id, job_id, output_path(run, job_id))


def add_array_tasks(ctx: Context, run: Run) -> Run:
    """A submitted array's tasks as runs of their own (once: a recovery may come after); a
    sweep's tasks each get their own arguments."""
    array = (run.spec.get("resources") or {}).get("array")
    if array and run.job_id and run.parent_run_id is None and not ctx.ledger.tasks(run.run_id):
        tasks = array_task_ids(array)
        ctx.ledger.create_array_tasks(run, tasks, task_specs(run.spec, tasks) or None)
    return run


def resubmit(ctx: Context, ref: str) -> tuple[Run, bool]:
    """Submit a run that never reached the scheduler again: the same run, token and script.
    Returns the run and whether it was submitted now (False: its job was found by token)."""
    run = ctx.ledger.resolve(ref, cluster=None)
    if run.job_id or run.state not in (JobState.UNSUBMITTED, JobState.SUBMITTING):
        raise HpcjobError(
            f"Run {run.run_id} is {run.state.value}"
            + (f" as job {run.job_id}" if run.job_id else "")
            + "; only a run that never reached the scheduler can be resubmitted.",
            hint="To run the same job again, submit it anew (`hpcjob show` has its options).",
            exit_code=EXIT_USAGE,
        )
    if run.profile != ctx.profile.name:
        raise HpcjobError(
            f"Run {run.run_id} belongs to profile {run.profile!r}, not {ctx.profile.name!r}.",
            hint=f"hpcjob resubmit {run.run_id} --profile {run.profile}",
            exit_code=EXIT_USAGE,
        )
    with SubmitterLock(ctx.settings.home, run.run_id):
        found = ctx.scheduler.find_by_token(run.token)  # raises when it cannot look: no guess
        if found is not None:
            done = ctx.ledger.complete_submission(
                run.run_id, found, output_path(run, found), source="found by token"
            )
            return done, False
        if not ctx.ledger.claim_for_resubmit(run.run_id):
            raise HpcjobError(f"Run {run.run_id} changed meanwhile; see `hpcjob show`.")
        claimed = ctx.ledger.get_run(run.run_id)
        with staging(ctx, claimed):
            _restage(ctx, claimed)
        return hand_over(ctx, claimed), True


def _restage(ctx: Context, run: Run) -> None:
    """Write the run directory again from the ledger (a first attempt may have left nothing)."""
    shell = ctx.scheduler.shell
    staged = shell.exists(f"{run.run_dir}/run.json")
    if run.spec.get("program") and not staged:
        # The config copies and the code snapshot are not in the ledger: only a new submit has
        # them.
        raise HpcjobError(
            f"Run {run.run_id} runs your own code, and its files never reached {run.run_dir}.",
            hint="Submit it anew (the same `hpcjob submit …`); nothing of it was queued.",
        )
    files = code_files(workload_files())
    files["job.sh"] = (run.script.encode(), 0o755)
    if not staged:
        meta: dict[str, Any] = {
            "run_id": run.run_id,
            "token": run.token,
            "created_at": run.created_at,
            "resubmitted_at": utc_now(),
            "profile": run.profile,
            "scheduler": run.scheduler,
            "spec": run.spec,
            "script_sha256": run.script_hash,
        }
        files["run.json"] = (json.dumps(meta, indent=2).encode(), 0o644)
    shell.write_files(run.run_dir, files)
