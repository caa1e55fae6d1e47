"""Watching a run: find it (brought up to date), wait for it to end, follow its output, read its
log, cancel it. The loops take their time from the context's clock, so tests drive them on a
fake clock; they ask the scheduler only at its own polling pace."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from hpcjob.errors import HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.harvest import harvest
from hpcjob.run.refresh import refresh
from hpcjob.run.requeue import due as requeue_due
from hpcjob.run.rundir import exit_status_path, output_path, rank_log_path
from hpcjob.shell import Shell

# How often a wait looks at the job's exit-status file (a file: it costs the scheduler nothing):
# closely in the first seconds, where a short job ends, then four times a second.
_FILE_TICK_EARLY_S = 0.02
_EARLY_S = 3.0
_FILE_TICK_S = 0.25
# Once the file is there, Slurm reports the end within moments: it is asked again after 0.1 s,
# then doubling up to the poll interval (a few extra squeue calls, once per job).
_ENDING_TICK_S = 0.1
# `follow` reads new output five times a second (a file: the scheduler is not asked), so a line
# is shown within 0.2 s of the job writing it.
_FOLLOW_TICK_S = 0.2
# `wait` retries failed polls (backing off as usual) for this long before it gives up.
_POLL_FAILURES_S = 30
# Reads of a job's output are bounded: `follow` takes it a chunk at a time, `logs --tail` seeks
# back from the end, setup-env keeps the end of its log.
_FOLLOW_CHUNK = 8 * 1024 * 1024
_TAIL_BLOCK = 1024 * 1024
TAIL_MAX = 16 * 1024 * 1024


def resolve(ctx: Context, ref: str) -> Run:
    """A run by job id, run id or `last`, brought up to date if it is still unfinished (or
    still waits for its accounting record)."""
    run = ctx.ledger.resolve(ref, cluster=None)
    if run.profile == ctx.profile.name and (
        not run.state.is_final or (run.scheduler == "slurm" and _awaits_accounting(ctx, run))
    ):
        refresh(ctx)
        run = ctx.ledger.get_run(run.run_id)
    return run


def _awaits_accounting(ctx: Context, run: Run) -> bool:
    return any(r.run_id == run.run_id for r in ctx.ledger.awaiting_accounting(ctx.profile.name))


def wait(
    ctx: Context,
    run: Run,
    on_tick: Callable[[Run], None] | None = None,
    timeout_s: float | None = None,
) -> Run:
    """Refresh until the run is final, backing off from the start interval up to the cap. Other
    runs' late accounting records are left to the next `status`; once the job's exit-status
    file is there, squeue's word that it ended suffices (sacct's record follows later)."""
    clock = ctx.clock
    interval = ctx.scheduler.poll_start_s
    ending = _ENDING_TICK_S  # the next pause once the exit-status file is there
    started = clock.monotonic()
    failing_since: float | None = None  # a controller restart or a network blip is waited out
    seen = False  # the job's exit-status file is there: its script has ended
    while True:
        job_before = run.job_id
        try:
            watched = frozenset({run.run_id})
            refresh(ctx, watched, ended=watched if seen else frozenset(), late_accounting=False)
            failing_since = None
        except HpcjobError as exc:
            failing_since = failing_since or clock.monotonic()
            if clock.monotonic() - failing_since > _POLL_FAILURES_S:
                raise HpcjobError(
                    f"{exc.message}\nPolling has failed for over {_POLL_FAILURES_S} s; gave up "
                    f"waiting. The ledger keeps run {run.run_id} as it was.",
                    hint=exc.hint or f"Try again later: hpcjob wait {run.run_id}",
                ) from exc
        run = ctx.ledger.get_run(run.run_id)
        if on_tick is not None:
            on_tick(run)
        if run.state.is_final and not requeue_due(ctx, run):
            return run
        if run.job_id != job_before and job_before:  # resubmitted (--auto-requeue): a new job
            interval, ending = ctx.scheduler.poll_start_s, _ENDING_TICK_S
        if failing_since is not None:
            clock.sleep(interval)
        elif seen := ctx.scheduler.shell.exists(exit_status_path(run)):
            # The job's script has ended (its EXIT trap wrote the file) and the scheduler will
            # say so within moments (Slurm keeps a job COMPLETING briefly): ask again soon.
            clock.sleep(min(ending, interval))
            ending *= 2
        else:
            early = clock.monotonic() - started < _EARLY_S
            tick = _FILE_TICK_EARLY_S if early else _FILE_TICK_S
            seen = _sleep_until_due(ctx, run, interval, tick)
        interval = min(interval * 2, ctx.scheduler.poll_cap_s)
        if timeout_s is not None and clock.monotonic() - started > timeout_s:
            raise HpcjobError(
                f"Gave up waiting for run {run.run_id} after {timeout_s:g} s; "
                f"it is {run.state.value}.",
                hint=f"It keeps running; see `hpcjob status` or `hpcjob wait {run.run_id}`.",
            )


def _sleep_until_due(ctx: Context, run: Run, interval: float, tick: float) -> bool:
    """Sleep until the next poll is due — or until the job's exit-status file appears (looked
    at every `tick`), which ends a wait as soon as the job has ended; whether it did."""
    clock = ctx.clock
    deadline = clock.monotonic() + interval
    path = exit_status_path(run)
    shell = ctx.scheduler.shell
    while clock.monotonic() < deadline:
        clock.sleep(min(tick, deadline - clock.monotonic()))
        if shell.exists(path):
            return True
    return False


def follow(ctx: Context, run: Run, offset: int, emit: Callable[[str], None]) -> Run:
    """Hand the job's new output to `emit` as it comes, until the job has ended and everything
    it wrote is out; then harvest it. New bytes are read by offset five times a second; the
    scheduler is asked about the state only at its own pace (every 0.4 s embedded, every 4 s on
    Slurm).
    A run `--auto-requeue` resubmits goes on with the new job's own output, under a header."""
    clock = ctx.clock
    state_every = 2 * ctx.scheduler.poll_start_s
    asked = clock.monotonic()
    while True:
        chunk = read_log(ctx, run, offset, _FOLLOW_CHUNK)
        if chunk:
            offset += len(chunk)
            emit(chunk.decode("utf-8", errors="replace"))
        if run.state.is_final and not chunk:
            harvest(ctx, run)
            return run
        if len(chunk) == _FOLLOW_CHUNK:
            continue  # more is waiting: no pause
        clock.sleep(_FOLLOW_TICK_S)
        if not run.state.is_final and clock.monotonic() - asked >= state_every:
            asked = clock.monotonic()
            refresh(ctx, watched=frozenset({run.run_id}))
            fresh = ctx.ledger.get_run(run.run_id)
            if fresh.job_id and fresh.job_id != run.job_id:  # requeued: a new job, a new file
                while rest := read_log(ctx, run, offset, _FOLLOW_CHUNK):
                    offset += len(rest)
                    emit(rest.decode("utf-8", errors="replace"))
                emit(f"\n{_attempt_header(ctx, fresh)}\n")
                offset = 0
            run = fresh


