"""Refresh: bring every unfinished run of the profile up to date with ONE scheduler query.

The steps, in the order `refresh` takes them:
1. recover — runs a crash left SUBMITTING are completed by their token or concluded (recovery.py);
2. poll — one query for every unfinished job, and for jobs whose accounting record is late;
3. record — what the scheduler (or a job's exit-status file) says goes into the ledger; runs that
   just ended get their output harvested once (harvest.py), running ones where that is cheap;
4. late accounting — the sacct record (CPU time, peak memory) of runs that ended before it came;
5. requeue — `--auto-requeue` runs that ended in a way a resubmission fixes (requeue.py);
6. arrays — each array's state from its tasks';
7. login runs — setup-env runs on the login node whose hpcjob is gone (login.py).
A job the scheduler does not report is left as it was: missing is never taken for done.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from hpcjob.jobstate import JobInfo, JobState
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context, cluster_key, cluster_key_resolved
from hpcjob.run.requeue import requeue


def refresh(
    ctx: Context,
    watched: frozenset[str] = frozenset(),
    *,
    ended: frozenset[str] = frozenset(),
    late_accounting: bool = True,
) -> list[Run]:
    """Refresh the profile's runs (see the module docstring); returns the runs it looked at.
    Running runs' metrics are read on each refresh only where that is cheap (jobs on this
    machine) or for the runs being `watched` (a wait, a follow). A wait names the runs whose
    exit-status file it saw (`ended`: the scheduler's quick word on them suffices) and leaves
    other runs' late accounting records to the next `status` (`late_accounting=False`)."""
    ledger = ctx.ledger
    profile = ctx.profile.name

    def late_runs() -> list[Run]:
        return ledger.awaiting_accounting(profile) if late_accounting else []

    pending, late = ledger.unfinished(profile), late_runs()
    if (pending or late) and not cluster_key_resolved(ctx):
        cluster_key(ctx)  # learning it may move these runs to the cluster's name: read again
        pending, late = ledger.unfinished(profile), late_runs()
    updated: list[Run] = []
    if pending or late:
        pending = _recover(ctx, pending)
        polled, late, infos = _poll(ctx, pending, late, ended)
        cheap = ctx.scheduler.jobs_run_here
        updated = [
            _record(ctx, run, infos.get(run.job_id or ""), cheap or run.run_id in watched)
            for run in polled
        ]
        _record_accounting(ctx, late, infos)
    requeued = requeue(ctx)
    updated = [requeued.get(run.run_id, run) for run in updated]
    updated += _settle_arrays(ctx, [r for r in pending if r.is_array])
    updated += _settle_login_runs(ctx, [r for r in pending if r.scheduler == "login"])
    return updated


# Steps 1, 3 and 7 load their modules only when a run needs them: `hpcjob status` with nothing
# to recover, record or harvest stays as quick to start as the commands that never refresh.


def _recover(ctx: Context, pending: list[Run]) -> list[Run]:
    if not any(run.state == JobState.SUBMITTING and not run.job_id for run in pending):
        return pending
    from hpcjob.run.recovery import recover

    return [recover(ctx, run) for run in pending]


def _settle_login_runs(ctx: Context, runs: list[Run]) -> list[Run]:
    if not runs:
        return []
    from hpcjob.run.login import settle_login_runs

    return settle_login_runs(ctx, runs)


def _poll(
    ctx: Context, pending: list[Run], late: list[Run], ended: frozenset[str]
) -> tuple[list[Run], list[Run], dict[str, JobInfo]]:
    """The runs this scheduler answers for, and its one answer about all of them."""
    scheduler = ctx.scheduler
    key = cluster_key(ctx)
    polled = [r for r in pending if r.job_id and r.cluster == key and not r.is_array]
    late = [r for r in late if r.cluster == key]
    known_ended = [r.job_id for r in polled if r.job_id and r.run_id in ended]
    infos = scheduler.poll([r.job_id for r in polled + late if r.job_id], ended=known_ended)
    if scheduler.accounting_off:
        ctx.notes.append(
            f"Slurm's accounting (sacct) is not answering ({scheduler.accounting_off}); states "
            "come from squeue and the jobs' exit-status files until it is back."
        )
    return polled, late, infos


def _record(ctx: Context, run: Run, info: JobInfo | None, harvest_running: bool) -> Run:
    """Store what the scheduler (or the job's exit-status file) says of one run."""
    from hpcjob.run.harvest import harvest

    info = _settle(ctx, run, info)
    if info is None:
        return run  # unknown to the scheduler (yet): never taken for done
    if info.facts:
        ctx.ledger.set_facts(run.run_id, info.facts)
    fresh = run
    if (info.state, info.node, info.started_at, info.ended_at) != (
        run.state,
        run.node,
        run.started_at,
        run.ended_at,
    ):
        fresh = ctx.ledger.record_info(run, info, ctx.scheduler.name)
    running = fresh.state == JobState.RUNNING and harvest_running
    if running or (fresh.state.is_final and not run.state.is_final):
        harvest(ctx, fresh)
    return fresh


def _settle(ctx: Context, run: Run, info: JobInfo | None) -> JobInfo | None:
    """Fill what the scheduler could not say from the job's exit-status file.

    A job the scheduler no longer reports, or reports ended without an exit code or a signal
    (sacct's record lags a few seconds behind squeue, or accounting is off), takes its exit code
    from the file; without the file such a job is still COMPLETING. A job killed by a signal
    has no exit code, and one that never started has no file.
    """
    if info is not None and not (
        info.state.is_final and info.exit_code is None and not info.signal
    ):
        return info
    from_file = exit_status_info(ctx, run)
    if info is None or from_file is None:
        if info is not None and info.accounting_pending:
            return dataclasses.replace(info, state=JobState.COMPLETING)
        return info if info is not None else from_file
    return dataclasses.replace(
        info, exit_code=from_file.exit_code, ended_at=info.ended_at or from_file.ended_at
    )


def exit_status_info(ctx: Context, run: Run) -> JobInfo | None:
    """How a job the scheduler no longer reports ended, from the file its script's EXIT trap
    wrote — where accounting is off, this is the only record."""
    from hpcjob.run.rundir import exit_status_path

    shell = ctx.scheduler.shell
    path = exit_status_path(run)
    if not run.job_id or not shell.exists(path):
        return None
    words = shell.read_bytes(path, 0, 200).decode(errors="replace").split()
    if not words or not words[0].lstrip("-").isdigit():
        return None
    code = int(words[0])
    reason = "from the job's exit-status file (the scheduler no longer reports it)"
    failed = failed_rank(words[2:])
    return JobInfo(
        job_id=run.job_id,
        state=JobState.COMPLETED if code == 0 else JobState.FAILED,
        exit_code=code,
        ended_at=words[1] if len(words) > 1 else None,
        reason=f"{failed}; {reason}" if failed else reason,
    )


def failed_rank(note: Sequence[str]) -> str | None:
    """`rank 3 on tcn2 failed first (exit 137)` from the words a multi-process job's script adds
    to its exit-status file (`rank=3 host=tcn2 rank_exit=137`, workloads/rank.py)."""
    pairs = dict(word.split("=", 1) for word in note if "=" in word)
    if "rank" not in pairs:
        return None
    host = f" on {pairs['host']}" if pairs.get("host") else ""
    code = f" (exit {pairs['rank_exit']})" if pairs.get("rank_exit") else ""
    return f"rank {pairs['rank']}{host} failed first{code}"


def _record_accounting(ctx: Context, late: list[Run], infos: dict[str, JobInfo]) -> None:
    """The accounting record of runs that ended before sacct had it (asked for within an hour)."""
    for run in late:
        info = infos.get(run.job_id or "")
        if info is not None and info.facts:
            ctx.ledger.set_facts(run.run_id, info.facts)
            if info.state.is_final and info.state != run.state:
                ctx.ledger.record_info(run, info, "sacct")


def _settle_arrays(ctx: Context, parents: list[Run]) -> list[Run]:
    """Each array's parent run takes the state its tasks' states add up to."""
    out = []
    for parent in parents:
        info = array_info(parent, ctx.ledger.tasks(parent.run_id))
        if info is not None and info.state != parent.state:
            parent = ctx.ledger.record_info(parent, info, "array tasks")
        out.append(parent)
    return out


def array_info(parent: Run, tasks: Sequence[Run]) -> JobInfo | None:
    """An array's state from its tasks': running while any runs; once all ended, COMPLETED when
    every task that started COMPLETED (and one did). A task cancelled before it started is the
    user's decision, not a failure: it is only counted in the reason. Otherwise the state most
    tasks that ran ended in other than COMPLETED (FAILED, TIMEOUT, CANCELLED while running…);
    CANCELLED when no task started at all."""
    if not tasks or not parent.job_id:
        return None
    starts = [t.started_at for t in tasks if t.started_at]
    if all(t.state.is_final for t in tasks):
        ran = [t.state for t in tasks if not t.cancelled_before_start]
        bad = [s for s in ran if s != JobState.COMPLETED]
        state = Counter(bad).most_common(1)[0][0] if bad else JobState.COMPLETED
        ends = [t.ended_at for t in tasks if t.ended_at]
        return JobInfo(
            parent.job_id,
            state if ran else JobState.CANCELLED,
            started_at=min(starts) if starts else None,
            ended_at=max(ends) if ends else None,
            reason=_array_reason(len(tasks), ran),
        )
    # A task cancelled before it started does not make the array running.
    active = any(
        t.state in (JobState.RUNNING, JobState.COMPLETING)
        or (t.state.is_final and not t.cancelled_before_start)
        for t in tasks
    )
    return JobInfo(
        parent.job_id,
        JobState.RUNNING if active else JobState.PENDING,
        started_at=min(starts) if starts else None,
    )


def _array_reason(count: int, ran: Sequence[JobState]) -> str | None:
    """`3 of 4 tasks COMPLETED; 1 FAILED; 1 cancelled before it started`; None when all
    COMPLETED."""
    unstarted = count - len(ran)
    if not ran:
        return f"all {count} tasks cancelled before they started"
    done = sum(s == JobState.COMPLETED for s in ran)
    if done == count:
        return None
    parts = [f"{done} of {count} tasks COMPLETED"]
    failed = Counter(s for s in ran if s != JobState.COMPLETED)
    parts += [f"{n} {state.value}" for state, n in failed.most_common()]
    if unstarted:
        parts.append(f"{unstarted} cancelled before {'it' if unstarted == 1 else 'they'} started")
    return "; ".join(parts)
