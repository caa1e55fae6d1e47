"""Prepare a job: fill the request from the profile, validate it (against the live cluster's
partitions), render the script — nothing touches the ledger or the scheduler's queue yet."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcjob import cost
from hpcjob.config import profile_rates
from hpcjob.errors import EXIT_USAGE, HpcjobError
from hpcjob.ledger.records import NewRun
from hpcjob.render import RenderContext, render_script, script_hash, template_dirs
from hpcjob.resources import workload_files
from hpcjob.run.context import (
    Context,
    cached_access,
    cached_partitions,
    fresh_run_id,
    of_profile,
    profile_error,
    run_root,
)
from hpcjob.run.rundir import Files
from hpcjob.shell import Shell
from hpcjob.slurm import AccountAccess, Partition
from hpcjob.spec import (
    WORKLOADS,
    Finding,
    JobSpec,
    Program,
    SpecRequest,
    build_spec,
    format_memory,
    ranks_per_node,
    request_gpus_per_node,
    with_feature,
)
from hpcjob.sweep import Sweep

PCAM_SPLIT_FILE = "camelyonpatch_level_2_split_{split}_{xy}.h5"
PROVENANCE_PROGRAM = "provenance.py"
RANK_PROGRAM = "rank.py"  # between the launcher and each rank (multi-process jobs)


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
    # More files the job needs in its run directory (setup-env's script and requirements, a
    # program's config copies).
    files: Files = field(default_factory=dict)
    # A program's code snapshot to upload (None: none, or it is on the cluster already).
    snapshot: Files | None = None

    @property
    def code(self) -> dict[str, bytes]:
        """hpcjob's workload programs staged in `workload/`; a user's program gets only the
        provenance writer, and the rank wrapper when launched (its own code travels as the
        snapshot)."""
        launched = self.spec.resources.launcher != "none"
        if self.workload is not None:
            if launched and RANK_PROGRAM not in self.workload:  # a rerun of an older snapshot
                return {**self.workload, RANK_PROGRAM: workload_files()[RANK_PROGRAM]}
            return self.workload
        if self.spec.program is not None:
            names = (PROVENANCE_PROGRAM, RANK_PROGRAM) if launched else (PROVENANCE_PROGRAM,)
            return {name: workload_files()[name] for name in names}
        return workload_files()

    @property
    def code_sha256(self) -> str:
        """The hash of the code the job runs: the project's snapshot, or hpcjob's workloads."""
        program = self.spec.program
        if program is not None and program.snapshot:
            return program.snapshot
        return workload_hash(self.code)


@dataclass(frozen=True)
class ProgramFiles:
    """What a user's program brings to `prepare`: its code snapshot (to upload; None when the
    recorded one is reused) and the text of its config file before the overrides."""

    snapshot: Files | None = None
    config_base: bytes | None = None


def prepare(
    ctx: Context,
    request: SpecRequest,
    *,
    check_files: bool = True,
    check_cluster: bool = True,
    sweep: Sweep | None = None,
    workload: dict[str, bytes] | None = None,
    extra: dict[str, Any] | None = None,
    program_files: ProgramFiles | None = None,
) -> Prepared:
    """Fill the request from the profile, validate it (against the live cluster's partitions
    unless `check_cluster` is off, as for `render`; the data and the venv where the job will run
    unless `check_files` is off), render the script."""
    spec = _validated(ctx, request, check_cluster=check_cluster, check_files=check_files)
    feature = ctx.profile.get("stage_constraint")
    if spec.stage_data and feature:
        # Staging is only worth it onto a node-local disk, which some nodes alone have.
        constraint = with_feature(spec.resources.constraint, str(feature))
        spec = dataclasses.replace(
            spec, resources=dataclasses.replace(spec.resources, constraint=constraint)
        )
    note = purge_note(spec.data_dir, ctx.profile.get("purged") or {}, ctx.profile.name)
    if note and note not in ctx.notes:
        ctx.notes.append(note)
    program = spec.program
    if program is not None and spec.data_dir and "data_dir" in program.options:
        # The project maps the data folder to a config key: --data-dir (or the profile's) sets it.
        spec = dataclasses.replace(
            spec, args={**spec.args, program.options["data_dir"]: spec.data_dir}
        )
    if sweep is not None:
        spec = sweep.apply(spec)  # the swept arguments are each task's own
    files: Files = {}
    values: dict[str, Any] = {}
    if spec.program is not None and spec.program.config:
        base = (program_files or ProgramFiles()).config_base
        files = config_files(spec.program.config, base, spec.args, sweep)
        values = config_values(spec.program, base, spec.args)
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
        run_id=fresh_run_id(ctx),
    )
    extras = dict(extra or {})
    if values:
        # The config's values of the keys the project maps to options, and of those overridden:
        # `compare` and `show` read what a run used, not only what was changed.
        extras["config_values"] = values
    if sweep is not None:
        sweep = dataclasses.replace(sweep, sweep_id=sweep.sweep_id or new.run_id)
        extras["sweep"] = sweep.to_dict()
    run_dir = f"{root.rstrip('/')}/{new.run_id}"
    script = _render(ctx, spec, new, run_dir, sweep)
    snapshot = program_files.snapshot if program_files is not None else None
    new = dataclasses.replace(
        new,
        spec={**spec.to_dict(), **extras},
        script=script,
        script_hash=script_hash(script),
        run_dir=run_dir,
    )
    return Prepared(
        spec=spec,
        new_run=new,
        script=script,
        extra=extras,
        workload=workload,
        files=files,
        snapshot=snapshot,
    )


def purge_note(data_dir: str | None, purged: dict[str, int], profile: str) -> str | None:
    """A warning when `data_dir` lies under a path the cluster purges (the profile's `purged`:
    path prefix = days), else None."""
    if not data_dir:
        return None
    path = posixpath.normpath(data_dir) + "/"
    for prefix, days in purged.items():
        if path.startswith(prefix.rstrip("/") + "/"):
            return (
                f"The data folder {data_dir} is under {prefix}, where files untouched for {days} "
                f"days are deleted (profile {profile}'s purged): keep the original elsewhere "
                "(your project space or home) and copy it back when it is gone."
            )
    return None


def config_values(
    program: Program, base: bytes | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The values this run's config has for the mapped and overridden keys (a sweep's swept keys
    are each task's own, in its arguments)."""
    from hpcjob.project.configfile import apply_overrides, get_key, load_config

    if base is None or not program.config:
        return {}
    given = {key: value for key, value in overrides.items() if value is not None}
    config = apply_overrides(load_config(program.config, base), given, name=program.config)
    found = {}
    for key in dict.fromkeys([*program.options.values(), *given]):
        try:
            found[key] = get_key(config, key)
        except KeyError:
            continue
    return found


