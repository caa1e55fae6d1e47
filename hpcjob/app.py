"""The operations behind the commands: prepare, submit, refresh, wait, read logs, cancel.

Each takes a `Context` (settings, profile, and lazily the ledger and the scheduler of one
invocation) and returns plain values; the CLI only parses options and prints what comes back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcjob import __version__
from hpcjob.config import Profile, Settings, load_settings, resolve_profile
from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.joblog import JobOutput, headline, parse_metrics_jsonl, parse_output
from hpcjob.jobstate import JobState
from hpcjob.ledger import Ledger, NewRun, Run
from hpcjob.render import RenderContext, render_script, script_hash, template_dirs
from hpcjob.resources import workload_files
from hpcjob.scheduler import JobInfo, Scheduler, parse_utc, scheduler_for, utc_now
from hpcjob.spec import (
    WORKLOADS,
    JobSpec,
    SpecRequest,
    build_spec,
    check_against_partitions,
)

if TYPE_CHECKING:
    from hpcjob.cost import Cost, Rate
    from hpcjob.provenance import SubmitProvenance
    from hpcjob.sweep import Sweep

PCAM_SPLIT_FILE = "camelyonpatch_level_2_split_{split}_{xy}.h5"
# Files a run directory holds that are hpcjob's own, not the workload's artifacts.
_OWN_FILES = {"job.sh", "run.json", "metrics.jsonl"}


@dataclass
class Context:
    """One invocation: where hpcjob keeps its files, the profile, the ledger and the scheduler."""

    settings: Settings
    profile: Profile
    notes: list[str] = field(default_factory=list)  # said once on stderr at the end
    _ledger: Ledger | None = field(default=None, repr=False)
    _scheduler: Scheduler | None = field(default=None, repr=False)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.ledger_path)
        return self._ledger

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = scheduler_for(self.profile, self.settings)
        return self._scheduler

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        close_shell = getattr(getattr(self._scheduler, "shell", None), "close", None)
        if close_shell is not None:
            close_shell()  # the one SSH connection of this invocation


def open_context(profile_flag: str | None = None, flags: dict[str, Any] | None = None) -> Context:
    settings = load_settings()
    return Context(settings, resolve_profile(settings, profile_flag=profile_flag, flags=flags))


# -- prepare and submit -----------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A validated, rendered job that has not touched the ledger or the scheduler."""

    spec: JobSpec
    new_run: NewRun
    script: str
    # Kept beside the spec in the ledger and in run.json: `sweep`, `rerun_of` (see sweep.py).
    extra: dict[str, Any] = field(default_factory=dict)
    # The workload code to stage; None: this hpcjob's own (a rerun reuses its run's snapshot).
    workload: dict[str, bytes] | None = None


def prepare(
    ctx: Context,
    request: SpecRequest,
    *,
    check_data: bool = True,
    check_cluster: bool = True,
    sweep: Sweep | None = None,
    workload: dict[str, bytes] | None = None,
    extra: dict[str, Any] | None = None,
) -> Prepared:
    """Fill the request from the profile, validate it (against the live cluster's partitions
    unless `check_cluster` is off, as for `render`), render the script."""
    profile = ctx.profile
    local = profile.scheduler == "local"
    after = request.after
    if after is not None:
        # --after takes a run id or `last` too; Slurm needs the job id. A job id the ledger does
        # not know (submitted by hand) stays as given; build_spec checks its form (exit 2).
        try:
            after = ctx.ledger.resolve(after).job_id or after
        except HpcjobError:
            after = request.after
    data_dir = request.data_dir or profile.get("data_dir")
    if data_dir and not profile.get("host"):
        data_dir = os.path.abspath(os.path.expanduser(data_dir))  # the job runs elsewhere (cwd)
    filled = SpecRequest(
        **{
            **request.__dict__,
            "partition": request.partition or profile.partitions.get(request.workload),
            "after": after,
            "account": request.account or profile.get("account"),
            "data_dir": data_dir,
        }
    )
    spec = build_spec(filled)
    if sweep is not None:
        spec = sweep.apply(spec)  # the swept arguments are each task's own
    if check_data and local and spec.data_dir:
        check_local_data(spec)
    if check_cluster:
        partitions = cached_partitions(ctx)
        if partitions is not None:
            check_against_partitions(spec, partitions)
    # `render` (check_cluster off) shows `~` rather than connect to a remote login node.
    root = run_root(ctx, connect=check_cluster)
    new = NewRun(
        profile=profile.name,
        cluster="",  # filled in at submit, when the scheduler is known
        scheduler=profile.scheduler,
        workload=spec.workload,
        spec=spec.to_dict(),
        script="",
        script_hash="",
        run_dir="",
    )
    run_dir = f"{root.rstrip('/')}/{new.run_id}"
    extras = dict(extra or {})
    if sweep is not None:
        sweep = dataclasses.replace(sweep, sweep_id=sweep.sweep_id or new.run_id)
        extras["sweep"] = sweep.to_dict()
    render_ctx = RenderContext(
        run_id=new.run_id,
        token=new.token,
        run_dir=run_dir,
        modules=profile.modules,
        venv=profile.get("venv"),
        # With a venv, the job runs the venv's own `python` (the profile's `python` made it).
        python="python" if profile.get("venv") else str(profile.get("python") or "python3"),
        task_args=sweep.task_argv(spec.workload) if sweep is not None else (),
    )
    dirs = template_dirs([profile.get("template_dir"), ctx.settings.user_template_dir])
    script = render_script(spec, render_ctx, dirs)
    new = NewRun(
        **{
            **new.__dict__,
            "spec": {**spec.to_dict(), **extras},
            "script": script,
            "script_hash": script_hash(script),
            "run_dir": run_dir,
        }
    )
    return Prepared(spec=spec, new_run=new, script=script, extra=extras, workload=workload)


