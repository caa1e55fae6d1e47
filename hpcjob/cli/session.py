"""The invocation around a command: its context (profile, ledger, scheduler) opened and closed,
its notes said once at the end, and how a command about one run ends — waiting with a spinner,
then the run's row, and exit 3 when a waited-for run did not complete.

Light to import (every command module imports it): the run layer loads when a command runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from hpcjob.cli.output import Sink, duration, info, print_failure, print_table, warn
from hpcjob.cli.root import chosen_profile
from hpcjob.errors import EXIT_JOB_FAILED

if TYPE_CHECKING:
    from hpcjob.ledger.records import Run
    from hpcjob.run.context import Context


@contextlib.contextmanager
def session(profile: str | None) -> Iterator[Context]:
    """The invocation's Context; its notes go to stderr and its ledger is closed at the end."""
    from hpcjob.run.context import open_context

    context = open_context(chosen_profile(profile))
    try:
        yield context
    finally:
        for note in dict.fromkeys(context.notes):
            warn(note)
        context.close()


@contextlib.contextmanager
def run_session(ref: str, profile: str | None, *, refresh: bool = False) -> Iterator[Context]:
    """`session` for a command about one run (or sweep) `ref`: without --profile, the profile
    that run was submitted with; `refresh`: the profile's unfinished runs brought up to date."""
    from hpcjob.run.context import profile_of

    with session(chosen_profile(profile) or profile_of(ref)) as context:
        if refresh:
            from hpcjob.run.refresh import refresh as refresh_runs

            refresh_runs(context)
        yield context


def _wait_with_progress(
    context: Context, sink: Sink, run: Run, timeout_s: float | None = None
) -> Run:
    """Wait for the run to end, with a spinner saying its state, elapsed time and last metric."""
    from hpcjob.insight.rows import elapsed_s
    from hpcjob.joblog import headline
    from hpcjob.run.watch import wait

    def describe(current: Run) -> str:
        latest = context.ledger.latest_metrics([current.run_id]).get(current.run_id)
        metric = headline(latest or [])
        elapsed = duration(elapsed_s(current))
        return f"job {current.job_id} {current.state.value} {elapsed} {metric}".rstrip()

    with sink.waiting(f"job {run.job_id} {run.state.value}") as status:
        return wait(
            context, run, on_tick=lambda cur: status.update(describe(cur)), timeout_s=timeout_s
        )


def conclude(
    context: Context, sink: Sink, run: Run, *, waited: bool, extra: dict[str, Any] | None = None
) -> None:
    """How a command about one run ends: its row (always in JSON; as a table once it was waited
    for), and exit 3 when it was waited for and ended other than COMPLETED."""
    from hpcjob.insight.rows import rows

    found = rows(context, [run])
    sink.result({**found[0], **(extra or {})}, (lambda: print_table(found)) if waited else None)
    if waited and run.state.value != "COMPLETED":
        print_failure(context.ledger.facts(run.run_id).get("failure"))
        raise typer.Exit(EXIT_JOB_FAILED)


def wait_and_conclude(
    context: Context,
    sink: Sink,
    run: Run,
    *,
    wait: bool,
    extra: dict[str, Any] | None = None,
    timeout_s: float | None = None,
) -> None:
    """`--wait` (and `hpcjob wait`): wait for the run unless it ended, then `conclude`."""
    try:
        if wait and not run.state.is_final:
            run = _wait_with_progress(context, sink, run, timeout_s)
        conclude(context, sink, run, waited=wait, extra=extra)
    except KeyboardInterrupt:
        raise stopped(run) from None


def stopped(run: Run) -> typer.Exit:
    """Ctrl-C after a submission: the job is queued all the same; say so, exit 130."""
    info(f"Stopped waiting; job {run.job_id} keeps running (`hpcjob status`).")
    return typer.Exit(130)