def config_files(
    path: str, base: bytes | None, overrides: dict[str, Any], sweep: Sweep | None
) -> Files:
    """The run's own copies of a program's config, the overrides applied: `config/<name>`, or
    one per array task of a sweep (`config/task-<i>/<name>`). An unknown key is refused here,
    before anything is recorded or submitted."""
    from hpcjob.project.configfile import apply_overrides, dump_config, load_config

    if base is None:
        raise HpcjobError(f"The config file {path} is not in the project.", exit_code=EXIT_USAGE)
    name = path.rsplit("/", 1)[-1]
    given = {key: value for key, value in overrides.items() if value is not None}
    config = load_config(path, base)
    if sweep is None:
        data = base if not given else dump_config(name, apply_overrides(config, given, name=path))
        return {f"config/{name}": (data, 0o644)}
    combos = sweep.combinations()
    return {
        f"config/task-{index}/{name}": (
            dump_config(name, apply_overrides(config, {**given, **combos[index]}, name=path)),
            0o644,
        )
        for index in range(len(combos))
    }


def _validated(
    ctx: Context, request: SpecRequest, *, check_cluster: bool, check_files: bool
) -> JobSpec:
    """The request checked in one pass, so that every problem is reported at once: its own
    values; unless `check_cluster` is off (as for `render`), the live partitions (one sinfo,
    cached); unless `check_files` is off, the data and the venv where the job will run. A
    cluster that cannot be asked still lets the request's own problems be told first."""
    partitions = None
    access: AccountAccess | None = None
    unreachable: HpcjobError | None = None
    if check_cluster:
        try:
            partitions = cached_partitions(ctx)
            access = cached_access(ctx) if partitions is not None else None
        except HpcjobError as exc:
            unreachable = profile_error(ctx, exc)
    if access is not None and access.unknown:
        ctx.notes.append(f"Your accounts' partitions were not checked: {access.unknown}.")
        access = None
    checks: list[Callable[[JobSpec], list[Finding]]] = []
    if ctx.profile.scheduler == "local":
        checks.append(local_findings)
    if access is not None:
        checks.append(_account_check(ctx, request, access, partitions or []))
    # A dry run without its login node cannot look there (offline_notes says so).
    if check_files and unreachable is None and ctx.offline is None:
        source = None
        if not request.data_dir and ctx.profile.get("data_dir"):
            where = ctx.profile.sources.get("data_dir")
            source = f"data_dir of profile {ctx.profile.name}" + (f", {where}" if where else "")
        checks.append(lambda spec: job_file_findings(ctx, spec, source))

    def check(spec: JobSpec) -> list[Finding]:
        return [finding for one in checks for finding in one(spec)]

    filled = _filled(ctx, request, partitions)
    if access is not None:
        filled = _with_account(ctx, filled, access, partitions or [])
    if partitions is None:
        spec = build_spec(filled, partitions, check if checks else None)
    else:
        with of_profile(ctx):  # the cluster's answer: the same request may suit another profile
            spec = build_spec(filled, partitions, check)
    if unreachable is not None:
        raise unreachable
    return spec


