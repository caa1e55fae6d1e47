"""Rerun a run, and resubmit a sweep's failed tasks: the same spec (with overrides) and, unless
asked otherwise, the same workload code — the snapshot in the original run directory.

A rerun records `rerun_of` (the original's run id) beside its spec in the ledger and run.json;
a resubmitted sweep array carries the sweep's `sweep_id`, so `sweep status` sees every attempt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.ledger.records import Run
from hpcjob.run.context import Context
from hpcjob.run.prepare import Prepared, ProgramFiles, prepare
from hpcjob.run.project import current_files, recorded_files
from hpcjob.run.sweeps import sweep_of, task_rows
from hpcjob.spec import Program, SpecRequest, format_memory, format_time
from hpcjob.sweep import Sweep, failed_tasks

# Resource overrides a rerun accepts, by SpecRequest field.
RESOURCE_KEYS = (
    "partition",
    "time",
    "cpus_per_task",
    "mem",
    "gpus",
    "nodes",
    "gpus_per_node",
    "procs_per_node",
    "launcher",
)


def request_from_spec(
    spec: dict[str, Any], overrides: dict[str, Any], *, keep_array: bool
) -> SpecRequest:
    """A SpecRequest that rebuilds `spec` (a ledger spec dict), with `overrides` (None = keep)."""
    res = spec.get("resources") or {}
    given = {k: v for k, v in overrides.items() if v is not None}
    program = Program.from_dict(spec["program"]) if spec.get("program") else None
    options = {k: v for k, v in given.items() if k not in RESOURCE_KEYS}
    if program is not None:  # the options the project maps to config keys
        options = {program.options.get(k, k): v for k, v in options.items()}
    args = {**(spec.get("args") or {}), **options}
    return SpecRequest(
        workload=spec["workload"],
        partition=given.get("partition", res.get("partition")),
        time=given.get("time") or (format_time(res["time_s"]) if res.get("time_s") else None),
        cpus_per_task=given.get("cpus_per_task", res.get("cpus_per_task")),
        mem=given.get("mem") or (format_memory(res["mem_mb"]) if res.get("mem_mb") else None),
        **_scale(res, given),
        account=res.get("account"),
        constraint=res.get("constraint"),
        job_name=res.get("job_name"),
        array=res.get("array") if keep_array else None,
        after=None,  # what it waited for has happened
        data_dir=spec.get("data_dir"),
        stage_data=bool(spec.get("stage_data")),
        args=args,
        program=program,
    )


SCALE_KEYS = ("nodes", "gpus", "gpus_per_node", "procs_per_node", "launcher")


def _scale(res: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Nodes, GPUs, processes and launcher for the rerun: as recorded, but what a changed value
    implies is derived anew (the rules of `build_spec`), as if the request were typed: `--nodes 2`
    on a one-process run gets torchrun, new GPUs get one rank per GPU. A recorded run's GPUs are
    one node's: with several processes or nodes they are passed as GPUs per node."""
    multi = res.get("launcher", "none") != "none"
    recorded_nodes = int(res.get("nodes") or 1)
    nodes = given.get("nodes", recorded_nodes if recorded_nodes > 1 else None)
    gpus_changed = "gpus" in given or "gpus_per_node" in given
    per_node = multi or (nodes or 1) > 1
    if gpus_changed:
        gpus, gpus_per_node = given.get("gpus"), given.get("gpus_per_node")
    else:
        gpus = None if per_node else res.get("gpus")
        gpus_per_node = res.get("gpus") if per_node else None
    rescaled = any(key in given for key in SCALE_KEYS)
    procs = res.get("procs_per_node") if multi and not gpus_changed else None
    return {
        "nodes": nodes,
        "gpus": gpus,
        "gpus_per_node": gpus_per_node,
        "procs_per_node": given.get("procs_per_node", procs),
        "launcher": given.get("launcher", res.get("launcher") if multi and not rescaled else None),
    }


SNAPSHOT_FILE_MAX = 4 * 1024 * 1024
SNAPSHOT_FILES_MAX = 200


