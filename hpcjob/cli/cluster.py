"""Commands about the cluster itself: `partitions`, `connect`, `setup-env`.

No `from __future__ import annotations`: Typer reads these annotations as objects.
"""

from typing import Annotated

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
)


@command(app)
def partitions(profile: ProfileOpt = None, json_out: JsonOpt = False) -> None:
    """The cluster's partitions: time limit, nodes, CPUs, memory and GPUs per node, state."""
    from hpcjob.insight.rows import partition_row
    from hpcjob.run.context import cached_partitions

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
        sink.rows(
            [partition_row(p) for p in found],
            columns=_PARTITION_COLUMNS,
            title=f"Partitions of profile {context.profile.name}",
        )


@command(app)
def connect(profile: ProfileOpt = None) -> None:
    """Log in to the profile's cluster once: check the host key (asking before trusting a new
    one), the login and the remote home."""
    from hpcjob.config import load_settings, resolve_profile
    from hpcjob.ssh.connect import ConnectOptions, connect_and_trust

    resolved = resolve_profile(load_settings(), profile_flag=chosen_profile(profile))
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
    info(
        f"Connected to {report.user}@{report.host}:{report.port} in {report.seconds:.1f} s; "
        f"remote home {report.home}."
    )


# Long only for its options (each is a parameter Typer reads).
@command(app, "setup-env")
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
    from hpcjob.env import report
    from hpcjob.env.setup import request_for
    from hpcjob.env.setup import setup_env as run_setup

    text = _requirements_text(requirements)
    sink = Sink(json_out)
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

        sink.result(report.result_json(done), human)
        if done.gpu is not None and not done.gpu.ok:
            raise report.gpu_error(done.gpu)


def _requirements_text(path: str | None) -> str:
    """--requirements, or the workloads' own requirements.txt."""
    from hpcjob.resources import workload_files

    if path is None:
        return workload_files()["requirements.txt"].decode()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise HpcjobError(f"Cannot read {path}: {exc.strerror}.", exit_code=2) from exc