def local_findings(spec: JobSpec) -> list[Finding]:
    """What the embedded scheduler (one machine) cannot run: several nodes."""
    found = []
    if spec.resources.nodes > 1:
        found.append(
            (
                f"--nodes {spec.resources.nodes}: the embedded scheduler runs jobs on this one "
                "machine (1 node)",
                "Give --nodes 1 (torchrun still starts --procs-per-node processes here), or "
                "submit with a Slurm profile (-P snellius) for several nodes.",
            )
        )
    if spec.resources.launcher == "srun":
        found.append(
            (
                "launcher srun (--launcher, or the workload's `launcher` in hpcjob.toml): the "
                "embedded scheduler has no srun",
                "Use --launcher torchrun to start several processes on this machine.",
            )
        )
    return found


def _filled(
    ctx: Context, request: SpecRequest, partitions: Sequence[Partition] | None = None
) -> SpecRequest:
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
    filled = dataclasses.replace(
        request,
        partition=request.partition or profile.partitions.get(request.workload),
        after=after,
        account=request.account or profile.get("account"),
        data_dir=data_dir,
    )
    return _with_gpu_share(ctx, filled, partitions)


def _with_gpu_share(
    ctx: Context, request: SpecRequest, partitions: Sequence[Partition] | None = None
) -> SpecRequest:
    """A GPU job on a partition whose rate knows a GPU's share of the node (Snellius's: 18 cores
    + 120 GiB per A100) asks for that share on each node where --cpus/--mem are not given: it
    is billed anyway, and the loaders get their workers. --cpus is per rank (the node's share
    split over its ranks), --mem per node (as Slurm's). Said in the invocation's notes."""
    if request.cpus_per_task is not None and request.mem is not None:
        return request
    rates = profile_rates(ctx.settings, ctx.profile, ctx.profile.name)
    share = cost.gpu_share(
        rates,
        request.partition,
        request_gpus_per_node(request),
        ranks=ranks_per_node(request),
        nodes=request.nodes or 1,
    )
    if share is None:
        return request
    node = next((p for p in partitions or () if p.name == request.partition), None)
    if node is not None and (share.cores > node.cpus_per_node or share.mem_mb > node.mem_mb):
        return request  # the rate's share does not fit this cluster's nodes: nothing to fill
    cores, mem = request.cpus_per_task is None, request.mem is None
    ctx.notes.append(cost.share_line(share, cores, mem))
    return dataclasses.replace(
        request,
        cpus_per_task=share.cores_per_rank if cores else request.cpus_per_task,
        mem=format_memory(share.mem_mb) if mem else request.mem,
    )