def workload_snapshot(ctx: Context, run: Run) -> dict[str, bytes]:
    """The workload code the run ran, from `<run_dir>/workload/` (through the profile's shell)."""
    shell = ctx.scheduler.shell
    folder = f"{run.run_dir}/workload"
    files = shell.list_files(folder, max_depth=1) if shell.exists(folder) else []
    files = [(name, size) for name, size in files if "/" not in name]
    # Bounded: hpcjob's workload code is a few files of kilobytes; anything much larger there was
    # not written by hpcjob, and is neither read into memory nor sent back to the cluster.
    big = [f"{name} ({size} B)" for name, size in files if size > SNAPSHOT_FILE_MAX]
    if big or len(files) > SNAPSHOT_FILES_MAX:
        raise HpcjobError(
            f"Run {run.run_id}'s workload snapshot in {folder} is not what hpcjob wrote: "
            + (
                f"{', '.join(big[:3])} over {SNAPSHOT_FILE_MAX} bytes"
                if big
                else f"{len(files)} files, more than {SNAPSHOT_FILES_MAX}"
            )
            + "; nothing of it was read.",
            hint="Rerun it with today's code instead: add --current-code.",
        )
    snapshot = {
        name: shell.read_bytes(f"{folder}/{name}", 0, SNAPSHOT_FILE_MAX) for name, _ in files
    }
    if not snapshot:
        raise HpcjobError(
            f"Run {run.run_id} has no workload snapshot in {folder}.",
            hint="Rerun it with today's code instead: add --current-code.",
        )
    return snapshot


def prepare_rerun(
    ctx: Context, run: Run, overrides: dict[str, Any], *, current_code: bool = False
) -> Prepared:
    """The original's spec with overrides, validated and rendered, linked by `rerun_of`."""
    if run.spec.get("sweep"):
        raise HpcjobError(
            f"Run {run.run_id} is a sweep of {run.spec['sweep'].get('tasks')} tasks.",
            hint=f"Rerun one task (its run id in `hpcjob sweep status {run.run_id}`), or "
            f"resubmit the failed ones: hpcjob sweep resubmit {run.run_id}",
            exit_code=EXIT_USAGE,
        )
    if run.workload == "setup-env":
        raise HpcjobError("A setup-env run is not rerun; run `hpcjob setup-env` again.")
    request = request_from_spec(run.spec, overrides, keep_array=run.parent_run_id is None)
    extra = {"rerun_of": run.run_id}
    if request.program is not None:
        request, files = _program_files(ctx, run, request, current_code)
        return prepare(ctx, request, program_files=files, extra=extra)
    snapshot = None if current_code else workload_snapshot(ctx, run)
    return prepare(ctx, request, workload=snapshot, extra=extra)


def _program_files(
    ctx: Context, run: Run, request: SpecRequest, current_code: bool
) -> tuple[SpecRequest, ProgramFiles]:
    """A program's rerun: its recorded snapshot (still on the cluster), or today's code."""
    assert request.program is not None
    if current_code:
        program, files = current_files(request.program)
        return dataclasses.replace(request, program=program), files
    return request, recorded_files(ctx, run.run_dir, request.program)


def prepare_resubmit(ctx: Context, ref: str, *, current_code: bool = False) -> Prepared:
    """One new array of only the sweep's tasks whose latest attempt did not complete."""
    sweep_id, arrays = sweep_of(ctx.ledger, ref)
    rows = task_rows(ctx.ledger, arrays)
    failed = failed_tasks(rows)
    if not failed:
        unfinished = [r["task"] for r in rows if r["state"] != "COMPLETED"]
        raise HpcjobError(
            f"Sweep {sweep_id} has no failed, cancelled or timed-out task to resubmit"
            + (f" ({len(unfinished)} still running or pending)." if unfinished else "."),
            hint=f"See `hpcjob sweep status {sweep_id}`.",
        )
    first = arrays[0]
    sweep = dataclasses.replace(Sweep.from_dict(first.spec["sweep"]), indices=tuple(failed))
    request = dataclasses.replace(
        request_from_spec(first.spec, {}, keep_array=False), array=sweep.array_spec()
    )
    if request.program is not None:
        request, files = _program_files(ctx, first, request, current_code)
        return prepare(ctx, request, sweep=sweep, program_files=files)
    snapshot = None if current_code else workload_snapshot(ctx, first)
    return prepare(ctx, request, sweep=sweep, workload=snapshot)