def run_root(ctx: Context, connect: bool = True) -> str:
    """Where the profile's run directories live, as an absolute path on the scheduler's machine:
    Slurm reads `#SBATCH --output` without a shell. A remote home is only known by connecting."""
    root = str(ctx.profile.get("remote_root") or ctx.settings.runs_dir)
    if not ctx.profile.get("host"):
        return os.path.abspath(os.path.expanduser(root))
    return ctx.scheduler.shell.expand_home(root) if connect else root


_PARTITIONS_TTL_S = 300


def cached_partitions(ctx: Context, refresh: bool = False) -> list[Any] | None:
    """The scheduler's partitions from one sinfo, kept for a few minutes per profile."""
    if ctx.profile.scheduler == "local":
        return None
    from hpcjob.slurm import Partition

    cache = ctx.settings.home / "cache" / f"partitions-{ctx.profile.name}.json"
    if not refresh and cache.exists() and time.time() - cache.stat().st_mtime < _PARTITIONS_TTL_S:
        try:
            return [Partition(**item) for item in json.loads(cache.read_text())]
        except (ValueError, TypeError):
            pass  # a damaged cache is just asked for again
    partitions = ctx.scheduler.partitions()
    if partitions is None:
        return None
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(json.dumps([dataclasses.asdict(p) for p in partitions]))
        os.replace(tmp, cache)
    except OSError:  # a full or read-only HPCJOB_HOME: the cache is only a saving
        tmp.unlink(missing_ok=True)
    return partitions


def partition_row(part: Any) -> dict[str, Any]:
    """A partition as `hpcjob partitions` shows it (same keys in the table and in --json)."""
    from hpcjob.spec import format_memory, format_time

    gpus = ", ".join(f"{n}× {kind}" for kind, n in sorted(part.gpus_per_node.items()))
    return {
        "name": part.name + ("*" if part.is_default else ""),  # sinfo marks the default so
        "partition": part.name,
        "default": part.is_default,
        "state": part.state,
        "time_limit": format_time(part.max_time_s) if part.max_time_s else "unlimited",
        "time_limit_s": part.max_time_s,
        "nodes": part.nodes,
        "cpus_per_node": part.cpus_per_node,
        "mem_per_node": format_memory(part.mem_mb),
        "mem_mb": part.mem_mb,
        "gpus": gpus or "-",
        "gpus_per_node": part.gpus_per_node,
    }


def check_local_data(spec: JobSpec) -> None:
    """The PCAM files must exist when the job runs on this machine."""
    assert spec.data_dir is not None
    folder = Path(spec.data_dir)
    needed = [PCAM_SPLIT_FILE.format(split=s, xy=xy) for s in ("train", "valid") for xy in "xy"]
    if not folder.is_dir():
        problem = f"the data directory {folder} does not exist"
    else:
        missing = [name for name in needed if not (folder / name).is_file()]
        if not missing:
            return
        problem = f"{folder} lacks {', '.join(missing)}"
    raise HpcjobError(
        f"Cannot run {spec.workload}: {problem}.",
        hint="Point --data-dir at the PCAM HDF5 files, or make a small synthetic set: "
        "python workloads/synth.py data/pcam-synth (the README's `make demo` does this).",
        exit_code=EXIT_USAGE,
    )


