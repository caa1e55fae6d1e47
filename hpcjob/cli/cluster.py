"""Commands about the cluster itself: `partitions`, `connect`, `doctor`, `setup-env`.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated, Any

import typer

from hpcjob.cli.options import JsonOpt, ProfileOpt
from hpcjob.cli.output import Sink, info, print_pairs
from hpcjob.cli.root import app, chosen_profile, command
from hpcjob.cli.session import session
from hpcjob.errors import HpcjobError

_PARTITION_COLUMNS = (
    ("name", "partition"),
    ("time_limit", "time limit"),
    ("nodes", "nodes"),
    ("cpus_per_node", "CPUs/node"),
    ("mem_per_node", "memory/node"),
    ("gpus", "GPUs/node"),
    ("state", "state"),
    ("your_accounts", "accounts"),
)


@command(app)
def partitions(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """The cluster's partitions: time limit, nodes, CPUs, memory and GPUs per node, state."""
    from hpcjob.insight.rows import partition_rows
    from hpcjob.run.context import cached_access, cached_partitions

    sink = Sink(json_out)
    with session(profile) as context:
        found = cached_partitions(context, refresh=True)
        if found is None:
            info(
                f"Profile {context.profile.name} uses the embedded scheduler: any partition name "
                "runs here, on this machine."
            )
            sink.result([])
            return
        access = cached_access(context, refresh=True)
        if access is not None and access.unknown:
            info(f"Which of your accounts may use each partition is not known: {access.unknown}.")
        sink.rows(
            partition_rows(found, access),
            columns=_PARTITION_COLUMNS,
            title=f"Partitions of profile {context.profile.name}",
        )


@command(app)
def connect(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="PROFILE",
            help="The profile to connect (the same as --profile).",
            show_default=False,
        ),
    ] = None,
    profile: ProfileOpt = None,
) -> None:
    """Log in to the profile's cluster once: check the host key (asking before trusting a new
    one), the login and the remote home."""
    from hpcjob.config import load_settings, resolve_profile
    from hpcjob.ssh.connect import ConnectOptions, connect_and_trust

    flag = chosen_profile(profile)
    if name is not None and flag is not None and name != flag:
        raise HpcjobError(
            f"Two profiles were given: {name} (the argument) and {flag} (--profile).",
            hint=f"Give one: `hpcjob connect {name}` or `hpcjob connect {flag}`.",
            exit_code=2,
        )
    resolved = resolve_profile(load_settings(), profile_flag=name or flag)
    if not resolved.get("host"):
        raise HpcjobError(
            f"Profile {resolved.name!r} has no host: it runs on this machine.",
            hint="Give a profile with `host`, e.g. `hpcjob connect snellius`.",
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
    info(
        f"Connected to {report.user}@{report.host}:{report.port} in {report.seconds:.1f} s; "
        f"remote home {report.home}."
    )


@command(app)
def doctor(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """Check the profile end to end: Python, connection and host key, partitions, modules, venv,
    data (read with h5py), disk headroom and purge risk; each finding with its fix. Exit 1 when
    a check fails."""
    from hpcjob.errors import EXIT_ERROR
    from hpcjob.insight.doctor import diagnose, failed

    sink = Sink(json_out)
    with session(profile) as context:
        sink.say(f"Checking profile {context.profile.name} …")
        findings = diagnose(context)
    sink.result([f.to_dict() for f in findings], lambda: _print_findings(findings))
    bad = failed(findings)
    if bad:
        sink.say(f"[red]{len(bad)} check(s) failed:[/] {', '.join(bad)}.")
        raise typer.Exit(EXIT_ERROR)


_MARKS = {
    "ok": "[green]ok[/]",
    "warn": "[yellow]warn[/]",
    "fail": "[red]FAIL[/]",
    "skip": "[dim]skip[/]",
}


def _print_findings(findings: list[Any]) -> None:
    """A line a finding (its status, check and what was found), its fix below, wrapped in the
    last column."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for f in findings:
        grid.add_row(_MARKS[f.status], f.check, escape(f.found))
        if f.fix:
            grid.add_row("", "", f"[bold]fix:[/] {escape(f.fix)}")
    Console(highlight=False).print(grid)


# Long only for its options (each is a parameter Typer reads).
@command(app, "setup-env")
def setup_env(
    profile: ProfileOpt = None,
    requirements: Annotated[
        str | None,
        typer.Option(
            help="Requirements file to install (default: your project's, else the workloads')."
        ),
    ] = None,
    project: Annotated[
        str | None,
        typer.Option(
            help="Your project's folder, whose requirements are installed (default: the one "
            "whose hpcjob.toml is found from here)."
        ),
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
    from hpcjob.env import report
    from hpcjob.env.setup import request_for
    from hpcjob.env.setup import setup_env as run_setup

    sink = Sink(json_out)
    text, source = _requirements_text(requirements, project, sink)
    with session(profile) as context:
        request = request_for(
            context,
            text,
            installer=installer,
            editable=editable,
            system_site_packages=system_site_packages,
            force=force,
        )
        where = "as a batch job" if as_job else "on the login node"
        sink.say(f"Setting up {request.venv} {where} (profile {context.profile.name}) …")
        done = run_setup(
            context,
            request,
            as_job=as_job,
            display=sink.setup_display(),
            gpu=check_gpu,
            gpu_partition_name=gpu_partition,
        )

        def human() -> None:
            print_pairs(report.summary_rows(done.result, done.gpu), title=f"venv {request.venv}")
            sink.say(f"Recorded as run {done.run.run_id}.")

        sink.result({**report.result_json(done), "requirements_from": source}, human)
        if done.gpu is not None and not done.gpu.ok:
            raise report.gpu_error(done.gpu)


def _requirements_text(path: str | None, project: str | None, sink: Sink) -> tuple[str, str]:
    """What setup-env installs, and where it came from in words: --requirements, else the
    project's (hpcjob.toml found from --project or here), else the workloads' own."""
    from hpcjob.resources import workload_files

    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read(), path
        except OSError as exc:
            raise HpcjobError(f"Cannot read {path}: {exc.strerror}.", exit_code=2) from exc
    found = _project_requirements(project, sink)
    if found is not None:
        return found
    return workload_files()["requirements.txt"].decode(), "the built-in workloads' requirements"


def _project_requirements(folder: str | None, sink: Sink) -> tuple[str, str] | None:
    """The project's requirements; None outside a project, or (said) when it names none."""
    from pathlib import Path

    from rich.markup import escape

    from hpcjob.project.projectfile import find_project_file, load_project
    from hpcjob.project.requirements import notes, project_requirements

    start = Path(folder).expanduser() if folder else Path.cwd()
    if not start.is_dir():
        raise HpcjobError(f"--project {folder!r} is not a folder.", exit_code=2)
    found = find_project_file(start)
    if found is None and folder is None:
        return None  # not in a project: the built-in workloads, as always
    project = load_project(found) if found is not None else None
    root = project.root if project is not None else start.resolve()
    chosen = project_requirements(root, project)
    if chosen is None:
        said = (
            f"Project {root} names no requirements (no requirements.txt, [project.dependencies] "
            "or [project] requirements): installing the built-in workloads' requirements."
        )
        sink.say(escape(said))
        return None
    text, source = chosen
    sink.say(f"Requirements of project {escape(str(root))}: {escape(source)}.")
    for note in notes(text):
        sink.say(f"  {escape(note)}")
    return text, f"{source} in {root}"
