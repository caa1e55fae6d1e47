"""Prepare a job: fill the request from the profile, validate it (against the live cluster's
partitions), render the script — nothing touches the ledger or the scheduler's queue yet."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.ledger.records import NewRun
from hpcjob.render import RenderContext, render_script, script_hash, template_dirs
from hpcjob.resources import workload_files
from hpcjob.run.context import Context, cached_partitions, run_root
from hpcjob.run.rundir import Files
from hpcjob.spec import JobSpec, SpecRequest, build_spec, check_against_partitions
from hpcjob.sweep import Sweep

PCAM_SPLIT_FILE = "camelyonpatch_level_2_split_{split}_{xy}.h5"


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
    # More files the job needs in its run directory (setup-env's script and requirements).
    files: Files = field(default_factory=dict)

    @property
    def code(self) -> dict[str, bytes]:
        return self.workload if self.workload is not None else workload_files()


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
    spec = build_spec(_filled(ctx, request))
    if sweep is not None:
        spec = sweep.apply(spec)  # the swept arguments are each task's own
    if check_data and spec.data_dir and ctx.scheduler.jobs_run_here:
        check_local_data(spec)
    if check_cluster:
        partitions = cached_partitions(ctx)
        if partitions is not None:
            check_against_partitions(spec, partitions)
    # `render` (check_cluster off) shows `~` rather than connect to a remote login node.
    root = run_root(ctx, connect=check_cluster)
    new = NewRun(
        profile=ctx.profile.name,
        cluster="",  # filled in at submit, when the scheduler is known
        scheduler=ctx.profile.scheduler,
        workload=spec.workload,
        spec={},
        script="",
        script_hash="",
        run_dir="",
    )
    extras = dict(extra or {})
    if sweep is not None:
        sweep = dataclasses.replace(sweep, sweep_id=sweep.sweep_id or new.run_id)
        extras["sweep"] = sweep.to_dict()
    run_dir = f"{root.rstrip('/')}/{new.run_id}"
    script = _render(ctx, spec, new, run_dir, sweep)
    new = dataclasses.replace(
        new,
        spec={**spec.to_dict(), **extras},
        script=script,
        script_hash=script_hash(script),
        run_dir=run_dir,
    )
    return Prepared(spec=spec, new_run=new, script=script, extra=extras, workload=workload)


def _filled(ctx: Context, request: SpecRequest) -> SpecRequest:
    """The request with what the profile gives: partition, account, data folder; `--after` as a
    job id."""
    profile = ctx.profile
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
    return dataclasses.replace(
        request,
        partition=request.partition or profile.partitions.get(request.workload),
        after=after,
        account=request.account or profile.get("account"),
        data_dir=data_dir,
    )


def _render(ctx: Context, spec: JobSpec, new: NewRun, run_dir: str, sweep: Sweep | None) -> str:
    profile = ctx.profile
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
    return render_script(spec, render_ctx, dirs)


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


def workload_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()
