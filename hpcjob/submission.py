"""Exactly-once submission: the run is in the ledger (SUBMITTING, with its token) before the
scheduler sees it, and every path out of that state goes through here.

- `SubmitterLock`: the submitting process holds an flock on `$HPCJOB_HOME/submitting/<run>.lock`
  while the run is SUBMITTING. The kernel drops it when the process dies (even by SIGKILL), so
  another hpcjob can tell a live submission from one a crash left behind, without waiting.
- `hand_over`: sbatch (or the embedded scheduler) with the token; after a failure whose outcome is
  not known (a timeout, a dropped connection) the token is looked up before anything is decided.
- `complete_submission`: what `refresh` (so `status`, `runs`, `show`, `wait`…) does with a run a
  crash left SUBMITTING: find its job by token and complete the record, or mark it UNSUBMITTED.
- `resubmit`: submit an UNSUBMITTED run again — same run, same token — after checking the token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjob.errors import HpcjobError
from hpcjob.jobstate import JobState
from hpcjob.scheduler import parse_utc, utc_now

if TYPE_CHECKING:
    from hpcjob.app import Context
    from hpcjob.ledger import Run

# A SUBMITTING run whose submitter is gone is concluded after this long without its job showing
# up: an sbatch the dead process had started may still be on its way to the controller.
SETTLE_S = 10
# Without a lock file to ask (a ledger moved from another machine) or after a failure whose
# outcome is unknown, wait longer than sbatch's own timeout (120 s) before concluding.
GRACE_S = 300
AMBIGUOUS = "outcome unknown"  # reason prefix of a run left SUBMITTING after an unclear failure


def _lock_path(home: Path, run_id: str) -> Path:
    return home / "submitting" / f"{run_id}.lock"


class SubmitterLock:
    """Held by the process submitting a run, for as long as the run may still be SUBMITTING."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.path = _lock_path(home, run_id)
        self._fd: int | None = None

    def __enter__(self) -> SubmitterLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise HpcjobError(
                f"Cannot write {self.path}: {exc.strerror}; nothing was submitted.",
                hint="hpcjob keeps its ledger and locks in HPCJOB_HOME: free some space or make "
                "it writable.",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HpcjobError(
                f"Another hpcjob process is submitting run {self.path.stem} right now.",
                hint="Wait for it to finish, then look with `hpcjob status`.",
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for a person looking (disk may be full)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def submitter_alive(home: Path, run_id: str) -> bool | None:
    """True while a process holds the run's lock, False when the lock file is left by a process
    that died (it is removed), None when there is no lock file to ask."""
    path = _lock_path(home, run_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)


# -- handing a recorded run to the scheduler --------------------------------------------------


def hand_over(ctx: Context, run: Run) -> Run:
    """Submit a recorded, staged SUBMITTING run with its token; record the job id.

    A rejection (Slurm said no) marks the run UNSUBMITTED. A failure whose outcome is unknown
    (sbatch timed out, the connection dropped while it ran) is never retried blindly: the token is
    looked up, and if the job is not (yet) there the run stays SUBMITTING for the next refresh.
    """
    from hpcjob.app import output_path

    scheduler = ctx.scheduler
    try:
        job_id = scheduler.submit(f"{run.run_dir}/job.sh", token=run.token, workdir=run.run_dir)
    except HpcjobError as exc:
        ambiguous = bool(getattr(scheduler, "last_submit_ambiguous", False))
        try:
            found = scheduler.find_by_token(run.token)
        except HpcjobError:
            found, ambiguous = None, True  # cannot look: not known either way
        if found is None:
            if not ambiguous:
                ctx.ledger.mark_unsubmitted(run.run_id, exc.message)
                raise
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
    """A submitted array's tasks as runs of their own (once: a recovery may come after)."""
    array = (run.spec.get("resources") or {}).get("array")
    if array and run.job_id and run.parent_run_id is None and not ctx.ledger.tasks(run.run_id):
        from hpcjob.spec import array_task_ids

        ctx.ledger.create_array_tasks(run, array_task_ids(array))
    return run


# -- completing what a crash left behind ------------------------------------------------------


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
    if job_id is None and getattr(scheduler, "accounting_off", None):
        job_id = _job_id_from_run_dir(ctx, run)  # squeue forgot it and sacct is not answering
    if job_id is not None:
        from hpcjob.app import output_path

        ctx.notes.append(
            f"Run {run.run_id} was left SUBMITTING by an interrupted hpcjob; found it by its "
            f"token as job {job_id}."
        )
        return ctx.ledger.complete_submission(
            run.run_id, job_id, output_path(run, job_id), source="found by token"
        )
    unclear = (run.reason or "").startswith(AMBIGUOUS)
    wait_s = SETTLE_S if alive is False and not unclear else GRACE_S
    age = (datetime.now(timezone.utc) - parse_utc(run.updated_at)).total_seconds()
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


# -- resubmitting ------------------------------------------------------------------------------


def resubmit(ctx: Context, ref: str) -> tuple[Run, bool]:
    """Submit a run that never reached the scheduler again: the same run, token and script.
    Returns the run and whether it was submitted now (False: its job was found by token)."""
    from hpcjob.app import output_path

    run = ctx.ledger.resolve(ref, cluster=None)
    if run.job_id or run.state not in (JobState.UNSUBMITTED, JobState.SUBMITTING):
        raise HpcjobError(
            f"Run {run.run_id} is {run.state.value}"
            + (f" as job {run.job_id}" if run.job_id else "")
            + "; only a run that never reached the scheduler can be resubmitted.",
            hint="To run the same job again, submit it anew (`hpcjob show` has its options).",
            exit_code=2,
        )
    if run.profile != ctx.profile.name:
        raise HpcjobError(
            f"Run {run.run_id} belongs to profile {run.profile!r}, not {ctx.profile.name!r}.",
            hint=f"hpcjob resubmit {run.run_id} --profile {run.profile}",
            exit_code=2,
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
        try:
            _restage(ctx, claimed)
        except (HpcjobError, OSError) as exc:
            ctx.ledger.mark_unsubmitted(run.run_id, f"staging the run directory failed: {exc}")
            raise HpcjobError(
                f"Could not stage {run.run_dir}: {exc}",
                hint="Check that the folder is writable and the disk is not full.",
            ) from exc
        return hand_over(ctx, claimed), True


def _restage(ctx: Context, run: Run) -> None:
    """Write the run directory again from the ledger (a first attempt may have left nothing)."""
    from hpcjob.resources import workload_files

    shell = ctx.scheduler.shell
    files = {f"workload/{name}": (data, 0o644) for name, data in workload_files().items()}
    files["job.sh"] = (run.script.encode(), 0o755)
    if not shell.exists(f"{run.run_dir}/run.json"):
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