def _attempt_header(ctx: Context, run: Run) -> str:
    """The header of a run's current attempt (its latest job)."""
    count = len(ctx.ledger.attempts(run.run_id)) + 1
    return AttemptLog(count, count, run.job_id, run.state.value, b"").header


@dataclass(frozen=True)
class AttemptLog:
    """What one attempt of a run (one scheduler job) wrote; `of` attempts in all."""

    attempt: int
    of: int
    job_id: str | None
    state: str
    data: bytes
    size: int | None = None  # where the file ended (data may be its tail only)
    cut: int = 0  # bytes before `data` that were not read

    @property
    def label(self) -> str:
        return f"attempt {self.attempt} of {self.of}: job {self.job_id}, {self.state}"

    @property
    def header(self) -> str:
        """The line above its output where several attempts are shown, as `tail` heads files."""
        return f"==> {self.label} <=="


def attempt_logs(
    ctx: Context, run: Run, tail: int | None = None, rank: int | None = None
) -> list[AttemptLog]:
    """Each attempt's output, oldest first: an `--auto-requeue` run's ended jobs (each wrote its
    own `slurm-<job id>.out` in the run directory), then the current job; with `rank`, that
    rank's own output in each (`rank_log_path`). With `tail`, only the end of each file that
    holds its last `tail` lines is read (at most TAIL_MAX bytes)."""
    past = ctx.ledger.attempts(run.run_id)
    shell = ctx.scheduler.shell
    logs = []
    current = AttemptLog(len(past) + 1, len(past) + 1, run.job_id, run.state.value, b"")
    paths = [output_path(run, e.job_id) if e.job_id else None for e in past]
    paths.append(run.output_path)
    if rank is not None:
        job_ids = [e.job_id for e in past] + [run.job_id]
        paths = [rank_log_path(run, job, rank) if job else None for job in job_ids]
    for log, path in zip(
        [AttemptLog(e.attempt, len(past) + 1, e.job_id, e.state, b"") for e in past] + [current],
        paths,
        strict=True,
    ):
        if not path or shell.size(path) is None:
            logs.append(log)
        elif tail is None:
            logs.append(dataclasses.replace(log, data=shell.read_bytes(path)))
        else:
            data, cut, size = read_tail(shell, path, tail)
            logs.append(dataclasses.replace(log, data=data, size=size, cut=cut))
    return logs