def _partition_of(request: SpecRequest, partitions: Sequence[Partition]) -> str | None:
    """The partition the job will run in: the asked one, else the cluster's default."""
    if request.partition:
        return request.partition
    return next((p.name for p in partitions if p.is_default), None)


def _with_account(
    ctx: Context, request: SpecRequest, access: AccountAccess, partitions: Sequence[Partition]
) -> SpecRequest:
    """No account given, and the partition is for exactly one of the user's accounts (not the
    default, which Slurm uses without being told): that account, said in a note."""
    partition = _partition_of(request, partitions)
    if request.account or partition is None or partition not in access.known_partitions:
        return request
    default = access.default_account
    if default is not None and access.may_use(default, partition):
        return request
    users = access.accounts_for(partition)
    if len(users) != 1:
        return request  # none or several: `account_findings` says which
    ctx.notes.append(
        f"Partition {partition} is for account {users[0]} (of yours"
        + (f"; your default {default} may not use it" if default else "")
        + f"): submitting with --account {users[0]}."
    )
    return dataclasses.replace(request, account=users[0])


def _account_check(
    ctx: Context, request: SpecRequest, access: AccountAccess, partitions: Sequence[Partition]
) -> Callable[[JobSpec], list[Finding]]:
    """The check of a spec's account and partition against the user's accounts."""
    source = None
    if not request.account and ctx.profile.get("account"):
        source = f"the account of profile {ctx.profile.name}"
    default = next((p.name for p in partitions if p.is_default), None)

    def check(spec: JobSpec) -> list[Finding]:
        partition = spec.resources.partition or default
        return account_findings(access, spec.resources.account, partition, source)

    return check


def account_findings(
    access: AccountAccess, account: str | None, partition: str | None, source: str | None = None
) -> list[Finding]:
    """What is wrong with submitting with `account` (None: the user's default) to `partition`:
    an account the user does not have; an account that may not use the partition — naming the
    partitions it may use and the user's accounts that may use this one."""
    yours = ", ".join(access.accounts)
    if account is not None and account not in access.partitions:
        named = f"{account} ({source})" if source else account
        fix = f"Give --account with one of yours ({yours})"
        if access.default_account:
            fix += f", or leave it out for your default, {access.default_account}"
        return [(f"you have no account {named} on this cluster; yours: {yours}", fix + ".")]
    if partition is None or partition not in access.known_partitions:
        return []  # the cluster's default, unknown; or a partition the name check refuses
    chosen = account or access.default_account
    others = [a for a in access.accounts_for(partition) if a != chosen]
    if chosen is not None and access.may_use(chosen, partition):
        return []
    if chosen is None and len(others) == 1:
        return []  # `_with_account` picks it
    if chosen is None:  # several accounts, no default known
        problem = f"partition {partition} needs an account: none was given"
    else:
        who = f"account {chosen}" + (" (your default)" if account is None else "")
        who = f"{who} ({source})" if source and account is not None else who
        usable = ", ".join(access.partitions.get(chosen, ())) or "none"
        problem = f"{who} may not use partition {partition}; it may use: {usable}"
    if others:
        listing = " or ".join(f"--account {a}" for a in others)
        return [(problem, f"Submit with {listing}, or choose a partition the account may use.")]
    fix = (
        f"None of your accounts ({yours}) may use partition {partition}: choose another with "
        "--partition (`hpcjob partitions` shows which accounts may use each)."
    )
    return [(problem, fix)]


