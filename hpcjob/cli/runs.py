"""Commands that watch runs: `status`, `runs` (and the spend over a period), `show`, `logs`,
`wait`, `cancel`.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated, Any

import typer

from hpcjob.cli.options import JsonOpt, ProfileOpt, RefArg
from hpcjob.cli.output import RUN_COLUMNS, Sink, info, print_run_detail, print_table, print_text
from hpcjob.cli.root import app, command
from hpcjob.cli.session import session, wait_and_conclude
from hpcjob.errors import EXIT_JOB_FAILED, EXIT_USAGE, HpcjobError


@command(app)
def status(
    profile: ProfileOpt = None,
    limit: Annotated[int, typer.Option(help="Finished runs to show besides the active ones.")] = 10,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 3 if a listed run ended other than COMPLETED (as `wait` judges it).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Refresh the profile's unfinished runs (one scheduler query) and show recent runs."""
    from hpcjob.insight.rows import ended_badly, recent_runs, rows

    with session(profile) as context:
        found = recent_runs(context, limit)
        name = context.profile.name
        Sink(json_out).rows(
            rows(context, found),
            title=f"Runs of profile {name}",
            empty=f"No runs in profile {name} yet. Try: hpcjob submit gpu-check --wait",
        )
        if check and ended_badly(found):
            raise typer.Exit(EXIT_JOB_FAILED)


@command(app)
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
    from hpcjob.cost import period_bound
    from hpcjob.insight.rows import rows
    from hpcjob.jobstate import JobState
    from hpcjob.run.refresh import refresh

    if state is not None and JobState.parse(state) == JobState.UNKNOWN and state != "UNKNOWN":
        raise HpcjobError(
            f"{state!r} is not a job state.",
            hint="Use one of: " + ", ".join(s.value for s in JobState),
            exit_code=EXIT_USAGE,
        )
    if limit < 1:
        raise HpcjobError("--limit must be at least 1.", exit_code=EXIT_USAGE)
    if until is not None and since is None:
        raise HpcjobError("--until needs --since.", hint="e.g. --since 2026-11-01", exit_code=2)
    start = period_bound(since, "--since") if since is not None else None
    end = period_bound(until, "--until") if until is not None else None
    sink = Sink(json_out)
    with session(profile) as context:
        refresh(context)
        found = context.ledger.list_runs(
            workload=workload,
            state=JobState.parse(state).value if state else None,
            profile=None if all_profiles else context.profile.name,
            limit=limit if start is None else None,
        )
        if start is None:
            sink.rows(rows(context, found), empty="No runs match.")
        else:
            _spend(context, sink, found, (start, end), limit)


def _spend(
    context: Any, sink: Sink, found: list[Any], period: tuple[str, str | None], limit: int
) -> None:
    """`runs --since/--until`: the runs that started in the period, what each cost, the total."""
    from hpcjob.cost import sbu_text
    from hpcjob.insight.explain import spend

    start, end = period
    spent, summary = spend(context, found, start, end)

    def show() -> None:
        print_table(
            spent[:limit], columns=(*RUN_COLUMNS, ("sbu", "SBU")), empty="No runs in the period."
        )
        shown = f" (the newest {limit} shown)" if len(spent) > limit else ""
        missing = summary["runs_without_rate"]
        print_text(
            f"Total: ≈ {sbu_text(summary['total_sbu'])} SBU for {len(spent)} runs that started "
            f"{start[:10]} – {end[:10] if end else 'now'}{shown}"
            + (f"; {missing} without an SBU rate (set sbu_rates in the profile)" if missing else "")
            + "\n"
        )

    sink.result({**summary, "runs": spent}, show)


