"""Commands about what runs produced: `compare`, `plot`, `fetch`, and the `sweep` group.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from pathlib import Path
from typing import Annotated

import typer

from hpcjob.cli.options import CurrentCodeOpt, JsonOpt, ProfileOpt, RefArg
from hpcjob.cli.output import Sink, info, print_table, size_text, warn
from hpcjob.cli.root import app, command
from hpcjob.cli.session import conclude, run_session, session
from hpcjob.errors import HpcjobError


@command(app)
def compare(
    refs: Annotated[list[str], typer.Argument(help="Two or more job ids, run ids or `last`.")],
    all_settings: Annotated[
        bool, typer.Option("--all", help="Every setting, not only those that differ.")
    ] = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The settings that differ between runs, and their final and best metrics side by side."""
    from hpcjob.insight.compare import compare as compare_runs
    from hpcjob.insight.compare import table_rows
    from hpcjob.insight.explain import run_detail
    from hpcjob.run.watch import resolve

    if len(refs) < 2:
        raise HpcjobError("compare needs at least two runs.", hint="hpcjob compare r1a2b3 last")
    with session(profile) as context:
        details = [run_detail(context, resolve(context, ref)) for ref in refs]
        data = compare_runs(details, show_all=all_settings)
        columns, found = table_rows(data)
        Sink(json_out).result(data, lambda: print_table(found, columns=columns, title="Compare"))


@command(app)
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
    from hpcjob.insight.plots import plot_refs

    with session(profile) as context:
        path, run_ids = plot_refs(context, refs, Path(out) if out else None, metric)
        Sink(json_out).result(
            {"path": str(path), "runs": run_ids, "metrics": metric},
            lambda: info(f"Wrote {path} ({', '.join(run_ids)})."),
        )


@command(app)
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
    from hpcjob.run.fetch import default_dest
    from hpcjob.run.fetch import fetch as fetch_files
    from hpcjob.run.watch import resolve

    with run_session(ref, profile) as context:
        run = resolve(context, ref)
        target = Path(dest) if dest else default_dest(run)
        skipped: list[dict[str, str]] = []

        def skip(name: str, why: str) -> None:
            skipped.append({"name": name, "reason": why})
            warn(f"Skipped {name!r}: {why}.")

        copied = fetch_files(context, run, target, checkpoints=checkpoints, on_skip=skip)

        def human() -> None:
            print_table(
                [{"name": c.name, "size": size_text(c.size), "source": c.source} for c in copied],
                columns=(("name", "file"), ("size", "size"), ("source", "from")),
                title=f"Fetched run {run.run_id} into {target}",
            )
            total = sum(c.size for c in copied)
            info(f"Copied {len(copied)} files ({size_text(total)}) to {target}.")

        files = [{"name": c.name, "size": c.size, "source": c.source} for c in copied]
        Sink(json_out).result(
            {"run_id": run.run_id, "dest": str(target), "files": files, "skipped": skipped}, human
        )


sweep_app = typer.Typer(help="Sweeps: see and resubmit a sweep's tasks.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")


@command(sweep_app, "status")
def sweep_status(
    ref: Annotated[str, typer.Argument(help="The sweep (its run id, a task, or `last`).")],
    metric: Annotated[str, typer.Option(help="The metric that picks the best task.")] = "val_loss",
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A sweep's tasks: parameters, state, best metric; the best task marked."""
    from hpcjob.run.sweeps import sweep_of, task_rows

    with run_session(ref, profile, refresh=True) as context:
        sweep_id, arrays = sweep_of(context.ledger, ref)
        found = task_rows(context.ledger, arrays, metric)
        # One parameter a line, whole: the parameters column wraps, never cuts (80 columns).
        shown = [
            {
                **r,
                "parameters": "\n".join(f"{k}={v}" for k, v in r["params"].items()),
                "best": _num_or_dash(r["best"]) + (" ★" if r["is_best"] else ""),
            }
            for r in found
        ]
        columns = (
            ("task", "task"),
            ("parameters", "parameters"),
            ("run_id", "run"),
            ("job_id", "job id"),
            ("state", "state"),
            ("attempts", "tries"),
            ("best", "best"),
        )
        title = f"Sweep {sweep_id}: best {metric} per task, ★ the best task"
        Sink(json_out).result(
            found, lambda: print_table(shown, columns=columns, title=title, fit="parameters")
        )


def _num_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@command(sweep_app, "resubmit")
def sweep_resubmit(
    ref: Annotated[str, typer.Argument(help="The sweep (its run id, a task, or `last`).")],
    current_code: CurrentCodeOpt = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Resubmit only the sweep's failed, cancelled or timed-out tasks, as one new array."""
    from hpcjob.run.rerun import prepare_resubmit
    from hpcjob.run.submit import submit

    sink = Sink(json_out)
    with run_session(ref, profile, refresh=True) as context:
        prepared = prepare_resubmit(context, ref, current_code=current_code)
        run = submit(context, prepared)
        tasks = [t.array_task for t in context.ledger.tasks(run.run_id)]
        sink.say(
            f"Resubmitted tasks {', '.join(map(str, tasks))} of sweep "
            f"{prepared.extra['sweep']['sweep_id']} as job [bold]{run.job_id}[/] "
            f"(run {run.run_id})."
        )
        conclude(context, sink, run, waited=False, extra={"tasks": tasks})