def _render(ctx: Context, spec: JobSpec, new: NewRun, run_dir: str, sweep: Sweep | None) -> str:
    profile = ctx.profile
    by_config = sweep is not None and spec.program is not None  # each task has its own config
    render_ctx = RenderContext(
        run_id=new.run_id,
        token=new.token,
        run_dir=run_dir,
        modules=profile.modules,
        venv=profile.get("venv"),
        # With a venv, the job runs the venv's own `python` (the profile's `python` made it).
        python="python" if profile.get("venv") else str(profile.get("python") or "python3"),
        task_args=sweep.task_argv(spec.workload) if sweep is not None and not by_config else (),
        config_per_task=by_config,
    )
    dirs = template_dirs([profile.get("template_dir"), ctx.settings.user_template_dir])
    return render_script(spec, render_ctx, dirs)


def job_file_findings(ctx: Context, spec: JobSpec, source: str | None = None) -> list[Finding]:
    """What the job would not find where it runs: its data (PCAM's files, or a program's data
    folder) and the venv's python. Looked for through the scheduler's shell — this machine for
    the embedded scheduler or Slurm on the login node one is on, else the login node over the
    profile's one SSH connection — with a look or two, never one per file. `source`: where the
    data folder came from when not from --data-dir (the profile's data_dir)."""
    shell = ctx.scheduler.shell
    where = f"on {ctx.profile.get('host')}" if ctx.profile.get("host") else "on this machine"
    found: list[Finding] = []
    if spec.data_dir:
        named = f"{spec.data_dir} ({source})" if source else spec.data_dir
        found += _data_findings(shell, spec, spec.data_dir, named, where)
    venv = ctx.profile.get("venv")
    runs_in_venv = spec.program is not None or WORKLOADS[spec.workload].runs_in_venv
    if venv and runs_in_venv:
        python = f"{shell.expand_home(str(venv)).rstrip('/')}/bin/python"
        problem = _absent(shell, python, where, f"the venv {venv} has no bin/python {where}")
        if problem:
            # Without its python the job cannot start: refused. A marker that is missing or out
            # of date stays a warning at submit (env/setup.py's venv_warning): the job may run.
            fix = (
                f"Make the venv: hpcjob setup-env -P {ctx.profile.name} (or set the profile's "
                "venv to one that exists)."
            )
            found.append((problem, fix))
    return found


def _data_findings(
    shell: Shell, spec: JobSpec, folder: str, named: str, where: str
) -> list[Finding]:
    fix = "Point --data-dir (or the profile's data_dir) at "
    gone = f"the data directory {named} does not exist {where}"
    path = shell.expand_home(folder)  # `~/…`: the home folder there
    if spec.program is not None:
        problem = _absent(shell, path, where, gone)
        return [(problem, fix + "an existing folder.")] if problem else []
    fix += "the folder with the PCAM HDF5 files"
    if where == "on this machine":
        fix += (
            ", or make a small synthetic set: python workloads/synth.py data/pcam-synth (the "
            "README's `make demo` does this)"
        )
    needed = [PCAM_SPLIT_FILE.format(split=s, xy=xy) for s in ("train", "valid") for xy in "xy"]
    try:
        present = {name for name, _ in shell.list_files(path, max_depth=0)}
    except OSError as exc:  # over SFTP: a folder one may not read
        return [(f"the data directory {named} {where} cannot be read ({exc})", fix + ".")]
    missing = [name for name in needed if name not in present]
    if not missing:
        return []
    # An empty listing is also what a folder that does not exist gives: one more look tells.
    problem = _absent(shell, path, where, gone) if not present else None
    return [(problem or f"{named} {where} lacks {', '.join(missing)}", fix + ".")]


def _absent(shell: Shell, path: str, where: str, problem: str) -> str | None:
    """`problem` when nothing is at `path`; None when something is."""
    try:
        return None if shell.exists(path) else problem
    except OSError as exc:  # over SFTP: a folder on the way one may not read
        return f"{path} {where} cannot be looked at ({exc})"


def workload_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()
