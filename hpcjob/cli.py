"""The command line: each command parses options, calls one function in `app`, prints via `output`.

Heavy modules (jinja2, sqlite, paramiko, torch) are imported inside the commands that need them, so
`hpcjob --help` starts about as fast as Typer itself. No `from __future__ import annotations`:
Typer would evaluate every command's string annotations again on each start (~11 ms).
"""

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer

from hpcjob import __version__, fastpath
from hpcjob.errors import EXIT_JOB_FAILED, HpcjobError

fastpath.plain_options()  # str/int options without pydantic: ~60 ms off every command

app = typer.Typer(
    name="hpcjob",
    help="Run ML jobs on a Slurm cluster (or this machine) and record every run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Show or create the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

F = TypeVar("F", bound=Callable[..., Any])


def boundary(func: F) -> F:
    """The one error boundary: HpcjobError → `Error:`/`Hint:` on stderr and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hpcjob import output

        try:
            return func(*args, **kwargs)
        except HpcjobError as exc:
            output.error(exc)
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            damaged = _ledger_fault(exc)  # a ledger that went bad after it was opened
            if damaged is None:
                raise
            output.error(damaged)
            raise typer.Exit(damaged.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _ledger_fault(exc: Exception) -> HpcjobError | None:
    """An SQLite error that escaped the ledger (a page found damaged by a later query) in the
    user's words; None for anything else (that is a bug, and its traceback is shown)."""
    import sys

    sqlite3 = sys.modules.get("sqlite3")  # only loaded when the ledger was opened
    if sqlite3 is None or not isinstance(exc, sqlite3.Error):
        return None
    from hpcjob.config import load_settings
    from hpcjob.ledger import ledger_error

    return ledger_error(str(load_settings().ledger_path), exc)


def _version(value: bool) -> None:
    if value:
        print(f"hpcjob {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run ML jobs on a Slurm cluster (or this machine) and record every run."""


ProfileOpt = Annotated[
    str | None, typer.Option("--profile", "-P", help="Profile to use (see `hpcjob config show`).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
RefArg = Annotated[str, typer.Argument(help="A job id, a run id, or `last`.")]


@contextlib.contextmanager
def _session(profile: str | None) -> Iterator[Any]:
    """The invocation's Context; its notes go to stderr and its ledger is closed at the end."""
    from hpcjob import output
    from hpcjob.app import open_context

    context = open_context(profile)
    try:
        yield context
    finally:
        for note in dict.fromkeys(context.notes):
            output.warn(note)
        context.close()


@contextlib.contextmanager
def _run_session(ref: str, profile: str | None, *, refresh: bool = False) -> Iterator[Any]:
    """`_session` for a command about one run (or sweep) `ref`: without --profile, the profile
    that run was submitted with; `refresh`: the profile's unfinished runs brought up to date."""
    from hpcjob.rerun import profile_of

    with _session(profile or profile_of(ref)) as context:
        if refresh:
            from hpcjob.app import refresh as refresh_runs

            refresh_runs(context)
        yield context


# -- submit / render ------------------------------------------------------------------------


def _submit_or_render(
    ctx: typer.Context,
    workload: Annotated[str, typer.Argument(help="gpu-check, eda, train or setup-env.")],
    partition: Annotated[
        str | None, typer.Option("--partition", "-p", help="Slurm partition.")
    ] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", "-t", help="Time limit: MM, HH:MM:SS, D-HH:MM:SS …")
    ] = None,
    nodes: Annotated[int | None, typer.Option(help="Number of nodes.")] = None,
    cpus: Annotated[int | None, typer.Option("--cpus", "-c", help="CPU cores per task.")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per node, e.g. 16G.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs (default 1 on gpu partitions).")] = None,
    account: Annotated[str | None, typer.Option("--account", "-A", help="Budget account.")] = None,
    constraint: Annotated[
        str | None, typer.Option(help="Node features, e.g. scratch-node.")
    ] = None,
    job_name: Annotated[str | None, typer.Option("--job-name", "-J", help="Job name.")] = None,
    array: Annotated[
        str | None, typer.Option(help="A job array, e.g. 0-9%2 (at most 2 at once); Slurm only.")
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="Start after this job (id, run id or last) COMPLETED.")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder with the PCAM .h5 files.")] = None,
    stage_data: Annotated[
        bool, typer.Option("--stage-data", help="Copy the data to the node-local $TMPDIR first.")
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="[train] Epochs (3).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[train] Batch size (256).")] = None,
    lr: Annotated[float | None, typer.Option(help="[train] Learning rate (1e-3).")] = None,
    hidden_units: Annotated[str | None, typer.Option(help="[train] e.g. 512,256.")] = None,
    dropout: Annotated[float | None, typer.Option(help="[train] Dropout rate (0.2).")] = None,
    seed: Annotated[int | None, typer.Option(help="[train] Random seed (0).")] = None,
    num_workers: Annotated[int | None, typer.Option(help="[train] Loader workers (0).")] = None,
    weighted_sampling: Annotated[
        bool | None,
        typer.Option("--weighted-sampling/--no-weighted-sampling", help="[train] Balance classes."),
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="[eda] Images per read (1024).")] = None,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            help="A sweep as ONE job array: NAME=V1,V2 (repeatable; every combination is a task), "
            "e.g. --sweep lr=1e-3,1e-4 --sweep hidden=256,512.",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="With --sweep: at most N tasks at once (4).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the job to end.")] = False,
    auto_requeue: Annotated[
        int | None,
        typer.Option(
            "--auto-requeue",
            help="Resubmit up to N times when the job hits its time limit (it resumes from "
            "its checkpoint); one run, several attempts.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and render; submit nothing.")
    ] = False,
    project: Annotated[
        str | None,
        typer.Option(help="Your project's folder, for provenance (default: the current one)."),
    ] = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.requeue import check_limit
    from hpcjob.spec import SpecRequest

    rendering = ctx.info_name == "render"
    requeues = check_limit(auto_requeue, is_array=bool(array))
    request = SpecRequest(
        workload=workload,
        partition=partition,
        time=time_limit,
        nodes=nodes,
        cpus_per_task=cpus,
        mem=mem,
        gpus=gpus,
        account=account,
        constraint=constraint,
        job_name=job_name,
        array=array,
        after=after,
        data_dir=data_dir,
        stage_data=stage_data,
        args={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "hidden_units": hidden_units,
            "dropout": dropout,
            "seed": seed,
            "num_workers": num_workers,
            "weighted_sampling": weighted_sampling,
            "block_size": block_size,
        },
        require_data=not rendering,
    )
    from hpcjob.sweep import sweep_request

    request, sweep_def = sweep_request(request, sweep or [], max_parallel)
    with _session(profile) as context:
        prepared = core.prepare(
            context,
            request,
            check_data=not (rendering or dry_run),
            check_cluster=not rendering,
            sweep=sweep_def,
        )
        if rendering:
            output.print_text(prepared.script)
            return
        if dry_run:
            _show_dry_run(context, prepared, json_out)
            return
        from hpcjob.envsetup import venv_warning

        warning = venv_warning(context)
        if warning:
            context.notes.append(warning)
        run = core.submit(context, prepared, auto_requeue=requeues, project=_project_dir(project))
        if not json_out:
            output.info(
                f"Submitted [bold]{run.workload}[/] as job [bold]{run.job_id}[/] "
                f"(run {run.run_id}, profile {run.profile}); output: {run.output_path}"
            )
            output.info(core.estimate_text(context, run))
        if wait:
            run = _wait_with_progress(context, run, quiet=json_out)
        if json_out:
            output.print_json(core.rows(context, [run])[0])
        elif wait:
            output.print_table(core.rows(context, [run]))
        if wait and run.state.value != "COMPLETED":
            raise typer.Exit(EXIT_JOB_FAILED)


def _project_dir(project: str | None) -> Any:
    """--project: the folder whose git state is the run's provenance (default: the cwd)."""
    from pathlib import Path

    if project is None:
        return None
    folder = Path(project).expanduser()
    if not folder.is_dir():
        raise HpcjobError(
            f"--project {project!r} is not a folder.",
            hint="Give the folder of your project (its git checkout), or leave --project out.",
            exit_code=2,
        )
    return folder.resolve()


def _show_dry_run(context: Any, prepared: Any, json_out: bool) -> None:
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.cost import estimate_line

    estimate = core.sbu_estimate(context, prepared)
    summary = {
        "dry_run": True,
        "workload": prepared.spec.workload,
        "profile": context.profile.name,
        "spec": prepared.spec.to_dict(),
        "run_dir": prepared.new_run.run_dir,
        "script": prepared.script,
        "sbu_estimate": estimate.to_dict(),
    }
    if json_out:
        output.print_json(summary)
        return
    output.print_text(prepared.script)
    output.info(
        f"[green]Valid.[/] Dry run: nothing was submitted (profile {context.profile.name}, "
        f"run directory would be {prepared.new_run.run_dir})."
    )
    output.info(estimate_line(estimate))


def _wait_with_progress(context: Any, run: Any, quiet: bool) -> Any:
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.joblog import headline

    def describe(current: Any) -> str:
        latest = context.ledger.latest_metrics([current.run_id]).get(current.run_id)
        metric = headline(latest or [])
        elapsed = output.duration(core.elapsed_s(current))
        return f"job {current.job_id} {current.state.value} {elapsed} {metric}".rstrip()

    try:
        if quiet:
            return core.wait(context, run)
        with output.spinner(f"job {run.job_id} {run.state.value}") as status:
            return core.wait(context, run, on_tick=lambda cur: status.update(describe(cur)))
    except KeyboardInterrupt:
        output.info(f"Stopped waiting; job {run.job_id} keeps running (`hpcjob status`).")
        raise typer.Exit(130) from None


app.command(
    "submit",
    help="Validate, render and submit a job; record it in the ledger.",
)(boundary(_submit_or_render))
app.command(
    "render",
    help="Print the job script a submit would use; submit nothing.",
)(boundary(_submit_or_render))


# -- watching -------------------------------------------------------------------------------


@app.command()
@boundary
def status(
    profile: ProfileOpt = None,
    limit: Annotated[int, typer.Option(help="Finished runs to show besides the active ones.")] = 10,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 3 if a listed run ended other than COMPLETED.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Refresh the profile's unfinished runs (one scheduler query) and show recent runs."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.app import sort_runs

    with _session(profile) as context:
        core.refresh(context)
        ledger = context.ledger
        active = ledger.unfinished(context.profile.name)
        recent = [
            r
            for r in ledger.list_runs(profile=context.profile.name, limit=limit + len(active))
            if r.state.is_final
        ][:limit]
        runs = sort_runs(active + recent)
        rows = core.rows(context, runs)
        if json_out:
            output.print_json(rows)
        else:
            output.print_table(
                rows,
                title=f"Runs of profile {context.profile.name}",
                empty=f"No runs in profile {context.profile.name} yet. "
                "Try: hpcjob submit gpu-check --wait",
            )
        if check and any(r.state.is_final and r.state.value != "COMPLETED" for r in runs):
            raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
@boundary
def runs(
    workload: Annotated[str | None, typer.Option(help="Only this workload.")] = None,
    state: Annotated[str | None, typer.Option(help="Only this state, e.g. FAILED.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs.")] = 20,
    profile: ProfileOpt = None,
    all_profiles: Annotated[
        bool, typer.Option("--all-profiles", help="Runs of every profile.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            help="Runs that started on or after this UTC date (2026-11-01); with the "
            "total SBU spent."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="... and before this UTC date (with --since).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The run history, newest first (unfinished runs of the profile are refreshed first)."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.jobstate import JobState

    if state is not None and JobState.parse(state) == JobState.UNKNOWN and state != "UNKNOWN":
        raise HpcjobError(
            f"{state!r} is not a job state.",
            hint="Use one of: " + ", ".join(s.value for s in JobState),
            exit_code=2,
        )
    if limit < 1:
        raise HpcjobError("--limit must be at least 1.", exit_code=2)
    if since is not None or until is not None:
        _spend(since, until, workload, state, limit, profile, all_profiles, json_out)
        return
    with _session(profile) as context:
        core.refresh(context)
        found = context.ledger.list_runs(
            workload=workload,
            state=JobState.parse(state).value if state else None,
            profile=None if all_profiles else context.profile.name,
            limit=limit,
        )
        rows = core.rows(context, found)
        if json_out:
            output.print_json(rows)
        else:
            output.print_table(rows, empty="No runs match.")


def _spend(
    since: str | None,
    until: str | None,
    workload: str | None,
    state: str | None,
    limit: int,
    profile: str | None,
    all_profiles: bool,
    json_out: bool,
) -> None:
    """`runs --since/--until`: the runs that started in the period, what each cost, the total."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.cost import period_bound, sbu_text
    from hpcjob.jobstate import JobState
    from hpcjob.output import RUN_COLUMNS

    if since is None:
        raise HpcjobError("--until needs --since.", hint="e.g. --since 2026-11-01", exit_code=2)
    start, end = period_bound(since, "--since"), until and period_bound(until, "--until")
    with _session(profile) as context:
        core.refresh(context)
        found = context.ledger.list_runs(
            workload=workload,
            state=JobState.parse(state).value if state else None,
            profile=None if all_profiles else context.profile.name,
            limit=None,
        )
        rows, summary = core.spend(context, found, start, end)
        if json_out:
            output.print_json({**summary, "runs": rows})
            return
        output.print_table(
            rows[:limit], columns=(*RUN_COLUMNS, ("sbu", "SBU")), empty="No runs in the period."
        )
        shown = f" (the newest {limit} shown)" if len(rows) > limit else ""
        missing = summary["runs_without_rate"]
        output.print_text(
            f"Total: ≈ {sbu_text(summary['total_sbu'])} SBU for {len(rows)} runs that started "
            f"{start[:10]} – {end[:10] if end else 'now'}{shown}"
            + (f"; {missing} without an SBU rate (set sbu_rates in the profile)" if missing else "")
            + "\n"
        )


@app.command()
@boundary
def show(
    ref: RefArg,
    profile: ProfileOpt = None,
    script: Annotated[
        bool, typer.Option("--script/--no-script", help="Include the script.")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Everything the ledger knows of a run: spec, script, paths, states, metrics, artifacts."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.curves import show_section

    with _session(profile) as context:
        run = core.resolve(context, ref)
        detail = core.run_detail(context, run)
        if json_out:
            output.print_json(detail)
        else:
            output.print_run_detail(detail, show_script=script)
            output.print_text(show_section(detail))  # rerun/sweep lineage, loss curves
            output.print_text(core.explain_text(detail))  # provenance, cost, efficiency


@app.command()
@boundary
def logs(
    ref: RefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream while it runs.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Print a job's output; with --follow, keep printing until the job ends."""
    from hpcjob import app as core
    from hpcjob import output

    with _session(profile) as context:
        run = core.resolve(context, ref)
        if run.is_array:
            tasks = context.ledger.tasks(run.run_id)
            shown = " ".join(t.job_id or "" for t in tasks[:5]) + (" …" if len(tasks) > 5 else "")
            raise HpcjobError(
                f"Run {run.run_id} is job array {run.job_id} of {len(tasks)} tasks; each task has "
                "its own output.",
                hint=f"Show one: hpcjob logs {tasks[0].job_id if tasks else f'{run.job_id}_0'} "
                f"(tasks: {shown}).",
            )
        data = core.read_log(context, run)
        text = data.decode("utf-8", errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        output.print_text(text)
        if not follow:
            if not data and not run.state.is_final:
                output.info(f"Job {run.job_id} is {run.state.value} and has written nothing yet.")
            if run.state.is_final:
                core.harvest(context, run)
            return
        _follow(context, run, len(data))


def _follow(context: Any, run: Any, offset: int) -> None:
    from hpcjob import app as core
    from hpcjob import output

    # New bytes are read by offset twice a second; the scheduler is asked about the state only
    # at its own polling pace (every 0.4 s embedded, every 4 s on Slurm).
    state_every = 2 * context.scheduler.poll_start_s
    asked = time.monotonic()
    try:
        while True:
            chunk = core.read_log(context, run, offset)
            if chunk:
                offset += len(chunk)
                output.print_text(chunk.decode("utf-8", errors="replace"))
            if run.state.is_final and not chunk:
                core.harvest(context, run)
                output.info(f"Job {run.job_id} ended: {run.state.value}.")
                return
            time.sleep(0.5)
            if not run.state.is_final and time.monotonic() - asked >= state_every:
                asked = time.monotonic()
                core.refresh(context, watched=frozenset({run.run_id}))
                run = context.ledger.get_run(run.run_id)
    except KeyboardInterrupt:
        return


@app.command()
@boundary
def wait(
    ref: RefArg,
    profile: ProfileOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Wait for a run to end; exit 0 if it COMPLETED, 3 otherwise."""
    from hpcjob import app as core
    from hpcjob import output

    with _session(profile) as context:
        run = core.resolve(context, ref)
        if not run.state.is_final:
            run = (
                core.wait(context, run, timeout_s=timeout)
                if json_out
                else _wait_with_progress(context, run, quiet=False)
            )
        rows = core.rows(context, [run])
        output.print_json(rows[0]) if json_out else output.print_table(rows)
        if run.state.value != "COMPLETED":
            raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
@boundary
def cancel(
    refs: Annotated[list[str], typer.Argument(help="Job ids, run ids or `last`.")],
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel jobs."""
    from hpcjob import app as core
    from hpcjob import output

    with _session(profile) as context:
        done = [core.cancel(context, core.resolve(context, ref)) for ref in refs]
        rows = core.rows(context, done)
        if json_out:
            output.print_json(rows)
        else:
            for run in done:
                output.info(f"Cancelled job {run.job_id} (run {run.run_id}): {run.state.value}.")


@app.command()
@boundary
def resubmit(ref: RefArg, profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """Submit a run that never reached the scheduler (UNSUBMITTED) again: same run, same script,
    after checking by its token that no job of it exists."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.submission import resubmit as resubmit_run

    with _session(profile) as context:
        run, submitted = resubmit_run(context, ref)
        if json_out:
            output.print_json(core.rows(context, [run])[0])
        elif submitted:
            output.info(f"Resubmitted run {run.run_id} as job [bold]{run.job_id}[/].")
        else:
            output.info(
                f"Run {run.run_id} had reached the scheduler after all: it is job "
                f"[bold]{run.job_id}[/]; nothing was submitted again."
            )


@app.command()
@boundary
def partitions(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """The cluster's partitions: time limit, nodes, CPUs, memory and GPUs per node, state."""
    from hpcjob import app as core
    from hpcjob import output

    with _session(profile) as context:
        found = core.cached_partitions(context, refresh=True)
        if found is None:
            if json_out:
                output.print_json([])
            output.info(
                f"Profile {context.profile.name} uses the embedded scheduler: any partition name "
                "runs here, on this machine."
            )
            return
        rows = [core.partition_row(p) for p in found]
        if json_out:
            output.print_json(rows)
            return
        output.print_table(
            rows,
            columns=(
                ("name", "partition"),
                ("time_limit", "time limit"),
                ("nodes", "nodes"),
                ("cpus_per_node", "CPUs/node"),
                ("mem_per_node", "memory/node"),
                ("gpus", "GPUs/node"),
                ("state", "state"),
            ),
            title=f"Partitions of profile {context.profile.name}",
        )


@app.command()
@boundary
def connect(profile: ProfileOpt = None) -> None:
    """Log in to the profile's cluster once: check the host key (asking before trusting a new
    one), the login and the remote home."""
    from hpcjob import output
    from hpcjob.config import load_settings, resolve_profile
    from hpcjob.ssh.connect import ConnectOptions, connect_and_trust

    resolved = resolve_profile(load_settings(), profile_flag=profile)
    if not resolved.get("host"):
        raise HpcjobError(
            f"Profile {resolved.name!r} has no host: it runs on this machine.",
            hint="Give a profile with `host`, e.g. --profile snellius.",
            exit_code=2,
        )
    report = connect_and_trust(
        resolved.values,
        ConnectOptions(
            sources=resolved.sources,
            profile_name=resolved.name,
            confirm=lambda question: typer.confirm(question, default=False),
        ),
    )
    output.info(
        f"Connected to {report.user}@{report.host}:{report.port} in {report.seconds:.1f} s; "
        f"remote home {report.home}."
    )


# -- setup-env ------------------------------------------------------------------------------


@app.command("setup-env")
@boundary
def setup_env(
    profile: ProfileOpt = None,
    requirements: Annotated[
        str | None,
        typer.Option(help="Requirements file to install (default: the workloads' own)."),
    ] = None,
    editable: Annotated[
        str | None, typer.Option(help="A project folder on the cluster to `pip install -e`.")
    ] = None,
    installer: Annotated[str, typer.Option(help="pip, or uv where it is on PATH.")] = "pip",
    system_site_packages: Annotated[
        bool,
        typer.Option("--system-site-packages", help="Let the venv see the modules' packages."),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the venv from scratch.")] = False,
    as_job: Annotated[
        bool, typer.Option("--as-job", help="Run as a batch job (long installs) and wait.")
    ] = False,
    check_gpu: Annotated[
        bool,
        typer.Option("--check-gpu", help="Then run gpu-check in the venv: does torch see CUDA?"),
    ] = False,
    gpu_partition: Annotated[
        str | None,
        typer.Option(help="Partition for --check-gpu (default: the profile's GPU partition)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create, update or repair the profile's venv with its modules, then verify it."""
    import sys

    from hpcjob import envsetup, output
    from hpcjob.resources import workload_files

    if requirements is None:
        text = workload_files()["requirements.txt"].decode()
    else:
        try:
            with open(requirements, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise HpcjobError(f"Cannot read {requirements}: {exc.strerror}.", exit_code=2) from exc
    with _session(profile) as context:
        request = envsetup.request_for(
            context,
            text,
            installer=installer,
            editable=editable,
            system_site_packages=system_site_packages,
            force=force,
        )
        where = "as a batch job" if as_job else "on the login node"
        if not json_out:
            output.info(f"Setting up {request.venv} {where} (profile {context.profile.name}) …")
        display = envsetup.ProgressDisplay(plain=json_out or not sys.stderr.isatty())
        done = envsetup.setup_env(
            context,
            request,
            as_job=as_job,
            display=display,
            gpu=check_gpu,
            gpu_partition_name=gpu_partition,
        )
        if json_out:
            output.print_json(envsetup.result_json(done))
        else:
            rows = envsetup.summary_rows(done.result, done.gpu)
            output.print_pairs(rows, title=f"venv {request.venv}")
            output.info(f"Recorded as run {done.run.run_id}.")
        if done.gpu is not None and not done.gpu.ok:
            raise envsetup.gpu_error(done.gpu)


# -- rerun, compare, plot, fetch, sweeps ----------------------------------------------------


@app.command()
@boundary
def rerun(
    ref: RefArg,
    epochs: Annotated[int | None, typer.Option(help="[train] Epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[train] Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="[train] Learning rate.")] = None,
    hidden_units: Annotated[str | None, typer.Option(help="[train] e.g. 512,256.")] = None,
    dropout: Annotated[float | None, typer.Option(help="[train] Dropout rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="[train] Random seed.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="[train] Loader workers.")] = None,
    weighted_sampling: Annotated[
        bool | None,
        typer.Option("--weighted-sampling/--no-weighted-sampling", help="[train] Balance classes."),
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="[eda] Images per read.")] = None,
    partition: Annotated[
        str | None, typer.Option("--partition", "-p", help="Slurm partition.")
    ] = None,
    time_limit: Annotated[str | None, typer.Option("--time", "-t", help="Time limit.")] = None,
    cpus: Annotated[int | None, typer.Option("--cpus", "-c", help="CPU cores per task.")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per node, e.g. 16G.")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs.")] = None,
    current_code: Annotated[
        bool,
        typer.Option("--current-code", help="Run today's workload code, not the run's snapshot."),
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the job to end.")] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a run again: the same spec and code snapshot, with the options given changed."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.rerun import prepare_rerun

    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "hidden_units": hidden_units,
        "dropout": dropout,
        "seed": seed,
        "num_workers": num_workers,
        "weighted_sampling": weighted_sampling,
        "block_size": block_size,
        "partition": partition,
        "time": time_limit,
        "cpus_per_task": cpus,
        "mem": mem,
        "gpus": gpus,
    }
    with _run_session(ref, profile) as context:
        original = context.ledger.resolve(ref)
        prepared = prepare_rerun(context, original, overrides, current_code=current_code)
        run = core.submit(context, prepared)
        if not json_out:
            output.info(
                f"Submitted rerun of {original.run_id} as job [bold]{run.job_id}[/] "
                f"(run {run.run_id}, {'current code' if current_code else 'same code'}); "
                f"output: {run.output_path}"
            )
        if wait:
            run = _wait_with_progress(context, run, quiet=json_out)
        if json_out:
            output.print_json({**core.rows(context, [run])[0], "rerun_of": original.run_id})
        elif wait:
            output.print_table(core.rows(context, [run]))
        if wait and run.state.value != "COMPLETED":
            raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
@boundary
def compare(
    refs: Annotated[list[str], typer.Argument(help="Two or more job ids, run ids or `last`.")],
    all_settings: Annotated[
        bool, typer.Option("--all", help="Every setting, not only those that differ.")
    ] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The settings that differ between runs, and their final and best metrics side by side."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.compare import compare as compare_runs
    from hpcjob.compare import table_rows

    if len(refs) < 2:
        raise HpcjobError("compare needs at least two runs.", hint="hpcjob compare r1a2b3 last")
    with _session(profile) as context:
        details = [core.run_detail(context, core.resolve(context, ref)) for ref in refs]
        data = compare_runs(details, show_all=all_settings)
        if json_out:
            output.print_json(data)
            return
        columns, rows = table_rows(data)
        output.print_table(rows, columns=columns, title="Compare")


@app.command()
@boundary
def plot(
    refs: Annotated[list[str], typer.Argument(help="Job ids, run ids or `last`.")],
    out: Annotated[
        str | None, typer.Option(help="The PNG to write (default plot-<runs>.png here).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="Metric to draw (repeatable; default train_loss and val_loss)."),
    ] = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a PNG comparing runs' per-epoch curves."""
    from pathlib import Path

    from hpcjob import output
    from hpcjob.plots import plot_refs

    with _session(profile) as context:
        path, run_ids = plot_refs(context, refs, Path(out) if out else None, metric)
        if json_out:
            output.print_json({"path": str(path), "runs": run_ids, "metrics": metric})
        else:
            output.info(f"Wrote {path} ({', '.join(run_ids)}).")


@app.command()
@boundary
def fetch(
    ref: RefArg,
    dest: Annotated[
        str | None, typer.Option(help="Local folder (default ./hpcjob-runs/<run_id>/).")
    ] = None,
    checkpoints: Annotated[
        bool, typer.Option("--checkpoints", help="Copy the checkpoints too.")
    ] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy a run's artifacts (plots, eda.json, metrics.jsonl, output) to a local folder."""
    from pathlib import Path

    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.artifacts import default_dest, size_text
    from hpcjob.artifacts import fetch as fetch_files

    with _run_session(ref, profile) as context:
        run = core.resolve(context, ref)
        target = Path(dest) if dest else default_dest(run)
        copied = fetch_files(context, run, target, checkpoints=checkpoints)
        rows = [{"name": c.name, "size": c.size, "source": c.source} for c in copied]
        if json_out:
            output.print_json({"run_id": run.run_id, "dest": str(target), "files": rows})
            return
        output.print_table(
            [{"name": c.name, "size": size_text(c.size), "source": c.source} for c in copied],
            columns=(("name", "file"), ("size", "size"), ("source", "from")),
            title=f"Fetched run {run.run_id} into {target}",
        )
        total = sum(c.size for c in copied)
        output.info(f"Copied {len(copied)} files ({size_text(total)}) to {target}.")


sweep_app = typer.Typer(help="Sweeps: see and resubmit a sweep's tasks.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")


@sweep_app.command("status")
@boundary
def sweep_status(
    ref: Annotated[str, typer.Argument(help="The sweep (its run id, a task, or `last`).")],
    metric: Annotated[str, typer.Option(help="The metric that picks the best task.")] = "val_loss",
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A sweep's tasks: parameters, state, best metric; the best task marked."""
    from hpcjob import output
    from hpcjob.sweep import status_rows, sweep_of

    with _run_session(ref, profile, refresh=True) as context:
        sweep_id, arrays = sweep_of(context.ledger, ref)
        rows = status_rows(context.ledger, arrays, metric)
        if json_out:
            output.print_json(rows)
            return
        shown = [
            {**r, "best": _num_or_dash(r["best"]), "mark": "★ best" if r["is_best"] else ""}
            for r in rows
        ]
        output.print_table(
            shown,
            columns=(
                ("task", "task"),
                ("parameters", "parameters"),
                ("run_id", "run"),
                ("job_id", "job id"),
                ("state", "state"),
                ("attempts", "tries"),
                ("best", f"best {metric}"),
                ("mark", ""),
            ),
            title=f"Sweep {sweep_id}",
        )


def _num_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@sweep_app.command("resubmit")
@boundary
def sweep_resubmit(
    ref: Annotated[str, typer.Argument(help="The sweep (its run id, a task, or `last`).")],
    current_code: Annotated[
        bool, typer.Option("--current-code", help="Run today's workload code.")
    ] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Resubmit only the sweep's failed, cancelled or timed-out tasks, as one new array."""
    from hpcjob import app as core
    from hpcjob import output
    from hpcjob.rerun import prepare_resubmit

    with _run_session(ref, profile, refresh=True) as context:
        prepared = prepare_resubmit(context, ref, current_code=current_code)
        run = core.submit(context, prepared)
        tasks = [t.array_task for t in context.ledger.tasks(run.run_id)]
        if json_out:
            output.print_json({**core.rows(context, [run])[0], "tasks": tasks})
            return
        output.info(
            f"Resubmitted tasks {', '.join(map(str, tasks))} of sweep "
            f"{prepared.extra['sweep']['sweep_id']} as job [bold]{run.job_id}[/] "
            f"(run {run.run_id})."
        )


# -- config ---------------------------------------------------------------------------------


@config_app.command("show")
@boundary
def config_show(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """The effective settings of a profile and where each value came from."""
    from hpcjob import output
    from hpcjob.config import load_settings, resolve_profile

    settings = load_settings()
    resolved = resolve_profile(settings, profile_flag=profile)
    rows = [
        {"key": key, "value": resolved.values[key], "source": resolved.sources.get(key, "")}
        for key in sorted(resolved.values)
    ]
    if json_out:
        output.print_json(
            {
                "profile": resolved.name,
                "home": str(settings.home),
                "config_file": str(settings.config_path),
                "config_file_exists": settings.config_path.exists(),
                "ledger": str(settings.ledger_path),
                "settings": rows,
            }
        )
        return
    output.print_pairs(
        [
            ("profile", resolved.name),
            ("home", str(settings.home)),
            (
                "config file",
                f"{settings.config_path}"
                + ("" if settings.config_path.exists() else " (none; `hpcjob config init`)"),
            ),
            ("ledger", str(settings.ledger_path)),
        ]
    )
    output.print_table(rows, columns=(("key", "key"), ("value", "value"), ("source", "source")))


@config_app.command("init")
@boundary
def config_init(
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a commented starter config to $HPCJOB_HOME/config.toml."""
    from hpcjob import output
    from hpcjob.config import load_settings, write_starter_config

    path = write_starter_config(load_settings(), force=force)
    output.info(f"Wrote {path}. Edit it, then check with `hpcjob config show`.")
    print(path)


# -- ledger ---------------------------------------------------------------------------------

ledger_app = typer.Typer(help="Back up or check the run ledger file.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("backup")
@boundary
def ledger_backup(
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="The new file (default $HPCJOB_HOME/backups/…)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy the ledger to a new private file (0600) while hpcjob may be running."""
    from pathlib import Path

    from hpcjob import output
    from hpcjob.config import load_settings
    from hpcjob.ledgertools import backup, default_backup_path

    settings = load_settings()
    target = Path(out).expanduser() if out else default_backup_path(settings.home)
    report = backup(settings.ledger_path, target)
    if json_out:
        output.print_json(report)
    else:
        output.info(f"Backed up {report['runs']} runs to {report['backup']} ({report['bytes']} B).")


@ledger_app.command("check")
@boundary
def ledger_check(json_out: JsonOpt = False) -> None:
    """Check the ledger file (SQLite integrity, schema, runs per state); never changes it."""
    from hpcjob import output
    from hpcjob.config import load_settings
    from hpcjob.ledgertools import check

    report = check(load_settings().ledger_path)
    if json_out:
        output.print_json(report)
    else:
        states = ", ".join(f"{n} {s}" for s, n in report["runs_by_state"].items()) or "none"
        output.print_pairs(
            [
                ("ledger", report["ledger"]),
                ("ok", "yes" if report["ok"] else "NO"),
                ("schema", report["schema_version"]),
                ("runs", f"{report['runs']} ({states})"),
                ("mode", report["mode"]),
                *(("problem", p) for p in report["problems"]),
            ]
        )
    if not report["ok"]:
        raise HpcjobError(
            f"The ledger {report['ledger']} has problems: {'; '.join(report['problems'])}.",
            hint="Keep a copy of the file (`hpcjob ledger backup`), then restore an older backup.",
        )


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        fastpath.exit_now(exc.code)  # skips ~60 ms of interpreter teardown
    fastpath.exit_now(0)


if __name__ == "__main__":
    main()