def run_json(
    ctx: Context, prepared: Prepared, origin: SubmitProvenance | None = None
) -> dict[str, Any]:
    """What `run.json` in the run directory holds: enough to know and rerun the run."""
    return {
        "run_id": prepared.new_run.run_id,
        "token": prepared.new_run.token,
        "created_at": utc_now(),
        "hpcjob_version": __version__,
        "profile": ctx.profile.name,
        "scheduler": ctx.profile.scheduler,
        "spec": {**prepared.spec.to_dict(), **prepared.extra},
        "script_sha256": prepared.new_run.script_hash,
        "workload_sha256": workload_hash(prepared.workload),
        "project_git": origin.meta["git"] if origin else project_git(Path.cwd()),
        **({"provenance": origin.meta} if origin else {}),
    }


def workload_hash(files: dict[str, bytes] | None = None) -> str:
    digest = hashlib.sha256()
    for name, data in sorted((workload_files() if files is None else files).items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


def project_git(folder: Path) -> dict[str, Any] | None:
    """The user's project commit, branch and dirty flag (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(status),
    }


def submit(
    ctx: Context, prepared: Prepared, auto_requeue: int = 0, project: Path | None = None
) -> Run:
    """Record the run, stage its directory, hand it to the scheduler, record the job id.

    The run is in the ledger (SUBMITTING, with its token) before the scheduler sees it, so a
    crash in between is found and completed by the next refresh.
    """
    from hpcjob.submission import SubmitterLock, add_array_tasks, hand_over

    scheduler = ctx.scheduler
    new = NewRun(**{**prepared.new_run.__dict__, "cluster": scheduler.cluster})
    # The lock says "a live process is submitting this run" to any other hpcjob (submission.py).
    with SubmitterLock(ctx.settings.home, new.run_id):
        run = ctx.ledger.create_run(new)
        if auto_requeue:
            from hpcjob.requeue import set_limit

            set_limit(ctx.ledger, run.run_id, auto_requeue)
        try:
            origin = record_origin(ctx, run, prepared, project)  # provenance, SBU estimate
            stage(scheduler, prepared, run_json(ctx, prepared, origin), origin)
        except (HpcjobError, OSError) as exc:
            reason = f"staging the run directory failed: {exc}"
            ctx.ledger.mark_unsubmitted(run.run_id, reason)
            raise HpcjobError(
                f"Could not stage {new.run_dir}: {exc}",
                hint="Check that the folder is writable and the disk is not full.",
            ) from exc
        run = hand_over(ctx, run)  # sbatch with the token; unclear failures checked by token
        return add_array_tasks(ctx, run)


def stage(
    scheduler: Scheduler, prepared: Prepared, meta: dict[str, Any], origin: SubmitProvenance
) -> None:
    """Create the run directory (before submitting: Slurm fails a job whose output dir is
    missing) and write the script, run.json, a snapshot of the workload code and the git diff
    of the project it was submitted from, if any."""
    from hpcjob.provenance import DIFF_PATH

    # Private to the user (shells make new folders 0700): on a shared cluster others must not
    # read a run's script, output, metrics or checkpoints. Everything the job writes lands inside.
    # One write for all files: over SSH that is one command instead of ~5 round trips per file.
    code = prepared.workload or workload_files()
    files = {f"workload/{name}": (data, 0o644) for name, data in code.items()}
    files["run.json"] = (json.dumps(meta, indent=2).encode(), 0o644)
    files["job.sh"] = (prepared.script.encode(), 0o755)
    if origin.diff is not None:
        files[DIFF_PATH] = (origin.diff, 0o644)
    scheduler.shell.write_files(prepared.new_run.run_dir, files)


def output_path(run: Run, job_id: str) -> str:
    return f"{run.run_dir}/slurm-{job_id}.out"


# -- watch ------------------------------------------------------------------------------------


def refresh(ctx: Context, watched: frozenset[str] = frozenset()) -> list[Run]:
    """Bring every unfinished run of the profile up to date with ONE scheduler query.

    Runs that just ended get their output harvested (metrics, facts, artifacts) once; finished
    runs are not asked about again, except once more for the accounting record (CPU time, peak
    memory) when they ended before sacct had it. A job the scheduler does not report is left as
    it was: missing is never taken for done. Running runs' metrics are read on each refresh only
    where that is cheap (the embedded scheduler) or for the runs being `watched` (a wait).
    """
    ledger = ctx.ledger
    from hpcjob.requeue import requeue_left_behind

    requeue_left_behind(ctx)  # --auto-requeue runs that ended but were not resubmitted yet
    pending = ledger.unfinished(ctx.profile.name)
    late = ledger.awaiting_accounting(ctx.profile.name)
    if not pending and not late:
        return []
    scheduler = ctx.scheduler
    pending = [_complete_submission(ctx, run) for run in pending]
    polled = [r for r in pending if r.job_id and r.cluster == scheduler.cluster and not r.is_array]
    late = [r for r in late if r.cluster == scheduler.cluster]
    infos = scheduler.poll([r.job_id for r in polled + late if r.job_id])
    accounting_off = getattr(scheduler, "accounting_off", None)
    if accounting_off:
        ctx.notes.append(
            f"Slurm's accounting (sacct) is not answering ({accounting_off}); states come from "
            "squeue and the jobs' exit-status files until it is back."
        )
    cheap = scheduler.name == "local"
    updated = [
        _apply(ctx, run, infos.get(run.job_id or ""), cheap or run.run_id in watched)
        for run in polled
    ]
    if any(r.max_requeues for r in updated):
        from hpcjob.requeue import requeue_ended

        updated = requeue_ended(ctx, updated)  # submit --auto-requeue: TIMEOUT → resubmitted
    for run in late:
        info = infos.get(run.job_id or "")
        if info is not None and info.facts:
            ledger.set_facts(run.run_id, info.facts)
            if info.state.is_final and info.state != run.state:
                ledger.record_info(run, info, "sacct")
    for parent in (r for r in pending if r.is_array):
        info = array_info(parent, ledger.tasks(parent.run_id))
        if info is not None and info.state != parent.state:
            parent = ledger.record_info(parent, info, "array tasks")
        updated.append(parent)
    login = [r for r in pending if r.scheduler == "login"]
    if login:  # setup-env on the login node: ended here only when its hpcjob was killed
        from hpcjob.envsetup import settle_login_runs

        updated.extend(settle_login_runs(ctx, login))
    return updated


def _apply(ctx: Context, run: Run, info: JobInfo | None, harvest_running: bool) -> Run:
    """Store what the scheduler (or the job's exit-status file) says of one run."""
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

    A job the scheduler no longer reports, or reports ended without an exit code (sacct's record
    lags a few seconds behind squeue, or accounting is off), takes its exit code from the file;
    without the file such a job is still COMPLETING.
    """
    if info is not None and not (info.state.is_final and info.exit_code is None):
        return info
    from_file = exit_status_info(ctx, run)
    if info is None or from_file is None:
        if info is not None and info.accounting_pending:
            return dataclasses.replace(info, state=JobState.COMPLETING)
        return info if info is not None else from_file
    return dataclasses.replace(
        info, exit_code=from_file.exit_code, ended_at=info.ended_at or from_file.ended_at
    )


def array_info(parent: Run, tasks: list[Run]) -> JobInfo | None:
    """An array's state from its tasks': running while any runs, COMPLETED when all did."""
    if not tasks or not parent.job_id:
        return None
    states = [t.state for t in tasks]
    starts = [t.started_at for t in tasks if t.started_at]
    if all(s.is_final for s in states):
        bad = [s for s in states if s != JobState.COMPLETED]
        state = Counter(bad).most_common(1)[0][0] if bad else JobState.COMPLETED
        ends = [t.ended_at for t in tasks if t.ended_at]
        done = sum(s == JobState.COMPLETED for s in states)
        return JobInfo(
            parent.job_id,
            state,
            started_at=min(starts) if starts else None,
            ended_at=max(ends) if ends else None,
            reason=None if not bad else f"{done} of {len(tasks)} tasks COMPLETED",
        )
    from hpcjob.slurm import CANCELLED_PENDING_REASON

    # A task cancelled before it started does not make the array running.
    active = any(
        t.state in (JobState.RUNNING, JobState.COMPLETING)
        or (t.state.is_final and t.reason != CANCELLED_PENDING_REASON)
        for t in tasks
    )
    return JobInfo(
        parent.job_id,
        JobState.RUNNING if active else JobState.PENDING,
        started_at=min(starts) if starts else None,
    )


def exit_status_path(run: Run) -> str:
    task = run.job_id.split("_", 1)[1] if run.job_id and "_" in run.job_id else None
    return f"{run.run_dir}/exit-status" + (f".{task}" if task else "")


def exit_status_info(ctx: Context, run: Run) -> JobInfo | None:
    """How a job the scheduler no longer reports ended, from the file its script's EXIT trap
    wrote — where accounting is off, this is the only record."""
    shell = ctx.scheduler.shell
    path = exit_status_path(run)
    if not run.job_id or not shell.exists(path):
        return None
    words = shell.read_bytes(path, 0, 200).decode(errors="replace").split()
    if not words or not words[0].lstrip("-").isdigit():
        return None
    code = int(words[0])
    return JobInfo(
        job_id=run.job_id,
        state=JobState.COMPLETED if code == 0 else JobState.FAILED,
        exit_code=code,
        ended_at=words[1] if len(words) > 1 else None,
        reason="from the job's exit-status file (the scheduler no longer reports it)",
    )


def _complete_submission(ctx: Context, run: Run) -> Run:
    """A run left SUBMITTING by a crash: find its job by token, or mark it never submitted."""
    if run.state != JobState.SUBMITTING or run.job_id:
        return run
    from hpcjob.submission import add_array_tasks, complete_submission

    return add_array_tasks(ctx, complete_submission(ctx, run))


def harvest(ctx: Context, run: Run) -> JobOutput:
    """Read the run's output and metrics.jsonl into the ledger (idempotent)."""
    shell = ctx.scheduler.shell
    parsed = JobOutput()
    if run.output_path and shell.exists(run.output_path):
        parse_output(_read_text(ctx, run.output_path), parsed)
    folder = files_dir(run)
    metrics_path = f"{folder}/metrics.jsonl"
    if shell.exists(metrics_path):
        parse_metrics_jsonl(_read_text(ctx, metrics_path), parsed)
    ctx.ledger.add_metrics(run.run_id, parsed.metric_list())
    ctx.ledger.set_facts(run.run_id, parsed.facts)
    if run.state.is_final:
        harvest_provenance(ctx, run, folder)
        files = shell.list_files(folder) if shell.exists(folder) else []
        ctx.ledger.set_artifacts(
            run.run_id,
            [(name, f"{folder}/{name}", size) for name, size in files if _is_artifact(name, run)],
        )
    return parsed


_MAX_READ = 64 * 1024 * 1024


def files_dir(run: Run) -> str:
    """Where the run's workload wrote its files: an array task has a folder of its own
    (`task-<i>`, see base.sbatch.j2), so tasks never share metrics or checkpoints."""
    if run.array_task is not None:
        return f"{run.run_dir}/task-{run.array_task}"
    return run.run_dir


def _read_text(ctx: Context, path: str) -> str:
    data = ctx.scheduler.shell.read_bytes(path, 0, _MAX_READ)
    return data.decode("utf-8", errors="replace")


def _is_artifact(name: str, run: Run) -> bool:
    top = name.split("/", 1)[0]
    if name in _OWN_FILES or top == "workload" or name.startswith(("exit-status", ".")):
        return False
    return not (name.startswith("slurm-") and name.endswith(".out"))


def wait(
    ctx: Context,
    run: Run,
    on_tick: Callable[[Run], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    timeout_s: float | None = None,
) -> Run:
    """Refresh until the run is final, backing off from the start interval up to the cap."""
    from hpcjob.requeue import due as requeue_due

    interval = ctx.scheduler.poll_start_s
    started = time.monotonic()
    failing_since: float | None = None  # a controller restart or a network blip is waited out
    while True:
        job_before = run.job_id
        try:
            refresh(ctx, watched=frozenset({run.run_id}))
            failing_since = None
        except HpcjobError as exc:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > _POLL_FAILURES_S:
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
            interval = ctx.scheduler.poll_start_s
        if failing_since is None:
            _sleep_until_due(ctx, run, interval, sleep)
        else:
            sleep(interval)
        interval = min(interval * 2, ctx.scheduler.poll_cap_s)
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise HpcjobError(
                f"Gave up waiting for run {run.run_id} after {timeout_s:g} s; "
                f"it is {run.state.value}.",
                hint=f"It keeps running; see `hpcjob status` or `hpcjob wait {run.run_id}`.",
            )


_FILE_TICK_S = 0.25
# `wait` retries failed polls (backing off as usual) for this long before it gives up.
_POLL_FAILURES_S = 30


def _sleep_until_due(
    ctx: Context, run: Run, interval: float, sleep: Callable[[float], None]
) -> None:
    """Sleep until the next poll is due — or until the job's exit-status file appears, which
    costs the scheduler nothing to watch and ends a wait as soon as the job has ended."""
    if interval <= _FILE_TICK_S:
        sleep(interval)
        return
    deadline = time.monotonic() + interval
    path = exit_status_path(run)
    shell = ctx.scheduler.shell
    if shell.exists(path):
        # Already there: the job is ending and the scheduler will say so within seconds (Slurm
        # keeps a job COMPLETING briefly); ask again soon rather than after a long back-off.
        sleep(min(interval, 2 * ctx.scheduler.poll_start_s))
        return
    while time.monotonic() < deadline:
        sleep(_FILE_TICK_S)
        if shell.exists(path):
            return


def resolve(ctx: Context, ref: str) -> Run:
    """A run by job id, run id or `last`, brought up to date if it is still unfinished."""
    run = ctx.ledger.resolve(ref, cluster=None)
    if run.profile == ctx.profile.name and (
        not run.state.is_final or (run.scheduler == "slurm" and _awaits_accounting(ctx, run))
    ):
        refresh(ctx)
        run = ctx.ledger.get_run(run.run_id)
    return run


def _awaits_accounting(ctx: Context, run: Run) -> bool:
    return any(r.run_id == run.run_id for r in ctx.ledger.awaiting_accounting(ctx.profile.name))


def read_log(ctx: Context, run: Run, offset: int = 0) -> bytes:
    """The job's output from `offset`; empty while the job has not written anything."""
    if not run.output_path:
        return b""
    shell = ctx.scheduler.shell
    if not shell.exists(run.output_path):
        return b""
    return shell.read_bytes(run.output_path, offset)


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


# -- rows for output --------------------------------------------------------------------------


def elapsed_s(run: Run, now: datetime | None = None) -> int | None:
    if not run.started_at:
        return None
    start = parse_utc(run.started_at)
    end = parse_utc(run.ended_at) if run.ended_at else (now or datetime.now(timezone.utc))
    return max(0, int((end - start).total_seconds()))


def run_row(run: Run, latest: list[Any] | None = None) -> dict[str, Any]:
    """The row `status`, `runs` and `submit` print: same keys in the table and in --json."""
    spec = run.spec
    return {
        "run_id": run.run_id,
        "job_id": run.job_id,
        "workload": run.workload,
        "state": run.state.value,
        "profile": run.profile,
        "partition": (spec.get("resources") or {}).get("partition"),
        "elapsed_s": elapsed_s(run),
        "node": run.node,
        "exit_code": run.exit_code,
        "last_metric": headline(latest or []),
        "submitted_at": run.submitted_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "run_dir": run.run_dir,
        "output_path": run.output_path,
        "reason": run.reason,
    }


def sort_runs(runs: list[Run]) -> list[Run]:
    """Newest first, an array's tasks right after it in task order (as `runs` lists them)."""
    created = {r.run_id: r.created_at for r in runs}

    def key(run: Run) -> tuple[str, str, int]:
        group = run.parent_run_id or run.run_id
        return (
            created.get(group, run.created_at),
            group,
            1 if run.array_task is None else -run.array_task,
        )

    return sorted(runs, key=key, reverse=True)


def rows(ctx: Context, runs: list[Run]) -> list[dict[str, Any]]:
    latest = ctx.ledger.latest_metrics([r.run_id for r in runs])
    return [run_row(r, latest.get(r.run_id)) for r in runs]


def run_detail(ctx: Context, run: Run) -> dict[str, Any]:
    """Everything the ledger knows of one run (`show`)."""
    from hpcjob.requeue import attempt_rows

    ledger = ctx.ledger
    detail = run_row(run, ledger.latest_metrics([run.run_id]).get(run.run_id))
    detail.update(
        token=run.token,
        cluster=run.cluster,
        scheduler=run.scheduler,
        signal=run.signal,
        created_at=run.created_at,
        spec=run.spec,
        script_sha256=run.script_hash,
        script=run.script,
        history=[
            {"state": h.state.value, "at": h.at, "source": h.source, "detail": h.detail}
            for h in ledger.history(run.run_id)
        ],
        metrics=[
            {"step": m.step, "key": m.key, "value": m.value} for m in ledger.metrics(run.run_id)
        ],
        facts=ledger.facts(run.run_id),
        artifacts=[
            {"name": name, "path": path, "size": size}
            for name, path, size in ledger.artifacts(run.run_id)
        ],
        max_requeues=run.max_requeues,
        attempts=attempt_rows(ledger, run),
    )
    detail.update(explain(ctx, run, detail))  # provenance, cost, efficiency
    return detail


def workload_names() -> list[str]:
    return list(WORKLOADS)


# -- explain: provenance, cost and efficiency of a run (issue 8) ------------------------------

# Shown after `cost: ` (submit, dry run) and as the actual cost in `show` and `runs --since`.
_NOT_BILLED = "none — the embedded scheduler runs jobs on this machine"


def record_origin(
    ctx: Context, run: Run, prepared: Prepared, project: Path | None = None
) -> SubmitProvenance:
    """The run's provenance (project git state, versions, hashes) and SBU estimate at submit,
    kept as run facts; the git diff goes into the run directory (`stage`)."""
    from hpcjob import provenance

    origin = provenance.at_submit(
        project or Path.cwd(),
        hpcjob_version=__version__,
        script_sha256=prepared.new_run.script_hash,
        workload_sha256=workload_hash(prepared.workload),
    )
    estimate = sbu_estimate(ctx, prepared)
    ctx.ledger.set_facts(
        run.run_id, {provenance.SUBMIT_FACT: origin.meta, "sbu_estimate": estimate.to_dict()}
    )
    return origin


def harvest_provenance(ctx: Context, run: Run, folder: str) -> None:
    """What the job wrote about itself (provenance.json) into the run's facts."""
    from hpcjob import provenance

    path = f"{folder}/{provenance.JOB_FILE}"
    if ctx.scheduler.shell.exists(path):
        ctx.ledger.set_facts(run.run_id, provenance.job_facts(_read_text(ctx, path)))


def profile_rates(ctx: Context, name: str) -> dict[str, Rate]:
    """A profile's SBU rates: its `sbu_rates` over the built-in profile's of the same name."""
    from hpcjob import cost
    from hpcjob.config import BUILTIN_PROFILES

    if name == ctx.profile.name:
        table = ctx.profile.get("sbu_rates")
    else:
        try:
            table = resolve_profile(ctx.settings, profile_flag=name).get("sbu_rates")
        except HpcjobError:  # a profile since removed: its built-in rates, if any
            table = None
    builtin = BUILTIN_PROFILES.get(name, {}).get("sbu_rates") or {}
    return cost.parse_rates({**builtin, **(table or {})})


def _default_partition(ctx: Context) -> str | None:
    """The cluster's default partition from the sinfo cache that `prepare` just filled; never a
    scheduler call of its own (a submission must not cost an extra sinfo)."""
    cache = ctx.settings.home / "cache" / f"partitions-{ctx.profile.name}.json"
    try:
        items = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    defaults = [p.get("name") for p in items if isinstance(p, dict) and p.get("is_default")]
    return str(defaults[0]) if defaults else None


def sbu_estimate(ctx: Context, prepared: Prepared) -> Cost:
    """The most a job can cost: its request billed for its whole time limit (all array tasks)."""
    from hpcjob import cost
    from hpcjob.spec import array_task_ids

    res = prepared.spec.resources
    rates = profile_rates(ctx, ctx.profile.name)
    if not rates and ctx.profile.scheduler == "local":
        return cost.Cost(res.partition, None, res.time_s / 3600, note=_NOT_BILLED)
    partition = res.partition or (_default_partition(ctx) if rates else None)
    request = cost.request_from_spec(dataclasses.asdict(res), partition)
    estimate = cost.cost(rates, request, res.time_s)
    tasks = len(array_task_ids(res.array)) if res.array else 1
    if tasks > 1 and estimate.sbu is not None:
        estimate = dataclasses.replace(
            estimate,
            sbu=round(estimate.sbu * tasks, 2),
            units=(estimate.units or 0) * tasks,
            note=f"{tasks} array tasks" + (f"; {estimate.note}" if estimate.note else ""),
        )
    return estimate


def _submit_facts(ctx: Context, run: Run, facts: dict[str, Any]) -> dict[str, Any]:
    """An array task's submit-time facts are its parent's."""
    if run.parent_run_id and "sbu_estimate" not in facts:
        return ctx.ledger.facts(run.parent_run_id)
    return facts


def actual_cost(ctx: Context, run: Run, facts: dict[str, Any]) -> Cost | None:
    """What a run cost: what it was allocated, for as long as it ran (so far, while running);
    None when it never started."""
    from hpcjob import cost

    seconds = facts.get("sacct_elapsed_s", facts.get("local_elapsed_s"))
    if seconds is None:
        seconds = elapsed_s(run)
    if seconds is None:
        return None
    res = run.spec.get("resources") or {}
    estimate = _submit_facts(ctx, run, facts).get("sbu_estimate") or {}
    req = cost.request_from_spec(res, estimate.get("partition") or res.get("partition"))
    if facts.get("sacct_alloc_cpus"):  # what Slurm allocated, per node
        req = dataclasses.replace(req, cores=-(-int(facts["sacct_alloc_cpus"]) // req.nodes))
    if "sacct_alloc_gpus" in facts:
        req = dataclasses.replace(req, gpus=int(facts["sacct_alloc_gpus"]) // req.nodes)
    rates = profile_rates(ctx, run.profile)
    if not rates and run.scheduler == "local":
        return cost.Cost(req.partition, None, seconds / 3600, note=_NOT_BILLED)
    return cost.cost(rates, req, seconds)


def cost_section(ctx: Context, run: Run, facts: dict[str, Any]) -> dict[str, Any] | None:
    from hpcjob import cost

    estimate = facts.get("sbu_estimate")
    actual: Cost | None
    if run.is_array:
        tasks = ctx.ledger.tasks(run.run_id)
        spent = [actual_cost(ctx, t, ctx.ledger.facts(t.run_id)) for t in tasks]
        known = [c for c in spent if c is not None]
        total, missing = cost.total(known)
        actual = cost.Cost(
            estimate.get("partition") if estimate else None,
            total if known and missing < len(known) else None,
            sum(c.hours for c in known),
            note=f"sum of {len(known)} tasks that ran"
            + (f"; {missing} without a rate" if missing else ""),
        )
    else:
        actual = actual_cost(ctx, run, facts)
    if estimate is None and actual is None:
        return None
    return {
        "estimate": estimate,
        "actual": actual.to_dict() if actual else None,
        "sbu": actual.sbu if actual else None,
    }


def efficiency_section(
    run: Run, facts: dict[str, Any], metrics: list[dict[str, Any]]
) -> dict[str, Any] | None:
    from hpcjob import efficiency

    if not run.state.is_final or run.is_array:
        return None
    usage = efficiency.usage_from_facts(
        facts,
        state=run.state.value,
        workload=run.workload,
        resources=run.spec.get("resources") or {},
        args=run.spec.get("args") or {},
        elapsed_s=elapsed_s(run),
        gpu_util_series=[
            m["value"] for m in metrics if m["key"] == "gpu_util_pct" and m["value"] is not None
        ],
    )
    return efficiency.assess(usage).to_dict() if usage is not None else None


def explain(ctx: Context, run: Run, detail: dict[str, Any]) -> dict[str, Any]:
    """`show`'s provenance, cost and efficiency sections; their facts leave `facts`."""
    from hpcjob import provenance

    facts: dict[str, Any] = detail["facts"]
    own = {k: facts.pop(k) for k in list(facts) if k.startswith("provenance_")}
    estimate = facts.pop("sbu_estimate", None)
    if run.parent_run_id:
        own = {**_submit_facts(ctx, run, {}), **own}
    mine = {**facts, **own, **({"sbu_estimate": estimate} if estimate else {})}
    return {
        "provenance": provenance.section(own),
        "cost": cost_section(ctx, run, mine),
        "efficiency": efficiency_section(run, facts, detail.get("metrics") or []),
    }


def explain_text(detail: dict[str, Any]) -> str:
    """The provenance, cost and efficiency sections as `show` prints them."""
    from hpcjob import cost, efficiency, provenance

    parts = []
    for title, section, lines in (
        ("Provenance", detail.get("provenance"), provenance.show_lines),
        ("Cost", detail.get("cost"), cost.show_lines),
        ("Efficiency", detail.get("efficiency"), efficiency.show_lines),
    ):
        if section:
            parts.append(f"\n{title}:\n" + "\n".join(lines(section)) + "\n")
    return "".join(parts)


def spend(
    ctx: Context, runs: list[Run], since: str, until: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The runs that started in [since, until) with what each cost, and the total."""
    from hpcjob import cost

    started = [
        r
        for r in runs
        if not r.is_array
        and r.started_at
        and since <= r.started_at
        and (not until or r.started_at < until)
    ]
    costs = [actual_cost(ctx, r, ctx.ledger.facts(r.run_id)) for r in started]
    found = rows(ctx, started)
    for row, spent in zip(found, costs, strict=True):
        row["sbu"] = spent.sbu if spent else None
        row["cost_note"] = spent.note if spent and spent.sbu is None else None
    total, missing = cost.total([c for c in costs if c is not None and c.note != _NOT_BILLED])
    summary = {
        "since": since,
        "until": until,
        "total_sbu": total,
        "runs_counted": len(started),
        "runs_without_rate": missing,
    }
    return found, summary


def estimate_text(ctx: Context, run: Run) -> str:
    """The submit confirmation's cost line, from the estimate recorded at submit."""
    from hpcjob import cost

    estimate = ctx.ledger.facts(run.run_id).get("sbu_estimate")
    return cost.estimate_line(cost.Cost(**estimate)) if estimate else ""
