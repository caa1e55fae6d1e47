"""Commands that submit: `submit` and `render` (one function: render stops before the ledger),
`rerun`, `resubmit`.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from hpcjob.cli.options import (
    CurrentCodeOpt,
    JsonOpt,
    ProfileOpt,
    RefArg,
    ResourceArgs,
    WaitOpt,
    WorkloadArgs,
    with_blocks,
)
from hpcjob.cli.output import Sink, info, print_text, warn
from hpcjob.cli.root import app, command
from hpcjob.cli.session import conclude, run_session, session, stopped, wait_and_conclude
from hpcjob.errors import HpcjobError

AFTER_DASHES = "hpcjob.after_dashes"


class _WordsAfterDashes(TyperCommand):
    """Keeps the words after `--` apart (the user's command or program arguments), so that
    `submit -- nvidia-smi` is a command and `submit train -- --fast` a workload with arguments."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            index = args.index("--")
            ctx.meta[AFTER_DASHES] = tuple(args[index + 1 :])
            args = args[:index]
        return list(super().parse_args(ctx, args))


# Long only for its options (each is a parameter Typer reads); the body is a dozen lines.
@with_blocks
def _submit_or_render(
    ctx: typer.Context,
    resources: ResourceArgs,
    args: WorkloadArgs,
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
    data_dir: Annotated[
        str | None,
        typer.Option(help="Folder with the PCAM .h5 files (your code: $HPCJOB_DATA_DIR)."),
    ] = None,
    stage_data: Annotated[
        bool, typer.Option("--stage-data", help="Copy the data to the node-local $TMPDIR first.")
    ] = False,
    sweep: Annotated[
        list[str] | None,
        typer.Option(
            help="A sweep as ONE job array: NAME=V1,V2 (repeatable; every combination is a task), "
            "e.g. --sweep lr=1e-3,1e-4; for your project's workloads NAME is a config key.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="[your project] Override a config key: KEY=VALUE (repeatable; VALUE is YAML), "
            "e.g. --set training.learning_rate=3e-4.",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option(help="With --sweep: at most N tasks at once (4).")
    ] = None,
    wait: WaitOpt = False,
    auto_requeue: Annotated[
        int | None,
        typer.Option(
            "--auto-requeue",
            help="Resubmit up to N times when the job hits its time limit (it resumes from "
            "its checkpoint); one run, several attempts.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate and render; submit nothing. Without a connection to the login node: "
            "what can be checked offline, and what could not.",
        ),
    ] = False,
    project: Annotated[
        str | None,
        typer.Option(
            help="Your project's folder: its hpcjob.toml, code and git state (default: found "
            "from the current folder)."
        ),
    ] = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
    workload: Annotated[
        str | None,
        typer.Argument(
            help="A workload (your project's, or built-in: gpu-check, eda, train, setup-env), a "
            "Python file (experiments/eval.py), a batch script (job.sh), or nothing and a "
            "command after `--`. Words after `--` go to the program.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from hpcjob.run.project import Target, prepare_submit
    from hpcjob.run.requeue import check_limit
    from hpcjob.spec import SpecRequest

    sink = Sink(json_out)
    rendering = ctx.info_name == "render"
    requeues = check_limit(auto_requeue, is_array=bool(array))
    folder = _project_dir(project)
    target = Target(
        name=workload,
        extra=tuple(ctx.meta.get(AFTER_DASHES, ())),
        sets=tuple(set_ or ()),
        sweeps=tuple(sweep or ()),
        max_parallel=max_parallel,
        project_dir=folder,
    )
    request = SpecRequest(
        workload=workload or "",
        **resources.to_dict(),
        account=account,
        constraint=constraint,
        job_name=job_name,
        array=array,
        after=after,
        data_dir=data_dir,
        stage_data=stage_data,
        args=args.to_dict(),
        require_data=not rendering,
    )
    with session(profile) as context:
        if dry_run:
            from hpcjob.run.context import connect_or_offline

            connect_or_offline(context)  # without a connection: what can be checked offline
        prepared, plan = prepare_submit(
            context,
            request,
            target,
            check_files=not rendering,
            check_cluster=not rendering,
        )
        if rendering:
            print_text(prepared.script)
        elif dry_run:
            _show_dry_run(context, sink, prepared)
        else:
            _submit(context, sink, prepared, requeues, plan, folder, wait)


def _submit(
    context: Any,
    sink: Sink,
    prepared: Any,
    requeues: int,
    plan: Any,
    folder: Path | None,
    wait: bool,
) -> None:
    from hpcjob.env.setup import venv_warning
    from hpcjob.insight.explain import estimate_text, program_label
    from hpcjob.project.requirements import project_requirements
    from hpcjob.run.submit import submit

    project = plan.project if plan is not None else None
    # A program's venv must hold its project's requirements (setup-env installs them).
    needs = project_requirements(project.root, project) if project is not None else None
    warning = venv_warning(context, requirements=needs[0] if needs else None)
    if warning:
        context.notes.append(warning)
    provenance = folder or (project.root if project is not None else None)
    run = submit(context, prepared, auto_requeue=requeues, project=provenance)
    try:
        sink.say(
            f"Submitted [bold]{run.workload}[/]{program_label(run.spec)} as job "
            f"[bold]{run.job_id}[/] (run {run.run_id}, profile {run.profile}); "
            f"output: {run.output_path}"
        )
        sink.say(estimate_text(context, run))
        _warn_over_budget(context, prepared)
    except KeyboardInterrupt:  # the job is queued all the same
        raise stopped(run) from None
    wait_and_conclude(context, sink, run, wait=wait)


def _warn_over_budget(context: Any, prepared: Any) -> None:
    """A warning, at once (before any --wait), when the job may cost more than its account has
    left: warned, not refused — accinfo lags behind."""
    from rich.markup import escape

    from hpcjob.insight.budget import over_budget
    from hpcjob.run.origin import sbu_estimate

    account = prepared.spec.resources.account
    warning = over_budget(context, sbu_estimate(context, prepared), account)
    if warning:
        warn(escape(warning))


def _project_dir(project: str | None) -> Path | None:
    """--project: the folder whose git state is the run's provenance (default: the cwd)."""
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


def _show_dry_run(context: Any, sink: Sink, prepared: Any) -> None:
    from rich.markup import escape

    from hpcjob.cost import estimate_line
    from hpcjob.insight.budget import budget_line
    from hpcjob.run.context import offline_notes
    from hpcjob.run.origin import sbu_estimate

    estimate = sbu_estimate(context, prepared)
    not_checked = offline_notes(context)
    budget = budget_line(context, estimate, prepared.spec.resources.account)

    def show() -> None:
        print_text(prepared.script)
        valid = "Valid as far as it could be checked." if not_checked else "Valid."
        info(
            f"[green]{valid}[/] Dry run: nothing was submitted (profile {context.profile.name}, "
            f"run directory would be {prepared.new_run.run_dir})."
        )
        for note in not_checked:
            info(f"[yellow]not checked:[/] {escape(note)}")
        info(estimate_line(estimate))
        info(escape(budget))

    summary = {
        "dry_run": True,
        "workload": prepared.spec.workload,
        "profile": context.profile.name,
        "spec": prepared.spec.to_dict(),
        "run_dir": prepared.new_run.run_dir,
        "script": prepared.script,
        "sbu_estimate": estimate.to_dict(),
        "budget": budget,
        "not_checked": not_checked,
    }
    sink.result(summary, show)


command(
    app,
    "submit",
    help="Validate, render and submit a job (a workload, your own code or a command); record it "
    "in the ledger.",
    cls=_WordsAfterDashes,
)(_submit_or_render)
command(
    app,
    "render",
    help="Print the job script a submit would use; submit nothing.",
    cls=_WordsAfterDashes,
)(_submit_or_render)


@command(app)
@with_blocks
def rerun(
    ref: RefArg,
    args: WorkloadArgs,
    resources: ResourceArgs,
    current_code: CurrentCodeOpt = False,
    wait: WaitOpt = False,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a run again: the same spec and code snapshot; the options given change it."""
    from hpcjob.run.rerun import prepare_rerun
    from hpcjob.run.submit import submit

    sink = Sink(json_out)
    with run_session(ref, profile) as context:
        original = context.ledger.resolve(ref)
        overrides = {**args.to_dict(), **resources.to_dict()}
        prepared = prepare_rerun(context, original, overrides, current_code=current_code)
        run = submit(context, prepared)
        sink.say(
            f"Submitted rerun of {original.run_id} as job [bold]{run.job_id}[/] "
            f"(run {run.run_id}, {'current code' if current_code else 'same code'}); "
            f"output: {run.output_path}"
        )
        wait_and_conclude(context, sink, run, wait=wait, extra={"rerun_of": original.run_id})


@command(app)
def resubmit(ref: RefArg, profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """Submit a run that never reached the scheduler (UNSUBMITTED) again: same run, same script,
    after checking by its token that no job of it exists."""
    from hpcjob.run.submit import resubmit as resubmit_run

    sink = Sink(json_out)
    with session(profile) as context:
        run, submitted = resubmit_run(context, ref)
        if submitted:
            sink.say(f"Resubmitted run {run.run_id} as job [bold]{run.job_id}[/].")
        else:
            sink.say(
                f"Run {run.run_id} had reached the scheduler after all: it is job "
                f"[bold]{run.job_id}[/]; nothing was submitted again."
            )
        conclude(context, sink, run, waited=False)