@command(app)
def show(
    ref: RefArg,
    profile: ProfileOpt = None,
    script: Annotated[
        bool, typer.Option("--script/--no-script", help="Include the script.")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """Everything the ledger knows of a run: spec, script, paths, states, metrics, artifacts."""
    from hpcjob.insight.explain import run_detail, show_text
    from hpcjob.run.watch import resolve

    with session(profile) as context:
        detail = run_detail(context, resolve(context, ref))

        def human() -> None:
            print_run_detail(detail, show_script=script)
            print_text(show_text(detail))  # lineage, loss curves, provenance, cost, efficiency

        Sink(json_out).result(detail, human)


@command(app)
def logs(
    ref: RefArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream while it runs.")] = False,
    tail: Annotated[
        int | None, typer.Option(help="Only the last N lines (of each attempt).")
    ] = None,
    attempt: Annotated[
        int | None,
        typer.Option(
            help="Only this attempt's output (an --auto-requeue run has one per job; by "
            "default every attempt is shown, latest last)."
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            help="One rank's own output (a job of several processes; by default the job's "
            "output: rank 0's, and the last lines of any rank that failed)."
        ),
    ] = None,
    profile: ProfileOpt = None,
) -> None:
    """Print a job's output (each attempt's, for a requeued run); with --follow, keep printing
    until the job ends."""
    from hpcjob.run.harvest import harvest
    from hpcjob.run.watch import attempt_logs, resolve, world_size
    from hpcjob.run.watch import follow as follow_output

    with session(profile) as context:
        run = resolve(context, ref)
        if run.is_array:
            raise _array_has_no_log(context, run)
        if rank is not None:
            _check_rank(run, rank, world_size(run))
            if follow:
                raise HpcjobError(
                    "--follow shows the job's output, not one rank's.",
                    hint=f"Follow the job (rank 0): hpcjob logs {ref} --follow; or show rank "
                    f"{rank} so far: hpcjob logs {ref} --rank {rank}",
                    exit_code=EXIT_USAGE,
                )
        found = attempt_logs(context, run, tail=tail, rank=rank)
        shown = found if attempt is None else [_one_attempt(run, found, attempt)]
        if len(found) > 1 and len(shown) == 1:
            info(shown[0].label)
        for log in shown:
            if log.cut and tail is not None and log.data.count(b"\n") < tail:
                info(
                    f"Only the last {len(log.data)} bytes of {log.label} were read (--tail reads "
                    f"at most that much; {log.cut} bytes before it are not shown)."
                )
        print_text(_logs_text(shown, tail))
        latest = found[-1]
        if shown[-1] is not latest:
            return  # an earlier attempt: it has ended
        if follow:
            try:
                end = latest.size if latest.size is not None else len(latest.data)
                run = follow_output(context, run, end, print_text)
            except KeyboardInterrupt:
                return
            info(f"Job {run.job_id} ended: {run.state.value}.")
        elif run.state.is_final:
            harvest(context, run)
        elif not latest.data:
            info(f"Job {run.job_id} is {run.state.value} and has written nothing yet.")
        if rank is not None and run.state.is_final and not any(log.data for log in shown):
            info(f"Rank {rank} left no output (its job may have ended before it started).")


def _logs_text(shown: list[Any], tail: int | None) -> str:
    """The attempts' output (the last `tail` lines of each), under a header each when several."""
    parts = []
    for index, log in enumerate(shown):
        text = log.data.decode("utf-8", errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        if len(shown) > 1:
            text = ("\n" if index else "") + log.header + "\n" + text
            text += "" if text.endswith("\n") else "\n"
        parts.append(text)
    return "".join(parts)


def _check_rank(run: Any, rank: int, world: int) -> None:
    """A rank the run had; a run of one process has no per-rank output."""
    if world <= 1:
        raise HpcjobError(
            f"Run {run.run_id} ran one process: it has no per-rank output.",
            hint=f"Show its output: hpcjob logs {run.run_id}",
            exit_code=EXIT_USAGE,
        )
    if not 0 <= rank < world:
        raise HpcjobError(
            f"Run {run.run_id} had {world} ranks (0 to {world - 1}); there is no rank {rank}.",
            hint=f"Give --rank 0 to {world - 1}.",
            exit_code=EXIT_USAGE,
        )


def _one_attempt(run: Any, found: list[Any], attempt: int) -> Any:
    if not 1 <= attempt <= len(found):
        raise HpcjobError(
            f"Run {run.run_id} has {len(found)} attempt{'' if len(found) == 1 else 's'}; there is "
            f"no attempt {attempt}.",
            hint=f"Give --attempt 1 to {len(found)}, or leave it out for all of them.",
            exit_code=EXIT_USAGE,
        )
    return found[attempt - 1]


def _array_has_no_log(context: Any, run: Any) -> HpcjobError:
    tasks = context.ledger.tasks(run.run_id)
    shown = " ".join(t.job_id or "" for t in tasks[:5]) + (" …" if len(tasks) > 5 else "")
    return HpcjobError(
        f"Run {run.run_id} is job array {run.job_id} of {len(tasks)} tasks; each task has "
        "its own output.",
        hint=f"Show one: hpcjob logs {tasks[0].job_id if tasks else f'{run.job_id}_0'} "
        f"(tasks: {shown}).",
    )


@command(app)
def wait(
    ref: RefArg,
    profile: ProfileOpt = None,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Wait for a run to end; exit 0 if it COMPLETED, 3 otherwise."""
    from hpcjob.run.watch import resolve

    with session(profile) as context:
        run = resolve(context, ref)
        wait_and_conclude(context, Sink(json_out), run, wait=True, timeout_s=timeout)


@command(app)
def cancel(
    refs: Annotated[list[str], typer.Argument(help="Job ids, run ids or `last`.")],
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Cancel jobs."""
    from hpcjob.insight.rows import rows
    from hpcjob.run.watch import cancel as cancel_run
    from hpcjob.run.watch import resolve

    sink = Sink(json_out)
    with session(profile) as context:
        done = [cancel_run(context, resolve(context, ref)) for ref in refs]
        for run in done:
            sink.say(f"Cancelled job {run.job_id} (run {run.run_id}): {run.state.value}.")
        sink.result(rows(context, done))