def world_size(run: Run) -> int:
    """How many ranks the run's job started: nodes × processes per node, with a launcher."""
    res = run.spec.get("resources", {})
    if res.get("launcher", "none") == "none":
        return 1
    return int(res.get("nodes") or 1) * int(res.get("procs_per_node") or 1)


def read_tail(
    shell: Shell, path: str, lines: int, max_bytes: int = TAIL_MAX
) -> tuple[bytes, int, int]:
    """The end of a file holding its last `lines` lines, read by seeking back from its end a
    block at a time, never more than `max_bytes`: (data, bytes before it not read, file size)."""
    size = shell.size(path) or 0
    start, data = size, b""
    while start > 0 and data.count(b"\n") <= lines and size - start < max_bytes:
        step = min(_TAIL_BLOCK, start, max_bytes - (size - start))
        start -= step
        data = shell.read_bytes(path, start, step) + data
    return data, start, size


def read_log_end(ctx: Context, run: Run, max_bytes: int = TAIL_MAX) -> str:
    """The job's output as text, only its last `max_bytes` (with a note saying what was cut)."""
    if not run.output_path or ctx.scheduler.shell.size(run.output_path) is None:
        return ""
    data, cut, _ = read_tail(ctx.scheduler.shell, run.output_path, 2**62, max_bytes)
    text = data.decode("utf-8", errors="replace")
    return f"[hpcjob: the first {cut} bytes of the output are not shown]\n{text}" if cut else text


def read_log(ctx: Context, run: Run, offset: int = 0, limit: int | None = None) -> bytes:
    """The job's output from `offset` (at most `limit` bytes); empty while the job has not
    written anything."""
    if not run.output_path:
        return b""
    shell = ctx.scheduler.shell
    if shell.size(run.output_path) is None:
        return b""
    return shell.read_bytes(run.output_path, offset, limit)


def cancel(ctx: Context, run: Run) -> Run:
    if run.state.is_final:
        raise HpcjobError(
            f"Run {run.run_id} (job {run.job_id}) already ended: {run.state.value}.",
            exit_code=1,
        )
    if not run.job_id:
        raise HpcjobError(f"Run {run.run_id} has no job id yet; nothing to cancel.")
    ctx.scheduler.cancel([run.job_id])
    refresh(ctx)
    return ctx.ledger.get_run(run.run_id)
